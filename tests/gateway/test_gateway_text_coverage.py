"""Every text that reaches a model passes the inbound filters, and every text a model
returns passes the outbound ones, wherever in the OpenAI schema it sits."""

from __future__ import annotations

import asyncio
import http.client
import json
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from tests.gateway.conftest import (
    ALICE_KEY,
    ThreadedGateway,
    base_config,
    gateway_stack,
    read_stream,
    upstream,
)
from tests.support.fake_openai import TOOL_CALL_ID, FakeOpenAI, ReplyField

# Each is found by a detector whose action the policy below sets to redact.
PLANTED = [
    "jane.doe@example.org",
    "NL91ABNA0417164300",
    "4111 1111 1111 1111",
    "078-05-1120",
]
POLICY = {
    "dataClasses": [
        {"name": "public", "action": "allow"},
        {"name": "pii", "action": "redact"},
        {"name": "financial", "action": "redact"},
    ]
}

WORDS = st.text(alphabet="abcdefghij klmnop", min_size=1, max_size=12)
NAMES = st.text(alphabet="abcdefgh_", min_size=1, max_size=10)
IDS = st.text(alphabet="abcdef0123456789", min_size=1, max_size=12).map(lambda s: f"call_{s}")


def _schema() -> st.SearchStrategy[dict[str, Any]]:
    prop = st.fixed_dictionaries(
        {"type": st.just("string"), "description": WORDS},
        optional={"enum": st.lists(WORDS, min_size=1, max_size=3, unique=True), "title": WORDS},
    )
    return st.fixed_dictionaries(
        {"type": st.just("object"), "properties": st.dictionaries(NAMES, prop, max_size=3)},
        optional={"description": WORDS},
    )


def _content() -> st.SearchStrategy[Any]:
    part = st.fixed_dictionaries({"type": st.just("text"), "text": WORDS})
    return WORDS | st.lists(part, min_size=1, max_size=2)


def _message() -> st.SearchStrategy[dict[str, Any]]:
    plain = st.fixed_dictionaries(
        {"role": st.sampled_from(["system", "developer", "user"]), "content": _content()},
        optional={"name": NAMES},
    )
    call = st.fixed_dictionaries(
        {
            "id": IDS,
            "type": st.just("function"),
            "function": st.fixed_dictionaries({"name": NAMES, "arguments": WORDS}),
        }
    )
    assistant = st.fixed_dictionaries(
        {"role": st.just("assistant"), "content": st.none() | WORDS},
        optional={"tool_calls": st.lists(call, min_size=1, max_size=2), "refusal": WORDS},
    )
    tool = st.fixed_dictionaries(
        {"role": st.just("tool"), "tool_call_id": IDS, "content": _content()}
    )
    return plain | assistant | tool


def _tool() -> st.SearchStrategy[dict[str, Any]]:
    function = st.fixed_dictionaries({"name": NAMES, "description": WORDS, "parameters": _schema()})
    return st.fixed_dictionaries({"type": st.just("function"), "function": function})


CHAT = st.fixed_dictionaries(
    {"messages": st.lists(_message(), min_size=1, max_size=4)},
    optional={
        "tools": st.lists(_tool(), min_size=1, max_size=2),
        "tool_choice": st.just("auto")
        | st.fixed_dictionaries(
            {"type": st.just("function"), "function": st.fixed_dictionaries({"name": NAMES})}
        ),
        "response_format": st.fixed_dictionaries(
            {
                "type": st.just("json_schema"),
                "json_schema": st.fixed_dictionaries({"name": NAMES, "schema": _schema()}),
            }
        ),
        "stop": WORDS | st.lists(WORDS, min_size=1, max_size=3),
        "user": WORDS,
        "metadata": st.dictionaries(NAMES, WORDS, max_size=2),
        "guided_choice": st.lists(WORDS, min_size=1, max_size=3),
        "guided_json": _schema(),
        "chat_template_kwargs": st.dictionaries(NAMES, WORDS, max_size=2),
        "temperature": st.floats(0, 2),
        "max_tokens": st.integers(1, 512),
    },
)
COMPLETION = st.fixed_dictionaries(
    {"prompt": WORDS | st.lists(WORDS, min_size=1, max_size=3)},
    optional={"suffix": WORDS, "stop": WORDS, "user": WORDS, "guided_regex": WORDS},
)
EMBEDDING = st.fixed_dictionaries(
    {"input": WORDS | st.lists(WORDS, min_size=1, max_size=3)}, optional={"user": WORDS}
)
REQUESTS = st.one_of(
    st.tuples(st.just("/v1/chat/completions"), CHAT),
    st.tuples(st.just("/v1/completions"), COMPLETION),
    st.tuples(st.just("/v1/embeddings"), EMBEDDING),
)

# Where no text goes, by this test's own reading of the OpenAI schema: ids, roles, the
# content part's type, and the body's own keys and numbers.
NOT_TEXT_VALUES = {"role", "id", "tool_call_id"}
KEYS_AS_TEXT = {"properties", "metadata", "chat_template_kwargs"}

Slot = tuple[Any, Any, bool]  # (holder, key, whether the key itself is the text)


