"""The Tuesday audit: records by subject, time, model and data class, from verified segments.

Checkpoints are checked first (signatures and links: cheap). A sealed segment
whose time range overlaps the question is then read once: its data and index
files must hash to what its checkpoint signed before the index is trusted to
pick records. The active segment has no checkpoint yet, so every record in it
is walked and chain-checked. Any problem makes the whole answer an error: a
partial trail is never presented as complete.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from .checkpoint import Checkpoint
from .files import load_checkpoints, read_log_id, writer_is_live
from .index import SegmentIndex
from .segment import SegmentReader, genesis, segment_name
from .verify import (
    Problem,
    VerifyReport,
    verify_checkpoints,
    verify_records,
    verify_segment_files,
)

_LENGTH_BYTES = 4


class AuditIntegrityError(Exception):
    """The log failed verification where the question needed it; lists every problem."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__("; ".join(str(p) for p in problems))


@dataclass(frozen=True)
class AuditQuery:
    """What to find; None matches anything. Times are unix seconds, `end` exclusive."""

    subject: str | None = None
    start: float | None = None
    end: float | None = None
    model: str | None = None
    data_class: str | None = None
    prompt_hash: str | None = None

    def overlaps(self, low: float, high: float) -> bool:
        return (self.start is None or high >= self.start) and (self.end is None or low < self.end)

    def matches(self, record: dict[str, Any]) -> bool:
        when = record.get("time", 0.0)
        return (
            (self.start is None or when >= self.start)
            and (self.end is None or when < self.end)
            and (self.subject is None or record.get("subject") == self.subject)
            and (self.model is None or record.get("model") == self.model)
            and (self.data_class is None or self.data_class in (record.get("data_classes") or ()))
            and (self.prompt_hash is None or record.get("prompt_hash") == self.prompt_hash)
        )

    def candidates(self, index: SegmentIndex) -> list[int] | None:
        """Offsets the index allows, or None when no indexed field narrows the search."""
        selected: set[int] | None = None
        for section, value in (
            ("subjects", self.subject),
            ("models", self.model),
            ("data_classes", self.data_class),
        ):
            if value is None:
                continue
            offsets = set(index.section(section).get(value, ()))
            selected = offsets if selected is None else selected & offsets
        return None if selected is None else sorted(selected)


@dataclass
class QueryResult:
    records: list[dict[str, Any]] = field(default_factory=list)
    segments_read: int = 0
    segments_skipped: int = 0
    # Lawful gaps, e.g. segments removed after their retention period.
    notices: list[str] = field(default_factory=list)
    seconds: float = 0.0


def query_log(
    directory: Path,
    public_key: Ed25519PublicKey,
    query: AuditQuery,
    *,
    now: float | None = None,
) -> QueryResult:
    """Every record matching `query`, in log order; AuditIntegrityError if the log is broken."""
    started = time.perf_counter()
    now = time.time() if now is None else now
    report = VerifyReport()
    checkpoints = load_checkpoints(directory)
    verify_checkpoints(checkpoints, read_log_id(directory), public_key, report)
    result = QueryResult()
    for checkpoint in checkpoints:
        if not query.overlaps(checkpoint.min_time, checkpoint.max_time):
            result.segments_skipped += 1
            continue
        result.records.extend(_sealed_matches(directory, checkpoint, query, now, report, result))
    result.records.extend(_active_matches(directory, checkpoints, query, report, result))
    if report.problems:
        raise AuditIntegrityError(report.problems)
    result.notices.extend(report.notices)
    result.seconds = time.perf_counter() - started
    return result


def _sealed_matches(
    directory: Path,
    checkpoint: Checkpoint,
    query: AuditQuery,
    now: float,
    report: VerifyReport,
    result: QueryResult,
) -> Iterator[dict[str, Any]]:
    path = directory / f"{segment_name(checkpoint.segment)}.log"
    if not path.exists():
        if checkpoint.retain_until <= now:
            result.notices.append(f"{path.name}: removed after its retention period ended")
        else:
            report.problem(path.name, None, "segment removed before its retention period ended")
        return
    problems_before = len(report.problems)
    data = verify_segment_files(directory, checkpoint, report)
    if len(report.problems) > problems_before:
        return
    result.segments_read += 1
    index = SegmentIndex.from_bytes(path.with_suffix(".idx").read_bytes())
    offsets = query.candidates(index)
    bodies = _bodies_at(data, offsets) if offsets is not None else _all_bodies(path, data)
    yield from _matching(bodies, query)


def _active_matches(
    directory: Path,
    checkpoints: list[Checkpoint],
    query: AuditQuery,
    report: VerifyReport,
    result: QueryResult,
) -> Iterator[dict[str, Any]]:
    """The open segment has no checkpoint yet: every record in it is walked and checked."""
    sealed = {c.segment for c in checkpoints}
    last = checkpoints[-1] if checkpoints else None
    seq = last.first_seq + last.count if last else 1
    chain = bytes.fromhex(last.last_chain) if last else genesis(read_log_id(directory))
    for path in sorted(directory.glob("*.log")):
        if int(path.stem) in sealed:
            continue
        if int(path.stem) != len(checkpoints) + 1:
            report.problem(path.name, None, "an unsealed segment that is not the newest one")
            continue
        bodies: list[bytes] = []
        live = writer_is_live(directory)
        verify_records(
            path, path.read_bytes(), seq, chain, report, being_written=live, bodies=bodies
        )
        result.segments_read += 1 if bodies else 0
        yield from _matching(bodies, query)


def _bodies_at(data: bytes, offsets: Iterable[int]) -> Iterator[bytes]:
    for offset in offsets:
        length = int.from_bytes(data[offset : offset + _LENGTH_BYTES], "big")
        yield data[offset + _LENGTH_BYTES : offset + _LENGTH_BYTES + length]


def _all_bodies(path: Path, data: bytes) -> Iterator[bytes]:
    # The file already matched its signed hash, so the chain needs no second walk.
    for item in SegmentReader(path, data).frames(strict=False):
        yield item.body


def _matching(bodies: Iterable[bytes], query: AuditQuery) -> Iterator[dict[str, Any]]:
    for body in bodies:
        record = orjson.loads(body)
        if query.matches(record):
            yield record
