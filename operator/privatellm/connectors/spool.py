"""Back-pressure in a connector's sidecar: a bounded on-disk queue, drained with retries.

An item is written to the spool (temporary file, fsync, rename, fsync of the folder)
before the connector is told it was taken, and its file is removed only after the
destination acknowledged it: delivery is at least once. A crash between the
destination's acknowledgement and the removal delivers the item again on restart;
every delivery carries the item's stable id as its `Idempotency-Key`, so the
receiver can tell the repeat from a new item. When the spool is full, `put`
refuses (SpoolFullError) instead of dropping anything: the caller answers 503 with
Retry-After and the connector keeps the item.

Items for one destination are delivered one at a time in arrival order; a
destination that fails is retried with capped, jittered exponential backoff
without holding up the others.

Layout of a spool directory:

    LOCK                       held by the one process using the spool (flock)
    00000000000000000001.entry an item: one JSON header line, then the item's bytes
    .<random>.tmp              a write in progress; left over after a crash, removed on open
    <n>.entry.corrupt          an entry whose bytes no longer match its header, set aside
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import logging
import os
import random
import re
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import orjson

from privatellm.durable import fsync_directory, write_atomically

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
ENTRY_SUFFIX = ".entry"
CORRUPT_SUFFIX = ".corrupt"
DEFAULT_DESTINATION = "gateway"
DEFAULT_CONTENT_TYPE = "application/octet-stream"
IDEMPOTENCY_KEY = "Idempotency-Key"
# The header line of an entry holds a few short fields; anything longer is not ours.
MAX_HEADER_BYTES = 4096
# Ids, destinations and content types travel in HTTP headers: visible ASCII only,
# so that no value can end a header line or start another.
HEADER_TEXT = re.compile(r"[\x21-\x7e][\x20-\x7e]{0,254}")
ITEM_ID = re.compile(r"[\x21-\x7e]{1,255}")
_ID_DOMAIN = b"privatellm.io/spool/item-id/v1"


class SpoolError(Exception):
    """The spool cannot do what was asked."""


class SpoolFullError(SpoolError):
    """The spool is at its bound; nothing was accepted. Answer 503 with Retry-After."""

    def __init__(self, message: str, retry_after: float) -> None:
        self.retry_after = retry_after
        super().__init__(message)


class SpoolItemTooLargeError(SpoolError):
    """The item alone is larger than the spool may ever hold; retrying cannot help."""


class SpoolCorruptError(SpoolError):
    """An entry's file no longer matches its header (disk damage, an outside write)."""

    def __init__(self, path: Path, reason: str) -> None:
        self.path = path
        super().__init__(f"spool entry {path.name}: {reason}")


def stable_item_id(connector: str, source_key: str, data: bytes) -> str:
    """The id of an item: SHA-256 over connector, source key and content, each length-prefixed.

    The same item handed over twice (a connector retrying after a timeout) gets the same id.
    """
    digest = hashlib.sha256()
    for field in (_ID_DOMAIN, connector.encode(), source_key.encode(), data):
        digest.update(len(field).to_bytes(8, "big"))
        digest.update(field)
    return digest.hexdigest()


@dataclass(frozen=True)
class Backoff:
    """Delays between attempts: `base` doubling per failure up to `cap`, less some jitter.

    With `jitter` j the delay is drawn from ((1 - j) * d, d], so that sidecars that lost
    the same destination at the same moment do not all come back at the same moment.
    """

    base: float = 0.5
    cap: float = 60.0
    jitter: float = 0.5

    def __post_init__(self) -> None:
        if self.base <= 0 or self.cap < self.base or not 0 <= self.jitter <= 1:
            raise ValueError("backoff needs 0 < base <= cap and 0 <= jitter <= 1")

    def delay(self, attempt: int, rand: float) -> float:
        """Seconds to wait after failed attempt number `attempt` (1, 2, ...); rand in [0, 1)."""
        # The exponent is clamped: past 2**62 the cap has long been reached.
        ceiling = min(self.cap, self.base * 2.0 ** min(max(attempt - 1, 0), 62))
        return ceiling * (1.0 - self.jitter * rand)