def text_slots(node: Any, parent_key: Any = None, depth: int = 0) -> Iterator[Slot]:
    """Every place a string sits that the model will read."""
    items = node.items() if isinstance(node, dict) else enumerate(node)
    for key, value in items:
        if isinstance(node, dict) and parent_key in KEYS_AS_TEXT:
            yield node, key, True
        if isinstance(value, str):
            structural = depth == 0 and key == "model"
            part_type = key == "type" and isinstance(node, dict) and "text" in node
            if not structural and not part_type and key not in NOT_TEXT_VALUES:
                yield node, key, False
        elif isinstance(value, dict | list):
            yield from text_slots(value, key, depth + 1)


def plant(holder: Any, key: Any, as_key: bool, secret: str) -> None:
    if as_key:
        holder[f"{key} {secret}"] = holder.pop(key)
    else:
        holder[key] = f"{holder[key]} {secret}"


@pytest.fixture(scope="module")
def stack() -> Iterator[tuple[ThreadedGateway, FakeOpenAI]]:
    with FakeOpenAI(model="fake-model") as model:
        config = base_config({"llama": [model.url]}, **POLICY)
        with ThreadedGateway(config) as running:
            yield running, model


def _post(url: str, path: str, body: Any) -> tuple[int, bytes]:
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=10)
    headers = {"Authorization": f"Bearer {ALICE_KEY}", "Content-Type": "application/json"}
    try:
        connection.request("POST", path, body=json.dumps(body), headers=headers)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(request=REQUESTS, data=st.data())
def test_planted_personal_data_never_reaches_the_model(
    stack: tuple[ThreadedGateway, FakeOpenAI], request: tuple[str, dict[str, Any]], data: Any
) -> None:
    gateway, model = stack
    path, body = request
    body = {"model": "llama", **body}
    slots = list(text_slots(body))
    assume(slots)
    holder, key, as_key = data.draw(st.sampled_from(slots), label="slot")
    secret = data.draw(st.sampled_from(PLANTED), label="planted")
    plant(holder, key, as_key, secret)
    before = len(model.requests)
    status, answer = _post(gateway.url, path, body)
    assert status == 200, answer
    [sent] = model.requests[before:]
    assert secret not in sent.body.decode(), (key, sent.body)


def test_the_slots_cover_the_schemas_text_fields() -> None:
    body = {
        "model": "llama",
        "messages": [
            {"role": "user", "name": "n", "content": [{"type": "text", "text": "t"}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "r"},
        ],
        "tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}],
        "metadata": {"k": "v"},
    }
    found = {(str(key), as_key) for _, key, as_key in text_slots(body)}
    assert found == {
        ("name", False),
        ("text", False),
        ("content", False),
        ("type", False),
        ("k", True),
        ("k", False),
    }


@pytest.mark.parametrize("field", ["content", "refusal", "tool_call"])
@pytest.mark.parametrize("stream", [False, True])
def test_every_answer_field_passes_the_outbound_filters(field: ReplyField, stream: bool) -> None:
    reply = 'Ask {"to": "jane.doe@example.org"} today'

    async def scenario() -> tuple[int, str, list[Any]]:
        async with upstream(reply=reply, reply_field=field, stream_chunks=8) as model:
            config = base_config({"llama": [model.url]}, **POLICY)
            async with gateway_stack(config) as stack:
                body = {"model": "llama", "messages": [{"role": "user", "content": "hi"}]}
                if stream:
                    status, events = await read_stream(stack, {**body, "stream": True})
                    return status, json.dumps(events), events
                status, answer = await stack.post("/v1/chat/completions", body)
                return status, json.dumps(answer), [answer]

    status, raw, answers = asyncio.run(scenario())
    assert status == 200, raw
    assert "jane.doe@example.org" not in raw
    text = "".join(_field_texts(answers, field, stream))
    assert text == 'Ask {"to": "[EMAIL]"} today'
    if field == "tool_call":
        assert TOOL_CALL_ID in raw  # an id is not text: it passes as the model sent it


def _field_texts(answers: list[Any], field: ReplyField, stream: bool) -> Iterator[str]:
    for answer in answers:
        if answer == "[DONE]":
            continue
        for choice in answer["choices"]:
            part = choice["delta" if stream else "message"]
            if field == "tool_call":
                for call in part.get("tool_calls") or []:
                    yield call["function"].get("arguments") or ""
            else:
                yield part.get(field) or ""


def test_a_blocked_tool_call_is_withheld() -> None:
    async def scenario() -> tuple[int, Any]:
        async with upstream(reply="IBAN NL91ABNA0417164300", reply_field="tool_call") as model:
            policy = {"dataClasses": [{"name": "financial", "action": "block"}]}
            async with gateway_stack(base_config({"llama": [model.url]}, **policy)) as stack:
                body = {"model": "llama", "messages": [{"role": "user", "content": "hi"}]}
                return await stack.post("/v1/chat/completions", body)

    status, answer = asyncio.run(scenario())
    assert status == 403 and answer["error"]["code"] == "pii_blocked:iban"
    assert "NL91ABNA0417164300" not in json.dumps(answer)
