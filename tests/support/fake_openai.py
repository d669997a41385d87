"""A local stand-in for vLLM's OpenAI-compatible server, for tests and benchmarks.

It answers the endpoints a proxy forwards (`/v1/models`, `/v1/chat/completions`,
`/v1/completions`, `/v1/embeddings`, `/health`) with a fixed reply, streams it as
server-sent events in OpenAI's chunk format, and counts tokens by whitespace. Tests
set the reply (e.g. one with an email address in it), a delay, or a fail mode, and
read back the requests it received. `/metrics` is vLLM's Prometheus page, with the
running and waiting requests and the KV-cache usage the test sets. The benchmark uses
it as the "direct" baseline, so the non-streaming bodies are encoded once and only the
usage is spliced in.

Run it in-process (`async with FakeOpenAI() as upstream`), in a background thread
(`with FakeOpenAI() as upstream`), or as a process:
`python -m tests.support.fake_openai --port N [--model M] [--reply TEXT]`, which
prints its URL on stdout once it accepts connections.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import signal
import ssl
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal

from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

DEFAULT_MODEL = "fake-model"
DEFAULT_REPLY = "The quarterly report is attached and ready for review."
EMBEDDING_DIMENSIONS = 8
FailMode = Literal["500", "close"]
# Where a chat reply's text goes: the content, a refusal, or a tool call's arguments.
ReplyField = Literal["content", "refusal", "tool_call"]
TOOL_CALL_ID = "call_Zx8PqR2tYv7WmN3kLs9H4dGf"
FAIL_MODES: tuple[FailMode, ...] = ("500", "close")
JSON = "application/json"
PROMETHEUS_TEXT = "text/plain; version=0.0.4"
# vLLM's name for the KV-cache fraction, and the one older versions used.
KV_CACHE_USAGE = "vllm:kv_cache_usage_perc"
GPU_CACHE_USAGE = "vllm:gpu_cache_usage_perc"
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the server received it."""

    method: str
    path: str
    headers: CIMultiDictProxy[str]
    body: bytes

    def json(self) -> Any:
        """The body parsed as JSON."""
        return json.loads(self.body)


def count_tokens(text: str) -> int:
    """Whitespace tokens: close enough for usage accounting in tests."""
    return len(text.split())


def message_text(content: Any) -> str:
    """The text of a chat message's content: a string or a list of typed parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
    return ""


def prompt_texts(prompt: Any) -> list[str]:
    """The prompts of a completion or embedding request: one string or a list of them."""
    if isinstance(prompt, str):
        return [prompt]
    if isinstance(prompt, list):
        return [item for item in prompt if isinstance(item, str)]
    return []


def split_reply(reply: str, chunks: int) -> list[str]:
    """Split the reply into at most `chunks` pieces that concatenate back to it."""
    words = reply.split(" ")
    count = max(1, min(chunks, len(words)))
    size, extra = divmod(len(words), count)
    pieces, start = [], 0
    for index in range(count):
        end = start + size + (1 if index < extra else 0)
        piece = " ".join(words[start:end])
        pieces.append(piece if end == len(words) else piece + " ")
        start = end
    return pieces


def embedding_for(text: str) -> list[float]:
    """A deterministic unit-range vector derived from the text."""
    digest = hashlib.sha256(text.encode()).digest()
    return [round(byte / 127.5 - 1.0, 6) for byte in digest[:EMBEDDING_DIMENSIONS]]


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    """OpenAI's usage object."""
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def sse(payload: dict[str, Any]) -> bytes:
    """One server-sent event carrying a JSON payload."""
    return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"


