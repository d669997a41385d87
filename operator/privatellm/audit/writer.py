"""The audit log writer: write-ahead, group commit, one writer per directory.

`append` queues a record and returns a future; one thread takes everything
queued, chains and frames it, writes it in one call and fdatasyncs, then
resolves the futures with the records' sequence numbers. A record is
acknowledged only once it is on disk, so a crash (kill -9, power loss) can lose
only records nobody was told about. When a write or fsync fails the log stops
accepting records: the caller must treat that as "not recorded" and fail closed.

A segment is sealed when it reaches its record, byte or age limit: the index
and the signed checkpoint are written (each to a temporary file, fsynced, then
renamed), and the next segment starts from the last chain hash.

On open, a segment left unsealed by a crash is read back; bytes after its last
intact record (a torn, never-acknowledged write) are moved to a `.torn-<offset>`
file, not deleted, and an `audit.recovery` record saying so is appended.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from privatellm.durable import fsync_directory

from .checkpoint import Checkpoint, Signer
from .files import load_checkpoints, read_log_id, write_durably
from .index import SegmentIndex
from .merkle import MerkleFrontier, leaf_hash
from .records import RECOVERY
from .retention import Retention
from .segment import (
    MAX_BODY_BYTES,
    AuditFormatError,
    SegmentHeader,
    SegmentReader,
    canonical,
    frame,
    genesis,
    segment_name,
)

log = logging.getLogger(__name__)

# Who waits for a record: a thread (concurrent future) or an event loop (asyncio future).
Waiter = Future[int] | asyncio.Future[int]


class AuditLogClosedError(Exception):
    """The log is closed, or stopped after a failed write: the record was not kept."""


class AuditRecordError(Exception):
    """This record cannot be kept (too large, or not JSON); the log goes on."""


@dataclass(frozen=True)
class SegmentLimits:
    """When the active segment is sealed: whichever limit comes first."""

    records: int = 100_000
    bytes: int = 64 * 1024 * 1024
    seconds: float = 3600.0


@dataclass(frozen=True)
class SealedSegment:
    """The files of a segment just sealed, for shipping."""

    checkpoint: Checkpoint
    data: Path
    index: Path
    checkpoint_file: Path


def _unused_name(segment: Path, offset: int) -> Path:
    """`<segment>.torn-<offset>`, with a counter when an earlier crash used that name."""
    candidate = segment.with_name(f"{segment.name}.torn-{offset}")
    number = 1
    while candidate.exists():
        candidate = segment.with_name(f"{segment.name}.torn-{offset}.{number}")
        number += 1
    return candidate


def _recovery_record(segment: Path, moved: Path, reason: str) -> dict[str, Any]:
    data = moved.read_bytes()
    offset = int(moved.name.split(".torn-")[1].split(".")[0])
    return {
        "kind": "control",
        "action": RECOVERY,
        "subject": "audit-writer",
        "segment": segment.name,
        "offset": offset,
        "dropped_bytes": len(data),
        "dropped_sha256": hashlib.sha256(data).hexdigest(),
        "quarantine": moved.name,
        "reason": reason,
    }


class _Segment:
    """The active segment's open file and running state."""

    def __init__(self, path: Path, header: SegmentHeader, first_seq: int) -> None:
        self.path = path
        self.header = header
        self.first_seq = first_seq
        self.index = SegmentIndex()
        # The Merkle root so far, so sealing needs no pass over the records.
        self.merkle = MerkleFrontier()
        self.file_hash = hashlib.sha256()
        self.size = 0
        self.last_chain = header.prev_chain
        self.opened = time.monotonic()
        self.fd = -1


