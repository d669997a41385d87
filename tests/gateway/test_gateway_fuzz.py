"""Fuzzing the gateway's API: no input yields a 5xx, and every request is audited once."""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.gateway.conftest import ALICE_KEY, ThreadedGateway, base_config
from tests.support.fake_openai import FakeOpenAI

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=12,
)
MESSAGE = st.fixed_dictionaries(
    {"role": st.sampled_from(["user", "system", "assistant", 7]), "content": JSON_VALUES}
)
CHAT_BODIES = st.fixed_dictionaries(
    {
        "model": st.sampled_from(["llama", "", "nope", 3]),
        "messages": st.lists(MESSAGE, max_size=3) | JSON_VALUES,
    },
    optional={"stream": JSON_VALUES, "max_tokens": JSON_VALUES, "stream_options": JSON_VALUES},
)
PATHS = st.sampled_from(
    ["/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/models", "/v2/x"]
)
HEADER_VALUES = st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=60)


@pytest.fixture(scope="module")
def gateway() -> Iterator[ThreadedGateway]:
    with FakeOpenAI(model="fake-model") as upstream:
        config = base_config({"llama": [upstream.url]})
        with ThreadedGateway(config) as running:
            yield running


def _send(gateway: ThreadedGateway, path: str, body: bytes, headers: dict[str, str]) -> Any:
    parts = urlsplit(gateway.url)
    connection = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=10)
    try:
        connection.request("POST", path, body=body, headers=headers)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    path=PATHS,
    body=CHAT_BODIES | JSON_VALUES,
    raw=st.binary(max_size=64) | st.none(),
    auth=st.sampled_from(
        [f"Bearer {ALICE_KEY}", "Bearer pllm-x", "Basic Zm9v", "", "Bearer a.b.c"]
    ),
    classes=HEADER_VALUES | st.none(),
)
def test_no_input_yields_a_server_error_and_each_is_audited(
    gateway: ThreadedGateway,
    path: str,
    body: Any,
    raw: bytes | None,
    auth: str,
    classes: str | None,
) -> None:
    headers = {"Content-Type": "application/json"}
    if auth:
        headers["Authorization"] = auth
    if classes is not None:
        headers["X-PrivateLLM-Data-Classes"] = classes
    payload = raw if raw is not None else json.dumps(body).encode()
    before = len(gateway.sink.events)
    status, answer = _send(gateway, path, payload, headers)
    assert status < 500, answer
    if status >= 400:
        error = json.loads(answer)["error"]
        assert error["code"] and error["message"]
    assert len(gateway.sink.events) == before + 1
