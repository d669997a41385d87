"""The audit log's WORM copy against a real S3 server with Object Lock.

The server is Versity's S3 gateway (`versitygw`, built by scripts/testenv.sh) on a
local folder, started once for the module; the outage test runs one of its own.
"""

from __future__ import annotations

import base64
import hashlib
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from botocore.exceptions import ClientError  # type: ignore[import-untyped]

from privatellm.audit import AuditLog, Signer, verify_log
from privatellm.audit.files import load_checkpoints
from privatellm.audit.retention import Retention
from privatellm.audit.s3 import COMPLIANCE, S3Client, error_code
from privatellm.audit.worm import (
    SegmentShipper,
    WormConflictError,
    WormStore,
    compare_with_store,
    retention_date,
    sealed_segments,
)
from privatellm.audit.writer import SegmentLimits
from privatellm.devcluster import DevS3
from privatellm.devcluster.cluster import Toolchain, default_cache

SIGNER = Signer.generate()
RETENTION = Retention(default_days=2)


def server_tools() -> Toolchain:
    # Only versitygw is needed, not the whole control plane that Toolchain.locate checks.
    return Toolchain(default_cache())


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevS3]:
    server = DevS3(tmp_path_factory.mktemp("s3"), server_tools())
    server.start()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(server.workdir, ignore_errors=True)


@pytest.fixture(scope="module")
def bucket(s3: DevS3) -> str:
    s3.client().create_bucket("audit")
    return "audit"


@pytest.fixture
def client(s3: DevS3) -> S3Client:
    return s3.client(timeout=2.0, max_attempts=1)


def record(i: int) -> dict[str, object]:
    return {"kind": "request", "subject": f"user-{i % 3}", "model": "m", "request_id": f"r{i}"}


def write_segments(log: AuditLog, segments: int, records: int = 5) -> None:
    for _ in range(segments):
        futures = [log.append(record(i)) for i in range(records)]
        for future in futures:
            future.result(10)
        log.seal()


def open_log(directory: Path, shipper: SegmentShipper | None) -> AuditLog:
    return AuditLog(
        directory,
        SIGNER,
        limits=SegmentLimits(records=1000),
        retention=RETENTION,
        on_sealed=shipper,
    )


def shipped_log(directory: Path, client: S3Client, bucket: str, segments: int) -> WormStore:
    """A log of `segments` sealed segments, each shipped as it was sealed."""
    log = open_log(directory, None)
    store = WormStore(client, bucket, str(log.log_id), prefix=f"t-{uuid.uuid4().hex[:8]}")
    shipper = SegmentShipper(store, retry_initial=0.05, retry_max=0.2).start()
    log.on_sealed = shipper
    try:
        write_segments(log, segments)
    finally:
        log.close()
        assert shipper.close(timeout=20), shipper.last_error
    return store


def test_bucket_settings_are_checked(client: S3Client, bucket: str) -> None:
    assert client.bucket_problems(bucket) == []
    client.create_bucket("plain", object_lock=False)
    problems = client.bucket_problems("plain")
    assert any("Object Lock is not enabled" in p for p in problems), problems
    with pytest.raises(ClientError) as refused:
        client.put("plain", "x", b"x", retain_until=retention_date(time.time() + 60))
    assert error_code(refused.value) == "InvalidRequest"
    # A body that does not match its checksum is refused.
    with pytest.raises(ClientError) as refused:
        client.raw.put_object(
            Bucket=bucket,
            Key="corrupt",
            Body=b"sent",
            ChecksumSHA256=base64.b64encode(hashlib.sha256(b"meant").digest()).decode(),
        )
    assert error_code(refused.value) == "BadDigest"


def test_sealed_segments_arrive_locked_in_compliance_mode(
    tmp_path: Path, client: S3Client, bucket: str
) -> None:
    store = shipped_log(tmp_path / "log", client, bucket, segments=3)
    local = load_checkpoints(tmp_path / "log")
    assert [c.segment for c in local] == [1, 2, 3]
    assert store.shipped_checkpoints() == local
    assert store.published_head() == local[-1]
    for checkpoint in local:
        name = f"{checkpoint.segment:08d}"
        until = retention_date(checkpoint.retain_until)
        assert until.timestamp() >= checkpoint.retain_until > time.time() + 86_400
        for suffix in (".log", ".idx", ".ckpt"):
            info = client.head(bucket, store.key(name + suffix))
            assert info is not None
            assert (info.lock_mode, info.lock_until) == (COMPLIANCE, until), suffix
            local_bytes = (tmp_path / "log" / (name + suffix)).read_bytes()
            assert info.sha256 == hashlib.sha256(local_bytes).hexdigest()
            assert client.get(bucket, store.key(name + suffix)) == local_bytes
    head = client.head(bucket, store.key("head"))
    assert head is not None and head.lock_mode == COMPLIANCE
    # One head version per segment: every earlier head stays readable.
    assert len(store.inventory()[store.key("head")]) == 3
    assert compare_with_store(tmp_path / "log", store) == []


