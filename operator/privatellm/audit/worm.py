"""A write-once copy of the audit log in S3 Object Lock storage (compliance mode).

Each sealed segment is uploaded as three objects under `<prefix>/<log_id>/`, and
its checkpoint then becomes the head:

    00000001.log     the segment
    00000001.idx     its index
    00000001.ckpt    its signed checkpoint (uploaded last: its presence means "shipped")
    head             the newest shipped checkpoint, one object version per segment

Every object is locked in compliance mode until the checkpoint's `retain_until`:
nobody, the bucket owner included, can delete a locked version or shorten its
retention until then. The bucket must have Object Lock enabled, which also turns
versioning on, so writing a key again adds a version and never replaces one.

The shipper writes each segment object once. What it finds already stored is
left alone when its SHA-256 matches (shipping is idempotent, so resuming after a
crash or an outage is safe) and refused otherwise. A later version of a key is
never trusted: comparisons use the first version written, which is the one the
lock protects from whoever holds the shipper's credentials.

`SegmentShipper` is the writer's `on_sealed` callback: it only queues, and its
own thread uploads, retrying with backoff, so the audit log never waits for S3.
`compare_with_store` compares a log directory with its copy, so an administrator
who alters, re-signs or removes local files is found out from the store.
"""

from __future__ import annotations

import hashlib
import logging
import math
import random
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

from .checkpoint import Checkpoint
from .files import load_checkpoints, read_log_id
from .s3 import COMPLIANCE, ObjectInfo, ObjectVersion, S3Client, error_code
from .segment import segment_name
from .writer import SealedSegment

log = logging.getLogger(__name__)

HEAD = "head"
# The order of a segment's uploads: the checkpoint last, so that its presence means complete.
SUFFIXES = (".log", ".idx", ".ckpt")


class WormError(Exception):
    """The store refused or failed an operation, or answered something unexpected."""


class WormConflictError(WormError):
    """An object already stored, or a local file, is not what the checkpoint says.

    Never retried: the store keeps what it has, and someone has to look.
    """


def retention_date(retain_until: float) -> datetime:
    """The lock's end for a checkpoint: whole seconds, never earlier than `retain_until`."""
    return datetime.fromtimestamp(math.ceil(retain_until), UTC)


def log_prefix(prefix: str, log_id: str) -> str:
    """The key prefix of one log's objects, ending in "/"."""
    prefix = prefix.strip("/")
    return f"{prefix}/{log_id}/" if prefix else f"{log_id}/"


def _locked(lock: tuple[str, datetime] | None, until: datetime) -> bool:
    """Whether a lock is compliance mode until `until` or later."""
    return lock is not None and lock[0] == COMPLIANCE and lock[1] >= until


