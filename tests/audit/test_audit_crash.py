"""The audit log's writer killed with SIGKILL, many times: it verifies and keeps every ack.

A child process (tests/support/audit_writer_child.py) appends from several threads
and prints `ack <seq> <request_id>` only after each record's future resolved, that is
after the batch holding it was written and fdatasync'ed. The parent kills it at
random points, again and again on the same directory, then reopens the log (which
repairs a torn tail) and checks that it verifies, that its records are numbered
1..N without a gap, and that every acknowledged record is there with its number.

SIGKILL loses nothing the kernel already has, so a torn write (power loss in the
middle of a batch) is made by cutting the file inside a batch that was written but
not yet synced, and a crash inside a seal by making the child stop there.
"""

from __future__ import annotations

import hashlib
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import orjson
import pytest

from privatellm.audit import AuditLog, Signer, verify_log
from privatellm.audit.files import load_checkpoints
from privatellm.audit.segment import FRAME_OVERHEAD, AuditFormatError, SegmentReader
from privatellm.audit.writer import SegmentLimits

ROOT = Path(__file__).resolve().parents[2]
SEGMENT_RECORDS = 64
LIMITS = SegmentLimits(records=SEGMENT_RECORDS)
SIGNER = Signer.generate()
MARKER_TIMEOUT = 20.0


