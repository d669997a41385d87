"""The gateway's HTTP listener: aiohttp's server with the gateway's limits and refusals.

Below the application, aiohttp refuses what its parser cannot read. Here each such
refusal is the gateway's own (see refusals.py): OpenAI JSON, one audit event, nothing
of the request in the answer or the log. The listener also bounds the time a client
may take to send its headers, how long a connection may idle between requests, and
how many connections one address may hold. `start_listener` is the one way the
gateway's ports are opened, by `privatellm gateway` and by the tests alike.

It reaches into aiohttp where aiohttp has no public hook (the runner's server factory,
RequestHandler's error handler of a refused request and its parsed-message queue);
tests/gateway/test_gateway_http.py pins each.
"""

from __future__ import annotations

import asyncio
import collections
import ssl
import uuid
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from typing import Any

from aiohttp import hdrs, web
from aiohttp.abc import AbstractStreamWriter
from aiohttp.helpers import set_exception
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.http_parser import RawRequestMessage
from aiohttp.streams import StreamReader
from aiohttp.web_protocol import _ErrInfo
from aiohttp.web_request import BaseRequest

from .config import Limits
from .errors import GatewayError
from .refusals import parser_refusal, refusal
from .server import REQUEST_ID_HEADER, Gateway

SERVER_NAME = "privatellm-gateway"
# After a refusal the client's remaining bytes are read and dropped this long, so the
# connection ends with FIN rather than a reset that could discard the answer.
REFUSAL_LINGER_SECONDS = 1.0

_AppRequestFactory = Callable[
    [RawRequestMessage, StreamReader, web.RequestHandler, AbstractStreamWriter, asyncio.Task[None]],
    BaseRequest,
]


async def start_listener(
    app: web.Application,
    gateway: Gateway,
    host: str,
    port: int,
    *,
    ssl_context: ssl.SSLContext | None = None,
    reuse_port: bool = False,
    shutdown_timeout: float = 60.0,
) -> web.AppRunner:
    """Serve `app` on host:port with the gateway's protections; the caller cleans the runner up."""
    app.on_response_prepare.append(_name_server)
    runner = GatewayRunner(app, gateway, shutdown_timeout=shutdown_timeout)
    await runner.setup()
    site = web.TCPSite(runner, host, port, ssl_context=ssl_context, reuse_port=reuse_port)
    await site.start()
    return runner


async def _name_server(_request: web.Request, response: web.StreamResponse) -> None:
    # aiohttp's default names Python's and its own versions.
    response.headers[hdrs.SERVER] = SERVER_NAME


class GatewayRunner(web.AppRunner):
    """An AppRunner whose connections are GatewayConnections."""

    def __init__(self, app: web.Application, gateway: Gateway, *, shutdown_timeout: float) -> None:
        super().__init__(app, shutdown_timeout=shutdown_timeout)
        self.gateway = gateway

    async def _make_server(self) -> web.Server:
        # aiohttp's server for the app starts the app; its handler and request factory serve here.
        server = await super()._make_server()
        return GatewayServer(server.request_handler, server.request_factory, self.gateway)


class GatewayServer(web.Server):
    """Makes one GatewayConnection per connection and counts each address's connections."""

    def __init__(
        self,
        handler: Callable[[BaseRequest], Awaitable[web.StreamResponse]],
        make_request: _AppRequestFactory,
        gateway: Gateway,
    ) -> None:
        super().__init__(handler, request_factory=self._dispatch)
        self._make_app_request = make_request
        self.gateway = gateway
        self.clients: collections.Counter[str] = collections.Counter()

    def __call__(self) -> GatewayConnection:
        # Limits are read per connection, so a reloaded configuration applies to new ones.
        limits = self.gateway.runtime.config.limits
        return GatewayConnection(self, limits, loop=asyncio.get_running_loop())

    def admit(self, client: str | None, limits: Limits) -> bool:
        """Count a new connection from `client` (None: no address, not counted); False when
        the address already holds its share."""
        if client is None:
            return True
        if self.clients[client] >= limits.max_connections_per_client:
            return False
        self.clients[client] += 1
        return True

    def release(self, client: str) -> None:
        self.clients[client] -= 1
        if not self.clients[client]:
            del self.clients[client]

    def _dispatch(
        self,
        message: RawRequestMessage,
        payload: StreamReader,
        protocol: web.RequestHandler,
        writer: AbstractStreamWriter,
        task: asyncio.Task[None],
    ) -> BaseRequest:
        # aiohttp makes the request once its head is parsed: the connection's clock stops here.
        assert isinstance(protocol, GatewayConnection)
        protocol.request_dispatched(payload)
        return self._make_app_request(message, payload, protocol, writer, task)


def _handler_args(limits: Limits) -> dict[str, Any]:
    """aiohttp's per-connection settings from the gateway's limits."""
    return {
        "access_log": None,  # every request is audited; an access log would repeat it
        "keepalive_timeout": limits.idle_keepalive_seconds,
        "max_line_size": limits.max_line_bytes,
        "max_field_size": limits.max_header_bytes,
        "max_headers": limits.max_headers,
    }


