"""The gateway in front of a real vLLM server (CPU build, a tiny random model).

The fake upstream of tests/gateway speaks the protocol as we read it; this checks
it against vLLM itself: the bodies, usage and server-sent events it really sends.
The model's answers are gibberish, but greedy (temperature 0) and so the same for
the same prompt, which lets each test compare what came through the gateway with
what vLLM answers directly. Run with `make test-vllm`.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.vllm.conftest import MODEL, SERVED_NAME, GatewayProcess, http

pytestmark = pytest.mark.vllm

EMAIL_PROMPT = "My email is john@example.com, answer me."
# What the inbound filter turns it into before it is sent to vLLM.
REDACTED_PROMPT = "My email is [EMAIL], answer me."


def chat_body(text: str, **extra: Any) -> dict[str, Any]:
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": text}],
        "max_tokens": 16,
        "temperature": 0,
    }
    body.update(extra)
    return body


def streamed_text(events: list[Any]) -> str:
    return "".join(
        choice["delta"].get("content") or ""
        for event in events
        if isinstance(event, dict)
        for choice in event.get("choices", [])
    )


def test_models_lists_the_model(gateway: GatewayProcess) -> None:
    request_id, response = gateway.call("GET", "/v1/models")
    assert response.status == 200, response.body
    assert [m["id"] for m in response.json()["data"]] == [MODEL]
    # ...and vLLM serves it under the name the gateway's route sends.
    direct = http("GET", gateway.vllm.url + "/v1/models").json()
    assert [m["id"] for m in direct["data"]] == [SERVED_NAME]
    [event] = gateway.events(request_id)
    assert (event["decision"], event["status"]) == ("allow", 200)


def test_chat_completion_usage_is_vllms_and_is_metered(gateway: GatewayProcess) -> None:
    prompt_before, completion_before = gateway.tokens("prompt"), gateway.tokens("completion")
    body = chat_body("Say something about the quarterly report.")
    request_id, response = gateway.call("POST", "/v1/chat/completions", body)
    assert response.status == 200, response.body
    answer = response.json()
    assert answer["object"] == "chat.completion"
    assert answer["model"] == MODEL
    assert answer["choices"][0]["message"]["role"] == "assistant"
    direct = gateway.direct("/v1/chat/completions", body).json()
    assert answer["choices"][0]["message"]["content"] == direct["choices"][0]["message"]["content"]
    usage = answer["usage"]
    assert usage["prompt_tokens"] > 0 and usage["completion_tokens"] > 0
    assert {k: usage[k] for k in ("prompt_tokens", "completion_tokens", "total_tokens")} == {
        k: direct["usage"][k] for k in ("prompt_tokens", "completion_tokens", "total_tokens")
    }
    [event] = gateway.events(request_id)
    assert (event["decision"], event["status"], event["model"]) == ("allow", 200, MODEL)
    assert event["prompt_tokens"] == usage["prompt_tokens"]
    assert event["completion_tokens"] == usage["completion_tokens"]
    assert gateway.tokens("prompt") - prompt_before == usage["prompt_tokens"]
    assert gateway.tokens("completion") - completion_before == usage["completion_tokens"]


def test_streamed_chat_arrives_as_sse_and_passes_the_outbound_filter(
    gateway: GatewayProcess,
) -> None:
    completion_before = gateway.tokens("completion")
    body = chat_body("Tell me a story.", stream=True)
    request_id, response = gateway.call("POST", "/v1/chat/completions", body)
    assert response.status == 200, response.body
    assert response.headers["Content-Type"].startswith("text/event-stream")
    events = response.sse()
    assert len(events) > 2 and events[-1] == "[DONE]"
    chunks = events[:-1]
    assert all(c["object"] == "chat.completion.chunk" and "error" not in c for c in chunks)
    assert {c["model"] for c in chunks} == {MODEL}
    # The client did not ask for usage: the usage-only chunk vLLM sent is not passed on.
    assert all(not c.get("usage") for c in chunks)
    direct = gateway.direct(
        "/v1/chat/completions", dict(body, stream_options={"include_usage": True})
    )
    direct_events = direct.sse()
    assert direct_events[-1] == "[DONE]"
    [direct_usage] = [e["usage"] for e in direct_events[:-1] if e.get("usage")]
    text = streamed_text(chunks)
    assert text and text == streamed_text(direct_events)
    [event] = gateway.events(request_id)
    assert event["stream"] and (event["decision"], event["status"]) == ("allow", 200)
    assert event["findings"].get("outbound", {}) == {}
    assert event["prompt_tokens"] == direct_usage["prompt_tokens"]
    assert event["completion_tokens"] == direct_usage["completion_tokens"]
    assert gateway.tokens("completion") - completion_before == direct_usage["completion_tokens"]


def test_an_email_in_the_prompt_reaches_vllm_redacted(gateway: GatewayProcess) -> None:
    request_id, response = gateway.call("POST", "/v1/chat/completions", chat_body(EMAIL_PROMPT))
    assert response.status == 200, response.body
    [event] = gateway.events(request_id)
    assert event["findings"]["inbound"] == {"email:redact": 1}
    assert "pii" in event["data_classes"]
    # What vLLM counted is the redacted prompt, not the one the client sent.
    redacted = gateway.direct("/v1/chat/completions", chat_body(REDACTED_PROMPT)).json()
    original = gateway.direct("/v1/chat/completions", chat_body(EMAIL_PROMPT)).json()
    assert redacted["usage"]["prompt_tokens"] != original["usage"]["prompt_tokens"]
    assert response.json()["usage"]["prompt_tokens"] == redacted["usage"]["prompt_tokens"]
    answer = response.json()["choices"][0]["message"]["content"]
    assert answer == redacted["choices"][0]["message"]["content"]


def test_a_payment_card_in_the_prompt_never_reaches_vllm(gateway: GatewayProcess) -> None:
    body = chat_body("Charge 4111 1111 1111 1111 please.")
    request_id, response = gateway.call("POST", "/v1/chat/completions", body)
    assert response.status == 400, response.body
    assert response.json()["error"]["code"] == "pii_blocked:paymentCard"
    [event] = gateway.events(request_id)
    assert (event["decision"], event["reason"]) == ("deny", "pii_blocked:paymentCard")
    assert event["served_by"] is None and event["completion_tokens"] == 0


def test_completions(gateway: GatewayProcess) -> None:
    body = {"model": MODEL, "prompt": "Beautiful is better than", "max_tokens": 8}
    body["temperature"] = 0
    request_id, response = gateway.call("POST", "/v1/completions", body)
    assert response.status == 200, response.body
    answer = response.json()
    assert answer["object"] == "text_completion" and answer["model"] == MODEL
    direct = gateway.direct("/v1/completions", body).json()
    assert answer["choices"][0]["text"] == direct["choices"][0]["text"]
    assert answer["usage"]["prompt_tokens"] == direct["usage"]["prompt_tokens"]
    assert answer["usage"]["completion_tokens"] == direct["usage"]["completion_tokens"]
    [event] = gateway.events(request_id)
    assert (event["path"], event["status"]) == ("/v1/completions", 200)
    assert event["completion_tokens"] == direct["usage"]["completion_tokens"]


def test_exactly_one_audit_event_per_request(gateway: GatewayProcess) -> None:
    # Runs last in the module: every request the tests above sent through the gateway.
    assert gateway.request_ids
    gateway.events(gateway.request_ids[-1])
    requests = [r for r in gateway.audit_records() if r.get("kind") != "control"]
    assert sorted(r["request_id"] for r in requests) == sorted(gateway.request_ids)
