"""Proof that a log is whole: every record, chain hash, checkpoint and signature checked.

A problem names the file and, where there is one, the byte offset: a record
altered, removed, reordered or inserted breaks the chain at that record; a
segment re-chained after the fact no longer matches its signed checkpoint; a
segment or checkpoint removed leaves a gap in the checkpoint chain; a head
checkpoint published elsewhere shows when the newest ones were removed.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import orjson
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from .checkpoint import Checkpoint, key_id
from .files import load_checkpoints, read_log_id, writer_is_live
from .merkle import leaf_hash, merkle_root
from .records import RECOVERY
from .segment import (
    CHAIN_BREAK,
    AuditFormatError,
    SegmentReader,
    TruncatedTailError,
    genesis,
    segment_name,
)


@dataclass(frozen=True)
class Problem:
    file: str
    offset: int | None
    message: str

    def __str__(self) -> str:
        where = self.file if self.offset is None else f"{self.file} at offset {self.offset}"
        return f"{where}: {self.message}"


@dataclass
class VerifyReport:
    problems: list[Problem] = field(default_factory=list)
    # Things an auditor should see that are not breaks: recoveries, expired segments.
    notices: list[str] = field(default_factory=list)
    segments: int = 0
    records: int = 0
    bytes: int = 0
    head: Checkpoint | None = None

    @property
    def ok(self) -> bool:
        return not self.problems

    def problem(self, file: str, offset: int | None, message: str) -> None:
        self.problems.append(Problem(file, offset, message))


def verify_checkpoints(
    checkpoints: list[Checkpoint],
    log_id: uuid.UUID,
    public_key: Ed25519PublicKey,
    report: VerifyReport,
) -> None:
    """Signatures, numbering and the links between consecutive checkpoints."""
    expected_key = key_id(public_key)
    previous: Checkpoint | None = None
    for checkpoint in checkpoints:
        name = f"{segment_name(checkpoint.segment)}.ckpt"
        expected_segment = previous.segment + 1 if previous else 1
        if checkpoint.segment != expected_segment:
            report.problem(
                name,
                None,
                f"checkpoints of segments {expected_segment}..{checkpoint.segment - 1} are missing",
            )
        if checkpoint.log_id != str(log_id):
            report.problem(name, None, f"belongs to log {checkpoint.log_id}, not {log_id}")
        if checkpoint.key_id != expected_key or not checkpoint.verify_signature(public_key):
            report.problem(name, None, "signature does not verify with the given public key")
        if previous is None:
            if checkpoint.prev_chain != genesis(log_id).hex() or checkpoint.first_seq != 1:
                report.problem(name, None, "the first segment does not start the log")
        else:
            if checkpoint.prev_checkpoint != previous.digest():
                report.problem(name, None, "does not name the previous checkpoint")
            if checkpoint.prev_chain != previous.last_chain:
                report.problem(name, None, "chain does not continue from the previous segment")
            if checkpoint.first_seq != previous.first_seq + previous.count:
                report.problem(
                    name,
                    None,
                    f"starts at record {checkpoint.first_seq}, "
                    f"expected {previous.first_seq + previous.count}",
                )
        previous = checkpoint


def verify_segment_files(directory: Path, checkpoint: Checkpoint, report: VerifyReport) -> bytes:
    """Compare a sealed segment's files with their digests in the checkpoint; its bytes."""
    path = directory / f"{segment_name(checkpoint.segment)}.log"
    data = path.read_bytes()
    if len(data) != checkpoint.file_size:
        report.problem(
            path.name,
            min(len(data), checkpoint.file_size),
            f"is {len(data)} bytes, the checkpoint says {checkpoint.file_size}",
        )
    elif hashlib.sha256(data).hexdigest() != checkpoint.file_sha256:
        report.problem(path.name, None, "content differs from the signed checkpoint")
    index = path.with_suffix(".idx")
    if not index.exists():
        report.problem(index.name, None, "index file is missing")
    elif hashlib.sha256(index.read_bytes()).hexdigest() != checkpoint.index_sha256:
        report.problem(index.name, None, "index differs from the signed checkpoint")
    return data


