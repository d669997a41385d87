"""The WORM copy's logic without a server: keys, retention dates, shipping order and retries.

`MemoryS3` stands in for the S3 client: a versioned bucket in a dict that keeps
every version and its lock. The behaviour of a real server is tested in
tests/integration/test_audit_worm.py.
"""

from __future__ import annotations

import base64
import hashlib
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
from botocore.exceptions import ClientError  # type: ignore[import-untyped]

from privatellm.audit import AuditLog, Signer
from privatellm.audit.files import load_checkpoints
from privatellm.audit.retention import DAY, Retention
from privatellm.audit.s3 import (
    COMPLIANCE,
    ObjectInfo,
    ObjectVersion,
    S3Client,
    error_code,
    sha256_from_checksum,
)
from privatellm.audit.worm import (
    SegmentShipper,
    WormConflictError,
    WormStore,
    compare_with_store,
    log_prefix,
    retention_date,
    sealed_segments,
)
from privatellm.audit.writer import SealedSegment, SegmentLimits

SIGNER = Signer.generate()


class MemoryS3(S3Client):
    """A versioned, lockable bucket in memory; `fail` makes every call raise."""

    def __init__(self) -> None:
        self.objects: dict[str, list[tuple[str, bytes, datetime | None, datetime]]] = {}
        self.fail: Exception | None = None
        self.puts = 0
        self._serial = 0

    def _check(self) -> None:
        if self.fail is not None:
            raise self.fail

    def put(
        self,
        bucket: str,
        key: str,
        data: bytes,
        *,
        retain_until: datetime | None,
        metadata: dict[str, str] | None = None,
    ) -> str | None:
        self._check()
        self._serial += 1
        version = f"v{self._serial:06d}"
        stamp = datetime.fromtimestamp(self._serial, UTC)
        self.objects.setdefault(key, []).insert(0, (version, data, retain_until, stamp))
        self.puts += 1
        return version

    def set_retention(
        self, bucket: str, key: str, version_id: str | None, retain_until: datetime
    ) -> None:
        self._check()
        entries = self.objects[key]
        for i, (version, data, until, stamp) in enumerate(entries):
            if version == version_id:
                assert until is None or retain_until >= until, "compliance mode only extends"
                entries[i] = (version, data, retain_until, stamp)

    def retention(
        self, bucket: str, key: str, version_id: str | None = None
    ) -> tuple[str, datetime] | None:
        info = self.head(bucket, key, version_id)
        assert info is not None, key
        return (COMPLIANCE, info.lock_until) if info.lock_until else None

    def _find(self, key: str, version_id: str | None) -> tuple[str, bytes, datetime | None] | None:
        for version, data, until, _ in self.objects.get(key, []):
            if version_id in (None, version):
                return version, data, until
        return None

    def get(self, bucket: str, key: str, version_id: str | None = None) -> bytes:
        self._check()
        found = self._find(key, version_id)
        assert found is not None, key
        return found[1]

    def head(self, bucket: str, key: str, version_id: str | None = None) -> ObjectInfo | None:
        self._check()
        found = self._find(key, version_id)
        if found is None:
            return None
        version, data, until = found
        return ObjectInfo(
            key,
            version,
            len(data),
            hashlib.sha256(data).hexdigest(),
            COMPLIANCE if until else None,
            until,
        )

    def versions(self, bucket: str, prefix: str) -> dict[str, list[ObjectVersion]]:
        self._check()
        return {
            key: [ObjectVersion(key, v, len(d), stamp) for v, d, _, stamp in entries]
            for key, entries in self.objects.items()
            if key.startswith(prefix)
        }


def write_log(directory: Path, segments: int, *, retention_days: float = 30.0) -> AuditLog:
    log = AuditLog(
        directory,
        SIGNER,
        limits=SegmentLimits(records=1000),
        retention=Retention(default_days=retention_days),
    )
    for segment in range(segments):
        log.append_sync({"kind": "request", "subject": f"s{segment}"})
        log.seal()
    return log


def store_for(log: AuditLog, client: MemoryS3 | None = None) -> WormStore:
    return WormStore(client or MemoryS3(), "bucket", str(log.log_id), prefix="audit")


def memory(store: WormStore) -> MemoryS3:
    assert isinstance(store.client, MemoryS3)
    return store.client


