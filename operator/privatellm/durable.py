"""Small files that survive a crash whole: written aside, flushed, renamed into place."""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from pathlib import Path


def fsync_directory(path: Path) -> None:
    """Make a rename or removal in `path` survive a crash."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomically(path: Path, data: bytes, mode: int | None = None) -> None:
    """Replace `path` with `data` so that readers, and a restart after a crash, see the
    old bytes or the new ones, never a part. The file gets `mode`; by default a file
    replaced keeps its permission bits, and a new one is 0600.

    The bytes go to a temporary file in the same folder (same file system, so the rename
    is atomic), named `.<name>.<random>.tmp`: it never ends like an entry, a record or a
    segment, and whoever owns the folder may remove such leftovers at start.
    """
    if mode is None:
        try:
            mode = stat.S_IMODE(path.stat().st_mode)
        except FileNotFoundError:
            mode = 0o600
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as file:
            os.fchmod(file.fileno(), mode)
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
    fsync_directory(path.parent)
