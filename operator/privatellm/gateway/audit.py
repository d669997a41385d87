"""The audit hook: every request, allowed or denied, yields exactly one event.

The gateway hands events to an `AuditSink`. Events carry who, from where, which
model, what the filters found and did, the decision and its reason, tokens and
latency, a keyed hash of the prompt, and the prompt and response only as sealed
records (see payloads.py).

`commit` returns once the event is kept: for the audit log that is after its
fsync, and the gateway sends no answer before that (see docs/audit.md).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Protocol

import orjson

from privatellm.audit import AuditLog, AuditLogClosedError
from privatellm.audit.records import request_record

if TYPE_CHECKING:
    from privatellm.audit.worm import SegmentShipper

log = logging.getLogger(__name__)


@dataclass(slots=True)
class AuditEvent:
    """One request's record, filled in as the request passes the gateway."""

    request_id: str
    time: float
    namespace: str
    path: str
    source_ip: str | None = None
    subject_kind: str | None = None
    subject: str | None = None
    groups: list[str] = field(default_factory=list)
    auth_method: str | None = None
    subject_namespace: str | None = None
    subject_pod: str | None = None
    model: str | None = None
    served_by: str | None = None
    policy: str | None = None
    data_classes: list[str] = field(default_factory=list)
    findings: dict[str, dict[str, int]] = field(default_factory=dict)
    decision: str = "deny"
    reason: str | None = None
    status: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_ms: float = 0.0
    # How long the request was held while its model scaled from zero; None: not held.
    held_ms: float | None = None
    stream: bool = False
    # HMAC of the prompt's texts, to find equal prompts without decrypting.
    prompt_hash: str | None = None
    # Envelope records (base64) of what the client sent and what the model answered.
    prompt_record: str | None = None
    response_record: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """The event as plain data (shallow: its lists and dicts are not shared after emit)."""
        return {name: getattr(self, name) for name in _FIELDS}

    def count_findings(self, direction: str, entities: Iterator[tuple[str, str]]) -> None:
        """Tally (entity, action) pairs under `direction` (inbound or outbound)."""
        tally = self.findings.setdefault(direction, {})
        for entity, action in entities:
            key = f"{entity}:{action}"
            tally[key] = tally.get(key, 0) + 1


_FIELDS = tuple(f.name for f in fields(AuditEvent))


class AuditSink(Protocol):
    """Where audit events go; neither method may block the event loop for long."""

    def emit(self, event: AuditEvent) -> None:
        """Hand over without waiting (used when the request is being cancelled)."""
        ...

    async def commit(self, event: AuditEvent) -> None:
        """Hand over and wait until the event is kept; raises when it cannot be."""
        ...

    def control(self, record: dict[str, Any]) -> None:
        """Hand over a control action (see privatellm.audit.records.control_record)."""
        ...

    def close(self) -> None: ...


class MemorySink:
    """Keeps events in a list: for tests and for the `filter` dry runs."""

    def __init__(self) -> None:
        self.events: list[AuditEvent] = []
        self.controls: list[dict[str, Any]] = []

    def emit(self, event: AuditEvent) -> None:
        self.events.append(event)

    async def commit(self, event: AuditEvent) -> None:
        self.events.append(event)

    def control(self, record: dict[str, Any]) -> None:
        self.controls.append(record)

    def close(self) -> None:
        pass


class JsonLinesSink:
    """Writes one JSON line per event; flushed in batches by `flush` and on close.

    Not durable and not chained: for local runs. Production uses AuditLogSink.
    """

    def __init__(self, stream: IO[str]) -> None:
        self._file = stream
        self._lock = threading.Lock()

    @classmethod
    def append_to(cls, path: Path) -> JsonLinesSink:
        path.parent.mkdir(parents=True, exist_ok=True)
        return cls(path.open("a", encoding="utf-8"))

    def emit(self, event: AuditEvent) -> None:
        self.control(event.as_dict())

    async def commit(self, event: AuditEvent) -> None:
        self.emit(event)

    def control(self, record: dict[str, Any]) -> None:
        line = orjson.dumps(record).decode() + "\n"
        with self._lock:
            self._file.write(line)

    def flush(self) -> None:
        with self._lock:
            self._file.flush()

    def close(self) -> None:
        with self._lock:
            self._file.close()


class AuditLogSink:
    """Events into the tamper-evident audit log (privatellm.audit), durable on commit.

    With a shipper, closing seals the open segment and waits (bounded) until every
    sealed segment is in WORM storage, so a Pod that goes away leaves nothing behind.
    """

    def __init__(
        self, log: AuditLog, pod: str | None = None, shipper: SegmentShipper | None = None
    ) -> None:
        self.log = log
        self.pod = pod
        self.shipper = shipper

    def emit(self, event: AuditEvent) -> None:
        self.control(request_record(event.as_dict(), self.pod))

    async def commit(self, event: AuditEvent) -> None:
        await self.log.append_durable(request_record(event.as_dict(), self.pod))

    def control(self, record: dict[str, Any]) -> None:
        try:
            future = self.log.append(record)
        except AuditLogClosedError as error:
            log.error("an audit record was not kept: %s", error)
            return
        future.add_done_callback(_log_failure)

    def close(self) -> None:
        if self.shipper is None:
            self.log.close()
            return
        self.log.seal()
        self.log.close()
        if not self.shipper.close():
            log.error("audit: segments left unshipped; they ship when the log is next opened")


def _log_failure(future: Future[int]) -> None:
    if future.exception() is not None:
        log.error("an audit event was not kept: %s", future.exception())