class WormStore:
    """One log's WORM copy: `bucket`, under `<prefix>/<log_id>/`."""

    def __init__(
        self,
        client: S3Client,
        bucket: str,
        log_id: str,
        *,
        prefix: str = "audit",
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.client = client
        self.bucket = bucket
        self.log_id = str(log_id)
        self.prefix = log_prefix(prefix, self.log_id)
        self.clock = clock
        self._head_segment: int | None = None
        self._lock = threading.Lock()

    @classmethod
    def for_directory(
        cls, client: S3Client, bucket: str, directory: Path, *, prefix: str = "audit"
    ) -> WormStore:
        """The store of the log in `directory` (named by its LOG_ID file)."""
        return cls(client, bucket, str(read_log_id(directory)), prefix=prefix)

    def key(self, name: str) -> str:
        return self.prefix + name

    # Writing.

    def ship(self, sealed: SealedSegment) -> None:
        """Upload a sealed segment's files, each checked, then publish its checkpoint as head.

        Idempotent: an object already stored with the same SHA-256 is kept as it is.
        WormConflictError when a local file does not match the checkpoint, or when the
        store holds different content under one of the keys; WormError or a botocore
        error when the store fails (worth retrying).
        """
        checkpoint = sealed.checkpoint
        if checkpoint.log_id != self.log_id:
            raise WormConflictError(f"checkpoint of log {checkpoint.log_id}, not {self.log_id}")
        name = segment_name(checkpoint.segment)
        try:
            data, index = sealed.data.read_bytes(), sealed.index.read_bytes()
        except FileNotFoundError as error:
            raise WormConflictError(f"{error.filename} is gone here: not shipped") from None
        if hashlib.sha256(data).hexdigest() != checkpoint.file_sha256:
            raise WormConflictError(f"{name}.log differs from its signed checkpoint: not shipped")
        if hashlib.sha256(index).hexdigest() != checkpoint.index_sha256:
            raise WormConflictError(f"{name}.idx differs from its signed checkpoint: not shipped")
        stored = self.client.versions(self.bucket, self.key(name))
        for suffix, body in zip(SUFFIXES, (data, index, checkpoint.to_bytes()), strict=True):
            key = self.key(name + suffix)
            self._put_once(key, body, checkpoint.retain_until, stored.get(key, []))
        self._advance_head(checkpoint)

    def _put_once(
        self, key: str, body: bytes, retain_until: float, stored: list[ObjectVersion]
    ) -> None:
        wanted = hashlib.sha256(body).hexdigest()
        until = retention_date(retain_until) if retain_until > self.clock() else None
        if not stored:
            self._put_verified(key, body, until, wanted)
            return
        original = stored[-1]
        found = self.client.sha256(self.bucket, key, original.version_id)
        if found != wanted:
            raise WormConflictError(
                f"{key} is already stored with other content (sha256 {found}); the store keeps it"
            )
        # Stored by an attempt that did not get to check the lock: lock it now.
        lock = self.client.retention(self.bucket, key, original.version_id)
        if until is not None and not _locked(lock, until):
            self.client.set_retention(self.bucket, key, original.version_id, until)
            self._check_lock(key, original.version_id, until)

    def _put_verified(self, key: str, body: bytes, until: datetime | None, sha256: str) -> None:
        """Put a new version, then read its size, checksum and lock back."""
        if until is None:
            log.info("audit: %s is past its retention; stored without a lock", key)
        version = self.client.put(
            self.bucket, key, body, retain_until=until, metadata={"sha256": sha256}
        )
        info = self._check_lock(key, version, until)
        if info.size != len(body) or (info.sha256 is not None and info.sha256 != sha256):
            raise WormError(f"{key}: the store holds {info.size} bytes with sha256 {info.sha256}")

    def _check_lock(self, key: str, version: str | None, until: datetime | None) -> ObjectInfo:
        info = self.client.head(self.bucket, key, version)
        if info is None:
            raise WormError(f"{key}: version {version} not found right after it was written")
        if until is not None:
            lock = self.client.retention(self.bucket, key, info.version_id)
            if not _locked(lock, until):
                raise WormError(
                    f"{key}: stored with lock {lock}, not {COMPLIANCE} until "
                    f"{until.isoformat()}: does the bucket have Object Lock?"
                )
        return info

    def _advance_head(self, checkpoint: Checkpoint) -> None:
        with self._lock:
            if self._head_segment is None:
                current = self.published_head()
                self._head_segment = current.segment if current else 0
            if checkpoint.segment <= self._head_segment:
                return
            body = checkpoint.to_bytes()
            retain_until = checkpoint.retain_until
            until = retention_date(retain_until) if retain_until > self.clock() else None
            self._put_verified(self.key(HEAD), body, until, hashlib.sha256(body).hexdigest())
            self._head_segment = checkpoint.segment

    # Reading.

    def published_head(self) -> Checkpoint | None:
        """The newest version of the head checkpoint (a delete marker on top is ignored)."""
        versions = self.client.versions(self.bucket, self.key(HEAD)).get(self.key(HEAD))
        if not versions:
            return None
        return Checkpoint.from_bytes(
            self.client.get(self.bucket, self.key(HEAD), versions[0].version_id)
        )

    def original(self, name: str) -> ObjectVersion | None:
        """The first version written of `<prefix>/<log_id>/<name>`: the one to trust."""
        versions = self.client.versions(self.bucket, self.key(name)).get(self.key(name))
        return versions[-1] if versions else None

    def inventory(self) -> dict[str, list[ObjectVersion]]:
        """Every stored version of this log's objects by key, newest first."""
        return self.client.versions(self.bucket, self.prefix)

    def checkpoint_keys(self, inventory: dict[str, list[ObjectVersion]]) -> dict[int, str]:
        """The checkpoint keys of an inventory, by segment number."""
        keys = {}
        for key in inventory:
            name = key[len(self.prefix) :]
            if name.endswith(".ckpt") and name[: -len(".ckpt")].isdigit():
                keys[int(name[: -len(".ckpt")])] = key
        return keys

    def read_checkpoint(self, version: ObjectVersion) -> Checkpoint:
        return Checkpoint.from_bytes(self.client.get(self.bucket, version.key, version.version_id))

    def fetch(self, directory: Path) -> int:
        """Copy the log's sealed segments, as first written, into `directory`; how many.

        The copy verifies and answers queries like the original (its open segment,
        never shipped, is not in it), so auditors need no access to the gateways.
        """
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "LOG_ID").write_text(f"{self.log_id}\n")
        names = set()
        for key, versions in self.inventory().items():
            name = key[len(self.prefix) :]
            if name.endswith((".log", ".idx", ".ckpt")) and name.split(".")[0].isdigit():
                first = versions[-1]
                data = self.client.get(self.bucket, first.key, first.version_id)
                (directory / name).write_bytes(data)
                names.add(name.split(".")[0])
        return len(names)

    def shipped_segments(self) -> set[int]:
        """The segments whose checkpoint is stored (one listing; no object is read)."""
        return set(self.checkpoint_keys(self.inventory()))

    def shipped_checkpoints(self) -> list[Checkpoint]:
        """Every shipped checkpoint, as first written, by segment number."""
        inventory = self.inventory()
        keys = self.checkpoint_keys(inventory)
        return [self.read_checkpoint(inventory[keys[n]][-1]) for n in sorted(keys)]


