"""Fuzzing the gateway's API: no input yields a 5xx, and every request is audited once.

The second fuzz sends raw bytes, so that aiohttp's parser and decoders are reached:
header names and values (long ones too), Content-Encoding values, and Content-Length /
Transfer-Encoding combinations. The rule for connections: the gateway closes one
without an answer only when no request head was completed on it, and then it records
nothing (tests/gateway/test_gateway_http.py); every fuzzed request ends its head, so
each gets an answer, and the audit holds exactly one event per answer.
"""

from __future__ import annotations

import gzip
import http.client
import json
import zlib
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from tests.gateway.conftest import ALICE_KEY, ThreadedGateway, base_config
from tests.support.fake_openai import FakeOpenAI
from tests.support.raw_http import Answer, exchange_until_closed, parse_answers

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


PROMPTS = st.sampled_from(
    [
        b'{"model": "llama", "messages": [{"role": "user", "content": "hello"}]}',
        b'{"model": "llama", "stream": true, "messages": [{"role": "user", "content": "hi"}]}',
    ]
)
TOKEN = "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
# Left to the strategies below, or out as they would ask for an interim answer or another
# protocol: each request has one head and one answer.
_NOT_RANDOM = {"host", "connection", "content-length", "transfer-encoding", "content-encoding"}
_NOT_RANDOM |= {"expect", "upgrade", "te", "trailer", "keep-alive"}
HEADER_NAMES = (
    st.sampled_from(["Authorization", "Content-Type", "X-Request-Id", "Accept", "User-Agent"])
    | st.sampled_from(["X-PrivateLLM-Data-Classes", "Cookie", "Proxy-Authorization"])
    | st.text(alphabet=TOKEN + " :\t\x00\x7f\xe9", max_size=20)
).filter(lambda name: name.strip().lower() not in _NOT_RANDOM)
RAW_VALUES = (
    st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=40).map(
        str.encode
    )
    | st.binary(max_size=40)
    | st.integers(8150, 8250).map(lambda size: b"v" * size)  # around the 8 KiB line limit
    | st.sampled_from([f"Bearer {ALICE_KEY}".encode(), b"Bearer " + b"k" * 9000, b"public"])
)
KNOWN_HEADERS = st.tuples(
    st.sampled_from(["Accept", "User-Agent", "X-Request-Id", "X-PrivateLLM-Data-Classes"]),
    st.sampled_from([b"*/*", b"sdk/1.0", b"0123456789abcdef", b"public", b""]),
)
HEADER_LISTS = (
    st.lists(KNOWN_HEADERS, max_size=4)
    | st.lists(st.tuples(HEADER_NAMES, RAW_VALUES), max_size=6)
    | st.integers(50, 70).map(
        lambda count: [(f"X-Header-{i}", b"v") for i in range(count)]  # around the 64 limit
    )
)
CODINGS = st.sampled_from(
    ["gzip", "deflate", "identity", "br", "zstd", "GZIP", " gzip", "gzip, gzip", "x-zip", ""]
)
# Half the requests are framed right, so that they reach the decoders and the gateway.
FRAMINGS = st.just("length") | st.sampled_from(
    [
        "chunked",
        "none",
        "length-and-chunked",
        "two-lengths",
        "bad-length",
        "gzip-transfer-coding",
        "bad-chunk-size",
        "short-length",
    ]
)
METHODS = st.just("POST") | st.sampled_from(["GET", "PUT", "OPTIONS", "post", "G(T", "CONNECT"])
RAW_PATHS = st.just("/v1/chat/completions") | (
    PATHS
    | st.sampled_from(["*", "", "/v1/chat/completions?x=1", "//", "/%00"])
    | st.integers(8150, 8250).map(lambda size: "/v1/" + "a" * size)  # around the URL limit
)


def _framed(framing: str, body: bytes) -> tuple[list[bytes], bytes]:
    """The framing headers of `framing` and the body as it then goes on the wire."""
    length = f"Content-Length: {len(body)}".encode()
    chunked = b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body) if body else b"0\r\n\r\n"
    return {
        "length": ([length], body),
        "chunked": ([b"Transfer-Encoding: chunked"], chunked),
        "none": ([], b""),
        "length-and-chunked": ([length, b"Transfer-Encoding: chunked"], chunked),
        "two-lengths": ([length, length], body),
        "bad-length": ([b"Content-Length: -1"], body),
        "gzip-transfer-coding": ([b"Transfer-Encoding: gzip"], body),
        "bad-chunk-size": ([b"Transfer-Encoding: chunked"], b"zz\r\n" + chunked),
        # The rest of the body reads as a second request, which Connection: close leaves unread.
        "short-length": ([f"Content-Length: {len(body) // 2}".encode()], body),
    }[framing]


def _encoded(coding: str, compress: bool, body: bytes) -> bytes:
    """The body compressed as `coding` says, or as it is (a lie when the coding is one)."""
    if not compress:
        return body
    return {"gzip": gzip.compress, "deflate": zlib.compress}.get(coding.strip().lower(), bytes)(
        body
    )


@settings(
    max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    method=METHODS,
    path=RAW_PATHS,
    alice=st.booleans(),
    coding=st.none() | CODINGS,
    compress=st.booleans(),
    framing=FRAMINGS,
    body=PROMPTS | JSON_VALUES.map(lambda value: json.dumps(value).encode()),
    headers=HEADER_LISTS,
)
def test_no_raw_request_yields_a_server_error_and_each_answer_is_audited_once(
    gateway: ThreadedGateway,
    method: str,
    path: str,
    alice: bool,
    coding: str | None,
    compress: bool,
    framing: str,
    body: bytes,
    headers: list[tuple[str, bytes]],
) -> None:
    lines = [f"{method} {path} HTTP/1.1".encode("latin-1"), b"Host: gateway", b"Connection: close"]
    if alice:
        lines.append(f"Authorization: Bearer {ALICE_KEY}".encode())
    lines.append(b"Content-Type: application/json")
    if coding is not None:
        lines.append(f"Content-Encoding: {coding}".encode())
        body = _encoded(coding, compress, body)
    framing_lines, wire_body = _framed(framing, body)
    lines += framing_lines
    lines += [name.encode("latin-1") + b": " + value for name, value in headers]
    before = len(gateway.sink.events)
    received = exchange_until_closed(gateway.url, b"\r\n".join(lines) + b"\r\n\r\n" + wire_body)
    answers = parse_answers(received)
    assert answers, received[:300]
    event(f"{answers[0].status} {_code(answers[0])}")  # the spread, in --hypothesis-show-statistics
    for answer in answers:
        assert answer.status < 500, answer
        if answer.status >= 400:
            error = answer.error()
            assert error["code"] and error["message"]
    assert len(gateway.sink.events) - before == len(answers)


def _code(answer: Answer) -> str:
    return str(answer.error()["code"]) if answer.status >= 400 else "ok"
