"""The audit log on a local directory: chaining, sealing, verification and recovery."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from privatellm.audit import AuditLog, Checkpoint, Signer, verify_log
from privatellm.audit.merkle import EMPTY_ROOT, leaf_hash, merkle_root
from privatellm.audit.retention import DAY, Retention
from privatellm.audit.segment import HEADER_BYTES, SegmentReader
from privatellm.audit.writer import AuditLogClosedError, SegmentLimits

SIGNER = Signer.generate()
START = 1_795_000_000.0  # 2026-11-19
NOW = START + DAY


def request(i: int) -> dict[str, object]:
    return {
        "kind": "request",
        "time": START + i,
        "subject": f"user-{i % 7}",
        "model": "support-bot",
        "data_classes": ["customer"] if i % 3 == 0 else [],
        "request_id": f"r{i}",
    }


@pytest.fixture
def log_dir(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path / "audit"


def write(directory: Path, count: int, records: int = 50) -> list[int]:
    log = AuditLog(directory, SIGNER, limits=SegmentLimits(records=records))
    try:
        return [f.result() for f in [log.append(request(i)) for i in range(count)]]
    finally:
        log.close()


def problems(directory: Path) -> list[str]:
    return [str(p) for p in verify_log(directory, SIGNER.public_key, now=NOW).problems]


def test_records_are_numbered_chained_sealed_and_verify(log_dir: Path) -> None:
    assert write(log_dir, 120) == list(range(1, 121))
    report = verify_log(log_dir, SIGNER.public_key)
    assert report.ok, report.problems
    assert report.records == 120
    assert [p.name for p in sorted(log_dir.glob("*.ckpt"))] == ["00000001.ckpt", "00000002.ckpt"]
    assert report.head is not None and report.head.first_seq == 51 and report.head.count == 50


def test_a_reopened_log_continues_the_chain(log_dir: Path) -> None:
    write(log_dir, 30)
    log = AuditLog(log_dir, SIGNER, limits=SegmentLimits(records=50))
    assert log.append_sync(request(30)) == 31
    log.close()
    assert problems(log_dir) == []


def test_one_writer_per_directory(log_dir: Path) -> None:
    log = AuditLog(log_dir, SIGNER)
    try:
        with pytest.raises(AuditLogClosedError, match="another writer"):
            AuditLog(log_dir, SIGNER)
    finally:
        log.close()
    with pytest.raises(AuditLogClosedError):
        log.append(request(0))


def flip_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def offsets(path: Path) -> list[int]:
    return [frame.offset for frame in SegmentReader(path).frames()]


def test_an_altered_record_is_named_by_segment_and_offset(log_dir: Path) -> None:
    write(log_dir, 120)
    segment = log_dir / "00000002.log"
    target = offsets(segment)[7]
    flip_byte(segment, target + 10)
    found = problems(log_dir)
    assert f"00000002.log at offset {target}: chain hash does not follow" in "\n".join(found)
    assert "00000002.log: content differs from the signed checkpoint" in found


def test_a_rechained_segment_no_longer_matches_its_checkpoint(log_dir: Path) -> None:
    """Someone who rewrites a record and recomputes every chain hash is still caught."""
    from privatellm.audit.segment import canonical, chain_hash, frame

    write(log_dir, 120)
    path = log_dir / "00000001.log"
    reader = SegmentReader(path)
    bodies = [f.body for f in reader.frames()]
    bodies[3] = bodies[3].replace(b"user-3", b"user-X")
    chain, data = reader.header.prev_chain, bytearray(reader.data[:HEADER_BYTES])
    for body in bodies:
        chain = chain_hash(chain, body)
        data += frame(body, chain)
    path.write_bytes(bytes(data))
    assert canonical({"a": 1}) == b'{"a":1}'
    found = problems(log_dir)
    assert "00000001.log: records do not match the signed checkpoint" in found
    assert "00000002.log at offset 0: header does not continue" not in "\n".join(found)


def test_a_removed_record_and_a_reordering_are_found(log_dir: Path) -> None:
    write(log_dir, 120)
    path = log_dir / "00000003.log"  # the active segment: no checkpoint yet
    data = path.read_bytes()
    cuts = offsets(path)
    removed = data[: cuts[4]] + data[cuts[5] :]
    path.write_bytes(removed)
    found = "\n".join(problems(log_dir))
    assert f"00000003.log at offset {cuts[4]}: chain hash does not follow" in found
    assert f"record {120 - 20 + 1 + 5} where {120 - 20 + 1 + 4} belongs" in found

    swapped = data[: cuts[4]] + data[cuts[5] : cuts[6]] + data[cuts[4] : cuts[5]] + data[cuts[6] :]
    path.write_bytes(swapped)
    assert f"00000003.log at offset {cuts[4]}: chain hash" in "\n".join(problems(log_dir))


def test_a_removed_segment_or_checkpoint_is_a_gap(log_dir: Path) -> None:
    write(log_dir, 160)
    os.remove(log_dir / "00000002.log")
    assert "00000002.log: segment removed before its retention period ended" in problems(log_dir)
    os.remove(log_dir / "00000002.ckpt")
    found = "\n".join(problems(log_dir))
    assert "00000003.ckpt: checkpoints of segments 2..2 are missing" in found
    assert "00000003.ckpt: does not name the previous checkpoint" in found


def test_segments_past_their_retention_may_go(log_dir: Path) -> None:
    write(log_dir, 120)
    checkpoint = Checkpoint.from_bytes((log_dir / "00000001.ckpt").read_bytes())
    os.remove(log_dir / "00000001.log")
    report = verify_log(log_dir, SIGNER.public_key, now=checkpoint.retain_until + 1)
    assert report.ok, report.problems
    assert report.notices == ["00000001.log: removed after its retention period ended"]


def test_a_wrong_key_or_a_forged_checkpoint_fails(log_dir: Path) -> None:
    write(log_dir, 60)
    other = Signer.generate()
    assert problems(log_dir) == []
    wrong = [str(p) for p in verify_log(log_dir, other.public_key, now=NOW).problems]
    assert wrong == ["00000001.ckpt: signature does not verify with the given public key"]
    path = log_dir / "00000001.ckpt"
    path.write_bytes(path.read_bytes().replace(b'"count": 50', b'"count": 49'))
    assert "00000001.ckpt: signature does not verify" in "\n".join(problems(log_dir))


def test_a_published_head_shows_removed_newest_segments(log_dir: Path) -> None:
    write(log_dir, 160)
    head = Checkpoint.from_bytes((log_dir / "00000003.ckpt").read_bytes())
    for suffix in ("log", "idx", "ckpt"):
        os.remove(log_dir / f"00000003.{suffix}")
    os.remove(log_dir / "00000004.log")
    report = verify_log(log_dir, SIGNER.public_key, published_head=head, now=NOW)
    assert [str(p) for p in report.problems] == [
        "00000003.ckpt: the published head checkpoint is missing here: newer segments removed"
    ]


def test_a_torn_tail_is_reported_then_moved_aside_on_reopen(log_dir: Path) -> None:
    write(log_dir, 70)
    path = log_dir / "00000002.log"
    size = path.stat().st_size
    last = offsets(path)[-1]
    path.write_bytes(path.read_bytes()[:-7])
    assert problems(log_dir) == [
        f"00000002.log at offset {last}: truncated record: "
        f"{size - last - 36} bytes announced, file ends first"
    ]
    log = AuditLog(log_dir, SIGNER, limits=SegmentLimits(records=50))
    assert log.append_sync(request(99)) == 71  # the torn record 70 was never acknowledged
    log.close()
    report = verify_log(log_dir, SIGNER.public_key)
    assert report.ok, report.problems
    assert (log_dir / f"00000002.log.torn-{last}").stat().st_size == size - 7 - last
    assert "moved" in report.notices[0] and f"offset {last}" in report.notices[0]


def test_a_corrupt_header_is_an_error_naming_the_file(log_dir: Path) -> None:
    write(log_dir, 10)
    flip_byte(log_dir / "00000001.log", 0)
    assert problems(log_dir) == ["00000001.log at offset 0: not an audit segment (bad magic)"]


def test_merkle_root_depends_on_every_leaf_and_the_order() -> None:
    leaves = [leaf_hash(bytes([i])) for i in range(7)]
    root = merkle_root(leaves)
    assert merkle_root([]) == EMPTY_ROOT
    assert merkle_root(leaves[:1]) == leaves[0]
    assert merkle_root([*leaves[:6], leaf_hash(b"x")]) != root
    assert merkle_root([leaves[1], leaves[0], *leaves[2:]]) != root
    assert merkle_root(leaves[:6]) != root


def test_retention_takes_the_longest_period_present() -> None:
    retention = Retention(365, {"customer": 90, "health": 3650})
    assert retention.days_for(["customer"], unclassified=False) == 90
    assert retention.days_for(["customer"], unclassified=True) == 365
    assert retention.days_for(["customer", "health"], unclassified=True) == 3650
    assert retention.retain_until(0.0, [], unclassified=True) == 365 * DAY
    assert Retention.parse(["customer=30"]).by_class == {"customer": 30.0}
    with pytest.raises(ValueError, match="CLASS=DAYS"):
        Retention.parse(["customer"])
    with pytest.raises(ValueError, match="positive"):
        Retention(0)


def test_event_loop_waiters_get_their_numbers_and_failures(
    log_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = AuditLog(log_dir, SIGNER, limits=SegmentLimits(records=50))

    async def burst(start: int) -> list[int]:
        return list(
            await asyncio.gather(
                *(log.append_durable(request(i)) for i in range(start, start + 120))
            )
        )

    assert sorted(asyncio.run(burst(0))) == list(range(1, 121))

    def broken_disk(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fdatasync", broken_disk)

    async def refused() -> None:
        with pytest.raises(AuditLogClosedError, match="Input/output error"):
            await log.append_durable(request(999))
        # Once a write failed, nothing more is taken.
        with pytest.raises(AuditLogClosedError, match="stopped after a failed write"):
            await log.append_durable(request(1000))

    asyncio.run(refused())
    log.close()
    monkeypatch.undo()
    assert problems(log_dir) == []


def test_expired_segments_are_pruned_once_allowed_and_the_chain_still_verifies(
    log_dir: Path,
) -> None:
    now = [START]
    shipped: set[int] = set()
    log = AuditLog(
        log_dir,
        SIGNER,
        limits=SegmentLimits(records=10),
        retention=Retention(1),
        prune=lambda checkpoint: checkpoint.segment in shipped,
        clock=lambda: now[0],
    )
    for i in range(25):
        log.append_sync(request(i))
    now[0] = START + 2 * DAY
    shipped.add(1)
    log.seal()  # seals segment 3; segment 1 is expired and shipped, 2 is not shipped
    log.close()
    assert not (log_dir / "00000001.log").exists() and (log_dir / "00000001.ckpt").exists()
    assert (log_dir / "00000002.log").exists()
    report = verify_log(log_dir, SIGNER.public_key, now=now[0])
    assert report.ok, report.problems
    assert report.notices == ["00000001.log: removed after its retention period ended"]
    removals = [
        json.loads(frame.body) for frame in SegmentReader(log_dir / "00000004.log").frames()
    ]
    assert [(r["action"], r["segments"]) for r in removals] == [("audit.retention", [1])]


def test_a_batch_being_written_is_a_notice_while_the_writer_is_live(log_dir: Path) -> None:
    from privatellm.audit.query import AuditQuery, query_log

    write(log_dir, 30)
    path = log_dir / "00000001.log"
    last = offsets(path)[-1]
    log = AuditLog(log_dir, SIGNER, limits=SegmentLimits(records=50))
    try:
        # What a reader may see while a batch is half on disk: a record cut short.
        with path.open("ab") as file:
            file.write(b"\x00\x00\x01\x00partial")
        report = verify_log(log_dir, SIGNER.public_key, now=NOW)
        assert report.ok, report.problems
        assert report.notices == [
            f"00000001.log: a batch is being written at offset {path.stat().st_size - 11}; "
            "its records are not acknowledged yet and are not included"
        ]
        found = query_log(log_dir, SIGNER.public_key, AuditQuery(), now=NOW)
        assert len(found.records) == 30 and "being written" in found.notices[0]
    finally:
        log.close()
    # Without a live writer the same bytes are a truncated tail: a problem.
    assert problems(log_dir) == [
        f"00000001.log at offset {path.stat().st_size - 11}: truncated frame (11 bytes)"
    ]
    assert last < path.stat().st_size - 11


def test_a_record_that_cannot_be_kept_is_refused_alone(log_dir: Path) -> None:
    from privatellm.audit.segment import MAX_BODY_BYTES
    from privatellm.audit.writer import AuditRecordError

    log = AuditLog(log_dir, SIGNER)
    try:
        assert log.append_sync(request(0)) == 1
        with pytest.raises(AuditRecordError, match="cannot be encoded"):
            log.append_sync({**request(1), "bad": object()})
        with pytest.raises(AuditRecordError, match="at most"):
            log.append_sync({**request(2), "prompt_record": "x" * MAX_BODY_BYTES})
        # The log goes on, with no gap in the numbering.
        assert log.append_sync(request(3)) == 2
    finally:
        log.close()
    assert problems(log_dir) == []


def test_the_merkle_frontier_gives_the_root_of_every_prefix() -> None:
    from privatellm.audit.merkle import MerkleFrontier

    leaves = [leaf_hash(i.to_bytes(2, "big")) for i in range(300)]
    frontier = MerkleFrontier()
    assert frontier.root() == merkle_root([])
    for count, leaf in enumerate(leaves, start=1):
        frontier.add(leaf)
        assert frontier.root() == merkle_root(leaves[:count]), count