class ShipTarget(Protocol):
    """What SegmentShipper needs of a store (WormStore; tests may give a stand-in)."""

    def ship(self, sealed: SealedSegment) -> None: ...

    def shipped_segments(self) -> set[int]: ...


def sealed_segments(directory: Path) -> list[SealedSegment]:
    """The sealed segments of a log directory, oldest first, as the writer announced them."""
    found = []
    for checkpoint in load_checkpoints(directory):
        base = directory / segment_name(checkpoint.segment)
        found.append(
            SealedSegment(
                checkpoint,
                base.with_suffix(".log"),
                base.with_suffix(".idx"),
                base.with_suffix(".ckpt"),
            )
        )
    return found


class SegmentShipper:
    """Ships sealed segments from a thread of its own; give it to AuditLog as `on_sealed`.

    Segments are shipped lowest number first. A failed upload is retried after
    `retry_initial` seconds, doubling up to `retry_max`; a conflict (see
    WormConflictError) is not retried but kept in `conflicts`. With a directory,
    `start` first ships whatever of it the store lacks (`catch_up`), retrying that
    too until the store answers, so that nothing sealed while the process or the
    store was down is lost.
    """

    def __init__(
        self,
        store: ShipTarget,
        *,
        retry_initial: float = 1.0,
        retry_max: float = 60.0,
    ) -> None:
        self.store = store
        self.retry_initial = retry_initial
        self.retry_max = retry_max
        self.conflicts: dict[int, str] = {}
        self.last_error: str | None = None
        self._pending: dict[int, SealedSegment] = {}
        self._shipped = 0
        self._catch_up: Path | None = None
        self._cond = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None

    # The writer's side: never blocks on the store.

    def __call__(self, sealed: SealedSegment) -> None:
        with self._cond:
            self._pending[sealed.checkpoint.segment] = sealed
            self._cond.notify()

    def start(self, directory: Path | None = None) -> SegmentShipper:
        """Start the shipping thread; with `directory`, catch up with it first."""
        if self._thread is not None:
            raise RuntimeError("the shipper is already started")
        self._catch_up = directory
        self._thread = threading.Thread(target=self._run, name="audit-shipper", daemon=True)
        self._thread.start()
        return self

    def catch_up(self, directory: Path) -> int:
        """Queue every sealed segment of `directory` that the store lacks; how many.

        The newest local segment is queued even when stored, so that a head whose
        publication was cut short is published now (shipping it again is idempotent).
        """
        stored = self.store.shipped_segments()
        local = sealed_segments(directory)
        queued = 0
        with self._cond:
            if stored:
                self._shipped = max(self._shipped, max(stored))
            for index, sealed in enumerate(local):
                number = sealed.checkpoint.segment
                newest = index == len(local) - 1
                if number in stored and not newest:
                    continue
                if not sealed.data.exists() or not sealed.index.exists():
                    if number not in stored:
                        log.warning("audit: %s is gone here and was never shipped", sealed.data)
                    continue
                if number not in self._pending and number not in self.conflicts:
                    self._pending[number] = sealed
                    queued += 1
            self._cond.notify()
        return queued

    # Status.

    def backlog(self) -> int:
        """Segments waiting to be shipped."""
        with self._cond:
            return len(self._pending)

    def shipped_through(self) -> int:
        """The highest segment N such that none up to N waits or conflicted (0 before any)."""
        with self._cond:
            waiting = set(self._pending) | set(self.conflicts)
            if waiting:
                return min(self._shipped, min(waiting) - 1)
            return self._shipped

    # Stopping.

    def close(self, timeout: float = 30.0) -> bool:
        """Ship what is queued for at most `timeout` seconds, then stop; whether all was."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while (self._pending or self._catch_up is not None) and self._thread is not None:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not self._thread.is_alive():
                    break
                self._cond.wait(min(remaining, 0.05))
            drained = not self._pending and self._catch_up is None
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(max(0.0, deadline - time.monotonic()) + 5.0)
        if not drained:
            log.warning("audit: shipper stopped with %d segments not shipped", self.backlog())
        return drained

    # The shipping thread.

    def _run(self) -> None:
        delay = self.retry_initial
        while True:
            with self._cond:
                while not self._pending and self._catch_up is None and not self._stopping:
                    self._cond.wait()
                if self._stopping:
                    return
                directory = self._catch_up
                sealed = self._pending[min(self._pending)] if directory is None else None
            try:
                if directory is not None:
                    self.catch_up(directory)
                    with self._cond:
                        self._catch_up = None
                        self._cond.notify_all()
                elif sealed is not None:
                    self._ship(sealed)
                delay = self.retry_initial
            except Exception as error:
                self.last_error = f"{error_code(error)}: {error}"
                log.warning("audit: shipping failed, retrying in %.1fs: %s", delay, error)
                with self._cond:
                    if not self._stopping:
                        self._cond.wait(delay * random.uniform(0.8, 1.2))
                delay = min(delay * 2, self.retry_max)

    def _ship(self, sealed: SealedSegment) -> None:
        number = sealed.checkpoint.segment
        try:
            self.store.ship(sealed)
        except WormConflictError as conflict:
            log.error("audit: segment %d not shipped: %s", number, conflict)
            with self._cond:
                self.conflicts[number] = str(conflict)
                self._pending.pop(number, None)
                self._cond.notify_all()
            return
        with self._cond:
            self._shipped = max(self._shipped, number)
            self._pending.pop(number, None)
            self.last_error = None
            self._cond.notify_all()


def stored_logs(client: S3Client, bucket: str, prefix: str = "audit") -> list[str]:
    """The ids of the logs that have objects under `prefix` in `bucket`."""
    root = f"{prefix.strip('/')}/" if prefix.strip("/") else ""
    ids = {key[len(root) :].split("/", 1)[0] for key in client.versions(bucket, root)}
    return sorted(i for i in ids if i)


def compare_with_store(directory: Path, store: WormStore, *, now: float | None = None) -> list[str]:
    """Where the log in `directory` and its WORM copy disagree; empty when they agree.

    Every shipped checkpoint (its first version) must be here unchanged, every
    shipped segment and index must match its checkpoint and, where the file is
    still here, the local file; a key written again with other content, or a head
    older than the newest shipped checkpoint, is reported too. Segments not
    shipped yet are not problems: `SegmentShipper.backlog` tells about those.
    """
    now = time.time() if now is None else now
    problems: list[str] = []
    local: dict[int, Checkpoint] = {}
    for path in sorted(directory.glob("*.ckpt")):
        try:
            checkpoint = Checkpoint.from_bytes(path.read_bytes())
        except (ValueError, TypeError) as error:
            problems.append(f"{path.name}: not a checkpoint: {error}")
            continue
        local[checkpoint.segment] = checkpoint
    inventory = store.inventory()
    shipped = {
        number: store.read_checkpoint(inventory[key][-1])
        for number, key in store.checkpoint_keys(inventory).items()
    }
    for number in sorted(shipped):
        problems += _compare_segment(directory, store, inventory, shipped[number], local, now)
    for key, versions in sorted(inventory.items()):
        if len(versions) > 1 and key != store.key(HEAD):
            sums = {store.client.sha256(store.bucket, key, v.version_id) for v in versions}
            if len(sums) > 1:
                problems.append(
                    f"{key}: written again with other content ({len(versions)} versions); "
                    "the first one is trusted"
                )
    head = store.published_head()
    if shipped and (head is None or head.segment < max(shipped)):
        problems.append(
            f"the published head names segment {head.segment if head else 'none'}, "
            f"but segment {max(shipped)} was shipped: the head was rolled back or not published"
        )
    elif head is not None and head.digest() != shipped.get(head.segment, head).digest():
        problems.append(f"the published head differs from shipped checkpoint {head.segment}")
    return problems


def _compare_segment(
    directory: Path,
    store: WormStore,
    inventory: dict[str, list[ObjectVersion]],
    shipped: Checkpoint,
    local: dict[int, Checkpoint],
    now: float,
) -> list[str]:
    problems: list[str] = []
    name = segment_name(shipped.segment)
    mine = local.get(shipped.segment)
    if mine is None:
        problems.append(f"{name}.ckpt: shipped, but missing here")
    elif mine.digest() != shipped.digest():
        problems.append(f"{name}.ckpt: differs from the shipped checkpoint")
    for suffix, expected in ((".log", shipped.file_sha256), (".idx", shipped.index_sha256)):
        key = store.key(name + suffix)
        versions = inventory.get(key)
        if not versions:
            problems.append(f"{name}{suffix}: its checkpoint was shipped, the file was not")
            continue
        stored = store.client.sha256(store.bucket, key, versions[-1].version_id)
        if stored != expected:
            problems.append(f"{name}{suffix}: the stored copy differs from its checkpoint")
        path = directory / (name + suffix)
        if path.exists():
            if hashlib.sha256(path.read_bytes()).hexdigest() != stored:
                problems.append(f"{name}{suffix}: differs from the shipped copy")
        elif shipped.retain_until > now:
            problems.append(
                f"{name}{suffix}: removed here before its retention ended; the store keeps it"
            )
    return problems