class AuditLog:
    """An open audit log directory; see the module docstring."""

    def __init__(
        self,
        directory: Path,
        signer: Signer,
        *,
        limits: SegmentLimits | None = None,
        retention: Retention | None = None,
        on_sealed: Callable[[SealedSegment], None] | None = None,
        prune: Callable[[Checkpoint], bool] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """With `prune`, sealed segments past their retention date for which it returns
        True (say, once shipped to WORM storage) lose their data and index files, at open
        and after each seal; their checkpoints stay, so the chain still verifies."""
        self.directory = directory
        self.signer = signer
        self.limits = limits or SegmentLimits()
        self.retention = retention or Retention()
        self.on_sealed = on_sealed
        self.prune = prune
        self.clock = clock
        directory.mkdir(parents=True, exist_ok=True)
        self._lock_file = (directory / "LOCK").open("a")
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock_file.close()
            raise AuditLogClosedError(f"{directory} is open in another writer") from None
        self.log_id = self._log_id()
        self._pending: list[tuple[dict[str, Any], Waiter]] = []
        self._cond = threading.Condition()
        self._closing = False
        self._failure: BaseException | None = None
        self._seal_waiters: list[threading.Event] = []
        self.next_seq = 1
        self._checkpoint: Checkpoint | None = None
        self._kept: list[Checkpoint] = []
        self._segment = self._recover()
        self._prune_expired()
        self._thread = threading.Thread(target=self._run, name="audit-writer", daemon=True)
        self._thread.start()

    # The producers' side.

    def append(self, record: dict[str, Any]) -> Future[int]:
        """Queue `record`; the future gives its sequence number once it is durable."""
        future: Future[int] = Future()
        self._enqueue(record, future)
        return future

    async def append_durable(self, record: dict[str, Any]) -> int:
        """Append and wait, without blocking the event loop, until the record is durable."""
        # An asyncio future: the writer wakes each loop once per batch, not per record.
        waiter: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._enqueue(record, waiter)
        return await waiter

    def _enqueue(self, record: dict[str, Any], waiter: Waiter) -> None:
        with self._cond:
            if self._closing or self._failure is not None:
                raise AuditLogClosedError(self._refusal())
            self._pending.append((record, waiter))
            self._cond.notify()

    def append_sync(self, record: dict[str, Any], timeout: float | None = 30.0) -> int:
        return self.append(record).result(timeout)

    def seal(self, timeout: float | None = 30.0) -> None:
        """Seal the active segment now (if it holds records) and wait until that is done."""
        done = threading.Event()
        with self._cond:
            if self._closing or self._failure is not None:
                raise AuditLogClosedError(self._refusal())
            self._seal_waiters.append(done)
            self._cond.notify()
        if not done.wait(timeout):
            raise TimeoutError("the audit log did not seal in time")

    def close(self) -> None:
        """Write what is queued, then stop. The active segment stays open for the next writer."""
        with self._cond:
            self._closing = True
            self._cond.notify()
        self._thread.join()
        if self._segment.fd >= 0:
            os.close(self._segment.fd)
            self._segment.fd = -1
        self._lock_file.close()

    def _refusal(self) -> str:
        if self._failure is not None:
            return f"the audit log stopped after a failed write: {self._failure}"
        return "the audit log is closed"

    # Opening and recovery.

    def _log_id(self) -> uuid.UUID:
        path = self.directory / "LOG_ID"
        if path.exists():
            return read_log_id(self.directory)
        log_id = uuid.uuid4()
        write_durably(path, f"{log_id}\n".encode())
        return log_id

    def _recover(self) -> _Segment:
        segments = sorted(self.directory.glob("*.log"))
        checkpoints = load_checkpoints(self.directory)
        self._checkpoint = checkpoints[-1] if checkpoints else None
        if self._checkpoint is not None:
            self.next_seq = self._checkpoint.first_seq + self._checkpoint.count
        sealed = {c.segment for c in checkpoints}
        # Sealed segments still on disk: what retention may remove later.
        self._kept = [
            c for c in checkpoints if (self.directory / f"{segment_name(c.segment)}.log").exists()
        ]
        unsealed = [p for p in segments if int(p.stem) not in sealed]
        if len(unsealed) > 1 or (unsealed and int(unsealed[0].stem) != len(checkpoints) + 1):
            raise AuditFormatError(
                unsealed[0].name, 0, "an unsealed segment that is not the newest one"
            )
        if not unsealed:
            return self._start_segment()
        return self._reopen(unsealed[0])

    def _reopen(self, path: Path) -> _Segment:
        reader = SegmentReader(path)
        segment = _Segment(path, reader.header, self.next_seq)
        torn: AuditFormatError | None = None
        recorded: set[str] = set()
        try:
            for item in reader.frames():
                record = orjson.loads(item.body)
                segment.index.add(item.offset, record)
                segment.merkle.add(leaf_hash(item.body))
                self.next_seq = record["seq"] + 1
                if record.get("action") == RECOVERY:
                    recorded.add(record["quarantine"])
        except AuditFormatError as error:
            torn = error
        valid = reader.data[: reader.valid_end]
        segment.file_hash.update(valid)
        segment.size = len(valid)
        segment.last_chain = reader.last_chain
        reasons: dict[str, str] = {}
        if torn is not None:
            quarantine = _unused_name(path, reader.valid_end)
            write_durably(quarantine, reader.data[reader.valid_end :])
            with path.open("r+b") as file:
                file.truncate(reader.valid_end)
                os.fsync(file.fileno())
            log.warning("audit: %s; moved the tail to %s", torn, quarantine.name)
            reasons[quarantine.name] = torn.message
        segment.fd = os.open(path, os.O_WRONLY | os.O_APPEND)
        # Every tail moved aside gets its record, also one whose record a second crash
        # lost before it was synced.
        for moved in sorted(path.parent.glob(f"{path.name}.torn-*")):
            if moved.name not in recorded:
                reason = reasons.get(moved.name, "moved aside by a recovery whose record was lost")
                self._pending.append((_recovery_record(path, moved, reason), Future()))
        return segment

    def _start_segment(self) -> _Segment:
        number = (self._checkpoint.segment + 1) if self._checkpoint else 1
        prev = (
            bytes.fromhex(self._checkpoint.last_chain) if self._checkpoint else genesis(self.log_id)
        )
        header = SegmentHeader(number, self.log_id, prev)
        path = self.directory / f"{segment_name(number)}.log"
        data = header.to_bytes()
        write_durably(path, data)
        segment = _Segment(path, header, self.next_seq)
        segment.file_hash.update(data)
        segment.size = len(data)
        segment.fd = os.open(path, os.O_WRONLY | os.O_APPEND)
        return segment

    # The writer thread.

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._closing and not self._seal_waiters:
                    if not self._cond.wait(timeout=self._seconds_to_age_limit()):
                        break
                batch, self._pending = self._pending, []
                seal_waiters, self._seal_waiters = self._seal_waiters, []
                closing = self._closing
            try:
                if batch:
                    self._write(batch)
                if seal_waiters or self._over_age_limit():
                    self._seal()
            except Exception as error:  # any failure stops the log
                self._fail(error, batch)
                return
            finally:
                for waiter in seal_waiters:
                    waiter.set()
            if closing and not batch:
                return

    def _seconds_to_age_limit(self) -> float:
        if self._segment.index.count == 0:
            return self.limits.seconds
        return max(0.01, self.limits.seconds - (time.monotonic() - self._segment.opened))

    def _over_age_limit(self) -> bool:
        segment = self._segment
        return segment.index.count > 0 and (
            time.monotonic() - segment.opened >= self.limits.seconds
        )

    def _full(self) -> bool:
        segment = self._segment
        return segment.index.count >= self.limits.records or segment.size >= self.limits.bytes

    def _write(self, batch: list[tuple[dict[str, Any], Waiter]]) -> None:
        start = 0
        while start < len(batch):
            if self._full():
                self._seal()
            start = self._write_until_full(batch, start)
        if self._full():
            self._seal()

    def _write_until_full(self, batch: list[tuple[dict[str, Any], Waiter]], start: int) -> int:
        """Frame records from `start` until the segment is full; write, sync, resolve them."""
        segment = self._segment
        frames: list[bytes] = []
        done: list[tuple[Waiter, int | BaseException]] = []
        chain, offset, seq = segment.last_chain, segment.size, self.next_seq
        now = self.clock()
        position = start
        sha256, index, merkle = hashlib.sha256, segment.index, segment.merkle
        for record, future in batch[start:]:
            position += 1
            record["seq"] = seq
            record.setdefault("time", now)
            try:
                body = canonical(record)
            except TypeError as error:  # a value JSON cannot hold: refuse this record only
                done.append((future, AuditRecordError(f"the record cannot be encoded: {error}")))
                continue
            if len(body) > MAX_BODY_BYTES:
                refusal = f"the record is {len(body)} bytes; at most {MAX_BODY_BYTES} are kept"
                done.append((future, AuditRecordError(refusal)))
                continue
            chain = sha256(chain + body).digest()
            framed = frame(body, chain)
            frames.append(framed)
            index.add(offset, record)
            merkle.add(leaf_hash(body))
            done.append((future, seq))
            offset += len(framed)
            seq += 1
            if index.count >= self.limits.records or offset >= self.limits.bytes:
                break
        data = b"".join(frames)
        written = 0
        while written < len(data):
            written += os.write(segment.fd, data[written:])
        os.fdatasync(segment.fd)
        segment.file_hash.update(data)
        segment.size, segment.last_chain, self.next_seq = offset, chain, seq
        settle(done)
        return position

    def _seal(self) -> None:
        segment = self._segment
        if segment.index.count == 0:
            return
        index_bytes = segment.index.to_bytes()
        index_path = segment.path.with_suffix(".idx")
        write_durably(index_path, index_bytes)
        previous = self._checkpoint
        checkpoint = self.signer.sign(
            Checkpoint(
                log_id=str(self.log_id),
                segment=segment.header.number,
                first_seq=segment.first_seq,
                count=segment.index.count,
                min_time=segment.index.min_time,
                max_time=segment.index.max_time,
                prev_chain=segment.header.prev_chain.hex(),
                last_chain=segment.last_chain.hex(),
                merkle_root=segment.merkle.root().hex(),
                file_sha256=segment.file_hash.hexdigest(),
                file_size=segment.size,
                index_sha256=hashlib.sha256(index_bytes).hexdigest(),
                prev_checkpoint=previous.digest() if previous else "",
                sealed_at=self.clock(),
                retain_until=self.retention.retain_until(
                    segment.index.max_time,
                    segment.index.data_classes,
                    unclassified=segment.index.unclassified > 0,
                ),
            )
        )
        checkpoint_path = segment.path.with_suffix(".ckpt")
        write_durably(checkpoint_path, checkpoint.to_bytes())
        os.close(segment.fd)
        segment.fd = -1
        self._checkpoint = checkpoint
        self._kept.append(checkpoint)
        self._segment = self._start_segment()
        if self.on_sealed is not None:
            self.on_sealed(SealedSegment(checkpoint, segment.path, index_path, checkpoint_path))
        self._prune_expired()

    def _prune_expired(self) -> None:
        if self.prune is None:
            return
        now, removed, kept = self.clock(), [], []
        for checkpoint in self._kept:
            if checkpoint.retain_until > now or not self.prune(checkpoint):
                kept.append(checkpoint)
                continue
            data = self.directory / f"{segment_name(checkpoint.segment)}.log"
            data.with_suffix(".idx").unlink(missing_ok=True)
            data.unlink(missing_ok=True)
            removed.append(checkpoint.segment)
        self._kept = kept
        if removed:
            fsync_directory(self.directory)
            log.info("audit: removed segments %s after their retention period", removed)
            record = {
                "kind": "control",
                "action": "audit.retention",
                "subject": "audit-writer",
                "segments": removed,
            }
            with self._cond:
                self._pending.append((record, Future()))

    def _fail(self, error: Exception, batch: list[tuple[dict[str, Any], Waiter]]) -> None:
        log.error("audit: writing failed, no more records are accepted: %s", error)
        with self._cond:
            self._failure = error
            pending, self._pending = self._pending, []
        refusal = AuditLogClosedError(f"the record was not kept: {error}")
        settle([(waiter, refusal) for _, waiter in batch + pending])


def settle(outcomes: list[tuple[Waiter, int | BaseException]]) -> None:
    """Give each waiter its sequence number or error; each event loop is woken once."""
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[int], Any]]] = {}
    for waiter, outcome in outcomes:
        if isinstance(waiter, asyncio.Future):
            by_loop.setdefault(waiter.get_loop(), []).append((waiter, outcome))
        elif not waiter.done() and waiter.set_running_or_notify_cancel():
            if isinstance(outcome, BaseException):
                waiter.set_exception(outcome)
            else:
                waiter.set_result(outcome)
    for loop, waiters in by_loop.items():
        with contextlib.suppress(RuntimeError):  # the loop was closed: nobody waits
            loop.call_soon_threadsafe(_settle_in_loop, waiters)


def _settle_in_loop(waiters: list[tuple[asyncio.Future[int], Any]]) -> None:
    for waiter, outcome in waiters:
        if waiter.done():  # cancelled meanwhile
            continue
        if isinstance(outcome, BaseException):
            waiter.set_exception(outcome)
        else:
            waiter.set_result(outcome)
