"""A log directory on disk: its identity, its checkpoints, its lock, durable small files."""

from __future__ import annotations

import fcntl
import os
import uuid
from pathlib import Path

from privatellm.durable import fsync_directory

from .checkpoint import Checkpoint


def write_durably(path: Path, data: bytes) -> None:
    """Write `data` to `path` atomically: temporary file, fsync, rename, fsync the directory."""
    temporary = path.with_name(path.name + ".tmp")
    with temporary.open("wb") as file:
        file.write(data)
        file.flush()
        os.fsync(file.fileno())
    os.replace(temporary, path)
    fsync_directory(path.parent)


def read_log_id(directory: Path) -> uuid.UUID:
    return uuid.UUID((directory / "LOG_ID").read_text().strip())


def writer_is_live(directory: Path) -> bool:
    """Whether a writer holds the log open now (its lock is taken)."""
    try:
        with (directory / "LOCK").open("rb") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            fcntl.flock(lock, fcntl.LOCK_UN)
    except FileNotFoundError:
        pass
    return False


def load_checkpoints(directory: Path) -> list[Checkpoint]:
    return [Checkpoint.from_bytes(p.read_bytes()) for p in sorted(directory.glob("*.ckpt"))]
