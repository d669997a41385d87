"""The gateway's HTTP layer over raw sockets: parser refusals, body codings, clocks, limits.

Whatever aiohttp's parser refuses is answered by the gateway (OpenAI JSON, a fixed
message, one audit event), and nothing of the refused request comes back or reaches
the log. Time limits are tiny here so that the tests are quick; none is measured.
"""

from __future__ import annotations

import asyncio
import gzip
import logging
import secrets
import time
import tracemalloc
import zlib
from typing import Any

import pytest
from aiohttp import web
from aiohttp.compression_utils import HAS_BROTLI
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.trace import Tracer

from privatellm.gateway.listener import SERVER_NAME, start_listener
from tests.gateway.conftest import (
    ALICE_KEY,
    ThreadedGateway,
    base_config,
    gateway_stack,
    upstream,
)
from tests.support.raw_http import (
    TIMEOUT,
    Answer,
    address,
    closed_by_server,
    exchange,
    exchange_then_closed,
    exchange_until_closed,
    parse_answers,
    read_answer,
    request,
)

CHAT = "/v1/chat/completions"
PROMPT = b'{"model": "llama", "messages": [{"role": "user", "content": "hello"}]}'
ALICE = ("Authorization", f"Bearer {ALICE_KEY}")
JSON = ("Content-Type", "application/json")
NO_UPSTREAM = {"llama": ["http://127.0.0.1:9"]}


def _config(**limits: Any) -> dict[str, Any]:
    config = base_config(NO_UPSTREAM)
    config["limits"] = limits
    return config


def _models(*extra: tuple[str, str]) -> bytes:
    """GET /v1/models as alice: an audited request that needs no model."""
    return request("GET", "/v1/models", [ALICE, *extra])


def _assert_refused(answer: Answer | None, status: int, code: str) -> None:
    assert answer is not None, "the connection closed without an answer"
    assert (answer.status, answer.error()["code"]) == (status, code), answer
    assert answer.headers["server"] == SERVER_NAME


PARSER_REFUSALS = [
    pytest.param(request("POST", "/v1/" + "a" * 9000), 414, "url_too_long", id="url-too-long"),
    pytest.param(
        request("POST", CHAT, [("X-Padding", "a" * 9000)]),
        431,
        "header_too_large",
        id="header-too-large",
    ),
    pytest.param(
        request("POST", CHAT, [(f"X-Header-{i}", "v") for i in range(70)]),
        431,
        "too_many_headers",
        id="too-many-headers",
    ),
    pytest.param(
        request(
            "POST", CHAT, [("Content-Length", "5"), ("Transfer-Encoding", "chunked")], b"0\r\n\r\n"
        ),
        400,
        "bad_request_framing",
        id="content-length-with-chunked",
    ),
    pytest.param(
        request("POST", CHAT, [("Content-Length", "2"), ("Content-Length", "3")], b"{}"),
        400,
        "bad_request_framing",
        id="two-content-lengths",
    ),
    pytest.param(
        request("POST", CHAT, [("Transfer-Encoding", "chunked")], b"zz\r\n{}\r\n0\r\n\r\n"),
        400,
        "bad_request_framing",
        id="bad-chunk-size",
    ),
    pytest.param(
        request("POST", CHAT, [("Transfer-Encoding", "gzip")], b"{}"),
        400,
        "bad_request_framing",
        id="unknown-transfer-coding",
    ),
    pytest.param(request("POST", CHAT, [("X-Note", "a\rb")]), 400, "invalid_header", id="bare-cr"),
    pytest.param(
        request("POST", CHAT, [("X-Note", "a\r\n folded")]), 400, "invalid_header", id="obs-fold"
    ),
    pytest.param(
        b"POST /v1/models HTTP/1.1\r\n\r\n", 400, "invalid_header", id="http-1.1-without-host"
    ),
    pytest.param(request("G(T", "/v1/models"), 400, "invalid_method", id="invalid-method"),
    pytest.param(b"\x16\x03\x01\x00\x05hello", 400, "invalid_method", id="tls-on-plain-http"),
    pytest.param(
        b"GET /v1/models HTTP/3.0\r\nHost: x\r\n\r\n",
        400,
        "invalid_request_line",
        id="unknown-http-version",
    ),
]