@dataclass(frozen=True)
class SpoolEntry:
    """One item waiting for its destination; its bytes stay on disk until `read`."""

    item_id: str
    seq: int
    destination: str
    content_type: str
    size: int
    sha256: str
    created: float
    path: Path

    @property
    def headers(self) -> dict[str, str]:
        """HTTP headers to deliver the item with: its Idempotency-Key and Content-Type."""
        return {IDEMPOTENCY_KEY: self.item_id, "Content-Type": self.content_type}

    def read(self) -> bytes:
        """The item's bytes; SpoolCorruptError when they differ from what was written."""
        raw = self.path.read_bytes()
        end = raw.find(b"\n")
        data = raw[end + 1 :] if end >= 0 else b""
        if end < 0 or len(data) != self.size:
            raise SpoolCorruptError(self.path, f"holds {len(data)} bytes, {self.size} were written")
        if hashlib.sha256(data).hexdigest() != self.sha256:
            raise SpoolCorruptError(self.path, "content differs from its SHA-256")
        return data


def _check_header_text(what: str, value: str, pattern: re.Pattern[str] = HEADER_TEXT) -> None:
    if not pattern.fullmatch(value):
        raise ValueError(
            f"{what} {value[:80]!r} refused: 1 to 255 printable ASCII characters, no line breaks"
        )


def _entry_name(seq: int) -> str:
    return f"{seq:020d}{ENTRY_SUFFIX}"


def _parse_entry(path: Path) -> SpoolEntry:
    """The entry in `path`, from its header line; the item's bytes are checked at `read`."""
    with path.open("rb") as file:
        head = file.read(MAX_HEADER_BYTES + 1)
    end = head.find(b"\n")
    if end < 0:
        raise SpoolCorruptError(path, "no header line")
    try:
        header: dict[str, Any] = orjson.loads(head[:end])
        entry = SpoolEntry(
            item_id=str(header["id"]),
            seq=int(header["seq"]),
            destination=str(header["destination"]),
            content_type=str(header["content_type"]),
            size=int(header["size"]),
            sha256=str(header["sha256"]),
            created=float(header["created"]),
            path=path,
        )
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as error:
        raise SpoolCorruptError(path, f"unreadable header: {error}") from error
    if header.get("version") != FORMAT_VERSION:
        raise SpoolCorruptError(path, f"unknown format version {header.get('version')!r}")
    if path.name != _entry_name(entry.seq):
        raise SpoolCorruptError(path, f"header says entry {entry.seq}")
    if path.stat().st_size != end + 1 + entry.size:
        raise SpoolCorruptError(path, "file size differs from the header's")
    return entry