def verify_records(
    path: Path,
    data: bytes,
    first_seq: int,
    prev_chain: bytes,
    report: VerifyReport,
    *,
    being_written: bool = False,
    bodies: list[bytes] | None = None,
) -> tuple[int, bytes, list[bytes]]:
    """Walk a segment's records; (count, last chain hash, leaf hashes). Breaks are reported.

    `being_written`: the open segment of a log whose writer is live, so a record cut
    short at the end is a batch still being written (not yet acknowledged): a notice.
    With `bodies`, every record body is appended to it.
    """
    try:
        reader = SegmentReader(path, data)
    except AuditFormatError as error:
        report.problem(path.name, error.offset, error.message)
        return 0, prev_chain, []
    if reader.header.prev_chain != prev_chain:
        report.problem(path.name, 0, "header does not continue the chain of the segment before")
    leaves: list[bytes] = []
    sequence_reported = False
    try:
        for item in reader.frames(strict=False):
            if not item.follows:
                report.problem(path.name, item.offset, CHAIN_BREAK)
            record = orjson.loads(item.body)
            expected = first_seq + len(leaves)
            # Only the first: after a removal or insertion every later number is off.
            if record.get("seq") != expected and not sequence_reported:
                sequence_reported = True
                report.problem(
                    path.name, item.offset, f"record {record.get('seq')} where {expected} belongs"
                )
            if record.get("action") == RECOVERY:
                report.notices.append(
                    f"{path.name}: the writer recovered from a crash and moved "
                    f"{record['dropped_bytes']} unacknowledged bytes at offset "
                    f"{record['offset']} of {record['segment']} to {record['quarantine']}"
                )
            leaves.append(leaf_hash(item.body))
            if bodies is not None:
                bodies.append(item.body)
    except TruncatedTailError as error:
        if not being_written:
            report.problem(path.name, error.offset, error.message)
        else:
            report.notices.append(
                f"{path.name}: a batch is being written at offset {error.offset}; "
                "its records are not acknowledged yet and are not included"
            )
    except AuditFormatError as error:
        report.problem(path.name, error.offset, error.message)
    report.records += len(leaves)
    return len(leaves), reader.last_chain, leaves


def verify_log(
    directory: Path,
    public_key: Ed25519PublicKey,
    *,
    published_head: Checkpoint | None = None,
    now: float | None = None,
) -> VerifyReport:
    """Check every record of the log in `directory`; see the module docstring."""
    now = time.time() if now is None else now
    report = VerifyReport()
    log_id = read_log_id(directory)
    checkpoints = load_checkpoints(directory)
    verify_checkpoints(checkpoints, log_id, public_key, report)
    chain, seq = genesis(log_id), 1
    for checkpoint in checkpoints:
        path = directory / f"{segment_name(checkpoint.segment)}.log"
        chain, seq = bytes.fromhex(checkpoint.last_chain), checkpoint.first_seq + checkpoint.count
        if not path.exists():
            if checkpoint.retain_until <= now:
                report.notices.append(f"{path.name}: removed after its retention period ended")
            else:
                report.problem(path.name, None, "segment removed before its retention period ended")
            continue
        report.segments += 1
        data = verify_segment_files(directory, checkpoint, report)
        report.bytes += len(data)
        count, last, leaves = verify_records(
            path, data, checkpoint.first_seq, bytes.fromhex(checkpoint.prev_chain), report
        )
        if count != checkpoint.count:
            report.problem(
                path.name, None, f"holds {count} records, the checkpoint says {checkpoint.count}"
            )
        if (
            last.hex() != checkpoint.last_chain
            or merkle_root(leaves).hex() != checkpoint.merkle_root
        ):
            report.problem(path.name, None, "records do not match the signed checkpoint")
    sealed = {c.segment for c in checkpoints}
    active = [p for p in sorted(directory.glob("*.log")) if int(p.stem) not in sealed]
    for path in active:
        if int(path.stem) != len(checkpoints) + 1:
            report.problem(path.name, None, "an unsealed segment that is not the newest one")
            continue
        report.segments += 1
        data = path.read_bytes()
        report.bytes += len(data)
        verify_records(path, data, seq, chain, report, being_written=writer_is_live(directory))
    report.head = checkpoints[-1] if checkpoints else None
    if published_head is not None:
        _compare_head(published_head, checkpoints, report)
    return report


def _compare_head(
    published: Checkpoint, checkpoints: list[Checkpoint], report: VerifyReport
) -> None:
    name = f"{segment_name(published.segment)}.ckpt"
    local = next((c for c in checkpoints if c.segment == published.segment), None)
    if local is None:
        report.problem(
            name, None, "the published head checkpoint is missing here: newer segments removed"
        )
    elif local.digest() != published.digest():
        report.problem(name, None, "differs from the published head checkpoint")