def test_a_locked_version_cannot_be_removed_and_a_rewrite_is_only_a_new_version(
    tmp_path: Path, client: S3Client, bucket: str
) -> None:
    directory = tmp_path / "log"
    store = shipped_log(directory, client, bucket, segments=1)
    key = store.key("00000001.log")
    original = store.original("00000001.log")
    assert original is not None
    raw = client.raw

    for bypass in (False, True):
        with pytest.raises(ClientError) as refused:
            raw.delete_object(
                Bucket=bucket,
                Key=key,
                VersionId=original.version_id,
                BypassGovernanceRetention=bypass,
            )
        assert error_code(refused.value) == "AccessDenied"
    with pytest.raises(ClientError) as refused:
        raw.put_object_retention(
            Bucket=bucket,
            Key=key,
            VersionId=original.version_id,
            Retention={"Mode": "GOVERNANCE", "RetainUntilDate": retention_date(time.time() + 60)},
            BypassGovernanceRetention=True,
        )
    assert error_code(refused.value) == "AccessDenied"
    with pytest.raises(ClientError) as refused:
        raw.delete_bucket(Bucket=bucket)
    assert error_code(refused.value) == "BucketNotEmpty"

    # Writing the key again, and then "deleting" it, only stacks versions on top.
    raw.put_object(Bucket=bucket, Key=key, Body=b"rewritten")
    raw.delete_object(Bucket=bucket, Key=key)
    assert client.head(bucket, key) is None
    local = (directory / "00000001.log").read_bytes()
    assert client.get(bucket, key, original.version_id) == local
    until = retention_date(load_checkpoints(directory)[0].retain_until)
    assert client.retention(bucket, key, original.version_id) == (COMPLIANCE, until)
    first = store.original("00000001.log")
    assert first is not None and first.version_id == original.version_id
    # The shipper still finds its segment stored, as first written; the rewrite is reported.
    store.ship(sealed_segments(directory)[0])
    problems = compare_with_store(directory, store)
    assert problems == [
        f"{key}: written again with other content (2 versions); the first one is trusted"
    ]


def test_the_published_head_shows_that_the_newest_segments_were_removed(
    tmp_path: Path, client: S3Client, bucket: str
) -> None:
    directory = tmp_path / "log"
    store = shipped_log(directory, client, bucket, segments=3)
    # Segment 3 and the (empty) active segment after it go.
    for path in [*directory.glob("00000003.*"), directory / "00000004.log"]:
        path.unlink()
    # Locally the log is whole: two segments, chained and signed.
    assert verify_log(directory, SIGNER.public_key).ok
    head = store.published_head()
    assert head is not None and head.segment == 3
    report = verify_log(directory, SIGNER.public_key, published_head=head)
    assert [str(p) for p in report.problems] == [
        "00000003.ckpt: the published head checkpoint is missing here: newer segments removed"
    ]
    problems = compare_with_store(directory, store)
    assert "00000003.ckpt: shipped, but missing here" in problems
    assert any(p.startswith("00000003.log: removed here before its retention") for p in problems)


def test_a_head_rolled_back_in_the_store_is_reported(
    tmp_path: Path, client: S3Client, bucket: str
) -> None:
    directory = tmp_path / "log"
    store = shipped_log(directory, client, bucket, segments=2)
    first = load_checkpoints(directory)[0]
    # Whoever holds the shipper's keys writes an older, genuine checkpoint as the head.
    client.put(bucket, store.key("head"), first.to_bytes(), retain_until=None)
    assert store.published_head() == first
    assert compare_with_store(directory, store) == [
        "the published head names segment 1, but segment 2 was shipped: "
        "the head was rolled back or not published"
    ]


def test_an_altered_or_resigned_segment_is_found_from_the_store(
    tmp_path: Path, client: S3Client, bucket: str
) -> None:
    directory = tmp_path / "log"
    store = shipped_log(directory, client, bucket, segments=2)
    path = directory / "00000001.log"
    data = bytearray(path.read_bytes())
    data[-40] ^= 0x01
    path.write_bytes(bytes(data))
    assert compare_with_store(directory, store) == ["00000001.log: differs from the shipped copy"]

    # Whoever holds the signing key re-signs a checkpoint: it verifies, the store disagrees.
    second = load_checkpoints(directory)[1]
    forged = SIGNER.sign(replace(second, sealed_at=second.sealed_at + 1))
    assert forged.verify_signature(SIGNER.public_key)
    (directory / "00000002.ckpt").write_bytes(forged.to_bytes())
    problems = compare_with_store(directory, store)
    assert "00000002.ckpt: differs from the shipped checkpoint" in problems


def test_different_content_under_a_segment_key_is_refused_not_overwritten(
    tmp_path: Path, client: S3Client, bucket: str
) -> None:
    directory = tmp_path / "log"
    log = open_log(directory, None)
    write_segments(log, 1)
    log.close()
    store = WormStore.for_directory(client, bucket, directory, prefix=uuid.uuid4().hex[:8])
    key = store.key("00000001.idx")
    client.put(bucket, key, b"{}", retain_until=None)
    sealed = sealed_segments(directory)[0]
    with pytest.raises(WormConflictError, match="already stored with other content"):
        store.ship(sealed)
    assert client.get(bucket, key) == b"{}"
    assert store.published_head() is None
    # Local files that no longer match their checkpoint are never shipped.
    other = WormStore.for_directory(client, bucket, directory, prefix=uuid.uuid4().hex[:8])
    sealed.data.write_bytes(sealed.data.read_bytes() + b"x")
    with pytest.raises(WormConflictError, match="differs from its signed checkpoint"):
        other.ship(sealed)
    assert other.inventory() == {}