class WriterChild:
    """One run of the child: its acks, its marker lines, and a reader of its stdout."""

    def __init__(self, directory: Path, keyfile: Path, run: int, *options: str) -> None:
        self.run = run
        self.acks: list[tuple[int, str]] = []
        self.opened_at: int | None = None
        self.markers: list[list[str]] = []
        self.first_ack = threading.Event()
        self.marker = threading.Event()
        self.stderr_path = directory.parent / f"child-{run}.err"
        command = [sys.executable, "-m", "tests.support.audit_writer_child"]
        command += [str(directory), str(keyfile), "--run", str(run)]
        command += ["--segment-records", str(SEGMENT_RECORDS), *options]
        with self.stderr_path.open("wb") as stderr:
            self.process = subprocess.Popen(
                command, cwd=ROOT, stdout=subprocess.PIPE, stderr=stderr, text=True
            )
        assert self.process.stdout is not None
        self._reader = threading.Thread(
            target=self._read, args=(self.process.stdout,), name=f"child-{run}", daemon=True
        )
        self._reader.start()

    def _read(self, stdout: IO[str]) -> None:
        for line in stdout:
            words = line.split()
            if words[:1] == ["ack"] and len(words) == 3:
                self.acks.append((int(words[1]), words[2]))
                self.first_ack.set()
            elif words[:1] == ["open"]:
                self.opened_at = int(words[1])
            elif words:
                self.markers.append(words)
                self.marker.set()

    def wait_for(self, event: threading.Event, what: str) -> None:
        if not event.wait(MARKER_TIMEOUT):
            self.kill()
            pytest.fail(f"the writer child never printed {what}: {self.stderr()}")

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")[-3000:]

    def kill(self) -> None:
        """SIGKILL (unless it is gone already), then read all it printed before it died."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=30)
        self._reader.join(timeout=30)
        if self.process.stdout is not None:
            self.process.stdout.close()

    def kill_9(self) -> None:
        """Kill it, and check it was still running and had not failed on its own."""
        self.kill()
        assert self.process.returncode == -signal.SIGKILL, f"it ended itself: {self.stderr()}"
        assert "Traceback" not in self.stderr(), self.stderr()


class Children:
    """Starts writer children on one log directory; the fixture kills any left running."""

    def __init__(self, tmp_path: Path) -> None:
        self.directory = tmp_path / "audit"
        self.keyfile = tmp_path / "signing.pem"
        self.keyfile.write_bytes(SIGNER.private_pem())
        self.started: list[WriterChild] = []

    def start(self, run: int, *options: str) -> WriterChild:
        child = WriterChild(self.directory, self.keyfile, run, *options)
        self.started.append(child)
        return child


@pytest.fixture
def children(tmp_path: Path) -> Iterator[Children]:
    started = Children(tmp_path)
    try:
        yield started
    finally:
        for child in started.started:
            child.kill()


@dataclass
class Acked:
    """Every record a child acknowledged, across runs: request id to sequence number."""

    seqs: dict[str, int] = field(default_factory=dict)

    def add(self, child: WriterChild) -> None:
        for seq, request_id in child.acks:
            assert request_id not in self.seqs, f"{request_id} acknowledged twice"
            self.seqs[request_id] = seq

    def highest(self) -> int:
        return max(self.seqs.values(), default=0)


def read_records(directory: Path) -> list[dict[str, Any]]:
    """Every record of every segment, in order (the log must be intact: strict reading)."""
    records: list[dict[str, Any]] = []
    for path in sorted(directory.glob("*.log")):
        records += [orjson.loads(item.body) for item in SegmentReader(path).frames()]
    return records


def recover_and_check(directory: Path, acked: Acked) -> tuple[list[dict[str, Any]], list[str]]:
    """Open the log once (recovery), close it, verify; the records and the verifier's notices.

    Besides verifying: records numbered 1..N, every acknowledged record there with its
    number, and every quarantined tail named by a recovery record that holds its digest.
    """
    AuditLog(directory, SIGNER, limits=LIMITS).close()
    report = verify_log(directory, SIGNER.public_key)
    assert report.ok, [str(p) for p in report.problems]
    records = read_records(directory)
    assert [r["seq"] for r in records] == list(range(1, len(records) + 1))
    assert report.records == len(records)
    in_log: dict[str, int] = {}
    for record in records:
        if "request_id" in record:
            assert record["request_id"] not in in_log, f"{record['request_id']} is in twice"
            in_log[record["request_id"]] = record["seq"]
    wrong = {
        rid: (seq, in_log.get(rid)) for rid, seq in acked.seqs.items() if in_log.get(rid) != seq
    }
    assert not wrong, f"acknowledged records missing or renumbered (acked, in log): {wrong}"
    recoveries = [r for r in records if r.get("action") == "audit.recovery"]
    quarantined = {p.name: p.read_bytes() for p in directory.glob("*.torn-*")}
    assert sorted(quarantined) == sorted({r["quarantine"] for r in recoveries}), (
        "a quarantined tail that no recovery record names, or the reverse"
    )
    for recovery in recoveries:
        kept = quarantined[recovery["quarantine"]]
        assert hashlib.sha256(kept).hexdigest() == recovery["dropped_sha256"], (
            f"{recovery['quarantine']} no longer holds the bytes record {recovery['seq']} moved"
        )
    return records, report.notices


@dataclass
class KillState:
    """What a kill left on disk, read before anything reopens the log."""

    # The step of a seal the kill interrupted, "" when it was not inside one.
    seal_step: str
    torn_tail: bool
    # Records of the killed run that are in the log but were never acknowledged.
    unacknowledged: int


def kill_state(directory: Path, child: WriterChild, acked: Acked) -> KillState:
    """Classify a kill by the files it left: inside which step of a seal, torn tail, in flight.

    A seal writes the index, then the checkpoint, then the next segment, each to a
    temporary file that is synced and renamed; before it starts, the segment is full.
    """
    sealed = {c.segment for c in load_checkpoints(directory)}
    segments = sorted(directory.glob("*.log"))
    newest = segments[-1] if segments else None
    seal_step, torn_tail = "", False
    temporary = sorted(p.name.split(".")[1] for p in directory.glob("*.tmp"))
    if temporary:
        seal_step = f"{temporary[0]}.tmp not renamed"
    elif any(int(p.stem) not in sealed for p in directory.glob("*.idx")):
        seal_step = "idx renamed, no ckpt"
    elif newest is not None and int(newest.stem) in sealed:
        seal_step = "ckpt renamed, no next log"
    elif newest is not None:
        count = 0
        try:
            count = sum(1 for _ in SegmentReader(newest).frames())
        except AuditFormatError:
            torn_tail = True
        if count >= SEGMENT_RECORDS:
            seal_step = "full, no idx yet"
    # Only a few batches are ever in flight: they are in the newest segments.
    written: list[str] = []
    for path in segments[-3:]:
        try:
            for item in SegmentReader(path).frames():
                written.append(orjson.loads(item.body).get("request_id", ""))
        except AuditFormatError:
            pass
    prefix = f"{child.run}-"
    unacknowledged = sum(1 for r in written if r.startswith(prefix) and r not in acked.seqs)
    return KillState(seal_step, torn_tail, unacknowledged)


def test_kill_9_at_random_points_loses_no_acknowledged_record(children: Children) -> None:
    rounds, rng = 40, random.Random(20261129)
    directory = children.directory
    acked = Acked()
    kinds = dict.fromkeys(
        ["before open", "before the first ack", "inside a seal", "batch in flight", "between"], 0
    )
    seal_steps: dict[str, int] = {}
    torn_tails = unacknowledged = 0
    records: list[dict[str, Any]] = []
    notices: list[str] = []
    started = time.monotonic()
    for run in range(1, rounds + 1):
        child = children.start(run)
        if rng.random() < 0.15:
            # Sometimes before the first ack: while starting, opening or recovering.
            time.sleep(rng.uniform(0.05, 0.15))
        else:
            child.wait_for(child.first_ack, "a first ack")
            time.sleep(rng.choice([0.0, rng.uniform(0, 0.01), rng.uniform(0.01, 0.25)]))
        child.kill_9()
        if child.opened_at is not None:
            # Where a run went on from: never a number already acknowledged.
            assert child.opened_at > acked.highest()
        acked.add(child)
        state = kill_state(directory, child, acked)
        torn_tails += state.torn_tail
        unacknowledged += state.unacknowledged
        if child.opened_at is None:
            kinds["before open"] += 1
        elif not child.acks:
            kinds["before the first ack"] += 1
        elif state.seal_step:
            kinds["inside a seal"] += 1
            seal_steps[state.seal_step] = seal_steps.get(state.seal_step, 0) + 1
        elif state.unacknowledged:
            kinds["batch in flight"] += 1
        else:
            kinds["between"] += 1
        # Mostly the children recover from each other; now and then the parent checks.
        if run % 8 == 0 or run == rounds:
            records, notices = recover_and_check(directory, acked)
    elapsed = time.monotonic() - started
    sealed = len(load_checkpoints(directory))
    print(
        f"\n{rounds} kills in {elapsed:.1f}s: {kinds}\nseal steps interrupted: {seal_steps}\n"
        f"{torn_tails} torn tails, {len(notices)} recovery notices; "
        f"{len(acked.seqs)} records acknowledged of {len(records)}, "
        f"{unacknowledged} written but never acknowledged; {sealed} segments sealed"
    )
    assert kinds["inside a seal"] > 0, kinds
    assert kinds["batch in flight"] + kinds["inside a seal"] >= rounds // 3, kinds
    assert len(acked.seqs) >= rounds and sealed > 0


@pytest.mark.parametrize("suffix", [".idx", ".ckpt", ".log"])
def test_kill_9_inside_a_seal_then_the_writer_carries_on(children: Children, suffix: str) -> None:
    directory = children.directory
    acked = Acked()
    rng = random.Random(suffix)
    for run in range(1, 4):
        skip = rng.randrange(3)
        child = children.start(run, "--hang-seal", suffix, "--skip", str(skip))
        child.wait_for(child.marker, f"that it stopped before renaming a {suffix} file")
        child.kill_9()
        acked.add(child)
        [[word, name]] = child.markers
        assert word == "hang" and name.endswith(suffix)
        hung = directory / name
        # Stopped between the synced temporary file and its rename.
        assert (directory / (name + ".tmp")).exists() and not hung.exists()
        segment = int(hung.stem)
        # The seal cut short is this segment's; for .log, the one before it, whose
        # checkpoint is written: the seal ends by starting the next segment.
        interrupted = segment - 1 if suffix == ".log" else segment
        assert [c.segment for c in load_checkpoints(directory)] == list(range(1, segment))

        records, _ = recover_and_check(directory, acked)
        assert len(records) >= interrupted * SEGMENT_RECORDS

        # The writer carries on: the next append works, the interrupted seal completes,
        # and the next seal after it works too.
        log = AuditLog(directory, SIGNER, limits=LIMITS)
        try:
            for i in range(SEGMENT_RECORDS + 1):
                request_id = f"after-{run}-{i}"
                seq = log.append_sync({"kind": "request", "request_id": request_id})
                assert seq == len(records) + 1 + i
                acked.seqs[request_id] = seq
        finally:
            log.close()
        sealed = [c.segment for c in load_checkpoints(directory)]
        assert sealed == list(range(1, interrupted + 2))
        assert not list(directory.glob("*.tmp"))
        recover_and_check(directory, acked)


@dataclass
class UnsyncedBatch:
    """A batch the child wrote and was killed before syncing: what a power loss may tear."""

    path: Path
    data: bytes
    # (offset, end) of each of its records, in the order written.
    frames: list[tuple[int, int]]

    def request_ids(self, start: int, end: int) -> list[str]:
        """Request ids of the records that lie in [start, end) of the file as written."""
        records = [
            orjson.loads(f.body)
            for f in SegmentReader(self.path, self.data).frames()
            if start <= f.offset and f.offset + FRAME_OVERHEAD + len(f.body) <= end
        ]
        return [r["request_id"] for r in records if "request_id" in r]


def kill_before_a_sync(children: Children, run: int, skip: int, acked: Acked) -> UnsyncedBatch:
    """Run the child until its `skip`+1-th batch is written, then kill it before the sync."""
    child = children.start(run, "--hang-sync", "--skip", str(skip))
    child.wait_for(child.marker, "that it stopped before syncing a batch")
    child.kill_9()
    acked.add(child)
    [[word, name, start, end]] = child.markers
    assert word == "hang-sync"
    path, data = Path(name), Path(name).read_bytes()
    assert len(data) == int(end)
    reader = SegmentReader(path, data)
    frames = [
        (f.offset, f.offset + FRAME_OVERHEAD + len(f.body))
        for f in reader.frames()
        if f.offset >= int(start)
    ]
    assert frames and reader.valid_end == int(end), "the unsynced batch is not the file's tail"
    batch = UnsyncedBatch(path, data, frames)
    unsynced = set(batch.request_ids(frames[0][0], len(data)))
    assert not unsynced & set(acked.seqs), "a record of the unsynced batch was acknowledged"
    return batch


def test_a_torn_write_in_the_middle_of_a_batch_is_moved_aside(children: Children) -> None:
    directory = children.directory
    acked = Acked()
    rng = random.Random(4242)
    tears: list[str] = []
    for run in range(1, 9):
        batch = kill_before_a_sync(children, run, rng.randrange(5), acked)
        path, data = batch.path, batch.data
        # A power loss tears the batch inside one of its records, first, middle or last.
        torn_at, torn_end = rng.choice(batch.frames)
        cut = rng.randrange(torn_at + 1, torn_end)
        intact = batch.request_ids(batch.frames[0][0], torn_at)
        lost = batch.request_ids(torn_at, len(data))
        os.truncate(path, cut)
        report = verify_log(directory, SIGNER.public_key)
        assert [(p.file, p.offset) for p in report.problems] == [(path.name, torn_at)]

        records, notices = recover_and_check(directory, acked)
        assert path.with_name(f"{path.name}.torn-{torn_at}").read_bytes() == data[torn_at:cut]
        assert any(f"offset {torn_at} of {path.name}" in n for n in notices)
        kept = {r["request_id"] for r in records if "request_id" in r}
        assert set(intact) <= kept, "intact records before the tear were dropped"
        assert not set(lost) & kept
        frame = batch.frames.index((torn_at, torn_end)) + 1
        tears.append(f"record {frame} of {len(batch.frames)} at {path.name}:{cut}")
    print(f"\ntorn writes moved aside: {'; '.join(tears)}")


# A second crash while recovering from a torn tail, before the recovery record is
# synced: the tail moved aside is neither overwritten nor left without a record.


def test_a_torn_recovery_record_keeps_the_tail_it_moved_aside(children: Children) -> None:
    directory = children.directory
    acked = Acked()
    first = kill_before_a_sync(children, 1, 1, acked)
    torn_at = first.frames[0][0]
    os.truncate(first.path, torn_at + 10)
    # The next run moves that tail aside; its first batch, the recovery record first,
    # is torn by a second power loss before it is synced.
    second = kill_before_a_sync(children, 2, 0, acked)
    assert second.frames[0][0] == torn_at
    os.truncate(second.path, torn_at + 5)
    recover_and_check(directory, acked)
    kept = [p.read_bytes() for p in directory.glob("*.torn-*")]
    assert first.data[torn_at : torn_at + 10] in kept, "the first torn tail is gone"


def test_a_recovery_record_lost_with_its_batch_is_written_again(children: Children) -> None:
    directory = children.directory
    acked = Acked()
    first = kill_before_a_sync(children, 1, 1, acked)
    torn_at = first.frames[0][0]
    os.truncate(first.path, torn_at + 10)
    # The next run moves that tail aside; its first batch, the recovery record first,
    # is lost whole by a second power loss (or a kill before it is written).
    second = kill_before_a_sync(children, 2, 0, acked)
    assert second.frames[0][0] == torn_at
    os.truncate(second.path, torn_at)
    recover_and_check(directory, acked)
