"""The filter sidecar: the one way a connector's items reach the models and results leave.

The connector container speaks only to this process, on localhost:

    POST   /items          an item (raw bytes) for a model; X-Item-Key names it in
                           the source system, X-Model which of the connector's models
                           (the first by default), X-Deliver-To where its result goes
    POST   /results        a text the models produced, for X-Deliver-To (outbound)
    GET    /results        the next result kept for the connector (long poll, ?wait=s)
    DELETE /results/{id}   the connector took that result

An item passes the inbound checks (checks.py) or is quarantined, sealed, with the
reason; a passed item is spooled (spool.py) before 202 is answered, then sent to the
gateway with the connector's ServiceAccount token. The model's answer passes the
outbound checks and goes to its destination: a URL the egress list allows, or, when
none is named and the connector takes inbound results itself (an object store writes
them back), the connector through GET /results. Every item and every result gets one
audit record in the gateway's log format. Counters are kept on the state volume, so
that status survives a restart; the metrics port serves them and /healthz.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from pydantic import ConfigDict, Field

from privatellm.api.base import ApiModel
from privatellm.api.connector import ConnectorFilters, EgressEndpoint
from privatellm.audit import AuditLog
from privatellm.durable import write_atomically
from privatellm.gateway.config import EncryptionSettings
from privatellm.render.gateway import connector_service_account

from .checks import InboundChecks, OutboundChecks, destination_allowed
from .quarantine import ItemMeta, Quarantine
from .spool import (
    IDEMPOTENCY_KEY,
    Spool,
    SpoolEntry,
    SpoolFullError,
    SpoolItemTooLargeError,
    stable_item_id,
)

log = logging.getLogger(__name__)

GATEWAY = "gateway"
# Results the connector collects itself (GET /results).
CONNECTOR = "connector"
ITEM_KEY = "X-Item-Key"
DELIVER_TO = "X-Deliver-To"
# Which of the connector's models an item is for; the first listed when not given.
MODEL = "X-Model"
OUTCOMES = ("passed", "blocked", "quarantined")
# The longest a GET /results waits for a result.
MAX_RESULT_WAIT_SECONDS = 30.0
# A result handed to the connector and not taken back within this is offered again.
RESULT_LEASE_SECONDS = 60.0
AUDIT_KIND = "connector.item"


class SidecarConfig(ApiModel):
    """connector.json, as the operator renders it (render/connector.py); the keys the
    built-in connector reads and the sidecar does not are ignored here."""

    model_config = ConfigDict(extra="ignore")

    name: str
    namespace: str
    type: str
    direction: str
    endpoint: str
    models: list[str]
    filters: ConnectorFilters
    egress: list[EgressEndpoint] = Field(default_factory=list)
    gateway: str
    gateway_ca_file: str | None = None
    token_file: str
    terms_file: str | None = None
    sidecar: str = "http://127.0.0.1:8480"
    metrics_port: int = 9090
    state_dir: str
    hash_key_file: str | None = None
    audit_signing_key_file: str | None = None
    # Where quarantined items are sealed; without it, a failing item is refused and
    # not kept, and the connector keeps it (the controller reports the quarantine off).
    encryption: EncryptionSettings | None = None


@dataclass(frozen=True)
class Terms:
    """The namespace's protected entities and internal terms, for the outbound checks."""

    protected_entities: tuple[str, ...] = ()
    internal_terms: tuple[str, ...] = ()

    @classmethod
    def from_file(cls, path: Path | None) -> Terms:
        if path is None or not path.exists():
            return cls()
        found = json.loads(path.read_text())
        return cls(
            tuple(found.get("protectedEntities") or ()), tuple(found.get("internalTerms") or ())
        )


class GatewayError(Exception):
    """The gateway did not answer an item; `final` when retrying cannot help."""

    def __init__(self, message: str, final: bool) -> None:
        super().__init__(message)
        self.final = final


class ItemCounters:
    """Items passed, blocked and quarantined, and the last error; kept on disk."""

    def __init__(self, path: Path) -> None:
        self.path = path
        saved = json.loads(path.read_text()) if path.exists() else {}
        self.counts = {o: int(saved.get("counts", {}).get(o, 0)) for o in OUTCOMES}
        self.last_error: dict[str, Any] | None = saved.get("lastError")
        self.registry = CollectorRegistry()
        items = Counter(
            "privatellm_connector_items",
            "Items and results by outcome since the connector was created.",
            ["outcome"],
            registry=self.registry,
        )
        self._items = items
        for outcome, count in self.counts.items():
            items.labels(outcome).inc(count)
        self._last_error = Gauge(
            "privatellm_connector_last_error_timestamp_seconds",
            "When the last item failed, by reason.",
            ["reason"],
            registry=self.registry,
        )
        if self.last_error:
            self._last_error.labels(self.last_error["reason"]).set(self.last_error["time"])

    def count(self, outcome: str, reason: str | None = None, when: float | None = None) -> None:
        self.counts[outcome] += 1
        self._items.labels(outcome).inc()
        if reason is not None:
            when = time.time() if when is None else when
            self.last_error = {"time": when, "reason": reason}
            self._last_error.clear()
            self._last_error.labels(reason).set(when)
        state = {"counts": self.counts, "lastError": self.last_error}
        write_atomically(self.path, json.dumps(state).encode())

    def metrics(self) -> bytes:
        return generate_latest(self.registry)