class TestParserRefusals:
    @pytest.mark.parametrize(("data", "status", "code"), PARSER_REFUSALS)
    def test_answered_in_json_audited_once_and_closed(
        self, data: bytes, status: int, code: str
    ) -> None:
        async def scenario() -> None:
            async with gateway_stack(_config()) as stack:
                answer, closed = await exchange_then_closed(stack.url, data)
                _assert_refused(answer, status, code)
                assert answer is not None and closed
                [event] = stack.events
                assert (event.status, event.reason, event.source_ip) == (status, code, "127.0.0.1")
                assert (event.path, event.subject, event.decision) == ("", None, "deny")
                assert answer.headers["x-request-id"] == event.request_id

        asyncio.run(scenario())

    def test_a_body_the_parser_gives_up_on_is_refused_without_waiting_for_it(self) -> None:
        async def scenario() -> None:
            reading = BodyReading()
            # A read timeout longer than the test's: only an immediate refusal passes.
            config = _config(clientReadSeconds=600)
            async with gateway_stack(config, tracer=reading.tracer()) as stack:
                head = request("POST", CHAT, [ALICE, JSON, ("Transfer-Encoding", "chunked")])
                reader, writer = await asyncio.open_connection(*address(stack.url))
                writer.write(head)
                await reading.started.wait()
                writer.write(b"zz\r\n{}\r\n0\r\n\r\n")
                _assert_refused(await read_answer(reader), 400, "bad_request_framing")
                writer.close()
                [event] = stack.events
                assert (event.reason, event.subject) == ("bad_request_framing", "alice")

        asyncio.run(scenario())


class BodyReading(SpanProcessor):
    """Tells when the gateway reads a request's body: right after it authenticated it."""

    def __init__(self) -> None:
        self.started = asyncio.Event()

    def tracer(self) -> Tracer:
        provider = TracerProvider()
        provider.add_span_processor(self)
        return provider.get_tracer("test")

    def on_end(self, span: ReadableSpan) -> None:
        if span.name == "authenticate":
            self.started.set()


SECRET = "pllm-" + secrets.token_hex(20)
LEAKS = [
    pytest.param([("Authorization", f"Bearer {SECRET}" + "x" * 9000)], CHAT, id="over-long"),
    pytest.param([("Authorization", f"Bearer {SECRET}\rx")], CHAT, id="bare-cr"),
    pytest.param([("Authorization", f"Bearer {SECRET}\x00")], CHAT, id="nul-byte"),
    pytest.param([("Authorization", f"Bearer\r\n {SECRET}")], CHAT, id="obs-fold"),
    pytest.param([], f"{CHAT}?api_key={SECRET}" + "x" * 9000, id="over-long-url"),
]


