"""Envelope encryption of records: AES-256-GCM under data keys wrapped by Vault Transit.

Each record is encrypted locally with a 256-bit data key that Transit issued and
wrapped (`transit/datakey/plaintext/<key>`); the record carries the wrapped key,
so reading it needs Transit to unwrap it. The associated data binds the
ciphertext to its context (namespace, model, record id) and to the key name and
format version, so a record copied to another place, or relabelled, does not
decrypt. A data key serves a bounded number of records for a bounded time.

Record layout, format version 1 (integers big-endian):

    magic      4 bytes  b"PLEV"
    version    1 byte   1
    key name   2-byte length + UTF-8 (the Transit key that wrapped the data key)
    wrapped    2-byte length + ASCII (Transit ciphertext, `vault:v<N>:<base64>`)
    nonce      12 bytes
    ciphertext the rest: AES-GCM output, 16-byte tag included
"""

from __future__ import annotations

import os
import re
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from .transit import VaultError, VaultUnavailableError

MAGIC = b"PLEV"
FORMAT_VERSION = 1
NONCE_BYTES = 12
TAG_BYTES = 16
DATA_KEY_BYTES = 32
MAX_FIELD_BYTES = 0xFFFF
# Domain separation: these associated data can never equal another protocol's.
AAD_DOMAIN = b"privatellm.io/envelope"
WRAPPED_KEY = re.compile(r"vault:v(?P<version>[1-9][0-9]*):[A-Za-z0-9+/]+={0,2}")
# Vault answers 400 when it refuses a ciphertext: forged, corrupted, or wrapped
# with a version below min_decryption_version. Other errors are not the record's fault.
REFUSED_CIPHERTEXT_STATUS = 400

_HEADER = struct.Struct(">4sB")
_LENGTH = struct.Struct(">H")


class EnvelopeError(Exception):
    """A record cannot be used as asked."""


class RecordFormatError(EnvelopeError):
    """The bytes are not a well-formed envelope record."""


class DecryptionError(EnvelopeError):
    """A record did not decrypt; names the record and what failed. Nothing is returned."""

    def __init__(self, context: RecordContext, reason: str) -> None:
        self.record_id = context.record_id
        self.reason = reason
        super().__init__(
            f"cannot decrypt record {context.record_id!r} (namespace {context.namespace!r}, "
            f"model {context.model!r}): {reason}"
        )


class TransitKeys(Protocol):
    """What envelope encryption needs from Transit (TransitClient provides it)."""

    def datakey(self, name: str) -> tuple[bytes, str]:
        """A new data key: plaintext bytes and the wrapped form."""
        ...

    def decrypt_datakey(self, name: str, wrapped: str) -> bytes:
        """Unwrap a data key."""
        ...

    def rewrap(self, name: str, wrapped: str) -> str:
        """Wrap the same data key with the latest key version."""
        ...


@dataclass(frozen=True)
class RecordContext:
    """Where a record belongs. It is not stored in the record: the reader must know it."""

    namespace: str
    model: str
    record_id: str

    def __post_init__(self) -> None:
        if not self.record_id:
            raise ValueError("a record context needs a record id")

    def associated_data(self, key_name: str) -> bytes:
        """Canonical AES-GCM associated data: every field length-prefixed, so unambiguous."""
        fields = (
            AAD_DOMAIN,
            bytes([FORMAT_VERSION]),
            key_name.encode(),
            self.namespace.encode(),
            self.model.encode(),
            self.record_id.encode(),
        )
        return b"".join(struct.pack(">I", len(f)) + f for f in fields)


