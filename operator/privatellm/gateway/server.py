"""The gateway's HTTP server: one OpenAI-compatible door per namespace.

Every request passes, in order: authentication, AccessPolicy, quota, inbound
filters, the upstream call (a ready replica, another one on failure, the
fallback model when none is left, or a wait while the model scales from zero),
outbound filters (streamed responses too), metering, and exactly one audit event,
whatever the outcome.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import logging
import re
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractContextManager, asynccontextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from aiohttp import web
from aiohttp.typedefs import Handler
from opentelemetry import trace

from privatellm.audit.records import control_record, prompt_hash, prompt_hash_key
from privatellm.filters import FilterResult, InboundPipeline, OutboundPipeline, OutboundStream
from privatellm.keys.envelope import RecordContext
from privatellm.keys.tenancy import namespace_key_name

from .audit import AuditEvent, AuditLogSink, AuditSink
from .auth import Authenticator, AuthError, Identity
from .config import BudgetThrottle, GatewayConfig, ModelRoute, NamedPolicy
from .connections import authenticator, upstream_ssl
from .demand import DEMAND_PATH, Demand, ModelDemand, demand_handler
from .discovery import EndpointWatcher, ReplicaSource
from .errors import GatewayError
from .holding import HoldQueues, retry_after
from .metering import Metering
from .openai import (
    ENDPOINTS,
    Endpoint,
    StreamKey,
    check_lengths,
    chunk_texts,
    map_chunk_other_texts,
    map_request_texts,
    map_response_texts,
    sse,
    stream_error,
    tail_chunk,
    usage_of,
    validate_request,
)
from .payloads import PayloadSealer
from .peers import peer_app
from .policy import (
    authorize,
    connector_claims,
    effective_inbound,
    effective_outbound,
    quota_key,
)
from .quotas import (
    COUNTS_PATH,
    QuotaPeers,
    QuotaTracker,
    counts_handler,
    limit_of,
    peer_token,
    throttled,
)
from .refusals import body_refusal, encoding_refusal
from .routing import Router, Target, route_replicas
from .usage import USAGE_FILE, USAGE_PATH, UsageTally, usage_handler

log = logging.getLogger("privatellm.gateway")

DATA_CLASSES_HEADER = "X-PrivateLLM-Data-Classes"
REQUEST_ID_HEADER = "X-Request-Id"
_CLASS_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_RETRY_STATUSES = frozenset({500, 502, 503, 504})
# A request tries at most this many replicas: enough to step over a dead one and
# reach the fallback, few enough that an outage fails fast.
MAX_ATTEMPTS = 4
_NO_SPAN = nullcontext()


@dataclass
class PolicyFilters:
    """An AccessPolicy's filters, compiled once per configuration."""

    inbound: InboundPipeline
    outbound: OutboundPipeline


@dataclass
class Runtime:
    """Everything derived from one version of the configuration; swapped whole on reload."""

    config: GatewayConfig
    routes: dict[str, ModelRoute]
    filters: dict[str, PolicyFilters]

    @classmethod
    def build(cls, config: GatewayConfig, hash_key: bytes) -> Runtime:
        filters = {
            p.name: PolicyFilters(
                InboundPipeline.from_spec(effective_inbound(p.spec), hash_key),
                OutboundPipeline.from_spec(
                    effective_outbound(p.spec), config.protected_entities, hash_key
                ),
            )
            for p in config.policies
        }
        return cls(config, {m.name: m for m in config.models}, filters)


@dataclass
class Exchange:
    """One request on its way through the gateway."""

    request: web.Request
    event: AuditEvent
    runtime: Runtime
    started: float
    endpoint: Endpoint | None = None
    identity: Identity | None = None
    policy: NamedPolicy | None = None
    body: dict[str, Any] = field(default_factory=dict)
    raw_body: bytes = b""
    route: ModelRoute | None = None
    # Set once the audit event was handed to the sink, so it never is twice.
    recorded: bool = False


# No answer leaves the gateway without its audit record.
_AUDIT_UNAVAILABLE = GatewayError(
    503, "audit_unavailable", "the request could not be recorded, so it was not answered"
)


