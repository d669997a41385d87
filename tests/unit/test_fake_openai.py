"""The local OpenAI-compatible upstream answers like vLLM does, as far as a proxy can tell."""

from __future__ import annotations

import asyncio
import datetime
import json
import ssl
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from hypothesis import given
from hypothesis import strategies as st

from privatellm.keys.tls import issue_ca, issue_leaf
from tests.support.fake_openai import DEFAULT_REPLY, FakeOpenAI, split_reply

ROOT = Path(__file__).resolve().parents[2]
CHAT = {"model": "fake-model", "messages": [{"role": "user", "content": "hello there world"}]}


def with_client(
    upstream: FakeOpenAI, scenario: Callable[[aiohttp.ClientSession, str], Awaitable[Any]]
) -> Any:
    """Run `scenario` against a freshly started `upstream` with a client session."""

    async def run() -> Any:
        async with upstream, aiohttp.ClientSession() as session:
            return await scenario(session, upstream.url)

    return asyncio.run(run())


def events(text: str) -> list[str]:
    """The data lines of a server-sent event stream, checking the framing on the way."""
    assert text.endswith("\n\n")
    blocks = text[:-2].split("\n\n")
    assert all(block.startswith("data: ") for block in blocks)
    return [block.removeprefix("data: ") for block in blocks]


def test_models_and_health_name_the_served_model() -> None:
    async def scenario(session: aiohttp.ClientSession, url: str) -> tuple[int, Any]:
        async with session.get(f"{url}/health") as health:
            status = health.status
        async with session.get(f"{url}/v1/models") as models:
            return status, await models.json()

    status, models = with_client(FakeOpenAI(model="llama"), scenario)
    assert status == 200
    assert [m["id"] for m in models["data"]] == ["llama"]


def test_chat_completion_returns_the_reply_with_whitespace_token_usage() -> None:
    upstream = FakeOpenAI(reply="Write to ann@example.com today")

    async def scenario(session: aiohttp.ClientSession, url: str) -> Any:
        headers = {"Authorization": "Bearer secret"}
        async with session.post(f"{url}/v1/chat/completions", json=CHAT, headers=headers) as r:
            assert r.status == 200
            return await r.json()

    body = with_client(upstream, scenario)
    assert body["object"] == "chat.completion"
    assert body["choices"][0]["message"] == {
        "role": "assistant",
        "content": "Write to ann@example.com today",
    }
    assert body["usage"] == {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}
    [recorded] = upstream.requests
    assert (recorded.method, recorded.path) == ("POST", "/v1/chat/completions")
    assert recorded.headers["authorization"] == "Bearer secret"
    assert recorded.json() == CHAT


def test_a_changed_reply_is_served_from_the_next_request_on() -> None:
    upstream = FakeOpenAI()

    async def scenario(session: aiohttp.ClientSession, url: str) -> list[str]:
        replies = []
        for reply in (None, "call +44 20 7946 0958"):
            if reply is not None:
                upstream.reply = reply
            async with session.post(f"{url}/v1/chat/completions", json=CHAT) as r:
                replies.append((await r.json())["choices"][0]["message"]["content"])
        return replies

    assert with_client(upstream, scenario) == [DEFAULT_REPLY, "call +44 20 7946 0958"]


@pytest.mark.parametrize("include_usage", [True, False])
def test_streamed_chat_is_server_sent_chunks_ending_in_done(include_usage: bool) -> None:
    request = {**CHAT, "stream": True, "stream_options": {"include_usage": include_usage}}

    async def scenario(session: aiohttp.ClientSession, url: str) -> tuple[str, str]:
        async with session.post(f"{url}/v1/chat/completions", json=request) as r:
            return r.headers["Content-Type"], await r.text()

    content_type, text = with_client(FakeOpenAI(stream_chunks=3), scenario)
    assert content_type.startswith("text/event-stream")
    *data, done = events(text)
    assert done == "[DONE]"
    chunks = [json.loads(d) for d in data]
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"}
    choices = [c["choices"][0] for c in chunks if c["choices"]]
    assert choices[0]["delta"]["role"] == "assistant"
    assert "".join(c["delta"].get("content", "") for c in choices) == DEFAULT_REPLY
    assert [c["finish_reason"] for c in choices] == [None, None, None, None, "stop"]
    if include_usage:
        assert chunks[-1]["choices"] == []
        assert chunks[-1]["usage"]["prompt_tokens"] == 3
        assert chunks[-1]["usage"]["completion_tokens"] == len(DEFAULT_REPLY.split())
    else:
        assert all("usage" not in c for c in chunks)


def test_completions_answer_plain_and_streamed() -> None:
    request = {"model": "fake-model", "prompt": "one two"}

    async def scenario(session: aiohttp.ClientSession, url: str) -> tuple[Any, str]:
        async with session.post(f"{url}/v1/completions", json=request) as plain:
            body = await plain.json()
        async with session.post(f"{url}/v1/completions", json={**request, "stream": True}) as r:
            return body, await r.text()

    body, streamed = with_client(FakeOpenAI(reply="a b c"), scenario)
    assert body["choices"][0]["text"] == "a b c"
    assert body["usage"]["prompt_tokens"] == 2
    *data, done = events(streamed)
    assert done == "[DONE]"
    assert "".join(json.loads(d)["choices"][0]["text"] for d in data) == "a b c"


