"""A process that appends to an audit log as fast as it can, for crash tests to kill -9.

    python -m tests.support.audit_writer_child DIR KEYFILE --run N [options]

It opens an `AuditLog` on DIR (signing with the Ed25519 key in KEYFILE) with small
segments, so that seals are frequent, prints `open <next seq>`, then appends from
several producer threads until it is killed. Each producer keeps a window of appends
in flight, so batches hold many records. For every record it prints
`ack <seq> <request_id>` and flushes, only after the record's future resolved: every
printed line names a record that was durable at that moment. Request ids are
`<run>-<producer>-<n>`, unique across runs on the same directory.

To let a test kill the writer at a precise point, the child can hang (print a marker
line, then sleep until killed) inside the writer:

    --hang-seal SUFFIX   before the rename of the SKIP+1-th file ending in SUFFIX
                         (.idx, .ckpt, or .log: the segment started after a seal)
                         that the writer thread writes; prints `hang <file name>`
    --hang-sync          in the SKIP+1-th fdatasync of a batch, after the batch was
                         written; prints `hang-sync <path> <batch start> <batch end>`
    --skip SKIP          how many matching points to pass before hanging (default 0)

Only this process is patched; privatellm.audit.writer itself is not changed.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future
from pathlib import Path
from types import ModuleType
from typing import Any

from privatellm.audit import writer
from privatellm.audit.checkpoint import Signer
from privatellm.audit.writer import AuditLog, AuditLogClosedError, SegmentLimits

WRITER_THREAD = "audit-writer"


class _Output:
    """Lines to stdout, whole and flushed, from any thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()

    def line(self, text: str) -> None:
        with self._lock:
            sys.stdout.write(text + "\n")
            sys.stdout.flush()


def _hang_forever() -> None:
    while True:
        time.sleep(3600)


def hang_in_seal(out: _Output, suffix: str, skip: int) -> None:
    """Make the writer thread stop before renaming the `skip`+1-th file ending in `suffix`."""
    original = writer.write_durably
    passed = 0

    def write_durably(path: Path, data: bytes) -> None:
        nonlocal passed
        if path.suffix != suffix or threading.current_thread().name != WRITER_THREAD:
            original(path, data)
            return
        if passed < skip:
            passed += 1
            original(path, data)
            return
        # The same steps as writer.write_durably, stopping where a crash hurts most:
        # the temporary file is complete and synced, the rename has not happened.
        temporary = path.with_name(path.name + ".tmp")
        with temporary.open("wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        out.line(f"hang {path.name}")
        _hang_forever()

    writer.write_durably = write_durably


class _SyncHangingOs(ModuleType):
    """`os` for the writer module: the same, but one fdatasync never returns."""

    def __init__(self, out: _Output, skip: int) -> None:
        super().__init__("os")
        self._out = out
        self._skip = skip
        self._batch_start: dict[int, int] = {}

    def __getattr__(self, name: str) -> Any:
        return getattr(os, name)

    def write(self, fd: int, data: bytes) -> int:
        if threading.current_thread().name == WRITER_THREAD and fd not in self._batch_start:
            self._batch_start[fd] = os.fstat(fd).st_size
        return os.write(fd, data)

    def fdatasync(self, fd: int) -> None:
        if threading.current_thread().name == WRITER_THREAD and fd in self._batch_start:
            if self._skip == 0:
                start, end = self._batch_start[fd], os.fstat(fd).st_size
                path = os.readlink(f"/proc/self/fd/{fd}")
                self._out.line(f"hang-sync {path} {start} {end}")
                _hang_forever()
            self._skip -= 1
            del self._batch_start[fd]
        os.fdatasync(fd)


def hang_in_sync(out: _Output, skip: int) -> None:
    """Make the writer thread stop in the `skip`+1-th batch, written but not yet synced."""
    vars(writer)["os"] = _SyncHangingOs(out, skip)


def produce(log: AuditLog, out: _Output, run: int, producer: int, window: int) -> None:
    """Append `window` records, then wait for them and print their acks; again and again."""
    n = 0
    while True:
        pending: list[tuple[str, Future[int]]] = []
        for _ in range(window):
            request_id = f"{run}-{producer}-{n}"
            n += 1
            record = {
                "kind": "request",
                "subject": f"user-{producer}",
                "model": "crash-test",
                "data_classes": ["customer"] if n % 3 == 0 else [],
                "request_id": request_id,
            }
            try:
                pending.append((request_id, log.append(record)))
            except AuditLogClosedError:
                return
        for request_id, future in pending:
            try:
                seq = future.result()
            except AuditLogClosedError:
                return
            out.line(f"ack {seq} {request_id}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("directory", type=Path)
    parser.add_argument("keyfile", type=Path)
    parser.add_argument("--run", type=int, required=True, help="makes request ids unique")
    parser.add_argument("--producers", type=int, default=4)
    parser.add_argument("--window", type=int, default=8, help="appends in flight per producer")
    parser.add_argument("--segment-records", type=int, default=20)
    parser.add_argument("--hang-seal", choices=[".idx", ".ckpt", ".log"])
    parser.add_argument("--hang-sync", action="store_true")
    parser.add_argument("--skip", type=int, default=0)
    args = parser.parse_args(argv)

    out = _Output()
    if args.hang_seal:
        hang_in_seal(out, args.hang_seal, args.skip)
    if args.hang_sync:
        hang_in_sync(out, args.skip)
    log = AuditLog(
        args.directory,
        Signer.from_file(args.keyfile),
        limits=SegmentLimits(records=args.segment_records),
    )
    out.line(f"open {log.next_seq}")
    producers = [
        threading.Thread(
            target=produce,
            args=(log, out, args.run, p, args.window),
            name=f"producer-{p}",
            daemon=True,
        )
        for p in range(args.producers)
    ]
    for thread in producers:
        thread.start()
    for thread in producers:
        thread.join()
    # The producers only return when the log refused a record: it stopped after a failure.
    log.close()
    out.line("stopped")
    return 1


if __name__ == "__main__":
    sys.exit(main())