class GatewayConnection(web.RequestHandler):
    """One client connection: aiohttp's protocol with the gateway's clock, limit and refusals.

    aiohttp closes a connection idle for `idle_keepalive_seconds` without a word. From
    the first byte of a request on (from the connection's opening for its first one)
    the header clock runs instead: headers not complete within `header_read_seconds`
    get 408. A connection that never sent a byte is closed unanswered and unaudited:
    no request was made.
    """

    def __init__(
        self, server: GatewayServer, limits: Limits, *, loop: asyncio.AbstractEventLoop
    ) -> None:
        super().__init__(server, loop=loop, **_handler_args(limits))
        self._server = server
        self._limits = limits
        self._event_loop = loop
        self._client: str | None = None
        self._counted_as: str | None = None  # the address this connection counts against
        self._header_timer: asyncio.TimerHandle | None = None
        self._reading_head = False  # bytes of a request arrived, its head is not complete
        self._line_bytes = 0  # length of the request's first line, so far
        self._line_done = False
        self._answered = True  # no request is being handled
        self._body: StreamReader | None = None  # the last request's body
        self._refusing: asyncio.Task[None] | None = None
        # Done once the client is gone: a request held for a model at zero stops waiting.
        self.client_gone: asyncio.Future[None] = loop.create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        peer = transport.get_extra_info("peername")
        self._client = peer[0] if isinstance(peer, tuple) else None
        if not self._server.admit(self._client, self._limits):
            self._refuse(refusal("too_many_connections"))
            return
        self._counted_as = self._client
        self._start_header_clock()

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._counted_as is not None:
            self._server.release(self._counted_as)
            self._counted_as = None
        self._stop_header_clock()
        super().connection_lost(exc)
        if not self.client_gone.done():
            self.client_gone.set_result(None)

    def data_received(self, data: bytes) -> None:
        if self._refusing is not None:
            return  # answered already; what else comes is dropped
        if data and self._answered and (self._body is None or self._body.is_eof()):
            self._note_head_bytes(data)
        super().data_received(data)
        self._fail_body_on_parser_error()

    def request_dispatched(self, body: StreamReader) -> None:
        """The parser has a request's head: no clock runs until it is answered."""
        self._stop_header_clock()
        self._reading_head, self._line_bytes, self._line_done = False, 0, False
        self._answered, self._body = False, body
        self._fail_body_on_parser_error()  # the parser may have given up behind this head

    async def finish_response(
        self, request: BaseRequest, resp: web.StreamResponse, start_time: float | None
    ) -> tuple[web.StreamResponse, bool]:
        try:
            return await super().finish_response(request, resp, start_time)
        finally:
            self._answered = True

    def log_exception(self, *args: Any, **kwargs: Any) -> None:
        error = kwargs.get("exc_info")
        if isinstance(error, HttpProcessingError | web.RequestPayloadError):
            # Their messages quote the request (a credential, a prompt); the client's fault,
            # already answered and audited: only the kind is logged.
            self.logger.debug("refused a request: %s", type(error).__name__)
            return
        super().log_exception(*args, **kwargs)

    def _make_error_handler(
        self, err_info: _ErrInfo
    ) -> Callable[[BaseRequest], Awaitable[web.StreamResponse]]:
        # aiohttp's handler for a request its parser refused, which would quote the request.
        error = parser_refusal(err_info.exc, self._line_bytes > self.max_line_size)

        async def refuse(_request: BaseRequest) -> web.StreamResponse:
            request_id = uuid.uuid4().hex
            answer = await self._server.gateway.record_refusal(error, request_id, self._client)
            response = web.Response(
                status=answer.status,
                body=answer.body(),
                content_type="application/json",
                headers={hdrs.SERVER: SERVER_NAME, REQUEST_ID_HEADER: request_id},
            )
            response.force_close()
            return response

        return refuse

    def _note_head_bytes(self, data: bytes) -> None:
        if not self._reading_head:
            self._reading_head = True
            # aiohttp's idle timer stops; the header clock governs until the head is complete.
            self.keep_alive(True)
            if self._header_timer is None:
                self._start_header_clock()
        if not self._line_done:
            newline = data.find(b"\n")
            self._line_bytes += len(data) if newline < 0 else newline
            self._line_done = newline >= 0

    def _fail_body_on_parser_error(self) -> None:
        # A parser error inside a body being read would otherwise leave the read waiting
        # for bytes the parser no longer delivers, until the body timeout.
        body, messages = self._body, self._messages
        if body is None or body.is_eof() or not messages:
            return
        failure = messages[-1][0]
        if isinstance(failure, _ErrInfo):
            set_exception(body, web.RequestPayloadError("the body is malformed"), failure.exc)

    def _start_header_clock(self) -> None:
        seconds = self._limits.header_read_seconds
        self._header_timer = self._event_loop.call_later(seconds, self._head_too_slow)

    def _stop_header_clock(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _head_too_slow(self) -> None:
        self._header_timer = None
        if self._messages:
            return  # the head completed on this very turn of the loop: it is being dispatched
        if self._reading_head:
            self._refuse(refusal("header_timeout"))
        else:
            self.force_close()

    def _refuse(self, error: GatewayError) -> None:
        """Answer `error`, audited, on a connection with no request being handled; then close."""
        self._refusing = asyncio.ensure_future(self._send_refusal(error))

    async def _send_refusal(self, error: GatewayError) -> None:
        request_id = uuid.uuid4().hex
        answer = await self._server.gateway.record_refusal(error, request_id, self._client)
        transport = self.transport
        if transport is None:
            return
        transport.write(_raw_answer(answer, request_id))
        if transport.can_write_eof():
            transport.write_eof()
        self._event_loop.call_later(REFUSAL_LINGER_SECONDS, self.force_close)


def _raw_answer(error: GatewayError, request_id: str) -> bytes:
    """A whole HTTP response for `error`, for a connection where aiohttp is not answering."""
    body = error.body()
    head = (
        f"HTTP/1.1 {error.status} {HTTPStatus(error.status).phrase}\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Connection: close\r\n"
        f"{hdrs.SERVER}: {SERVER_NAME}\r\n"
        f"{REQUEST_ID_HEADER}: {request_id}\r\n\r\n"
    )
    return head.encode() + body