class Gateway:
    """The aiohttp application and the state its requests share."""

    def __init__(
        self,
        config: GatewayConfig,
        sink: AuditSink,
        *,
        metering: Metering | None = None,
        hash_key: bytes | None = None,
        tracer: trace.Tracer | None = None,
        clock: Callable[[], float] = time.time,
        discovered: ReplicaSource | None = None,
        peer_url: str | None = None,
        usage_dir: Path | None = None,
    ) -> None:
        """`discovered` replaces the EndpointSlice watch the gateway would otherwise start;
        `peer_url` is where the other replicas reach this one (left out of its peers);
        `usage_dir` keeps the usage tally (default: the audit log's directory, which is
        the replica's own volume; without either, the tally is kept in memory only)."""
        self.sink = sink
        self.metering = metering or Metering()
        self.hash_key = hash_key or secrets.token_bytes(32)
        self._prompt_hash_key = prompt_hash_key(self.hash_key)
        self.tracer = tracer
        self.clock = clock
        self.router = Router()
        self.quotas = QuotaTracker()
        self.runtime = Runtime.build(config, self.hash_key)
        self.metering.show_models(self.runtime.routes)
        if usage_dir is None and isinstance(sink, AuditLogSink):
            usage_dir = sink.log.directory
        self.usage = UsageTally(
            usage_dir / USAGE_FILE if usage_dir is not None else None,
            config.usage_time_zones,
            clock,
        )
        self._session: aiohttp.ClientSession | None = None
        self._sealer: PayloadSealer | None = None
        self._auth: Authenticator | None = None
        self._discovered = discovered
        self._peer_url = peer_url
        self.quota_peers: QuotaPeers | None = None
        self._peers_task: asyncio.Task[None] | None = None
        self._background: list[asyncio.Task[None]] = []
        self.demand = Demand(clock)
        self.holds = HoldQueues()
        # Per model wanted or holding requests: the task that waits for its replicas.
        self._followers: dict[str, asyncio.Task[None]] = {}

    def _span(self, name: str) -> AbstractContextManager[Any]:
        """A tracing span when the gateway was given a tracer; nothing otherwise."""
        if self.tracer is None:
            return _NO_SPAN
        return self.tracer.start_as_current_span(name)

    # --- lifecycle -------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application(
            client_max_size=self.runtime.config.limits.max_body_bytes,
            middlewares=[self._unrouted],
        )
        app.router.add_get("/v1/models", self.list_models)
        app.router.add_get("/healthz", self.healthz)
        app.router.add_route("*", "/{tail:.*}", self.handle)
        app.cleanup_ctx.append(self._client_session)
        app.on_shutdown.append(self._stop_holding)
        return app

    @web.middleware
    async def _unrouted(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        # Targets without a path (CONNECT host:port, OPTIONS *) match no route: aiohttp
        # would answer them itself; the gateway refuses them as any unknown path.
        if request.match_info.http_exception is None:
            return await handler(request)
        return await self.handle(request)

    async def _client_session(self, _app: web.Application) -> AsyncIterator[None]:
        config = self.runtime.config
        limits = config.limits
        timeout = aiohttp.ClientTimeout(
            total=limits.upstream_total_seconds, sock_connect=limits.upstream_connect_seconds
        )
        connector = aiohttp.TCPConnector(limit=0, ssl=upstream_ssl(config), keepalive_timeout=30)
        self._session = aiohttp.ClientSession(
            timeout=timeout, connector=connector, auto_decompress=False
        )
        self._auth = authenticator(config, self._session, self.clock)
        self._record_config("gateway.start", config)
        if config.encryption is not None:
            self._sealer = PayloadSealer(config.encryption)
        self._start_background(config)
        self._background.append(asyncio.create_task(self.usage.run()))
        yield
        self._stop_quota_peers()
        for task in [*self._background, *self._followers.values()]:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        # After the drain: the requests answered last are in the file too.
        self.usage.save()
        await self._session.close()

    @property
    def discovered(self) -> ReplicaSource | None:
        """Where the gateway learns model replicas, once discovery is on."""
        return self._discovered

    def _start_background(self, config: GatewayConfig) -> None:
        """Start the EndpointSlice watch and the quota peers a configuration asks for,
        at start or at the first reload that asks; stop the peers when it no longer does."""
        assert self._session is not None
        if self._discovered is None and config.discovery is not None:
            watcher = EndpointWatcher(config.discovery, config.namespace)
            self._discovered = watcher
            self._background.append(asyncio.create_task(watcher.run()))
        sharing = config.quota_sharing
        if sharing is None:
            self._stop_quota_peers()
        elif self.quota_peers is None:
            self.quota_peers = QuotaPeers(
                sharing, self.quotas, peer_token(self.hash_key), self._discovered, self._peer_url
            )
            self._peers_task = asyncio.create_task(self.quota_peers.run(self._session))
        else:
            self.quota_peers.settings = sharing
            self.quota_peers.discovered = self._discovered

    def _stop_quota_peers(self) -> None:
        if self._peers_task is not None:
            self._peers_task.cancel()
            self._peers_task = None
        self.quota_peers = None
        self.quotas.keep_others(())

    def peer_app(self) -> web.Application:
        """The peer listener: quota counts for the other replicas, demand and usage for the
        operator."""
        app = peer_app(
            peer_token(self.hash_key),
            {
                COUNTS_PATH: counts_handler(self.quotas),
                DEMAND_PATH: demand_handler(self.demand, lambda: self.runtime.routes),
                USAGE_PATH: usage_handler(self.usage),
            },
            refused=self._refuse_peer,
        )
        app.on_shutdown.append(self._stop_demand)
        return app

    async def _refuse_peer(
        self, request: web.Request, error: GatewayError, request_id: str
    ) -> GatewayError:
        return await self.record_refusal(error, request_id, request.remote, request.path)

    async def _stop_demand(self, _app: web.Application) -> None:
        self.demand.stop()

    async def _stop_holding(self, _app: web.Application) -> None:
        """The gateway stops: held requests are answered now, not when their wait ends."""
        self.holds.stop(
            lambda: GatewayError(
                503,
                "gateway_stopping",
                "the gateway is stopping; retry, another replica answers",
                headers=retry_after(1),
            )
        )

    def reload(self, config: GatewayConfig) -> None:
        """Apply a new configuration to the requests that start from now on."""
        self.runtime = Runtime.build(config, self.hash_key)
        self.metering.show_models(self.runtime.routes)
        self.usage.set_zones(config.usage_time_zones)
        if self._auth is not None:
            self._auth.replace_api_keys(config.auth.api_keys)
        if self._session is not None:
            self._start_background(config)
        if self._discovered is not None:
            # Routes, fallbacks or hold settings may have changed: held requests look again.
            self._discovered.changes.notify_all()
        self.metering.config_reloads.labels("applied").inc()
        self._record_config("gateway.config", config)

    def _record_config(self, action: str, config: GatewayConfig) -> None:
        """A control record of the rules now in force: which policies, models and keys."""
        self.sink.control(
            control_record(
                action,
                "gateway",
                namespace=config.namespace,
                details={
                    "config_sha256": hashlib.sha256(config.model_dump_json().encode()).hexdigest(),
                    "policies": sorted(p.name for p in config.policies),
                    "models": sorted(m.name for m in config.models),
                    "api_keys": len(config.auth.api_keys),
                },
                when=self.clock(),
            )
        )

    # --- handlers --------------------------------------------------------

    async def healthz(self, _request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def list_models(self, request: web.Request) -> web.StreamResponse:
        async def serve(exchange: Exchange) -> web.StreamResponse:
            identity = await self._authenticate(exchange)
            models = [
                {"id": m.name, "object": "model", "owned_by": exchange.runtime.config.namespace}
                for m in exchange.runtime.config.models
                if authorize(
                    exchange.runtime.config.policies, identity, m.name, (), _ns(exchange)
                ).allowed
            ]
            exchange.event.decision, exchange.event.reason = "allow", "allowed"
            return web.json_response({"object": "list", "data": models})

        return await self._audited(request, serve)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        return await self._audited(request, self._serve_inference)

    async def _audited(
        self,
        request: web.Request,
        serve: Callable[[Exchange], Any],
    ) -> web.StreamResponse:
        """Run `serve`; whatever happens, emit exactly one audit event and count it."""
        runtime = self.runtime
        event = AuditEvent(
            request_id=_request_id(request),
            time=self.clock(),
            namespace=runtime.config.namespace,
            path=request.path,
            source_ip=request.remote,
        )
        exchange = Exchange(request, event, runtime, time.perf_counter())
        response: web.StreamResponse
        try:
            response = await serve(exchange)
        except GatewayError as error:
            event.reason = error.audit_reason or error.code
            response = _error_response(error, event.request_id)
        except AuthError as error:
            event.reason = error.reason
            response = _error_response(
                GatewayError(error.status, error.reason, error.message), event.request_id
            )
        except asyncio.CancelledError:
            # The server is stopping under this request: it is still recorded, without
            # waiting (the writer keeps what it was handed when it closes).
            if not exchange.recorded:
                exchange.recorded = True
                event.reason = "cancelled"
                self._close_event(exchange, 499)
                self.sink.emit(event)
                self._count(event)
            raise
        except Exception:
            log.exception("request %s failed in the gateway", event.request_id)
            event.reason = "internal_error"
            response = _error_response(
                GatewayError(500, "internal_error", "the gateway failed; see its log"),
                event.request_id,
            )
        if exchange.recorded:
            return response
        if await self._commit(exchange, response.status):
            return response
        return _error_response(_AUDIT_UNAVAILABLE, event.request_id)

    def _close_event(self, exchange: Exchange, status: int) -> None:
        event = exchange.event
        event.latency_ms = (time.perf_counter() - exchange.started) * 1000
        event.status = status

    async def _commit(self, exchange: Exchange, status: int) -> bool:
        """Close the request's event, wait until the sink keeps it, and count it.

        False when it could not be kept: the caller must then not give the answer.
        """
        exchange.recorded = True
        self._close_event(exchange, status)
        return await self._keep(exchange.event)

    async def _keep(self, event: AuditEvent) -> bool:
        """Wait until the sink keeps `event`, and count it; False when it could not be kept."""
        try:
            await self.sink.commit(event)
        except Exception as error:
            log.error("request %s could not be recorded: %s", event.request_id, error)
            event.status, event.reason = _AUDIT_UNAVAILABLE.status, _AUDIT_UNAVAILABLE.code
            self._count(event)
            return False
        self._count(event)
        return True

    async def record_refusal(
        self, error: GatewayError, request_id: str, source_ip: str | None, path: str = ""
    ) -> GatewayError:
        """Audit a refusal made below the application (HTTP parser, connection limits) or
        on the peer port.

        The error to answer with: `error`, or audit_unavailable when its record was not kept.
        `path` is empty when the request was not read far enough to have one.
        """
        event = AuditEvent(
            request_id=request_id,
            time=self.clock(),
            namespace=self.runtime.config.namespace,
            path=path,
            source_ip=source_ip,
            reason=error.code,
            status=error.status,
        )
        return error if await self._keep(event) else _AUDIT_UNAVAILABLE

    def _count(self, event: AuditEvent) -> None:
        model, subject = event.model or "", event.subject or ""
        metering = self.metering
        status, reason = str(event.status), event.reason or ""
        metering.child(metering.requests, model, subject, status, reason).inc()
        if event.decision == "allow" and event.model:
            metering.child(metering.latency, model).observe(event.latency_ms / 1000)
            if event.prompt_tokens:
                metering.child(metering.tokens, model, subject, "prompt").inc(event.prompt_tokens)
            if event.completion_tokens:
                tokens = metering.child(metering.tokens, model, subject, "completion")
                tokens.inc(event.completion_tokens)
        if event.decision == "allow" and event.model and event.served_by:
            # Only what reached a model used its GPUs, and a fallback's use is the
            # fallback's: this is what the CostBudgets divide their spend by.
            self.usage.record(
                subject,
                event.policy or "",
                event.served_by,
                event.time,
                event.prompt_tokens,
                event.completion_tokens,
            )

    # --- the pipeline ----------------------------------------------------

    async def _authenticate(self, exchange: Exchange) -> Identity:
        assert self._auth is not None, "the application has not started"
        with self._span("authenticate"):
            identity = await self._auth.authenticate(exchange.request.headers)
        event = exchange.event
        event.subject_kind, event.subject = identity.kind, identity.name
        event.groups = sorted(identity.groups)
        event.auth_method, event.subject_namespace = identity.method, identity.namespace
        event.subject_pod = identity.pod
        exchange.identity = identity
        return identity

    async def _serve_inference(self, exchange: Exchange) -> web.StreamResponse:
        request, event = exchange.request, exchange.event
        endpoint = ENDPOINTS.get(request.path)
        if endpoint is None:
            raise GatewayError(404, "unknown_path", f"no such endpoint: {request.path}")
        if request.method != "POST":
            raise GatewayError(405, "method_not_allowed", f"{request.path} takes POST")
        exchange.endpoint = endpoint
        identity = await self._authenticate(exchange)
        body = await self._read_json(exchange)
        model, stream = validate_request(endpoint, body)
        event.model, event.stream = model, stream
        route = exchange.runtime.routes.get(model)
        if route is None:
            raise GatewayError(404, "model_not_found", f"the model {model!r} does not exist")
        check_lengths(body, route.max_model_len)
        config = exchange.runtime.config
        declared, denial = connector_claims(
            config.connectors, identity, _ns(exchange), model, _declared_classes(request)
        )
        if denial:
            event.reason = denial
            raise GatewayError(403, denial, f"access denied: {denial}")
        decision = authorize(config.policies, identity, model, declared, _ns(exchange))
        event.reason = decision.reason
        if not decision.allowed or decision.policy is None:
            raise GatewayError(403, decision.reason, f"access denied: {decision.reason}")
        exchange.policy = decision.policy
        event.policy = decision.policy.name
        if (block := route.budget_block) and not identity.groups & set(block.break_glass_groups):
            event.reason = "budget_exhausted"
            raise GatewayError(
                429,
                "budget_exhausted",
                f"the CostBudget {block.budget!r} covering this model is spent: new requests"
                " are refused until the month turns or the limit is raised",
            )
        self._check_quotas(decision.policy, identity, route.budget_throttle)
        filters = exchange.runtime.filters[decision.policy.name]
        with self._span("filter.inbound"):
            detected = self._filter_request(exchange, endpoint, body, filters.inbound)
        event.data_classes = sorted(set(declared) | detected)
        exchange.route = route
        event.prompt_record = await self._seal(exchange, "prompt", exchange.raw_body)
        event.decision = "allow"
        body["model"] = route.served_name
        exchange.body = body
        self.demand.request(model)
        await self._await_replica(exchange, route)
        in_flight = self.metering.child(self.metering.in_flight, model)
        figures = self.demand.model(model)
        in_flight.inc()
        figures.in_flight += 1
        try:
            if stream:
                return await self._proxy_stream(exchange, route, filters.outbound)
            return await self._proxy(exchange, route, filters.outbound)
        finally:
            in_flight.dec()
            figures.in_flight -= 1

    def _check_quotas(
        self, policy: NamedPolicy, identity: Identity, throttle: BudgetThrottle | None
    ) -> None:
        """Count the request against the subject's quotas: the policy's own, or lowered
        ones while a CostBudget throttles the model and the subject is not a priority one."""
        quotas = policy.spec.quotas
        if throttle is not None and (
            identity.groups & set(throttle.priority_groups)
            or policy.name in throttle.priority_policies
        ):
            throttle = None
        limits = quotas if throttle is None else throttled(quotas, throttle)
        reason = self.quotas.check(quota_key(policy, identity), limits, self.clock())
        if not reason:
            return
        limit = limit_of(reason)
        lowered = getattr(limits, limit)
        if throttle is None or lowered == getattr(quotas, limit):
            raise GatewayError(429, reason, f"limit reached: {reason}")
        raise GatewayError(
            429,
            "budget_throttled",
            f"the CostBudget {throttle.budget!r} is at its throttle threshold: {limit}"
            f" lowered to {lowered}",
            audit_reason=f"budget_throttled:{limit}",
        )

    def _replica_source(self, runtime: Runtime) -> ReplicaSource | None:
        """Discovery, when the configuration has it on."""
        return self._discovered if runtime.config.discovery is not None else None

    async def _await_replica(self, exchange: Exchange, route: ModelRoute) -> None:
        """Hold the request while its model scales from zero (see holding.py).

        A request for a model with no ready replica makes the model wanted (the
        operator's demand long poll hears of it once, however many come). Its fallback
        serves it at once when it has a replica; otherwise, with hold settings, it waits
        for one, and without them it goes on to 503 no_ready_replica.
        """
        discovered = self._replica_source(exchange.runtime)
        ready = None
        if discovered is not None and route.service:
            ready = discovered.ready(route.service)
        if ready is None:
            return  # not found through discovery (yet): the static endpoints serve
        if ready:
            self.demand.satisfied(route.name)
            return
        if self.demand.want(route.name):
            self._follow(route.name)
        fallback = exchange.runtime.routes.get(route.fallback) if route.fallback else None
        if fallback is not None and fallback is not route and route_replicas(fallback, discovered):
            return
        if route.hold is None:
            return
        held = self.holds.enter(route.name, route.hold)
        figures = self.demand.model(route.name)
        gauge = self.metering.child(self.metering.held, route.name)
        figures.held += 1
        gauge.inc()
        started = time.perf_counter()
        try:
            await self.holds.wait(held, _client_gone(exchange.request))
        finally:
            figures.held -= 1
            gauge.dec()
            exchange.event.held_ms = (time.perf_counter() - started) * 1000

    def _follow(self, model: str) -> None:
        """Make sure a task follows `model`'s replicas (see _follow_replicas)."""
        task = self._followers.get(model)
        if task is None or task.done():
            self._followers[model] = asyncio.create_task(self._follow_replicas(model))

    async def _follow_replicas(self, model: str) -> None:
        """While `model` is wanted or holds requests: release them once it or its fallback has
        a ready replica, and end its wanted state once it has one itself."""
        while True:
            runtime = self.runtime
            discovered = self._replica_source(runtime)
            route = runtime.routes.get(model)
            if discovered is None or route is None or not route.service:
                # Not routed through discovery any more: nothing to wait for.
                self.demand.satisfied(model)
                self.holds.release(model)
                break
            ready = discovered.ready(route.service)
            fallback = runtime.routes.get(route.fallback) if route.fallback else None
            if ready is None or ready:
                self.demand.satisfied(model)
                self.holds.release(model)
            elif fallback is not None and route_replicas(fallback, discovered):
                self.holds.release(model)
            if not self.demand.wanted(model) and not self.holds.held(model):
                break
            services = {route.service}
            if fallback is not None and fallback.service:
                services.add(fallback.service)
            await discovered.changes.wait(services)
        self._followers.pop(model, None)

    async def _read_json(self, exchange: Exchange) -> Any:
        request, limits = exchange.request, exchange.runtime.config.limits
        if request.content_length is not None and request.content_length > limits.max_body_bytes:
            raise GatewayError(
                413, "body_too_large", f"the body exceeds {limits.max_body_bytes} bytes"
            )
        content_type = request.headers.get("Content-Type", "application/json")
        if not content_type.startswith("application/json"):
            raise GatewayError(415, "unsupported_media_type", "send application/json")
        refused = encoding_refusal(request.headers.getall("Content-Encoding", []))
        if refused is not None:
            raise refused
        try:
            if request.content.is_eof():
                raw = await request.read()  # all there already: no timer needed
            else:
                async with asyncio.timeout(limits.client_read_seconds):
                    raw = await request.read()
        except TimeoutError:
            raise GatewayError(408, "request_timeout", "the body arrived too slowly") from None
        except web.HTTPRequestEntityTooLarge:
            raise GatewayError(
                413, "body_too_large", f"the body exceeds {limits.max_body_bytes} bytes"
            ) from None
        except (web.RequestPayloadError, ConnectionError) as error:
            raise body_refusal(error) from None
        exchange.raw_body = raw
        try:
            return orjson.loads(raw)
        except (ValueError, UnicodeDecodeError) as error:
            raise GatewayError(400, "invalid_json", f"the body is not JSON: {error}") from None

    def _filter_request(
        self,
        exchange: Exchange,
        endpoint: Endpoint,
        body: dict[str, Any],
        pipeline: InboundPipeline,
    ) -> set[str]:
        detected: set[str] = set()
        texts: list[str] = []

        def apply(text: str) -> str:
            texts.append(text)
            result = pipeline.apply(text)
            self._note_findings(exchange, "inbound", result)
            detected.update(result.data_classes)
            if result.blocked:
                reason = result.reason or "content_blocked"
                raise GatewayError(400, reason, f"the prompt was blocked: {reason}")
            return result.text

        try:
            map_request_texts(endpoint, body, apply)
        finally:
            # Blocked prompts get their hash too: "was this ever sent?" has an answer.
            exchange.event.prompt_hash = prompt_hash(self._prompt_hash_key, texts)
        return detected

    def _note_findings(self, exchange: Exchange, direction: str, result: FilterResult) -> None:
        if result.findings:
            pairs = [(f.entity, f.action) for f in result.findings]
            self._count_findings(exchange, direction, pairs)

    def _count_findings(
        self, exchange: Exchange, direction: str, pairs: list[tuple[str, str]]
    ) -> None:
        exchange.event.count_findings(direction, iter(pairs))
        for (entity, action), times in collections.Counter(pairs).items():
            self.metering.child(self.metering.findings, direction, entity, action).inc(times)

    async def _proxy(
        self, exchange: Exchange, route: ModelRoute, outbound: OutboundPipeline
    ) -> web.StreamResponse:
        async with self._upstream(exchange, route) as upstream:
            raw = await upstream.read()
        try:
            body = orjson.loads(raw)
        except ValueError:
            raise GatewayError(502, "upstream_invalid_response", "the model sent no JSON") from None
        if upstream.status != 200:
            raise _upstream_rejection(upstream.status, body)
        exchange.event.response_record = await self._seal(exchange, "response", raw)
        with self._span("filter.outbound"):
            blocked = self._filter_whole_texts(exchange, outbound, map_response_texts, body)
        if blocked:
            raise GatewayError(403, blocked, f"the response was withheld: {blocked}", "response")
        body["model"] = exchange.event.served_by
        self._charge(exchange, *usage_of(body))
        return web.Response(
            body=orjson.dumps(body),
            content_type="application/json",
            headers={REQUEST_ID_HEADER: exchange.event.request_id},
        )

    async def _proxy_stream(
        self, exchange: Exchange, route: ModelRoute, outbound: OutboundPipeline
    ) -> web.StreamResponse:
        assert exchange.endpoint is not None
        endpoint, body = exchange.endpoint, exchange.body
        client_wants_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        # Usage is always asked for, so that streamed requests are metered too.
        body["stream_options"] = {"include_usage": True}
        streams: dict[StreamKey, OutboundStream] = {}
        answered: list[bytes] = []
        async with self._upstream(exchange, route) as upstream:
            if upstream.status != 200:
                raw = await upstream.read()
                raise _upstream_rejection(upstream.status, _json_or_none(raw))
            response = web.StreamResponse(
                headers={
                    "Content-Type": "text/event-stream",
                    "Cache-Control": "no-cache",
                    REQUEST_ID_HEADER: exchange.event.request_id,
                }
            )
            await response.prepare(exchange.request)
            async for line in upstream.content:
                if not line.startswith(b"data:"):
                    continue
                data = line[5:].strip()
                if data == b"[DONE]":
                    break
                chunk = _json_or_none(data)
                if not isinstance(chunk, dict):
                    continue
                if self._sealer is not None:
                    answered.append(data)
                if chunk.get("usage"):
                    self._charge(exchange, *usage_of(chunk))
                    if not chunk.get("choices") and not client_wants_usage:
                        continue
                    if not client_wants_usage:
                        chunk.pop("usage", None)
                blocked = self._filter_chunk(exchange, endpoint, chunk, streams, outbound)
                if blocked:
                    await response.write(sse({"error": stream_error(blocked)}))
                    break
                await response.write(sse(chunk))
            tail = self._flush_streams(exchange, streams)
            if tail is not None:
                await response.write(sse(tail_chunk(endpoint, route.name, tail)))
            try:
                sealed = b"\n".join(answered)
                exchange.event.response_record = await self._seal(exchange, "response", sealed)
            except GatewayError as error:
                exchange.event.reason = error.code
                await response.write(_sse_error(error))
            # The stream ends only once its record is kept.
            if not await self._commit(exchange, response.status):
                await response.write(_sse_error(_AUDIT_UNAVAILABLE))
            await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    def _filter_chunk(
        self,
        exchange: Exchange,
        endpoint: Endpoint,
        chunk: dict[str, Any],
        streams: dict[StreamKey, OutboundStream],
        outbound: OutboundPipeline,
    ) -> str | None:
        """Filter a chunk's texts in place; the block reason when one was blocked."""
        for key, holder, field_name in chunk_texts(endpoint, chunk):
            stream = streams.get(key)
            if stream is None:
                stream = streams[key] = outbound.stream()
            holder[field_name] = stream.feed(holder[field_name])
            if stream.blocked:
                reason = stream.reason or "response_blocked"
                exchange.event.reason = reason
                self._note_stream_findings(exchange, streams)
                return reason
        blocked = self._filter_whole_texts(exchange, outbound, map_chunk_other_texts, chunk)
        if blocked:
            exchange.event.reason = blocked
            return blocked
        chunk["model"] = exchange.event.served_by
        return None

    def _filter_whole_texts(
        self,
        exchange: Exchange,
        outbound: OutboundPipeline,
        walk: Callable[[Endpoint, Any, Callable[[str], str]], None],
        body: Any,
    ) -> str | None:
        """Filter each text `walk` finds as a whole; the first block reason, if any."""
        assert exchange.endpoint is not None
        blocked: list[str] = []

        def apply(text: str) -> str:
            result = outbound.apply(text)
            self._note_findings(exchange, "outbound", result)
            if result.blocked:
                blocked.append(result.reason or "response_blocked")
            return result.text

        walk(exchange.endpoint, body, apply)
        return blocked[0] if blocked else None

    def _flush_streams(
        self, exchange: Exchange, streams: dict[StreamKey, OutboundStream]
    ) -> dict[StreamKey, str] | None:
        tails = {index: stream.finish() for index, stream in streams.items()}
        self._note_stream_findings(exchange, streams)
        tails = {i: t for i, t in tails.items() if t}
        return tails or None

    def _note_stream_findings(
        self, exchange: Exchange, streams: dict[StreamKey, OutboundStream]
    ) -> None:
        for stream in streams.values():
            pairs = [(f.entity, f.action) for f in stream.findings]
            stream.findings.clear()
            if pairs:
                self._count_findings(exchange, "outbound", pairs)

    async def _seal(self, exchange: Exchange, kind: str, payload: bytes) -> str | None:
        """An envelope record of `payload`, or None when the gateway keeps no payloads."""
        if self._sealer is None or exchange.route is None:
            return None
        route, namespace = exchange.route, exchange.runtime.config.namespace
        key = route.transit_key or namespace_key_name(namespace)
        context = RecordContext(namespace, route.name, f"{exchange.event.request_id}/{kind}")
        with self._span(f"seal.{kind}"):
            return await self._sealer.seal(key, exchange.event.subject or "", context, payload)

    def _charge(self, exchange: Exchange, prompt: int, completion: int) -> None:
        event = exchange.event
        event.prompt_tokens, event.completion_tokens = prompt, completion
        if event.model is not None:
            self.demand.tokens(event.model, prompt, completion)
        if exchange.policy is not None and exchange.identity is not None:
            self.quotas.record_tokens(
                quota_key(exchange.policy, exchange.identity),
                exchange.policy.spec.quotas,
                prompt + completion,
                self.clock(),
            )

    @asynccontextmanager
    async def _upstream(
        self, exchange: Exchange, route: ModelRoute
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """The first replica that answers; moves on when one fails before answering."""
        assert self._session is not None
        discovery = exchange.runtime.config.discovery
        targets = self.router.targets(
            route,
            exchange.runtime.routes,
            self._discovered if discovery is not None else None,
            discovery.zone if discovery is not None else None,
        )[:MAX_ATTEMPTS]
        if not targets:
            raise GatewayError(503, "no_ready_replica", f"{route.name} has no ready replica")
        path = exchange.request.path
        waiting = _Waiting(
            self.metering.child(self.metering.upstream_waiting, route.name),
            self.demand.model(route.name),
        )
        started = time.perf_counter()
        last_error = "no replica answered"
        for attempt, target in enumerate(targets):
            if attempt:
                self.metering.upstream_retries.labels(route.name).inc()
            payload = _payload_for(exchange.body, target)
            answered = False
            waiting.inc()
            with self._span("upstream") as span:
                if span is not None:
                    span.set_attribute("privatellm.replica", target.url)
                try:
                    # The replica is busy with this attempt from the request sent until
                    # the gateway lets go of its answer (read, streamed or given up on).
                    self.usage.replica_busy(target.route.name, target.url)
                    async with self._session.post(
                        target.url + path,
                        data=payload,
                        headers={
                            "Content-Type": "application/json",
                            REQUEST_ID_HEADER: exchange.event.request_id,
                        },
                    ) as upstream:
                        answered = True
                        waiting.dec()
                        if upstream.status in _RETRY_STATUSES and attempt + 1 < len(targets):
                            self.router.mark_failed(target.url)
                            last_error = f"{target.url} answered {upstream.status}"
                            continue
                        self.router.mark_ok(target.url)
                        exchange.event.served_by = target.route.name
                        yield upstream
                        self.metering.child(self.metering.upstream_latency, route.name).observe(
                            time.perf_counter() - started
                        )
                        return
                except (aiohttp.ClientConnectionError, TimeoutError) as error:
                    if exchange.event.served_by is not None:
                        raise GatewayError(
                            502, "upstream_broke", "the model's connection broke mid-response"
                        ) from None
                    self.router.mark_failed(target.url)
                    last_error = f"{target.url}: {type(error).__name__}"
                finally:
                    self.usage.replica_done(target.route.name, target.url)
                    if not answered:
                        waiting.dec()
        log.warning("no replica of %s answered: %s", route.name, last_error)
        raise GatewayError(503, "no_ready_replica", f"no replica of {route.name} answered")


@dataclass(slots=True)
class _Waiting:
    """Requests sent to a model and not yet answered: a gauge and the model's demand."""

    gauge: Any
    figures: ModelDemand

    def inc(self) -> None:
        self.gauge.inc()
        self.figures.waiting += 1

    def dec(self) -> None:
        self.gauge.dec()
        self.figures.waiting -= 1


def _client_gone(request: web.Request) -> asyncio.Future[None] | None:
    """Done once the client's connection is gone, when the listener tells (listener.py)."""
    gone = getattr(request.protocol, "client_gone", None)
    return gone if isinstance(gone, asyncio.Future) else None


def _payload_for(body: dict[str, Any], target: Target) -> bytes:
    body["model"] = target.route.served_name
    return orjson.dumps(body)


def _ns(exchange: Exchange) -> str:
    return exchange.runtime.config.namespace


def _request_id(request: web.Request) -> str:
    given = request.headers.get(REQUEST_ID_HEADER, "")
    if 8 <= len(given) <= 64 and given.replace("-", "").isalnum() and given.isascii():
        return given
    return uuid.uuid4().hex


def _declared_classes(request: web.Request) -> list[str]:
    header = request.headers.get(DATA_CLASSES_HEADER)
    if not header:
        return []
    classes = [c.strip() for c in header.split(",") if c.strip()]
    if len(classes) > 32 or not all(_CLASS_NAME.match(c) for c in classes):
        raise GatewayError(
            400,
            "invalid_data_classes",
            f"{DATA_CLASSES_HEADER} must be a comma-separated list of DNS labels",
            DATA_CLASSES_HEADER,
        )
    return classes


def _json_or_none(raw: bytes) -> Any:
    try:
        return orjson.loads(raw)
    except ValueError:
        return None


def _upstream_rejection(status: int, body: Any) -> GatewayError:
    message = "the model rejected the request"
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        message = error["message"][:500]
    code = status if 400 <= status < 500 else 502
    return GatewayError(code, "upstream_rejected", message)


def _sse_error(error: GatewayError) -> bytes:
    return sse({"error": orjson.loads(error.body())["error"]})


def _error_response(error: GatewayError, request_id: str) -> web.Response:
    return web.Response(
        status=error.status,
        body=error.body(),
        content_type="application/json",
        headers={**error.headers, REQUEST_ID_HEADER: request_id},
    )