def vllm_metrics_text(
    model: str,
    running: float | str,
    waiting: float | str,
    kv_cache_usage: float | str,
    kv_cache_name: str = KV_CACHE_USAGE,
) -> str:
    """A page like vLLM's `/metrics`: the three gauges among a counter, a histogram and
    the Python process's own metrics. A figure may be given as the page writes it ("NaN")."""
    labels = f'engine="0",model_name="{model}"'
    return (
        "# HELP python_gc_objects_collected_total Objects collected during gc\n"
        "# TYPE python_gc_objects_collected_total counter\n"
        'python_gc_objects_collected_total{generation="0"} 8021.0\n'
        "# HELP vllm:num_requests_running Number of requests in model execution batches.\n"
        "# TYPE vllm:num_requests_running gauge\n"
        f"vllm:num_requests_running{{{labels}}} {running}\n"
        "# HELP vllm:num_requests_waiting Number of requests waiting to be processed.\n"
        "# TYPE vllm:num_requests_waiting gauge\n"
        f"vllm:num_requests_waiting{{{labels}}} {waiting}\n"
        f"# HELP {kv_cache_name} KV-cache usage. 1 means 100 percent usage.\n"
        f"# TYPE {kv_cache_name} gauge\n"
        f"{kv_cache_name}{{{labels}}} {kv_cache_usage}\n"
        "# HELP vllm:prompt_tokens_total Number of prefill tokens processed.\n"
        "# TYPE vllm:prompt_tokens_total counter\n"
        f"vllm:prompt_tokens_total{{{labels}}} 18231.0\n"
        "# HELP vllm:time_to_first_token_seconds Histogram of time to first token in seconds.\n"
        "# TYPE vllm:time_to_first_token_seconds histogram\n"
        f'vllm:time_to_first_token_seconds_bucket{{{labels},le="0.1"}} 40.0\n'
        f'vllm:time_to_first_token_seconds_bucket{{{labels},le="+Inf"}} 42.0\n'
        f"vllm:time_to_first_token_seconds_count{{{labels}}} 42.0\n"
        f"vllm:time_to_first_token_seconds_sum{{{labels}}} 3.5\n"
    )


def error_body(message: str, kind: str, status: int) -> bytes:
    """An error in OpenAI's shape."""
    error = {"message": message, "type": kind, "param": None, "code": status}
    return json.dumps({"error": error}).encode()