def test_a_copy_stored_without_a_lock_is_locked_when_shipped(
    tmp_path: Path, client: S3Client, bucket: str
) -> None:
    directory = tmp_path / "log"
    log = open_log(directory, None)
    write_segments(log, 1)
    log.close()
    store = WormStore.for_directory(client, bucket, directory, prefix=uuid.uuid4().hex[:8])
    sealed = sealed_segments(directory)[0]
    key = store.key("00000001.log")
    # As if an earlier attempt stored the segment and stopped before checking its lock.
    client.put(bucket, key, sealed.data.read_bytes(), retain_until=None)
    store.ship(sealed)
    info = client.head(bucket, key)
    assert info is not None
    assert (info.lock_mode, info.lock_until) == (
        COMPLIANCE,
        retention_date(sealed.checkpoint.retain_until),
    )
    assert len(store.inventory()[key]) == 1


def test_the_shipper_loses_nothing_while_the_server_is_down(tmp_path: Path) -> None:
    server = DevS3(tmp_path / "s3", server_tools())
    server.start()
    try:
        client = server.client(timeout=1.0, max_attempts=1)
        client.create_bucket("audit")
        directory = tmp_path / "log"
        log = open_log(directory, None)
        store = WormStore(client, "audit", str(log.log_id))
        shipper = SegmentShipper(store, retry_initial=0.05, retry_max=0.3).start(directory)
        log.on_sealed = shipper
        write_segments(log, 1)
        wait_for(lambda: shipper.shipped_through() == 1)

        # Down while segment 2 is sealed: the shipper retries until the server is back.
        server.stop()
        write_segments(log, 1)
        wait_for(lambda: shipper.last_error is not None)
        assert (shipper.backlog(), shipper.shipped_through()) == (1, 1)
        server.start()
        wait_for(lambda: shipper.shipped_through() == 2)

        # Down again while segments 3 and 4 are sealed, and the process stops too.
        server.stop()
        write_segments(log, 2)
        log.close()
        assert shipper.close(timeout=0.5) is False
        assert shipper.backlog() == 2
        server.start()

        # A new process catches up from the directory.
        store = WormStore.for_directory(server.client(), "audit", directory)
        restarted = SegmentShipper(store, retry_initial=0.05, retry_max=0.3).start(directory)
        assert restarted.close(timeout=20), restarted.last_error
        assert restarted.shipped_through() == 4
        assert store.shipped_checkpoints() == load_checkpoints(directory)
        assert store.published_head() == load_checkpoints(directory)[-1]
        assert compare_with_store(directory, store) == []
    finally:
        server.stop()


def wait_for(condition: Callable[[], object], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_what_the_server_enforces_beyond_compliance_deletes(client: S3Client, bucket: str) -> None:
    """Governance mode yields to a bypass, compliance mode does not; both end on their date."""
    raw, key = client.raw, f"probe-{uuid.uuid4().hex[:8]}"
    soon = retention_date(time.time() + 2)
    later = retention_date(time.time() + 3600)
    compliance = raw.put_object(
        Bucket=bucket, Key=key, Body=b"c", ObjectLockMode=COMPLIANCE, ObjectLockRetainUntilDate=soon
    )["VersionId"]
    governance = raw.put_object(
        Bucket=bucket,
        Key=key,
        Body=b"g",
        ObjectLockMode="GOVERNANCE",
        ObjectLockRetainUntilDate=later,
    )["VersionId"]
    with pytest.raises(ClientError) as refused:
        raw.delete_object(Bucket=bucket, Key=key, VersionId=governance)
    assert error_code(refused.value) == "AccessDenied"
    raw.delete_object(Bucket=bucket, Key=key, VersionId=governance, BypassGovernanceRetention=True)
    with pytest.raises(ClientError) as refused:
        raw.put_object(
            Bucket=bucket,
            Key=key,
            Body=b"p",
            ObjectLockMode=COMPLIANCE,
            ObjectLockRetainUntilDate=retention_date(time.time() - 60),
        )
    assert error_code(refused.value) == "InvalidArgument"
    # A compliance lock may be extended; it ends on its date, not before.
    extended = retention_date(time.time() + 3)
    client.set_retention(bucket, key, compliance, extended)
    while True:
        try:
            raw.delete_object(Bucket=bucket, Key=key, VersionId=compliance)
            break
        except ClientError as error:
            assert error_code(error) == "AccessDenied"
            assert time.time() < extended.timestamp() + 5, "the lock did not end on its date"
            time.sleep(0.2)
    assert time.time() >= extended.timestamp()
    assert key not in client.versions(bucket, key)
