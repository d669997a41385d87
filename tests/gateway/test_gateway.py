"""The gateway end to end on loopback: a real HTTP server in front of local upstreams."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from privatellm.gateway.audit import MemorySink
from privatellm.gateway.config import GatewayConfig
from privatellm.gateway.reload import ConfigWatcher
from privatellm.gateway.server import Gateway
from tests.gateway.conftest import (
    ALICE_KEY,
    BOB_KEY,
    base_config,
    gateway_stack,
    read_stream,
    upstream,
)

EMAIL_REPLY = "Write to jane.doe@example.org about the invoice."


def test_prompt_and_reply_are_filtered_and_audited() -> None:
    async def scenario() -> None:
        async with upstream(reply=EMAIL_REPLY) as model:
            config = base_config(
                {"llama": [model.url]}, dataClasses=[{"name": "pii", "action": "redact"}]
            )
            async with gateway_stack(config) as stack:
                status, body = await stack.chat("My email is john@example.com, answer me.")
        assert status == 200, body
        sent = model.requests[-1].json()
        assert "john@example.com" not in json.dumps(sent)
        assert sent["model"] == "fake-model"
        reply = body["choices"][0]["message"]["content"]
        assert "jane.doe@example.org" not in reply and "[EMAIL]" in reply
        assert body["model"] == "llama"
        [event] = stack.events
        assert (event.decision, event.subject, event.model, event.status) == (
            "allow",
            "alice",
            "llama",
            200,
        )
        assert event.findings["inbound"] == {"email:redact": 1}
        assert event.findings["outbound"] == {"email:redact": 1}
        assert "pii" in event.data_classes
        assert event.prompt_tokens > 0 and event.completion_tokens > 0

    asyncio.run(scenario())


def test_streamed_reply_is_filtered_across_chunk_boundaries() -> None:
    async def scenario() -> None:
        # Ten chunks split the address over several of them.
        async with upstream(reply=EMAIL_REPLY, stream_chunks=10) as model:
            config = base_config({"llama": [model.url]})
            async with gateway_stack(config) as stack:
                body = {
                    "model": "llama",
                    "stream": True,
                    "messages": [{"role": "user", "content": "hello"}],
                }
                status, events = await read_stream(stack, body)
        assert status == 200
        assert events[-1] == "[DONE]"
        text = "".join(
            choice["delta"].get("content") or ""
            for event in events[:-1]
            for choice in event["choices"]
        )
        assert text == "Write to [EMAIL] about the invoice."
        # The client did not ask for usage, so the usage-only chunk is not passed on...
        assert all(not e.get("usage") for e in events[:-1])
        # ...but the request is still metered.
        [event] = stack.events
        assert event.stream and event.completion_tokens > 0

    asyncio.run(scenario())


def test_refusals_are_openai_errors_and_each_is_audited() -> None:
    async def scenario() -> None:
        async with upstream() as model:
            config = base_config({"llama": [model.url], "mixtral": [model.url]}, models=["llama"])
            async with gateway_stack(config) as stack:
                cases = [
                    (await stack.chat("hi", key=None), 401, "missing_credentials"),
                    (await stack.chat("hi", key="pllm-forged"), 401, "unknown_api_key"),
                    (await stack.chat("hi", key=BOB_KEY), 403, "no_policy_for_subject"),
                    (await stack.chat("hi", model="mixtral"), 403, "model_not_allowed"),
                    (await stack.chat("hi", model="gpt-9"), 404, "model_not_found"),
                    (
                        await stack.post(
                            "/v1/chat/completions",
                            {"model": "llama", "messages": [{"role": "user", "content": "x"}]},
                            **{"X-PrivateLLM-Data-Classes": "health"},
                        ),
                        403,
                        "data_class_not_allowed:health",
                    ),
                ]
                received = len(model.requests)
        for (status, body), want_status, want_code in cases:
            assert status == want_status, body
            assert body["error"]["code"] == want_code
            assert body["error"]["type"] and body["error"]["message"]
        assert received == 0
        assert [e.reason for e in stack.events] == [c[2] for c in cases]
        assert all(e.decision == "deny" for e in stack.events)

    asyncio.run(scenario())


def test_bad_input_gets_4xx_never_5xx() -> None:
    big = {"model": "llama", "messages": [{"role": "user", "content": "x" * 2_000_000}]}
    cases: list[tuple[str, Any, dict[str, str], int, str]] = [
        ("/v1/chat/completions", b"{not json", {}, 400, "invalid_json"),
        ("/v1/chat/completions", b"\xff\xfe", {}, 400, "invalid_json"),
        ("/v1/chat/completions", [1, 2], {}, 400, "invalid_request"),
        ("/v1/chat/completions", {"model": 7, "messages": []}, {}, 400, "invalid_request"),
        ("/v1/chat/completions", {"model": "llama", "messages": "hi"}, {}, 400, "invalid_request"),
        (
            "/v1/chat/completions",
            {"model": "llama", "messages": [{"role": "user", "content": [{"type": "image"}]}]},
            {},
            400,
            "invalid_request",
        ),
        ("/v1/completions", {"model": "llama", "prompt": [1, 2, 3]}, {}, 400, "invalid_request"),
        ("/v1/embeddings", {"model": "llama", "input": "x", "stream": True}, {}, 400, ""),
        ("/v1/chat/completions", big, {}, 413, "body_too_large"),
        ("/v1/chat/completions", b"{}", {"Content-Type": "text/plain"}, 415, ""),
        ("/v1/nothing", {}, {}, 404, "unknown_path"),
        ("/v1/chat/completions", {}, {"X-PrivateLLM-Data-Classes": "A B"}, 400, ""),
    ]

    async def scenario() -> None:
        async with upstream() as model, gateway_stack(base_config({"llama": [model.url]})) as stack:
            for path, body, headers, want_status, want_code in cases:
                status, answer = await stack.post(path, body, **headers)
                assert status == want_status, (path, body, answer)
                assert "error" in answer
                if want_code:
                    assert answer["error"]["code"] == want_code
            assert len(stack.events) == len(cases)
            # The gateway still serves after all of that.
            status, _ = await stack.chat("still there?")
            assert status == 200

    asyncio.run(scenario())


def test_blocked_entity_never_reaches_the_model() -> None:
    async def scenario() -> None:
        async with upstream() as model:
            config = base_config(
                {"llama": [model.url]}, inbound={"pii": [{"entity": "iban", "action": "block"}]}
            )
            async with gateway_stack(config) as stack:
                status, body = await stack.chat("Pay to NL91ABNA0417164300 today")
        assert status == 400
        assert body["error"]["code"] == "pii_blocked:iban"
        assert model.requests == []
        assert stack.events[0].findings["inbound"] == {"iban:block": 1}

    asyncio.run(scenario())


def test_request_rate_limit_per_subject() -> None:
    async def scenario() -> None:
        async with upstream() as model:
            config = base_config({"llama": [model.url]}, quotas={"requestsPerMinute": 2})
            async with gateway_stack(config, clock=lambda: 1_000_000.0) as stack:
                statuses = [(await stack.chat("hi"))[0] for _ in range(3)]
                third = stack.events[-1]
        assert statuses == [200, 200, 429]
        assert third.reason == "rate_limited:requests_per_minute"

    asyncio.run(scenario())


def test_failed_replica_is_retried_and_fallback_serves_when_none_is_left() -> None:
    async def scenario() -> None:
        async with (
            upstream(fail="close") as broken,
            upstream() as healthy,
            upstream(reply="from the fallback") as fallback,
        ):
            config = base_config({"llama": [broken.url, healthy.url], "small": [fallback.url]})
            config["models"][0]["fallback"] = "small"
            async with gateway_stack(config) as stack:
                first = [await stack.chat("hi") for _ in range(4)]
                assert all(status == 200 for status, _ in first)
                assert all(e.served_by == "llama" for e in stack.events)
                retries = stack.gateway.metering.upstream_retries.labels("llama")._value.get()
                assert retries >= 1

                healthy.fail = "500"
                status, body = await stack.chat("hi")
                assert status == 200
                assert body["choices"][0]["message"]["content"] == "from the fallback"
                assert body["model"] == "small"
                assert stack.events[-1].served_by == "small"

                fallback.fail = "close"
                status, body = await stack.chat("hi")
                assert status == 503 and body["error"]["code"] == "no_ready_replica"

    asyncio.run(scenario())


def test_every_request_yields_exactly_one_event_under_concurrency() -> None:
    async def scenario() -> None:
        async with upstream() as model, gateway_stack(base_config({"llama": [model.url]})) as stack:

            async def one(i: int) -> int:
                key = ALICE_KEY if i % 3 else BOB_KEY
                model_name = "llama" if i % 5 else "nope"
                return (await stack.chat(f"request {i}", model=model_name, key=key))[0]

            statuses = await asyncio.gather(*(one(i) for i in range(60)))
        assert len(stack.events) == 60
        assert len({e.request_id for e in stack.events}) == 60
        assert sorted(e.status for e in stack.events) == sorted(statuses)

    asyncio.run(scenario())


def test_configuration_reloads_without_restart_and_a_bad_file_changes_nothing(
    tmp_path: Path,
) -> None:
    async def scenario() -> None:
        async with upstream() as model:
            config = base_config({"llama": [model.url]})
            path = tmp_path / "gateway.yaml"
            path.write_text(yaml.safe_dump(config))
            async with gateway_stack(config) as stack:
                watcher = ConfigWatcher(stack.gateway, path)
                assert (await stack.chat("hi", key=BOB_KEY))[0] == 403

                config["policies"][0]["spec"]["subjects"].append(
                    {"kind": "APIKey", "name": "bob", "secretName": "bob-key"}
                )
                path.write_text(yaml.safe_dump(config))
                assert watcher.poll()
                assert (await stack.chat("hi", key=BOB_KEY))[0] == 200

                path.write_text("namespace: [oops")
                assert not watcher.poll()
                assert (await stack.chat("hi", key=BOB_KEY))[0] == 200
                reloads = stack.gateway.metering.config_reloads
                assert reloads.labels("applied")._value.get() == 1
                assert reloads.labels("rejected")._value.get() == 1
                # The rules in force are on the record: at start and at the applied reload.
                assert isinstance(stack.sink, MemorySink)
                controls = stack.sink.controls
                assert [c["action"] for c in controls] == ["gateway.start", "gateway.config"]
                assert controls[1]["details"]["policies"] == ["alice"]
                assert (
                    controls[0]["details"]["config_sha256"]
                    != controls[1]["details"]["config_sha256"]
                )

    asyncio.run(scenario())


def test_model_list_shows_only_what_the_subject_may_use() -> None:
    async def scenario() -> None:
        async with upstream() as model:
            config = base_config({"llama": [model.url], "mixtral": [model.url]}, models=["llama"])
            async with gateway_stack(config) as stack:
                headers = {"Authorization": f"Bearer {ALICE_KEY}"}
                async with stack.http.get(stack.url + "/v1/models", headers=headers) as r:
                    listed = [m["id"] for m in (await r.json())["data"]]
        assert listed == ["llama"]
        assert len(stack.events) == 1

    asyncio.run(scenario())


def test_example_config_validates() -> None:
    GatewayConfig.model_validate(base_config({"llama": ["http://127.0.0.1:1"]}))


def test_slow_client_gets_408(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with upstream() as model:
            config = base_config({"llama": [model.url]})
            config["limits"] = {"clientReadSeconds": 0.2}
            async with gateway_stack(config) as stack:

                async def trickle() -> Any:
                    yield b'{"model": "llama",'
                    await asyncio.sleep(1.0)
                    yield b'"messages": []}'

                headers = {
                    "Authorization": f"Bearer {ALICE_KEY}",
                    "Content-Type": "application/json",
                }
                try:
                    async with stack.http.post(
                        stack.url + "/v1/chat/completions", data=trickle(), headers=headers
                    ) as response:
                        status = response.status
                        body = await response.json()
                except aiohttp.ClientError:
                    status, body = 0, {}
        assert status == 408, body
        assert stack.events[-1].reason == "request_timeout"

    asyncio.run(scenario())


def test_requests_the_model_has_not_answered_yet_are_its_queue() -> None:
    async def scenario() -> None:
        async with (
            upstream(delay=0.5) as slow,
            gateway_stack(base_config({"llama": [slow.url]})) as stack,
        ):
            waiting = stack.gateway.metering.upstream_waiting.labels("llama")
            calls = [asyncio.create_task(stack.chat("hi")) for _ in range(3)]
            deadline = time.monotonic() + 5
            while waiting._value.get() < 3:
                assert time.monotonic() < deadline, "the three requests never waited"
                await asyncio.sleep(0.01)
            assert [status for status, _ in await asyncio.gather(*calls)] == [200] * 3
            assert waiting._value.get() == 0
            slow.fail = "close"  # a replica that never answers leaves no count behind
            assert (await stack.chat("hi"))[0] == 503
            assert waiting._value.get() == 0

    asyncio.run(scenario())


def test_every_configured_model_has_its_demand_gauges_before_any_request() -> None:
    """An idle model reads 0, not a missing sample, to whatever reads the gauges (KEDA)."""
    gateway = Gateway(GatewayConfig.model_validate(base_config({"llama": []})), MemorySink())
    registry = gateway.metering.registry
    for metric in ("privatellm_gateway_in_flight", "privatellm_gateway_held"):
        assert registry.get_sample_value(metric, {"model": "llama"}) == 0
    gateway.reload(GatewayConfig.model_validate(base_config({"llama": [], "small": []})))
    assert registry.get_sample_value("privatellm_gateway_held", {"model": "small"}) == 0