@pytest.mark.parametrize(("headers", "path"), LEAKS)
def test_a_refused_credential_is_neither_answered_logged_nor_audited(
    headers: list[tuple[str, str]], path: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    with ThreadedGateway(_config()) as gateway:
        received = exchange_until_closed(gateway.url, request("POST", path, headers))
        events = list(gateway.sink.events)
    [answer] = parse_answers(received)
    assert 400 <= answer.status < 500, received
    # The parser quoted the first 100 bytes of the offending line: none of them may show.
    leaked = SECRET[:12]
    assert leaked.encode() not in received
    assert leaked not in caplog.text
    [event] = events
    assert leaked not in repr(event.as_dict())


class TestBodyEncodings:
    @pytest.mark.parametrize(
        ("coding", "body", "status", "code"),
        [
            pytest.param("gzip", b"not gzip at all", 400, "invalid_content_encoding", id="gzip"),
            pytest.param("deflate", b"\x78\x9cgarbage", 400, "invalid_content_encoding", id="zlib"),
            pytest.param("x-unknown", PROMPT, 415, "unsupported_content_encoding", id="unknown"),
            pytest.param("gzip, gzip", PROMPT, 415, "unsupported_content_encoding", id="stacked"),
            pytest.param(
                "br",
                PROMPT,
                415,
                "unsupported_content_encoding",
                id="br-without-its-library",
                marks=pytest.mark.skipif(HAS_BROTLI, reason="aiohttp decodes br here"),
            ),
        ],
    )
    def test_a_body_that_does_not_decode_is_the_clients_fault(
        self, coding: str, body: bytes, status: int, code: str
    ) -> None:
        async def scenario() -> None:
            async with gateway_stack(_config()) as stack:
                headers = [ALICE, JSON, ("Content-Encoding", coding)]
                headers.append(("Content-Length", str(len(body))))
                answer = await exchange(stack.url, request("POST", CHAT, headers, body))
                _assert_refused(answer, status, code)
                [event] = stack.events
                assert (event.status, event.reason) == (status, code)

        asyncio.run(scenario())

    @pytest.mark.parametrize("coding", ["gzip", "deflate", "identity"])
    def test_a_body_in_a_coding_aiohttp_decodes_is_served(self, coding: str) -> None:
        body = {"gzip": gzip.compress, "deflate": zlib.compress}.get(coding, bytes)(PROMPT)

        async def scenario() -> None:
            async with (
                upstream() as model,
                gateway_stack(base_config({"llama": [model.url]})) as stack,
            ):
                headers = [ALICE, JSON, ("Content-Encoding", coding)]
                headers.append(("Content-Length", str(len(body))))
                answer = await exchange(stack.url, request("POST", CHAT, headers, body))
                assert answer is not None and answer.status == 200, answer
                assert model.requests[-1].json()["messages"][0]["content"] == "hello"

        asyncio.run(scenario())

    def test_a_decompression_bomb_stops_at_the_body_limit(self) -> None:
        bomb = _gzip_of_spaces(256)

        async def scenario() -> None:
            async with gateway_stack(_config()) as stack:
                headers = [ALICE, JSON, ("Content-Encoding", "gzip")]
                headers.append(("Content-Length", str(len(bomb))))
                tracemalloc.start()
                try:
                    answer = await exchange(stack.url, request("POST", CHAT, headers, bomb))
                    peak = tracemalloc.get_traced_memory()[1]
                finally:
                    tracemalloc.stop()
                _assert_refused(answer, 413, "body_too_large")
                [event] = stack.events
                assert event.reason == "body_too_large"
                # 256 MiB inflated would need 256 MiB; the 1 MiB limit holds it to a few.
                assert peak < 64 * 1024 * 1024

        asyncio.run(scenario())

    def test_a_client_that_leaves_mid_body_is_audited_as_gone(self) -> None:
        async def scenario() -> None:
            reading = BodyReading()
            async with gateway_stack(_config(), tracer=reading.tracer()) as stack:
                headers = [ALICE, JSON, ("Content-Length", "1000")]
                _, writer = await asyncio.open_connection(*address(stack.url))
                writer.write(request("POST", CHAT, headers, b'{"model": '))
                await reading.started.wait()
                writer.close()
                deadline = time.monotonic() + TIMEOUT
                while not stack.events:
                    assert time.monotonic() < deadline, "the request was never audited"
                    await asyncio.sleep(0.01)
                [event] = stack.events
                assert (event.status, event.reason) == (499, "client_disconnected")

        asyncio.run(scenario())


def _gzip_of_spaces(mebibytes: int) -> bytes:
    """A gzip stream that inflates to `mebibytes` MiB, made without holding them."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)
    chunk = b" " * (1024 * 1024)
    parts = [compressor.compress(chunk) for _ in range(mebibytes)]
    return b"".join(parts) + compressor.flush()


class TestConnectionClock:
    def test_a_client_trickling_its_head_gets_408_and_is_disconnected(self) -> None:
        async def scenario() -> None:
            async with gateway_stack(_config(headerReadSeconds=0.5)) as stack:
                reader, writer = await asyncio.open_connection(*address(stack.url))
                trickle = asyncio.create_task(_trickle(writer, _models(("X-Slow", "s" * 5000))))
                answer = await read_answer(reader)
                trickle.cancel()
                _assert_refused(answer, 408, "header_timeout")
                assert await closed_by_server(reader)
                writer.close()
                [event] = stack.events
                assert (event.status, event.reason, event.source_ip) == (
                    408,
                    "header_timeout",
                    "127.0.0.1",
                )

        asyncio.run(scenario())

    def test_a_connection_that_never_sends_a_byte_is_closed_unanswered_and_unaudited(
        self,
    ) -> None:
        async def scenario() -> None:
            async with gateway_stack(_config(headerReadSeconds=0.3)) as stack:
                reader, writer = await asyncio.open_connection(*address(stack.url))
                assert await read_answer(reader) is None
                writer.close()
                assert stack.events == []

        asyncio.run(scenario())

    def test_an_idle_connection_is_closed_after_its_last_answer(self) -> None:
        async def scenario() -> None:
            async with gateway_stack(_config(idleKeepaliveSeconds=0.3)) as stack:
                reader, writer = await asyncio.open_connection(*address(stack.url))
                writer.write(_models())
                answer = await read_answer(reader)
                assert answer is not None and answer.status == 200
                assert await closed_by_server(reader)
                writer.close()
                assert len(stack.events) == 1

        asyncio.run(scenario())

    def test_the_header_clock_does_not_run_while_a_connection_idles(self) -> None:
        async def scenario() -> None:
            config = _config(headerReadSeconds=0.3, idleKeepaliveSeconds=TIMEOUT)
            async with gateway_stack(config) as stack:
                reader, writer = await asyncio.open_connection(*address(stack.url))
                statuses = []
                for _ in range(2):
                    writer.write(_models())
                    answer = await read_answer(reader)
                    statuses.append(answer.status if answer else None)
                    await asyncio.sleep(0.6)  # idle longer than the header limit
                writer.close()
                assert statuses == [200, 200]
                assert len(stack.events) == 2

        asyncio.run(scenario())


async def _trickle(writer: asyncio.StreamWriter, data: bytes) -> None:
    for index in range(len(data)):
        writer.write(data[index : index + 1])
        await writer.drain()
        await asyncio.sleep(0.02)


class TestConnectionLimit:
    def test_connections_over_the_per_client_limit_get_429_and_are_closed(self) -> None:
        async def scenario() -> None:
            async with gateway_stack(_config(maxConnectionsPerClient=2)) as stack:
                held = [await asyncio.open_connection(*address(stack.url)) for _ in range(2)]
                for reader, writer in held:  # answered: the gateway counts both
                    writer.write(_models())
                    assert (await read_answer(reader)) is not None
                answer, closed = await exchange_then_closed(stack.url, _models())
                _assert_refused(answer, 429, "too_many_connections")
                assert closed
                reasons = [e.reason for e in stack.events]
                assert reasons == ["allowed", "allowed", "too_many_connections"]
                reader, writer = held[0]
                writer.write(_models())  # those held are still served
                answer = await read_answer(reader)
                assert answer is not None and answer.status == 200
                for _, writer in held:
                    writer.close()
                assert await _admitted_again(stack.url)

        asyncio.run(scenario())


async def _admitted_again(url: str) -> bool:
    """Whether a new connection is served once the held ones are closed (the gateway sees
    the closes a moment later, so it is asked until then)."""
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        answer = await exchange(url, _models())
        if answer is not None and answer.status == 200:
            return True
        await asyncio.sleep(0.05)
    return False


class TestServerHeader:
    def test_every_answer_names_the_gateway_and_no_versions(self) -> None:
        async def scenario() -> None:
            async with gateway_stack(_config()) as stack:
                answers = [
                    await exchange(stack.url, data)
                    for data in (
                        request("GET", "/healthz"),
                        _models(),
                        request("POST", "/v2/nothing", [ALICE]),
                        request("POST", CHAT, [("X-Note", "a\rb")]),
                    )
                ]
            assert [a.status if a else None for a in answers] == [200, 200, 404, 400]
            assert {a.headers["server"] for a in answers if a} == {SERVER_NAME}

        asyncio.run(scenario())

    def test_the_gateways_other_listeners_name_it_too(self) -> None:
        async def scenario() -> None:
            async with gateway_stack(_config()) as stack:
                metrics = web.Application()
                runners = [
                    await start_listener(app, stack.gateway, "127.0.0.1", 0)
                    for app in (stack.gateway.peer_app(), metrics)
                ]
                try:
                    for runner in runners:
                        url = f"http://127.0.0.1:{runner.addresses[0][1]}"
                        answer = await exchange(url, request("GET", "/"))
                        assert answer is not None and answer.headers["server"] == SERVER_NAME
                finally:
                    for runner in runners:
                        await runner.cleanup()

        asyncio.run(scenario())
