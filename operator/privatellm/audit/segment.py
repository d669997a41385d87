"""The segment file format: a header, then records framed and hash-chained.

Format version 1 (integers big-endian):

    header   magic b"PLAS", version (1 byte), segment number (8 bytes),
             log id (16 bytes), chain hash entering the segment (32 bytes)
    frame    body length (4 bytes), body (canonical JSON), chain hash (32 bytes)

chain(i) = SHA-256(chain(i-1) || body(i)). Every body carries its global `seq`,
so a record removed, reordered, inserted or altered changes every chain hash
after it. The first segment starts from `genesis(log_id)`; each later segment
starts from the last chain hash of the one before.
"""

from __future__ import annotations

import hashlib
import struct
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

MAGIC = b"PLAS"
FORMAT_VERSION = 1
HASH_BYTES = 32
MAX_BODY_BYTES = 16 * 1024 * 1024

_HEADER = struct.Struct(">4sBQ16s32s")
_LENGTH = struct.Struct(">I")
HEADER_BYTES = _HEADER.size
FRAME_OVERHEAD = _LENGTH.size + HASH_BYTES
_CANONICAL = orjson.OPT_SORT_KEYS
CHAIN_BREAK = "chain hash does not follow: record altered, removed, reordered or inserted"


class AuditFormatError(Exception):
    """Bytes that are not what the format says, named by segment and offset."""

    def __init__(self, segment: str, offset: int, message: str) -> None:
        self.segment = segment
        self.offset = offset
        self.message = message
        super().__init__(f"{segment} at offset {offset}: {message}")


class TruncatedTailError(AuditFormatError):
    """The file ends inside a record: a crash mid-write, or a batch being written now."""


def segment_name(number: int) -> str:
    return f"{number:08d}"


def genesis(log_id: uuid.UUID) -> bytes:
    """The chain hash before the log's first record."""
    return hashlib.sha256(b"privatellm.io/audit/v1\0" + log_id.bytes).digest()


def canonical(record: dict[str, Any]) -> bytes:
    """The one byte form of a record: sorted keys, no whitespace."""
    return orjson.dumps(record, option=_CANONICAL)


def chain_hash(previous: bytes, body: bytes) -> bytes:
    return hashlib.sha256(previous + body).digest()


@dataclass(frozen=True)
class SegmentHeader:
    number: int
    log_id: uuid.UUID
    prev_chain: bytes

    def to_bytes(self) -> bytes:
        return _HEADER.pack(MAGIC, FORMAT_VERSION, self.number, self.log_id.bytes, self.prev_chain)

    @classmethod
    def from_bytes(cls, name: str, data: bytes) -> SegmentHeader:
        if len(data) < HEADER_BYTES:
            raise AuditFormatError(name, 0, f"header is {len(data)} bytes, not {HEADER_BYTES}")
        magic, version, number, log_id, prev = _HEADER.unpack_from(data)
        if magic != MAGIC:
            raise AuditFormatError(name, 0, "not an audit segment (bad magic)")
        if version != FORMAT_VERSION:
            raise AuditFormatError(name, 4, f"unknown format version {version}")
        return cls(number, uuid.UUID(bytes=log_id), prev)


def frame(body: bytes, chain: bytes) -> bytes:
    return _LENGTH.pack(len(body)) + body + chain


@dataclass(frozen=True, slots=True)
class Frame:
    offset: int
    body: bytes
    chain: bytes
    # False when the stored chain hash does not follow from the record before.
    follows: bool = True


class SegmentReader:
    """Reads a segment's frames in order, checking each chain hash as it goes.

    Iteration stops with AuditFormatError at the first frame that is cut short
    and, when `strict`, at the first whose chain hash does not follow; `valid_end`
    is then the end of the last good frame (what a writer recovering from a crash
    keeps). Not strict, a frame that does not follow is yielded marked as such and
    the walk goes on from its stored hash, so every break is found.
    """

    def __init__(self, path: Path, data: bytes | None = None) -> None:
        self.path = path
        self.name = path.name
        self.data = path.read_bytes() if data is None else data
        self.header = SegmentHeader.from_bytes(self.name, self.data)
        self.valid_end = HEADER_BYTES
        self.last_chain = self.header.prev_chain

    def frames(self, *, strict: bool = True) -> Iterator[Frame]:
        data, name = self.data, self.name
        offset, previous, size = HEADER_BYTES, self.header.prev_chain, len(data)
        unpack = _LENGTH.unpack_from
        sha256 = hashlib.sha256
        while offset < size:
            if size - offset < FRAME_OVERHEAD:
                raise TruncatedTailError(name, offset, f"truncated frame ({size - offset} bytes)")
            (length,) = unpack(data, offset)
            end = offset + 4 + length
            if length == 0 or length > MAX_BODY_BYTES:
                raise AuditFormatError(name, offset, f"impossible record length {length}")
            if end + HASH_BYTES > size:
                raise TruncatedTailError(
                    name, offset, f"truncated record: {length} bytes announced, file ends first"
                )
            body = data[offset + 4 : end]
            chain = data[end : end + HASH_BYTES]
            follows = sha256(previous + body).digest() == chain
            if not follows and strict:
                raise AuditFormatError(name, offset, CHAIN_BREAK)
            yield Frame(offset, body, chain, follows)
            previous = chain
            offset = end + HASH_BYTES
            self.valid_end, self.last_chain = offset, chain