class RequestError(Exception):
    """A request the endpoint refuses, with the status and error type vLLM would give."""

    def __init__(self, status: int, kind: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.kind = kind


def bad_request(message: str) -> RequestError:
    """A 400 with vLLM's error type."""
    return RequestError(400, "BadRequestError", message)


class FakeOpenAI:
    """An OpenAI-compatible server with a fixed reply; reconfigurable between requests.

    `fail` makes the `/v1/` endpoints answer 500 or drop the connection, for every
    request or (with `fail_count`) only the next `fail_count` ones. `reply_field`
    puts a chat reply in the content, a refusal or a tool call's arguments. `delay` holds
    each `/v1/` response back; `chunk_delay` spaces the streamed chunks. `running`,
    `waiting` and `kv_cache_usage` are what `/metrics` reports, under `kv_cache_name`;
    `metrics_page`, when set, is served there instead; `metrics_reads` counts its readers.
    """

    def __init__(
        self,
        *,
        model: str = DEFAULT_MODEL,
        reply: str = DEFAULT_REPLY,
        delay: float = 0.0,
        stream_chunks: int = 4,
        chunk_delay: float = 0.0,
        fail: FailMode | None = None,
        fail_count: int | None = None,
        record: bool = True,
        reply_field: ReplyField = "content",
        host: str = "127.0.0.1",
        port: int = 0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.delay = delay
        self.chunk_delay = chunk_delay
        self.fail = fail
        self.fail_count = fail_count
        self.record = record
        self.requests: list[RecordedRequest] = []
        self.running: float = 0
        self.waiting: float = 0
        self.kv_cache_usage = 0.0
        self.kv_cache_name = KV_CACHE_USAGE
        self.metrics_page: str | None = None
        self.metrics_reads = 0
        self.host = host
        self.port = port
        self.ssl_context = ssl_context
        self.url = ""
        self._model = model
        self._reply = reply
        self._stream_chunks = stream_chunks
        self._reply_field = reply_field
        self._created = int(time.time())
        self._encode()
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def model(self) -> str:
        """The model name the server answers to."""
        return self._model

    @model.setter
    def model(self, value: str) -> None:
        self._model = value
        self._encode()

    @property
    def reply(self) -> str:
        """The text every completion returns."""
        return self._reply

    @reply.setter
    def reply(self, value: str) -> None:
        self._reply = value
        self._encode()

    @property
    def stream_chunks(self) -> int:
        """How many content chunks a streamed reply is split into."""
        return self._stream_chunks

    @stream_chunks.setter
    def stream_chunks(self, value: int) -> None:
        self._stream_chunks = value
        self._encode()

    def _encode(self) -> None:
        """Encode everything that depends only on the model and the reply, once."""
        self._completion_tokens = count_tokens(self._reply)
        chat = {
            "id": "chatcmpl-fake",
            "object": "chat.completion",
            "created": self._created,
            "model": self._model,
            "choices": [
                {
                    "index": 0,
                    "message": self._message(),
                    "logprobs": None,
                    "finish_reason": "stop",
                }
            ],
        }
        text = {
            "id": "cmpl-fake",
            "object": "text_completion",
            "created": self._created,
            "model": self._model,
            "choices": [
                {"index": 0, "text": self._reply, "logprobs": None, "finish_reason": "stop"}
            ],
        }
        # Everything but the closing brace; the usage object goes after it.
        self._chat_head = json.dumps(chat, separators=(",", ":")).encode()[:-1]
        self._text_head = json.dumps(text, separators=(",", ":")).encode()[:-1]
        self._models_body = json.dumps(
            {
                "object": "list",
                "data": [
                    {
                        "id": self._model,
                        "object": "model",
                        "created": self._created,
                        "owned_by": "vllm",
                        "root": self._model,
                        "parent": None,
                    }
                ],
            }
        ).encode()
        self._pieces = split_reply(self._reply, self._stream_chunks)

    def _message(self) -> dict[str, Any]:
        if self._reply_field == "content":
            return {"role": "assistant", "content": self._reply}
        if self._reply_field == "refusal":
            return {"role": "assistant", "content": None, "refusal": self._reply}
        function = {"name": "lookup", "arguments": self._reply}
        call = {"id": TOOL_CALL_ID, "type": "function", "function": function}
        return {"role": "assistant", "content": None, "tool_calls": [call]}

    def _delta(self, piece: str, first: bool) -> dict[str, Any]:
        if self._reply_field != "tool_call":
            return {self._reply_field: piece}
        call: dict[str, Any] = {"index": 0, "function": {"arguments": piece}}
        if first:
            call.update(id=TOOL_CALL_ID, type="function")
            call["function"]["name"] = "lookup"
        return {"tool_calls": [call]}

    def _body(self, head: bytes, prompt_tokens: int) -> bytes:
        tail = json.dumps(usage(prompt_tokens, self._completion_tokens), separators=(",", ":"))
        return head + b',"usage":' + tail.encode() + b"}"

    def _chat_chunks(self, include_usage: bool) -> list[dict[str, Any]]:
        def chunk(delta: dict[str, Any], finish: str | None) -> dict[str, Any]:
            body: dict[str, Any] = {
                "id": "chatcmpl-fake",
                "object": "chat.completion.chunk",
                "created": self._created,
                "model": self._model,
                "choices": [
                    {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
                ],
            }
            if include_usage:
                body["usage"] = None
            return body

        first = chunk({"role": "assistant", "content": ""}, None)
        content = [chunk(self._delta(piece, i == 0), None) for i, piece in enumerate(self._pieces)]
        return [first, *content, chunk({}, "stop")]

    def _text_chunks(self, include_usage: bool) -> list[dict[str, Any]]:
        def chunk(text: str, finish: str | None) -> dict[str, Any]:
            body: dict[str, Any] = {
                "id": "cmpl-fake",
                "object": "text_completion",
                "created": self._created,
                "model": self._model,
                "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish}],
            }
            if include_usage:
                body["usage"] = None
            return body

        pieces = self._pieces
        return [*(chunk(p, None) for p in pieces[:-1]), chunk(pieces[-1], "stop")]

    def app(self) -> web.Application:
        """The aiohttp application, for embedding it in another server or a test client."""
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_get("/health", self._health)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/v1/models", self._guarded(self._models))
        app.router.add_post("/v1/chat/completions", self._guarded(self._chat))
        app.router.add_post("/v1/completions", self._guarded(self._completions))
        app.router.add_post("/v1/embeddings", self._guarded(self._embeddings))
        return app

    def _guarded(self, handler: Handler) -> Handler:
        """Record the request, apply the delay and the fail mode, then call the handler."""

        async def guarded(request: web.Request) -> web.StreamResponse:
            body = await request.read()
            if self.record:
                headers = CIMultiDictProxy(CIMultiDict(request.headers))
                self.requests.append(RecordedRequest(request.method, request.path, headers, body))
            if self.delay:
                await asyncio.sleep(self.delay)
            if self.fail is not None and self.fail_count != 0:
                if self.fail_count is not None:
                    self.fail_count -= 1
                if self.fail == "close":
                    return await self._drop(request)
                return web.Response(
                    status=500,
                    body=error_body("injected failure", "InternalServerError", 500),
                    content_type=JSON,
                )
            try:
                return await handler(request)
            except RequestError as error:
                body = error_body(str(error), error.kind, error.status)
                return web.Response(status=error.status, body=body, content_type=JSON)

        return guarded

    @staticmethod
    async def _drop(request: web.Request) -> web.StreamResponse:
        """Close the connection without an answer, as a crashed server would."""
        if request.transport is not None:
            request.transport.abort()
        # aiohttp takes a cancelled handler for a lost client and writes nothing more.
        raise asyncio.CancelledError

    async def _json(self, request: web.Request) -> dict[str, Any]:
        try:
            payload = json.loads(await request.read())
        except ValueError as error:
            raise bad_request(f"body is not JSON: {error}") from error
        if not isinstance(payload, dict):
            raise bad_request("body must be a JSON object")
        model = payload.get("model")
        if model is not None and model != self._model:
            raise RequestError(404, "NotFoundError", f"The model `{model}` does not exist.")
        return payload

    async def _health(self, _: web.Request) -> web.Response:
        return web.Response()

    async def _metrics(self, _: web.Request) -> web.Response:
        self.metrics_reads += 1
        page = self.metrics_page
        if page is None:
            page = vllm_metrics_text(
                self._model, self.running, self.waiting, self.kv_cache_usage, self.kv_cache_name
            )
        return web.Response(body=page.encode(), headers={"Content-Type": PROMETHEUS_TEXT})

    async def _models(self, _: web.Request) -> web.StreamResponse:
        return web.Response(body=self._models_body, content_type=JSON)

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        payload = await self._json(request)
        messages = payload.get("messages")
        if not isinstance(messages, list) or not messages:
            raise bad_request("messages must be a non-empty list")
        prompt_tokens = sum(
            count_tokens(message_text(m.get("content"))) for m in messages if isinstance(m, dict)
        )
        if payload.get("stream"):
            include_usage = wants_usage(payload)
            return await self._stream(
                request, self._chat_chunks(include_usage), prompt_tokens, include_usage
            )
        return web.Response(body=self._body(self._chat_head, prompt_tokens), content_type=JSON)

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        payload = await self._json(request)
        prompts = prompt_texts(payload.get("prompt"))
        if not prompts:
            raise RequestError(
                400, "BadRequestError", "prompt must be a string or a list of strings"
            )
        prompt_tokens = sum(count_tokens(p) for p in prompts)
        if payload.get("stream"):
            include_usage = wants_usage(payload)
            return await self._stream(
                request, self._text_chunks(include_usage), prompt_tokens, include_usage
            )
        return web.Response(body=self._body(self._text_head, prompt_tokens), content_type=JSON)

    async def _embeddings(self, request: web.Request) -> web.StreamResponse:
        payload = await self._json(request)
        inputs = prompt_texts(payload.get("input"))
        if not inputs:
            raise RequestError(
                400, "BadRequestError", "input must be a string or a list of strings"
            )
        prompt_tokens = sum(count_tokens(text) for text in inputs)
        body = {
            "object": "list",
            "model": self._model,
            "data": [
                {"object": "embedding", "index": index, "embedding": embedding_for(text)}
                for index, text in enumerate(inputs)
            ],
            "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
        }
        return web.json_response(body)

    async def _stream(
        self,
        request: web.Request,
        chunks: Sequence[dict[str, Any]],
        prompt_tokens: int,
        include_usage: bool,
    ) -> web.StreamResponse:
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await response.prepare(request)
        for index, chunk in enumerate(chunks):
            if index and self.chunk_delay:
                await asyncio.sleep(self.chunk_delay)
            await response.write(sse(chunk))
        if include_usage:
            final = dict(
                chunks[-1], choices=[], usage=usage(prompt_tokens, self._completion_tokens)
            )
            await response.write(sse(final))
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    async def start(self) -> str:
        """Start listening on the event loop that calls it; return the base URL."""
        runner = web.AppRunner(self.app(), access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, self.host, self.port, ssl_context=self.ssl_context)
        await site.start()
        self._runner = runner
        self.port = runner.addresses[0][1]
        scheme = "https" if self.ssl_context else "http"
        self.url = f"{scheme}://{self.host}:{self.port}"
        return self.url

    async def stop(self) -> None:
        """Stop listening and close open connections."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> FakeOpenAI:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.stop()

    def __enter__(self) -> FakeOpenAI:
        """Run the server on its own event loop in a background thread."""
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, name="fake-openai", daemon=True)
        thread.start()
        self._loop, self._thread = loop, thread
        try:
            asyncio.run_coroutine_threadsafe(self.start(), loop).result(timeout=10)
        except BaseException:
            self._stop_thread()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._stop_thread()

    def _stop_thread(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(self.stop(), loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()
        self._loop, self._thread = None, None


def wants_usage(payload: dict[str, Any]) -> bool:
    """Whether a streaming request asked for a final usage chunk."""
    options = payload.get("stream_options")
    return isinstance(options, dict) and bool(options.get("include_usage"))


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The command line: where to listen and what to answer."""
    parser = argparse.ArgumentParser(
        prog="python -m tests.support.fake_openai", description="Serve a fake OpenAI API."
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--reply", default=DEFAULT_REPLY)
    parser.add_argument("--delay", type=float, default=0.0, help="seconds before each reply")
    parser.add_argument("--chunks", type=int, default=4, help="content chunks when streaming")
    parser.add_argument("--fail", choices=FAIL_MODES, help="answer 500 or drop the connection")
    return parser.parse_args(argv)


async def serve(args: argparse.Namespace) -> None:
    """Serve until SIGINT or SIGTERM."""
    server = FakeOpenAI(
        model=args.model,
        reply=args.reply,
        delay=args.delay,
        stream_chunks=args.chunks,
        fail=args.fail,
        record=False,  # nobody reads them from outside, and a benchmark would grow without bound
        host=args.host,
        port=args.port,
    )
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stopping.set)
    print(await server.start(), flush=True)
    try:
        await stopping.wait()
    finally:
        await server.stop()


def main(argv: Sequence[str] | None = None) -> None:
    """Command-line entry point."""
    asyncio.run(serve(parse_args(argv)))


if __name__ == "__main__":
    main()