@dataclass(frozen=True)
class EnvelopeRecord:
    """One parsed record; `to_bytes` and `from_bytes` are exact inverses."""

    key_name: str
    wrapped_key: str
    nonce: bytes
    ciphertext: bytes

    def __post_init__(self) -> None:
        if not self.key_name:
            raise RecordFormatError("empty key name")
        if len(self.key_name.encode()) > MAX_FIELD_BYTES:
            raise RecordFormatError("key name longer than 65535 bytes")
        if len(self.wrapped_key) > MAX_FIELD_BYTES or not WRAPPED_KEY.fullmatch(self.wrapped_key):
            raise RecordFormatError("wrapped key is not a Transit ciphertext (vault:v<N>:...)")
        if len(self.nonce) != NONCE_BYTES:
            raise RecordFormatError(f"nonce is {len(self.nonce)} bytes, not {NONCE_BYTES}")
        if len(self.ciphertext) < TAG_BYTES:
            raise RecordFormatError(f"ciphertext shorter than the {TAG_BYTES}-byte tag")

    @property
    def key_version(self) -> int:
        """The Transit key version that wrapped the data key (the N of `vault:vN:`)."""
        match = WRAPPED_KEY.fullmatch(self.wrapped_key)
        assert match is not None  # checked in __post_init__
        return int(match["version"])

    def to_bytes(self) -> bytes:
        """The record in format version 1."""
        name, wrapped = self.key_name.encode(), self.wrapped_key.encode("ascii")
        return b"".join(
            (
                _HEADER.pack(MAGIC, FORMAT_VERSION),
                _LENGTH.pack(len(name)),
                name,
                _LENGTH.pack(len(wrapped)),
                wrapped,
                self.nonce,
                self.ciphertext,
            )
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> EnvelopeRecord:
        """Parse a record; RecordFormatError says what is wrong with it."""
        reader = _Reader(data)
        magic, version = _HEADER.unpack(reader.take(_HEADER.size, "header"))
        if magic != MAGIC:
            raise RecordFormatError("not an envelope record (bad magic)")
        if version != FORMAT_VERSION:
            raise RecordFormatError(f"unknown format version {version}")
        name = reader.field("key name")
        wrapped = reader.field("wrapped key")
        nonce = reader.take(NONCE_BYTES, "nonce")
        try:
            key_name, wrapped_key = name.decode(), wrapped.decode("ascii")
        except UnicodeDecodeError as error:
            raise RecordFormatError(f"undecodable text field: {error}") from error
        return cls(key_name, wrapped_key, nonce, reader.rest())


class _Reader:
    """Takes fields off the front of a record, failing on truncation."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._offset = 0

    def take(self, size: int, what: str) -> bytes:
        end = self._offset + size
        if end > len(self._data):
            raise RecordFormatError(f"record truncated in the {what}")
        chunk = self._data[self._offset : end]
        self._offset = end
        return chunk

    def field(self, what: str) -> bytes:
        (size,) = _LENGTH.unpack(self.take(_LENGTH.size, f"{what} length"))
        return self.take(size, what)

    def rest(self) -> bytes:
        return self._data[self._offset :]


@dataclass
class _DataKey:
    aead: AESGCM
    wrapped: str
    created: float
    uses: int = 0


class Envelope:
    """Encrypts and decrypts records under one Transit key.

    A data key is reused for at most `max_key_uses` records and `max_key_age`
    seconds (measured by `clock`), then Transit issues a new one. While a cached
    data key is valid, encryption does not call Vault; decryption always does,
    so a revoked key version stops reads at once.
    """

    def __init__(
        self,
        transit: TransitKeys,
        key_name: str,
        *,
        max_key_age: float = 300.0,
        max_key_uses: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_key_age <= 0 or max_key_uses < 1:
            raise ValueError("max_key_age must be positive and max_key_uses at least 1")
        self.transit = transit
        self.key_name = key_name
        self.max_key_age = max_key_age
        self.max_key_uses = max_key_uses
        self._clock = clock
        self._lock = threading.Lock()
        self._data_key: _DataKey | None = None

    def forget_data_keys(self) -> None:
        """Drop the cached data key: the next record gets a new one (after a rotation, say)."""
        with self._lock:
            self._data_key = None

    def _usable(self, key: _DataKey | None, now: float) -> bool:
        return (
            key is not None
            and now - key.created < self.max_key_age
            and (key.uses < self.max_key_uses)
        )

    def _take_data_key(self) -> _DataKey:
        with self._lock:
            now = self._clock()
            key = self._data_key
            if key is None or not self._usable(key, now):
                self._data_key = None
                plaintext, wrapped = self.transit.datakey(self.key_name)
                if len(plaintext) != DATA_KEY_BYTES:
                    raise VaultError(None, f"Transit returned a {len(plaintext) * 8}-bit data key")
                key = _DataKey(AESGCM(plaintext), wrapped, now)
                self._data_key = key
            key.uses += 1
            return key

    def encrypt(self, plaintext: bytes, context: RecordContext) -> bytes:
        """One record holding `plaintext`, bound to `context`.

        Raises VaultUnavailableError (and returns nothing) when a data key is needed
        and Vault cannot be reached.
        """
        return self._seal(self._take_data_key(), plaintext, context)

    def encrypt_cached(self, plaintext: bytes, context: RecordContext) -> bytes | None:
        """Like `encrypt` with the cached data key; None (nothing done) when Vault is due."""
        with self._lock:
            key = self._data_key
            if key is None or not self._usable(key, self._clock()):
                return None
            key.uses += 1
        return self._seal(key, plaintext, context)

    def _seal(self, key: _DataKey, plaintext: bytes, context: RecordContext) -> bytes:
        nonce = os.urandom(NONCE_BYTES)
        aad = context.associated_data(self.key_name)
        record = EnvelopeRecord(
            self.key_name, key.wrapped, nonce, key.aead.encrypt(nonce, plaintext, aad)
        )
        return record.to_bytes()

    def decrypt(self, record: bytes, context: RecordContext) -> bytes:
        """The plaintext of `record`, which must belong to `context`.

        Raises DecryptionError for a malformed, tampered, misplaced or revoked record,
        and VaultUnavailableError when Vault cannot be reached.
        """
        try:
            parsed = EnvelopeRecord.from_bytes(record)
        except RecordFormatError as error:
            raise DecryptionError(context, f"malformed record: {error}") from error
        if parsed.key_name != self.key_name:
            raise DecryptionError(
                context, f"record is under key {parsed.key_name!r}, not {self.key_name!r}"
            )
        try:
            data_key = self.transit.decrypt_datakey(self.key_name, parsed.wrapped_key)
        except VaultUnavailableError:
            raise
        except VaultError as error:
            if error.status != REFUSED_CIPHERTEXT_STATUS:
                raise
            raise DecryptionError(
                context,
                f"Transit refused the data key wrapped with {self.key_name!r} "
                f"v{parsed.key_version}: {error.message}",
            ) from error
        if len(data_key) != DATA_KEY_BYTES:
            raise DecryptionError(context, f"unwrapped data key is {len(data_key)} bytes")
        try:
            return AESGCM(data_key).decrypt(
                parsed.nonce, parsed.ciphertext, context.associated_data(self.key_name)
            )
        except InvalidTag as error:
            raise DecryptionError(
                context,
                "authentication failed: the ciphertext was altered or the record belongs "
                "to another namespace, model or record id",
            ) from error

    def rewrap(self, record: bytes) -> bytes:
        """The record with its data key wrapped by the key's latest version; payload unchanged.

        Raises RecordFormatError for a malformed record, EnvelopeError for a record
        under another key, and VaultError when Transit refuses the wrapped key.
        """
        parsed = EnvelopeRecord.from_bytes(record)
        if parsed.key_name != self.key_name:
            raise EnvelopeError(f"record is under key {parsed.key_name!r}, not {self.key_name!r}")
        wrapped = self.transit.rewrap(self.key_name, parsed.wrapped_key)
        rewrapped = EnvelopeRecord(parsed.key_name, wrapped, parsed.nonce, parsed.ciphertext)
        return rewrapped.to_bytes()
