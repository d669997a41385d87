"""Signed checkpoints: one per sealed segment, each naming the one before it.

A checkpoint commits to the segment's record count, its first sequence number,
the chain hashes entering and leaving it, the Merkle root of its records, and the
SHA-256 of its data and index files. Checkpoints form their own chain
(`prev_checkpoint`), so removing a whole segment, or the newest ones, is seen as
soon as any later checkpoint (or a published copy of the head) is compared.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import orjson
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

CHECKPOINT_VERSION = 1


@dataclass(frozen=True)
class Checkpoint:
    log_id: str
    segment: int
    first_seq: int
    count: int
    min_time: float
    max_time: float
    prev_chain: str
    last_chain: str
    merkle_root: str
    file_sha256: str
    file_size: int
    index_sha256: str
    prev_checkpoint: str
    sealed_at: float
    # Time before which the segment must not be deleted (data-class retention).
    retain_until: float
    key_id: str = ""
    signature: str = ""
    version: int = CHECKPOINT_VERSION

    def signed_bytes(self) -> bytes:
        """What the signature covers: every field but the signature, canonically."""
        fields = asdict(self)
        del fields["signature"]
        return orjson.dumps(fields, option=orjson.OPT_SORT_KEYS)

    def digest(self) -> str:
        """The hash the next checkpoint names as `prev_checkpoint`."""
        return hashlib.sha256(self.to_bytes()).hexdigest()

    def to_bytes(self) -> bytes:
        return orjson.dumps(asdict(self), option=orjson.OPT_SORT_KEYS | orjson.OPT_INDENT_2)

    @classmethod
    def from_bytes(cls, data: bytes) -> Checkpoint:
        fields: dict[str, Any] = orjson.loads(data)
        return cls(**fields)

    def verify_signature(self, public_key: Ed25519PublicKey) -> bool:
        try:
            public_key.verify(bytes.fromhex(self.signature), self.signed_bytes())
        except (InvalidSignature, ValueError):
            return False
        return True


def key_id(public_key: Ed25519PublicKey) -> str:
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


class Signer:
    """Signs checkpoints with an Ed25519 key kept outside the log directory."""

    def __init__(self, private_key: Ed25519PrivateKey) -> None:
        self.private_key = private_key
        self.public_key = private_key.public_key()
        self.key_id = key_id(self.public_key)

    @classmethod
    def generate(cls) -> Signer:
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def from_file(cls, path: Path) -> Signer:
        try:
            return cls.from_pem(path.read_bytes())
        except ValueError as error:
            raise ValueError(f"{path}: {error}") from None

    @classmethod
    def from_pem(cls, pem: bytes) -> Signer:
        key = serialization.load_pem_private_key(pem, password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise ValueError("not an Ed25519 private key")
        return cls(key)

    def private_pem(self) -> bytes:
        return self.private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    def public_pem(self) -> bytes:
        return self.public_key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def sign(self, checkpoint: Checkpoint) -> Checkpoint:
        unsigned = replace(checkpoint, key_id=self.key_id, signature="")
        return replace(unsigned, signature=self.private_key.sign(unsigned.signed_bytes()).hex())


def load_public_key(path: Path) -> Ed25519PublicKey:
    key = serialization.load_pem_public_key(path.read_bytes())
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError(f"{path} does not hold an Ed25519 public key")
    return key