@dataclass
class PendingResult:
    """A result waiting for the connector to take it."""

    entry: SpoolEntry
    taken: asyncio.Event = dataclass_field(default_factory=asyncio.Event)


class Sidecar:
    """One connector's filters, spool, quarantine and audit; see the module docstring."""

    def __init__(
        self,
        config: SidecarConfig,
        *,
        hash_key: bytes,
        terms: Terms,
        audit: AuditLog,
        quarantine: Quarantine | None,
        spool: Spool,
        session: aiohttp.ClientSession,
        read_token: Callable[[], str],
    ) -> None:
        self.config = config
        self.inbound = InboundChecks(config.filters, hash_key)
        self.outbound = OutboundChecks(
            config.filters.dlp_action,
            terms.protected_entities,
            terms.internal_terms,
            config.filters.pii,
            hash_key,
        )
        self.audit = audit
        self.quarantine = quarantine
        self.spool = spool
        self.session = session
        self.read_token = read_token
        self.counters = ItemCounters(Path(config.state_dir) / "counters.json")
        self._offered: asyncio.Queue[PendingResult] = asyncio.Queue()
        self._leased: dict[str, PendingResult] = {}

    # The connector's side.

    def local_app(self) -> web.Application:
        app = web.Application(
            client_max_size=self.config.filters.max_item_bytes + 1, middlewares=[_unavailable]
        )
        app.router.add_post("/items", self.take_item)
        app.router.add_post("/results", self.take_result)
        app.router.add_get("/results", self.offer_result)
        app.router.add_delete("/results/{item_id}", self.result_taken)
        return app

    def metrics_app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/metrics", self.serve_metrics)
        return app

    async def healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "spooled": len(self.spool)})

    async def serve_metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=self.counters.metrics(), content_type="text/plain")

    async def take_item(self, request: web.Request) -> web.Response:
        limit = self.config.filters.max_item_bytes
        if (request.content_length or 0) > limit:
            # Not read, so not kept: the connector still has it and is told why.
            await self._record_refusal(request, "too_large", f"item larger than {limit} bytes")
            return _refused(413, "too_large", f"items are at most {limit} bytes")
        try:
            data = await request.read()
        except web.HTTPRequestEntityTooLarge:
            await self._record_refusal(request, "too_large", f"item larger than {limit} bytes")
            return _refused(413, "too_large", f"items are at most {limit} bytes")
        source_key = request.headers.get(ITEM_KEY, "")
        model = request.headers.get(MODEL) or (self.config.models or [""])[0]
        if model not in self.config.models:
            listed = ", ".join(self.config.models) or "none"
            return _refused(400, "model_not_listed", f"{MODEL} must be one of: {listed}")
        item_id = stable_item_id(self.config.name, source_key, data)
        deliver_to = request.headers.get(DELIVER_TO) or self._default_destination()
        if deliver_to != CONNECTOR and not (
            allowed := destination_allowed(deliver_to, self.config.egress)
        ):
            return await self._stop(
                item_id,
                data,
                "application/octet-stream",
                "blocked",
                f"egress:{allowed.reason}",
                {"destination": deliver_to},
                403,
            )
        verdict = await asyncio.to_thread(self.inbound.check, data)
        if not verdict.passed:
            outcome = "blocked" if verdict.outcome == "blocked" else "quarantined"
            return await self._stop(
                item_id,
                data,
                verdict.content_type,
                outcome,
                verdict.reason or "refused",
                verdict.to_record(),
                422,
            )
        job = {
            "itemId": item_id,
            "sourceKey": source_key,
            "deliverTo": deliver_to,
            "model": model,
            "text": verdict.text,
        }
        try:
            await asyncio.to_thread(self._spool, item_id, job, GATEWAY)
        except (SpoolFullError, SpoolItemTooLargeError) as error:
            retry = getattr(error, "retry_after", 1.0)
            return _refused(
                503, "spool_full", str(error), {"Retry-After": str(max(1, round(retry)))}
            )
        await self._audit(
            item_id, "passed", verdict.reason, {**verdict.to_record(), "destination": deliver_to}
        )
        self.counters.count("passed")
        return web.json_response({"id": item_id, "outcome": "accepted"}, status=202)

    async def take_result(self, request: web.Request) -> web.Response:
        """A text for a destination, from a connector whose direction is outbound."""
        text = (await request.read()).decode("utf-8", "replace")
        deliver_to = request.headers.get(DELIVER_TO) or self._default_destination()
        item_id = stable_item_id(self.config.name, request.headers.get(ITEM_KEY, ""), text.encode())
        status, body = await self._send_out(
            item_id, text, deliver_to, request.headers.get(ITEM_KEY, "")
        )
        return web.json_response(body, status=status)

    async def offer_result(self, request: web.Request) -> web.Response:
        try:
            wait = min(float(request.query.get("wait", "0")), MAX_RESULT_WAIT_SECONDS)
        except ValueError:
            return _refused(400, "invalid_wait", "wait must be a number of seconds")
        try:
            pending = await asyncio.wait_for(self._offered.get(), timeout=max(wait, 0.001))
        except TimeoutError:
            return web.Response(status=204)
        self._leased[pending.entry.item_id] = pending
        job = json.loads(await asyncio.to_thread(pending.entry.read))
        return web.json_response(
            {"id": pending.entry.item_id, "sourceKey": job["sourceKey"], "text": job["text"]}
        )

    async def result_taken(self, request: web.Request) -> web.Response:
        pending = self._leased.pop(request.match_info["item_id"], None)
        if pending is None:
            return _refused(404, "unknown_result", "no result with that id is handed out")
        pending.taken.set()
        return web.Response(status=204)

    # The spool's side.

    async def deliver(self, entry: SpoolEntry) -> None:
        """Deliver one spooled entry; raises to have it retried."""
        job = json.loads(await asyncio.to_thread(entry.read))
        if entry.destination == GATEWAY:
            await self._to_model(job)
        elif entry.destination == CONNECTOR:
            await self._to_connector(entry)
        else:
            await self._to_destination(entry, job)

    async def _to_model(self, job: dict[str, Any]) -> None:
        try:
            answer = await self._ask_gateway(job["model"], job["text"])
        except GatewayError as error:
            if not error.final:
                raise
            await self._stop(
                job["itemId"],
                job["text"].encode(),
                "text/plain",
                "quarantined",
                "gateway_refused",
                {"message": str(error)},
                0,
            )
            return
        await self._send_out(job["itemId"], answer, job["deliverTo"], job["sourceKey"])

    async def _send_out(
        self, item_id: str, text: str, deliver_to: str, source_key: str
    ) -> tuple[int, dict[str, Any]]:
        """A result through the outbound checks, then spooled for its destination."""
        result_id = f"{item_id}.result"
        verdict = await asyncio.to_thread(self.outbound.check, text)
        if not verdict.passed:
            await self._stop(
                result_id,
                text.encode(),
                "text/plain",
                "blocked",
                verdict.reason or "dlp",
                verdict.to_record(),
                0,
            )
            return 422, {"id": result_id, "outcome": "blocked", "reason": verdict.reason}
        if deliver_to != CONNECTOR and not (
            allowed := destination_allowed(deliver_to, self.config.egress)
        ):
            reason = f"egress:{allowed.reason}"
            await self._stop(
                result_id,
                text.encode(),
                "text/plain",
                "blocked",
                reason,
                {"destination": deliver_to},
                0,
            )
            return 403, {"id": result_id, "outcome": "blocked", "reason": reason}
        job = {
            "itemId": result_id,
            "sourceKey": source_key,
            "deliverTo": deliver_to,
            "text": verdict.text,
        }
        await asyncio.to_thread(self._spool, result_id, job, deliver_to)
        await self._audit(
            result_id, "passed", None, {**verdict.to_record(), "destination": deliver_to}
        )
        self.counters.count("passed")
        return 202, {"id": result_id, "outcome": "accepted"}

    async def _to_destination(self, entry: SpoolEntry, job: dict[str, Any]) -> None:
        body = {
            "id": job["itemId"],
            "connector": self.config.name,
            "sourceKey": job["sourceKey"],
            "result": job["text"],
        }
        async with self.session.post(
            job["deliverTo"], json=body, headers={IDEMPOTENCY_KEY: entry.item_id}
        ) as response:
            if response.status >= 500 or response.status == 429:
                raise GatewayError(f"{job['deliverTo']} answered {response.status}", final=False)
            if response.status >= 400:
                reason = f"destination_refused:{response.status}"
                await self._stop(
                    entry.item_id,
                    job["text"].encode(),
                    "text/plain",
                    "quarantined",
                    reason,
                    {"destination": job["deliverTo"]},
                    0,
                )

    async def _to_connector(self, entry: SpoolEntry) -> None:
        pending = PendingResult(entry)
        await self._offered.put(pending)
        try:
            await asyncio.wait_for(pending.taken.wait(), timeout=RESULT_LEASE_SECONDS)
        finally:
            self._leased.pop(entry.item_id, None)

    async def _ask_gateway(self, model: str, text: str) -> str:
        body = {"model": model, "messages": [{"role": "user", "content": text}]}
        headers = {"Authorization": f"Bearer {await asyncio.to_thread(self.read_token)}"}
        url = self.config.gateway.rstrip("/") + "/v1/chat/completions"
        try:
            async with self.session.post(url, json=body, headers=headers) as response:
                answer = await response.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError) as error:
            raise GatewayError(f"gateway: {error}", final=False) from error
        if response.status >= 500 or response.status == 429:
            raise GatewayError(f"gateway answered {response.status}", final=False)
        if response.status != 200:
            reason = (answer.get("error") or {}).get("code") if isinstance(answer, dict) else None
            raise GatewayError(
                f"gateway refused the item ({response.status}: {reason})", final=True
            )
        return str(answer["choices"][0]["message"].get("content") or "")

    # Shared steps.

    def _default_destination(self) -> str:
        if self.config.direction in ("outbound", "both"):
            return self.config.endpoint
        return CONNECTOR

    def _spool(self, item_id: str, job: dict[str, Any], destination: str) -> None:
        self.spool.put(
            json.dumps(job).encode(),
            destination=destination,
            item_id=item_id,
            content_type="application/json",
        )

    async def _stop(
        self,
        item_id: str,
        data: bytes,
        content_type: str,
        outcome: str,
        reason: str,
        details: dict[str, Any],
        status: int,
    ) -> web.Response:
        """Keep a refused item sealed, audit and count it, and tell the caller why.

        Without a quarantine the item is not kept here; the caller is told, so the
        connector keeps it. A quarantine that fails (Vault away) raises: the item is
        then neither passed nor recorded as kept, and the connector retries it.
        """
        kept = self.quarantine is not None
        if self.quarantine is not None:
            meta = ItemMeta(content_type)
            await asyncio.to_thread(self.quarantine.put, item_id, data, reason, meta)
        await self._audit(item_id, outcome, reason, {**details, "quarantined": kept})
        self.counters.count(outcome, reason)
        return _refused(
            status or 422, reason, f"item {outcome}: {reason}", id=item_id, outcome=outcome
        )

    async def _record_refusal(self, request: web.Request, reason: str, message: str) -> None:
        item = request.headers.get(ITEM_KEY, "")
        await self._audit(f"unread:{item}", "blocked", reason, {"message": message})
        self.counters.count("blocked", reason)

    async def _audit(
        self, item_id: str, outcome: str, reason: str | None, details: dict[str, Any]
    ) -> None:
        record = {
            "kind": AUDIT_KIND,
            "time": time.time(),
            "subject": connector_subject(self.config.namespace, self.config.name),
            "namespace": self.config.namespace,
            "connector": self.config.name,
            "item": item_id,
            "outcome": outcome,
            "reason": reason,
            "details": details,
        }
        await self.audit.append_durable(record)