def test_embeddings_give_one_deterministic_vector_per_input() -> None:
    request = {"model": "fake-model", "input": ["alpha", "beta", "alpha"]}

    async def scenario(session: aiohttp.ClientSession, url: str) -> Any:
        async with session.post(f"{url}/v1/embeddings", json=request) as r:
            return await r.json()

    body = with_client(FakeOpenAI(), scenario)
    vectors = [item["embedding"] for item in body["data"]]
    assert [item["index"] for item in body["data"]] == [0, 1, 2]
    assert vectors[0] == vectors[2] != vectors[1]
    assert body["usage"] == {"prompt_tokens": 3, "total_tokens": 3}


def test_an_unknown_model_is_404_and_a_malformed_body_400() -> None:
    async def scenario(session: aiohttp.ClientSession, url: str) -> list[int]:
        statuses = []
        for body in (b'{"model": "other", "messages": [{"content": "x"}]}', b"not json", b"{}"):
            async with session.post(f"{url}/v1/chat/completions", data=body) as r:
                statuses.append(r.status)
        return statuses

    assert with_client(FakeOpenAI(), scenario) == [404, 400, 400]


def test_fail_mode_500_for_a_counted_number_of_requests_then_serves() -> None:
    upstream = FakeOpenAI(fail="500", fail_count=2)

    async def scenario(session: aiohttp.ClientSession, url: str) -> list[int]:
        statuses = []
        for _ in range(3):
            async with session.post(f"{url}/v1/chat/completions", json=CHAT) as r:
                statuses.append(r.status)
        return statuses

    assert with_client(upstream, scenario) == [500, 500, 200]
    assert len(upstream.requests) == 3


def test_fail_mode_close_drops_the_connection_without_an_answer() -> None:
    async def scenario(session: aiohttp.ClientSession, url: str) -> None:
        async with session.post(f"{url}/v1/chat/completions", json=CHAT) as r:
            await r.read()

    with pytest.raises(aiohttp.ServerDisconnectedError):
        with_client(FakeOpenAI(fail="close"), scenario)


def test_the_threaded_server_serves_synchronous_clients_until_the_block_ends() -> None:
    with FakeOpenAI(model="m") as upstream:
        with urllib.request.urlopen(f"{upstream.url}/v1/models") as response:
            assert json.load(response)["data"][0]["id"] == "m"
        url = upstream.url
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"{url}/health", timeout=2)


def test_tls_requires_a_client_certificate_from_the_trusted_ca(tmp_path: Path) -> None:
    now = datetime.datetime.now(datetime.UTC)
    ca = issue_ca("test", now)
    server, client = (issue_leaf(ca, name, [], now) for name in ("server", "client"))
    for name, pem in [
        ("ca.crt", ca.cert_pem),
        ("server.crt", server.cert_pem),
        ("server.key", server.key_pem),
        ("client.crt", client.cert_pem),
        ("client.key", client.key_pem),
    ]:
        (tmp_path / name).write_bytes(pem)
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=tmp_path / "ca.crt")
    server_context.load_cert_chain(tmp_path / "server.crt", tmp_path / "server.key")
    server_context.verify_mode = ssl.CERT_REQUIRED
    anonymous = ssl.create_default_context(cafile=tmp_path / "ca.crt")
    mutual = ssl.create_default_context(cafile=tmp_path / "ca.crt")
    mutual.load_cert_chain(tmp_path / "client.crt", tmp_path / "client.key")

    async def scenario(session: aiohttp.ClientSession, url: str) -> tuple[str, int, bool]:
        async with session.get(f"{url}/health", ssl=mutual) as r:
            status = r.status
        try:
            async with session.get(f"{url}/health", ssl=anonymous) as r:
                await r.read()
        except aiohttp.ClientError:
            return url, status, True
        return url, status, False

    url, status, refused = with_client(FakeOpenAI(ssl_context=server_context), scenario)
    assert url.startswith("https://127.0.0.1:")
    assert status == 200
    assert refused


def test_the_command_line_prints_its_url_once_it_serves() -> None:
    command = [sys.executable, "-m", "tests.support.fake_openai", "--port", "0", "--model", "cli"]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        url = process.stdout.readline().strip()
        with urllib.request.urlopen(f"{url}/v1/models", timeout=5) as response:
            assert json.load(response)["data"][0]["id"] == "cli"
    finally:
        process.terminate()
        assert process.wait(timeout=10) == 0


@given(st.text(alphabet="ab ", max_size=40), st.integers(min_value=1, max_value=10))
def test_split_reply_pieces_join_back_to_the_reply(reply: str, chunks: int) -> None:
    pieces = split_reply(reply, chunks)
    assert "".join(pieces) == reply
    assert 1 <= len(pieces) <= chunks
