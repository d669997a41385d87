"""The peer port: what the other gateway replicas and the operator read from a replica.

It is not the API door. Its callers are the other replicas (quota counts, see
quotas.py) and the operator (each model's demand, see demand.py, and the usage
tally, see usage.py), never clients.
Each call carries a token derived from the namespace's hash key, which only the
gateway's configuration Secret and the operator that writes it hold; the port is
served over TLS with the gateway's certificate. Answers are not audited (they are
not client requests); refusals are, as every refusal of the gateway is, and are
given in OpenAI's error format.
"""

from __future__ import annotations

import hmac
import logging
import uuid
from collections.abc import Awaitable, Callable, Mapping

from aiohttp import web
from aiohttp.typedefs import Handler

from .errors import GatewayError

PeerRefusal = Callable[[web.Request, GatewayError, str], Awaitable[GatewayError]]

log = logging.getLogger(__name__)


def peer_app(
    token: str, routes: Mapping[str, Handler], refused: PeerRefusal | None = None
) -> web.Application:
    """An application serving `routes` (GET) to holders of `token`.

    `refused` is told of each refusal, with the request id its answer carries, and
    gives the error to answer with (another one when the refusal was not recorded).
    """
    expected = f"Bearer {token}".encode()

    @web.middleware
    async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            presented = request.headers.get("Authorization")
            if not presented:
                raise GatewayError(401, "missing_credentials", "the peer port needs the peer token")
            if not hmac.compare_digest(presented.encode(), expected):
                raise GatewayError(401, "invalid_peer_token", "this is not the peer token")
            if request.match_info.http_exception is not None:
                # A target without a path (OPTIONS *, CONNECT host:port) matches no route.
                raise GatewayError(404, "unknown_path", "no such path on the peer port")
            return await handler(request)
        except GatewayError as error:
            refusal = error
        except Exception:
            log.exception("the peer port failed on %s", request.path)
            refusal = GatewayError(500, "internal_error", "the gateway failed; see its log")
        request_id = uuid.uuid4().hex
        if refused is not None:
            refusal = await refused(request, refusal, request_id)
        return _refusal(refusal, request_id)

    async def unknown(request: web.Request) -> web.StreamResponse:
        if request.path in routes:
            raise GatewayError(405, "method_not_allowed", f"{request.path} takes GET")
        raise GatewayError(404, "unknown_path", "no such path on the peer port")

    app = web.Application(middlewares=[guard])
    for path, handler in routes.items():
        app.router.add_get(path, handler, allow_head=False)
    app.router.add_route("*", "/{tail:.*}", unknown)
    return app


def _refusal(error: GatewayError, request_id: str) -> web.Response:
    return web.Response(
        status=error.status,
        body=error.body(),
        content_type="application/json",
        headers={"X-Request-Id": request_id, **error.headers},
    )