class Spool:
    """A bounded, durable queue of items per destination; see the module docstring.

    `put` blocks until the entry is on disk: an event loop calls it through
    `asyncio.to_thread`, any thread may. `drain` runs in one event loop. `clock`,
    `sleep` and `rand` (uniform in [0, 1), for jitter) are injectable so that retries
    can be tested without waiting.
    """

    def __init__(
        self,
        directory: Path,
        connector: str,
        *,
        max_entries: int = 10_000,
        max_bytes: int = 1024 * 1024 * 1024,
        backoff: Backoff | None = None,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rand: Callable[[], float] = random.random,
    ) -> None:
        if max_entries < 1 or max_bytes < 1:
            raise ValueError("max_entries and max_bytes must be at least 1")
        self.directory = directory
        self.connector = connector
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.backoff = backoff or Backoff()
        self._clock = clock
        self._sleep = sleep
        self._rand = rand
        self._lock = threading.Lock()
        self._queues: dict[str, deque[SpoolEntry]] = {}
        self._by_key: dict[tuple[str, str], SpoolEntry] = {}
        self._disk_bytes: dict[int, int] = {}
        self._held = 0
        self._retry_at: dict[str, float] = {}
        self._next_seq = 1
        self._closed = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._lock_file = (directory / "LOCK").open("a")
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock_file.close()
            raise SpoolError(f"{directory} is in use by another spool") from None
        self._recover()

    def _recover(self) -> None:
        """Load pending entries in arrival order; remove writes a crash left unfinished."""
        for leftover in self.directory.glob(".*.tmp"):
            # Never renamed into place, so never acknowledged to the connector.
            leftover.unlink()
        entries: list[SpoolEntry] = []
        for path in sorted(self.directory.glob(f"*{ENTRY_SUFFIX}")):
            try:
                entries.append(_parse_entry(path))
            except SpoolCorruptError as error:
                self._set_aside(path, str(error))
        for entry in sorted(entries, key=lambda e: e.seq):
            self._index(entry, entry.path.stat().st_size)
            self._next_seq = entry.seq + 1
        fsync_directory(self.directory)

    def _index(self, entry: SpoolEntry, disk_bytes: int) -> None:
        self._queues.setdefault(entry.destination, deque()).append(entry)
        self._by_key[(entry.destination, entry.item_id)] = entry
        self._disk_bytes[entry.seq] = disk_bytes
        self._held += disk_bytes

    def _set_aside(self, path: Path, reason: str) -> None:
        moved = path.with_name(path.name + CORRUPT_SUFFIX)
        os.replace(path, moved)
        fsync_directory(self.directory)
        log.error("spool: %s; moved to %s, it will not be delivered", reason, moved.name)

    def close(self) -> None:
        """Release the directory; pending entries stay for the next open."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._lock_file.close()

    def __enter__(self) -> Spool:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.close()

    # What is pending.

    def __len__(self) -> int:
        with self._lock:
            return len(self._by_key)

    @property
    def held_bytes(self) -> int:
        """Bytes on disk of the pending entries."""
        with self._lock:
            return self._held

    def pending(self, destination: str | None = None) -> list[SpoolEntry]:
        """Pending entries in arrival order, of one destination or of all."""
        with self._lock:
            if destination is not None:
                return list(self._queues.get(destination, ()))
            return sorted(self._by_key.values(), key=lambda e: e.seq)

    def retry_after(self) -> float:
        """Seconds a refused connector should wait: until the next retry is due, at least 1."""
        with self._lock:
            return self._retry_after_locked()

    # Putting items in.

    def put(
        self,
        data: bytes,
        *,
        destination: str = DEFAULT_DESTINATION,
        source_key: str = "",
        item_id: str | None = None,
        content_type: str = DEFAULT_CONTENT_TYPE,
    ) -> SpoolEntry:
        """Keep `data` for `destination`; return once it is on disk.

        An item whose id is already pending for the destination is not stored twice: the
        pending entry is returned. Raises SpoolFullError at the bounds (nothing stored)
        and SpoolItemTooLargeError for an item larger than the whole spool.
        """
        item_id = item_id or stable_item_id(self.connector, source_key, data)
        _check_header_text("item id", item_id, ITEM_ID)
        _check_header_text("destination", destination)
        _check_header_text("content type", content_type)
        digest = hashlib.sha256(data).hexdigest()
        with self._lock:
            if self._closed:
                raise SpoolError("the spool is closed")
            pending = self._by_key.get((destination, item_id))
            if pending is not None:
                return pending
            entry = SpoolEntry(
                item_id=item_id,
                seq=self._next_seq,
                destination=destination,
                content_type=content_type,
                size=len(data),
                sha256=digest,
                created=self._clock(),
                path=self.directory / _entry_name(self._next_seq),
            )
            header = orjson.dumps(
                {
                    "version": FORMAT_VERSION,
                    "id": entry.item_id,
                    "seq": entry.seq,
                    "destination": entry.destination,
                    "content_type": entry.content_type,
                    "size": entry.size,
                    "sha256": entry.sha256,
                    "created": entry.created,
                }
            )
            disk_bytes = len(header) + 1 + len(data)
            if disk_bytes > self.max_bytes:
                raise SpoolItemTooLargeError(
                    f"the item is {len(data)} bytes; the spool holds at most {self.max_bytes}"
                )
            held = self._held
            if len(self._by_key) >= self.max_entries or held + disk_bytes > self.max_bytes:
                retry_after = self._retry_after_locked()
                raise SpoolFullError(
                    f"the spool is full ({len(self._by_key)} of {self.max_entries} items, "
                    f"{held} of {self.max_bytes} bytes); nothing was accepted, "
                    f"retry in {retry_after:.0f} s",
                    retry_after,
                )
            write_atomically(entry.path, header + b"\n" + data)
            self._next_seq += 1
            self._index(entry, disk_bytes)
        self._wake_drain()
        return entry

    def _retry_after_locked(self) -> float:
        now = self._clock()
        due = [at - now for at in self._retry_at.values()]
        return max(1.0, min(due)) if due else 1.0

    def _wake_drain(self) -> None:
        loop, wake = self._loop, self._wake
        if loop is not None and wake is not None:
            with contextlib.suppress(RuntimeError):  # the loop has closed: no drain to wake
                loop.call_soon_threadsafe(wake.set)

    # Taking items out.

    def _head(self, destination: str) -> SpoolEntry | None:
        with self._lock:
            queue = self._queues.get(destination)
            return queue[0] if queue else None

    def _destinations(self) -> list[str]:
        with self._lock:
            return [d for d, queue in self._queues.items() if queue]

    def _forget(self, entry: SpoolEntry) -> None:
        queue = self._queues[entry.destination]
        assert queue[0] is entry, "only the head of a destination's queue is removed"
        queue.popleft()
        if not queue:
            del self._queues[entry.destination]
        del self._by_key[(entry.destination, entry.item_id)]
        self._held -= self._disk_bytes.pop(entry.seq)

    def _remove(self, entry: SpoolEntry) -> None:
        """Delete a delivered entry durably; only then is it gone from the queue."""
        with self._lock:
            entry.path.unlink()
            fsync_directory(self.directory)
            self._forget(entry)

    def _remove_corrupt(self, entry: SpoolEntry, reason: str) -> None:
        with self._lock:
            self._set_aside(entry.path, reason)
            self._forget(entry)
            self._retry_at.pop(entry.destination, None)

    async def drain(
        self, deliver: Callable[[SpoolEntry], Awaitable[None]], *, until_empty: bool = False
    ) -> None:
        """Deliver pending entries until cancelled (or, with `until_empty`, until none are left).

        `deliver` returns once the destination acknowledged the entry and raises to have
        it retried. It should send `entry.headers`. To give up on an item that the
        destination rejects for good, it should keep the item elsewhere (the quarantine)
        and return: an entry that keeps failing holds up its destination's later ones.
        """
        if self._loop is not None:
            raise SpoolError("the spool is already being drained")
        self._loop = asyncio.get_running_loop()
        self._wake = wake = asyncio.Event()
        workers: dict[str, asyncio.Task[None]] = {}
        try:
            while True:
                wake.clear()
                for destination in self._destinations():
                    worker = workers.get(destination)
                    if worker is None or worker.done():
                        workers[destination] = asyncio.create_task(
                            self._drain_destination(destination, deliver)
                        )
                running = [w for w in workers.values() if not w.done()]
                if until_empty and not running and len(self) == 0:
                    return
                woken = asyncio.create_task(wake.wait())
                done, _ = await asyncio.wait([*running, woken], return_when=asyncio.FIRST_COMPLETED)
                woken.cancel()
                for task in done:
                    if task is not woken and task.exception() is not None:
                        raise SpoolError("draining stopped") from task.exception()
        finally:
            for worker in workers.values():
                worker.cancel()
            await asyncio.gather(*workers.values(), return_exceptions=True)
            self._loop = self._wake = None

    async def _drain_destination(
        self, destination: str, deliver: Callable[[SpoolEntry], Awaitable[None]]
    ) -> None:
        """Deliver one destination's entries in order until its queue is empty."""
        attempts = 0
        while (entry := self._head(destination)) is not None:
            try:
                await deliver(entry)
            except SpoolCorruptError as error:
                await asyncio.to_thread(self._remove_corrupt, entry, str(error))
                attempts = 0
                continue
            except Exception as error:
                attempts += 1
                delay = self.backoff.delay(attempts, self._rand())
                with self._lock:
                    self._retry_at[destination] = self._clock() + delay
                log.warning(
                    "spool: delivering %s to %s failed (attempt %d), retrying in %.1f s: %s",
                    entry.item_id,
                    destination,
                    attempts,
                    delay,
                    error,
                )
                await self._sleep(delay)
                continue
            attempts = 0
            with self._lock:
                self._retry_at.pop(destination, None)
            await asyncio.to_thread(self._remove, entry)
