"""The audit hook: every request, allowed or denied, yields exactly one event.

The gateway hands events to an `AuditSink`. Events carry who, from where, which
model, what the filters found and did, the decision and its reason, tokens and
latency; never the prompt or the response themselves (those go, encrypted, to
the audit log's payload store).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import IO, Any, Protocol

import orjson


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
    stream: bool = False
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
    """Where audit events go; `emit` must not block the event loop for long."""

    def emit(self, event: AuditEvent) -> None: ...

    def close(self) -> None: ...


class MemorySink:
    """Keeps events in a list: for tests and for the `filter` dry runs."""

    def __init__(self) -> None:
        self.events: list[AuditEvent] = []

    def emit(self, event: AuditEvent) -> None:
        self.events.append(event)

    def close(self) -> None:
        pass


class JsonLinesSink:
    """Writes one JSON line per event; flushed in batches by `flush` and on close."""

    def __init__(self, stream: IO[str]) -> None:
        self._file = stream
        self._lock = threading.Lock()

    @classmethod
    def append_to(cls, path: Path) -> JsonLinesSink:
        path.parent.mkdir(parents=True, exist_ok=True)
        return cls(path.open("a", encoding="utf-8"))

    def emit(self, event: AuditEvent) -> None:
        line = orjson.dumps(event.as_dict()).decode() + "\n"
        with self._lock:
            self._file.write(line)

    def flush(self) -> None:
        with self._lock:
            self._file.flush()

    def close(self) -> None:
        with self._lock:
            self._file.close()