def wait_for(condition: Callable[[], object], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_keys_retention_dates_and_checksums() -> None:
    assert log_prefix("audit/", "abc") == "audit/abc/"
    assert log_prefix("", "abc") == "abc/"
    assert retention_date(100.2) == datetime.fromtimestamp(101, UTC)
    assert retention_date(100.0) == datetime.fromtimestamp(100, UTC)
    digest = hashlib.sha256(b"x").digest()
    assert sha256_from_checksum(base64.b64encode(digest).decode()) == digest.hex()
    assert sha256_from_checksum(None) is None
    refused = ClientError({"Error": {"Code": "AccessDenied", "Message": "no"}}, "DeleteObject")
    assert error_code(refused) == "AccessDenied"
    assert error_code(TimeoutError()) == "TimeoutError"


def test_ship_uploads_locked_objects_then_the_head_and_is_idempotent(tmp_path: Path) -> None:
    log = write_log(tmp_path / "log", 2)
    log.close()
    store = store_for(log)
    s3 = memory(store)
    for sealed in sealed_segments(tmp_path / "log"):
        store.ship(sealed)
    assert s3.puts == 8
    checkpoints = load_checkpoints(tmp_path / "log")
    assert store.shipped_segments() == {1, 2}
    assert store.shipped_checkpoints() == checkpoints
    assert store.published_head() == checkpoints[-1]
    info = s3.head("bucket", store.key("00000002.log"))
    assert info is not None and info.lock_mode == COMPLIANCE
    assert info.lock_until == retention_date(checkpoints[1].retain_until)

    # Shipping again writes nothing; an older segment never moves the head back.
    for sealed in sealed_segments(tmp_path / "log"):
        store.ship(sealed)
    assert s3.puts == 8
    assert store.published_head() == checkpoints[-1]
    assert compare_with_store(tmp_path / "log", store) == []


def test_a_segment_past_its_retention_is_stored_without_a_lock(tmp_path: Path) -> None:
    log = write_log(tmp_path / "log", 1, retention_days=1)
    log.close()
    later = time.time() + 2 * DAY
    store = WormStore(MemoryS3(), "bucket", str(log.log_id), clock=lambda: later)
    store.ship(sealed_segments(tmp_path / "log")[0])
    info = memory(store).head("bucket", store.key("00000001.log"))
    assert info is not None and info.lock_mode is None


def test_conflicting_content_is_refused_and_kept(tmp_path: Path) -> None:
    log = write_log(tmp_path / "log", 1)
    log.close()
    store = store_for(log)
    memory(store).put("bucket", store.key("00000001.ckpt"), b"other", retain_until=None)
    with pytest.raises(WormConflictError, match=r"00000001\.ckpt is already stored"):
        store.ship(sealed_segments(tmp_path / "log")[0])
    assert store.published_head() is None


def test_a_stored_copy_left_unlocked_by_a_cut_short_attempt_is_locked(tmp_path: Path) -> None:
    log = write_log(tmp_path / "log", 1)
    log.close()
    store = store_for(log)
    s3 = memory(store)
    sealed = sealed_segments(tmp_path / "log")[0]
    key = store.key("00000001.log")
    s3.put("bucket", key, sealed.data.read_bytes(), retain_until=None)
    store.ship(sealed)
    info = s3.head("bucket", key)
    assert info is not None and info.lock_until == retention_date(sealed.checkpoint.retain_until)
    assert len(s3.objects[key]) == 1


class Recorder:
    """A ship target that records what it is given and can be told to fail."""

    def __init__(self, stored: set[int] | None = None) -> None:
        self.shipped: list[int] = []
        self.stored = set(stored or ())
        self.failures = 0
        self.conflict: set[int] = set()
        self.release = threading.Event()
        self.release.set()

    def ship(self, sealed: SealedSegment) -> None:
        self.release.wait(10)
        number = sealed.checkpoint.segment
        if number in self.conflict:
            raise WormConflictError(f"segment {number} conflicts")
        if self.failures:
            self.failures -= 1
            raise ConnectionError("store unreachable")
        self.shipped.append(number)
        self.stored.add(number)

    def shipped_segments(self) -> set[int]:
        if self.failures:
            self.failures -= 1
            raise ConnectionError("store unreachable")
        return set(self.stored)


def test_the_shipper_never_blocks_the_writer_and_ships_in_order(tmp_path: Path) -> None:
    target = Recorder()
    target.release.clear()
    shipper = SegmentShipper(target, retry_initial=0.01, retry_max=0.05).start()
    log = AuditLog(tmp_path / "log", SIGNER, on_sealed=shipper)
    for i in range(3):
        log.append_sync({"kind": "request", "subject": f"s{i}"})
        started = time.monotonic()
        log.seal()
        assert time.monotonic() - started < 1.0
    log.close()
    wait_for(lambda: shipper.backlog() >= 2)
    assert shipper.shipped_through() == 0
    target.release.set()
    assert shipper.close(timeout=5)
    assert target.shipped == [1, 2, 3]
    assert (shipper.backlog(), shipper.shipped_through()) == (0, 3)


def test_failures_are_retried_and_conflicts_are_not(tmp_path: Path) -> None:
    log = write_log(tmp_path / "log", 3)
    log.close()
    target = Recorder()
    target.failures = 3
    target.conflict = {2}
    shipper = SegmentShipper(target, retry_initial=0.01, retry_max=0.05)
    for sealed in sealed_segments(tmp_path / "log"):
        shipper(sealed)
    shipper.start()
    assert shipper.close(timeout=5)
    assert target.shipped == [1, 3]
    assert list(shipper.conflicts) == [2]
    assert shipper.shipped_through() == 1
    assert shipper.last_error is None


def test_catch_up_ships_what_the_store_lacks_and_the_newest_again(tmp_path: Path) -> None:
    log = write_log(tmp_path / "log", 4)
    log.close()
    target = Recorder(stored={1, 2, 4})
    # The store is unreachable at first: catching up is retried like shipping.
    target.failures = 2
    shipper = SegmentShipper(target, retry_initial=0.01, retry_max=0.05).start(tmp_path / "log")
    assert shipper.close(timeout=5)
    assert target.shipped == [3, 4]
    assert shipper.shipped_through() == 4


def test_close_gives_up_after_its_timeout(tmp_path: Path) -> None:
    log = write_log(tmp_path / "log", 1)
    log.close()
    target = Recorder()
    target.failures = 10_000
    shipper = SegmentShipper(target, retry_initial=0.01, retry_max=0.02)
    shipper(sealed_segments(tmp_path / "log")[0])
    shipper.start()
    started = time.monotonic()
    assert shipper.close(timeout=0.3) is False
    assert time.monotonic() - started < 3
    assert shipper.backlog() == 1
    assert shipper.last_error == "ConnectionError: store unreachable"