@web.middleware
async def _unavailable(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """A step that failed here (the quarantine's Vault, the audit disk) is the sidecar's
    fault, not the item's: 503, so the connector keeps the item and tries again."""
    try:
        return await handler(request)
    except web.HTTPException:
        raise
    except Exception as error:
        log.exception("connector item: %s", error)
        message = f"the sidecar cannot take items now: {type(error).__name__}"
        return _refused(503, "sidecar_unavailable", message, {"Retry-After": "5"})


def connector_subject(namespace: str, connector: str) -> str:
    """Who an item's record names: the connector's ServiceAccount, as the gateway sees it."""
    return f"system:serviceaccount:{namespace}:{connector_service_account(connector)}"


def _refused(
    status: int, reason: str, message: str, headers: dict[str, str] | None = None, **extra: Any
) -> web.Response:
    body = {"error": {"code": reason, "message": message}, **extra}
    return web.json_response(body, status=status, headers=headers)


async def serve(
    sidecar: Sidecar, listen: tuple[str, int], metrics: tuple[str, int], stop: Awaitable[None]
) -> None:
    """Run the local port, the metrics port and the spool's delivery until `stop`."""
    runners = []
    for app, (host, port) in ((sidecar.local_app(), listen), (sidecar.metrics_app(), metrics)):
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, host, port).start()
        runners.append(runner)
    draining = asyncio.create_task(sidecar.spool.drain(sidecar.deliver))
    try:
        await stop
    finally:
        draining.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await draining
        for runner in runners:
            await runner.cleanup()
