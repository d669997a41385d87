"""Envelope records: format, associated data, tampering, truncation and the data-key cache.

Transit is replaced here by `LocalKeyring`, an in-process keyring that wraps data
keys with real AES-GCM and answers like Transit (`vault:v<N>:` ciphertexts, HTTP
400 for refused ones). It exists only to test the record logic without a server;
tests/integration/test_vault.py runs the same operations against a real one.
"""

from __future__ import annotations

import base64
import dataclasses
import os
import struct

import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from privatellm.keys import (
    DecryptionError,
    Envelope,
    EnvelopeRecord,
    RecordContext,
    RecordFormatError,
    VaultError,
    VaultUnavailableError,
)
from privatellm.keys.envelope import EnvelopeError

KEY = "tenant-a-llama"
CONTEXT = RecordContext(namespace="tenant-a", model="llama-8b", record_id="req-0001")


class LocalKeyring:
    """A stand-in for one Transit key ring, for unit tests only: real AES, no server."""

    def __init__(self) -> None:
        self.versions: dict[str, list[AESGCM]] = {}
        self.min_decryption_version: dict[str, int] = {}
        self.datakeys_issued = 0
        self.reachable = True

    def create_key(self, name: str) -> None:
        self.versions[name] = [AESGCM(AESGCM.generate_key(256))]
        self.min_decryption_version[name] = 1

    def rotate(self, name: str) -> None:
        self.versions[name].append(AESGCM(AESGCM.generate_key(256)))

    def _check(self, name: str) -> None:
        if not self.reachable:
            raise VaultUnavailableError(None, "cannot reach the keyring")
        if name not in self.versions:
            raise VaultError(400, "encryption key not found")

    def _wrap(self, name: str, data_key: bytes) -> str:
        version = len(self.versions[name])
        nonce = os.urandom(12)
        sealed = self.versions[name][-1].encrypt(nonce, data_key, None)
        return f"vault:v{version}:{base64.b64encode(nonce + sealed).decode()}"

    def datakey(self, name: str) -> tuple[bytes, str]:
        self._check(name)
        self.datakeys_issued += 1
        data_key = os.urandom(32)
        return data_key, self._wrap(name, data_key)

    def decrypt_datakey(self, name: str, wrapped: str) -> bytes:
        self._check(name)
        try:
            _, version_text, payload = wrapped.split(":", 2)
            version = int(version_text.removeprefix("v"))
            raw = base64.b64decode(payload, validate=True)
        except ValueError as error:
            raise VaultError(400, "invalid ciphertext") from error
        if version < self.min_decryption_version[name]:
            raise VaultError(400, "ciphertext or signature version is disallowed by policy")
        if not 1 <= version <= len(self.versions[name]):
            raise VaultError(400, "invalid key version")
        try:
            return self.versions[name][version - 1].decrypt(raw[:12], raw[12:], None)
        except InvalidTag as error:
            raise VaultError(400, "cipher: message authentication failed") from error

    def rewrap(self, name: str, wrapped: str) -> str:
        return self._wrap(name, self.decrypt_datakey(name, wrapped))


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def keyring() -> LocalKeyring:
    ring = LocalKeyring()
    ring.create_key(KEY)
    return ring


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def envelope(keyring: LocalKeyring, clock: FakeClock) -> Envelope:
    return Envelope(keyring, KEY, max_key_age=60, max_key_uses=3, clock=clock)


def test_round_trip(envelope: Envelope) -> None:
    for plaintext in (b"", b"hello", os.urandom(100_000)):
        record = envelope.encrypt(plaintext, CONTEXT)
        assert plaintext not in record or plaintext == b""
        assert envelope.decrypt(record, CONTEXT) == plaintext


def test_record_carries_version_key_name_wrapped_key_nonce(envelope: Envelope) -> None:
    record = envelope.encrypt(b"prompt", CONTEXT)
    parsed = EnvelopeRecord.from_bytes(record)
    assert record.startswith(b"PLEV\x01")
    assert parsed.key_name == KEY
    assert parsed.wrapped_key.startswith("vault:v1:")
    assert parsed.key_version == 1
    assert len(parsed.nonce) == 12
    assert len(parsed.ciphertext) == len(b"prompt") + 16


def test_parsing_is_deterministic_and_exact(envelope: Envelope) -> None:
    record = envelope.encrypt(b"payload", CONTEXT)
    parsed = EnvelopeRecord.from_bytes(record)
    assert parsed.to_bytes() == record
    assert EnvelopeRecord.from_bytes(parsed.to_bytes()) == parsed
    built = EnvelopeRecord("k", "vault:v7:QUJD", b"\x00" * 12, b"\x01" * 16)
    assert built.to_bytes() == (
        b"PLEV\x01" + b"\x00\x01k" + b"\x00\x0dvault:v7:QUJD" + b"\x00" * 12 + b"\x01" * 16
    )
    assert built.key_version == 7


def test_every_nonce_is_fresh(envelope: Envelope) -> None:
    nonces = {EnvelopeRecord.from_bytes(envelope.encrypt(b"x", CONTEXT)).nonce for _ in range(50)}
    assert len(nonces) == 50


@pytest.mark.parametrize(
    "other",
    [
        RecordContext("tenant-b", "llama-8b", "req-0001"),
        RecordContext("tenant-a", "llama-70b", "req-0001"),
        RecordContext("tenant-a", "llama-8b", "req-0002"),
        # Shifting a boundary between fields must not give the same associated data.
        RecordContext("tenant-al", "lama-8b", "req-0001"),
    ],
    ids=["namespace", "model", "record-id", "field-boundary"],
)
def test_wrong_context_fails_and_names_the_record(envelope: Envelope, other: RecordContext) -> None:
    record = envelope.encrypt(b"secret", CONTEXT)
    with pytest.raises(DecryptionError, match="authentication failed") as caught:
        envelope.decrypt(record, other)
    assert caught.value.record_id == other.record_id
    assert repr(other.record_id) in str(caught.value)


def test_associated_data_is_length_prefixed() -> None:
    assert CONTEXT.associated_data(KEY) != RecordContext(
        "tenant-a", "llama-8b", "req-0001"
    ).associated_data("other-key")
    fields = [b"privatellm.io/envelope", b"\x01", KEY.encode(), b"tenant-a", b"llama-8b"]
    fields.append(b"req-0001")
    assert CONTEXT.associated_data(KEY) == b"".join(struct.pack(">I", len(f)) + f for f in fields)


def test_context_needs_a_record_id() -> None:
    with pytest.raises(ValueError, match="record id"):
        RecordContext("ns", "model", "")


def test_every_flipped_byte_is_detected(envelope: Envelope) -> None:
    record = envelope.encrypt(b"a prompt with PII", CONTEXT)
    for index in range(len(record)):
        tampered = bytearray(record)
        tampered[index] ^= 0x01
        with pytest.raises(DecryptionError, match="req-0001"):
            envelope.decrypt(bytes(tampered), CONTEXT)


@pytest.mark.parametrize(
    ("field", "reason"),
    [
        ("key_name", "is under key 'other-key'"),
        ("wrapped_key", "Transit refused the data key"),
        ("nonce", "authentication failed"),
        ("ciphertext", "authentication failed"),
    ],
)
def test_tampered_fields_say_what_failed(envelope: Envelope, field: str, reason: str) -> None:
    parsed = EnvelopeRecord.from_bytes(envelope.encrypt(b"payload", CONTEXT))
    wrapped_bytes = bytearray(base64.b64decode(parsed.wrapped_key.split(":")[2]))
    wrapped_bytes[-1] ^= 0x80
    replacements = {
        "key_name": "other-key",
        "wrapped_key": "vault:v1:" + base64.b64encode(bytes(wrapped_bytes)).decode(),
        "nonce": bytes(b ^ 0xFF for b in parsed.nonce),
        "ciphertext": parsed.ciphertext[:-1] + bytes([parsed.ciphertext[-1] ^ 1]),
    }
    tampered = dataclasses.replace(parsed, **{field: replacements[field]}).to_bytes()
    with pytest.raises(DecryptionError, match=reason):
        envelope.decrypt(tampered, CONTEXT)


def test_forged_wrapped_key_fails(envelope: Envelope) -> None:
    parsed = EnvelopeRecord.from_bytes(envelope.encrypt(b"payload", CONTEXT))
    forged_key = base64.b64encode(os.urandom(60)).decode()
    forged = EnvelopeRecord(KEY, f"vault:v1:{forged_key}", parsed.nonce, parsed.ciphertext)
    with pytest.raises(DecryptionError, match=r"req-0001.*Transit refused.*v1"):
        envelope.decrypt(forged.to_bytes(), CONTEXT)


def test_every_truncation_is_detected(envelope: Envelope) -> None:
    record = envelope.encrypt(b"a response", CONTEXT)
    for length in range(len(record)):
        with pytest.raises(DecryptionError, match="req-0001"):
            envelope.decrypt(record[:length], CONTEXT)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "truncated in the header"),
        (b"NOPE\x01", "bad magic"),
        (b"PLEV\x02", "unknown format version 2"),
        (b"PLEV\x01\x00", "truncated in the key name length"),
        (b"PLEV\x01\x00\x05ab", "truncated in the key name"),
        (b"PLEV\x01\x00\x00\x00\x0dvault:v1:QUJD" + b"\x00" * 28, "empty key name"),
        (b"PLEV\x01\x00\x01\xff\x00\x0dvault:v1:QUJD" + b"\x00" * 28, "undecodable"),
        (b"PLEV\x01\x00\x01k\x00\x03abc" + b"\x00" * 28, "not a Transit ciphertext"),
        (b"PLEV\x01\x00\x01k\x00\x0dvault:v1:QUJD" + b"\x00" * 11, "truncated in the nonce"),
        (b"PLEV\x01\x00\x01k\x00\x0dvault:v0:QUJD" + b"\x00" * 28, "not a Transit ciphertext"),
        (b"PLEV\x01\x00\x01k\x00\x0dvault:v1:QUJD" + b"\x00" * 27, "shorter than the 16-byte"),
    ],
)
def test_malformed_records_are_rejected(data: bytes, message: str) -> None:
    with pytest.raises(RecordFormatError, match=message):
        EnvelopeRecord.from_bytes(data)


def test_malformed_record_decrypts_to_a_named_error(envelope: Envelope) -> None:
    with pytest.raises(DecryptionError, match=r"record 'req-0001'.*malformed record.*bad magic"):
        envelope.decrypt(b"garbage" * 10, CONTEXT)


def test_data_key_is_reused_up_to_the_use_bound(envelope: Envelope, keyring: LocalKeyring) -> None:
    records = [envelope.encrypt(b"x", CONTEXT) for _ in range(7)]
    wrapped = [EnvelopeRecord.from_bytes(r).wrapped_key for r in records]
    assert keyring.datakeys_issued == 3
    assert len(set(wrapped[0:3])) == 1
    assert len(set(wrapped[3:6])) == 1
    assert len(set(wrapped)) == 3


def test_data_key_expires_after_its_lifetime(
    envelope: Envelope, keyring: LocalKeyring, clock: FakeClock
) -> None:
    first = EnvelopeRecord.from_bytes(envelope.encrypt(b"x", CONTEXT)).wrapped_key
    clock.now += 59.9
    assert EnvelopeRecord.from_bytes(envelope.encrypt(b"x", CONTEXT)).wrapped_key == first
    clock.now += 0.1
    assert EnvelopeRecord.from_bytes(envelope.encrypt(b"x", CONTEXT)).wrapped_key != first
    assert keyring.datakeys_issued == 2


def test_encrypt_cached_never_calls_the_keyring(
    envelope: Envelope, keyring: LocalKeyring, clock: FakeClock
) -> None:
    assert envelope.encrypt_cached(b"x", CONTEXT) is None
    assert keyring.datakeys_issued == 0
    envelope.encrypt(b"x", CONTEXT)
    cached = envelope.encrypt_cached(b"y", CONTEXT)
    assert cached is not None and envelope.decrypt(cached, CONTEXT) == b"y"
    # It counts as a use: the third record (use bound 3) is the last under this key.
    assert envelope.encrypt_cached(b"z", CONTEXT) is not None
    assert envelope.encrypt_cached(b"z", CONTEXT) is None
    envelope.encrypt(b"x", CONTEXT)
    clock.now += 60
    assert envelope.encrypt_cached(b"z", CONTEXT) is None
    assert keyring.datakeys_issued == 2


def test_forget_data_keys_takes_a_new_key(envelope: Envelope, keyring: LocalKeyring) -> None:
    envelope.encrypt(b"x", CONTEXT)
    envelope.forget_data_keys()
    envelope.encrypt(b"x", CONTEXT)
    assert keyring.datakeys_issued == 2


def test_unreachable_keyring_fails_closed(
    envelope: Envelope, keyring: LocalKeyring, clock: FakeClock
) -> None:
    record = envelope.encrypt(b"x", CONTEXT)
    keyring.reachable = False
    with pytest.raises(VaultUnavailableError):
        envelope.decrypt(record, CONTEXT)
    # The cached data key still serves within its bounds; past them nothing is written.
    envelope.encrypt(b"y", CONTEXT)
    clock.now += 60
    with pytest.raises(VaultUnavailableError):
        envelope.encrypt(b"z", CONTEXT)


def test_rewrap_keeps_the_payload_and_names_the_new_version(
    envelope: Envelope, keyring: LocalKeyring
) -> None:
    record = envelope.encrypt(b"audit line", CONTEXT)
    keyring.rotate(KEY)
    rewrapped = envelope.rewrap(record)
    before, after = EnvelopeRecord.from_bytes(record), EnvelopeRecord.from_bytes(rewrapped)
    assert (after.key_version, before.key_version) == (2, 1)
    assert (after.nonce, after.ciphertext) == (before.nonce, before.ciphertext)
    keyring.min_decryption_version[KEY] = 2
    assert envelope.decrypt(rewrapped, CONTEXT) == b"audit line"
    with pytest.raises(DecryptionError, match=r"req-0001.*v1.*disallowed"):
        envelope.decrypt(record, CONTEXT)


def test_rewrap_rejects_records_of_another_key(envelope: Envelope, keyring: LocalKeyring) -> None:
    keyring.create_key("other-key")
    other = Envelope(keyring, "other-key").encrypt(b"x", CONTEXT)
    with pytest.raises(EnvelopeError, match="under key 'other-key'"):
        envelope.rewrap(other)
    with pytest.raises(RecordFormatError):
        envelope.rewrap(b"PLEV")


def test_cache_bounds_must_be_positive(keyring: LocalKeyring) -> None:
    with pytest.raises(ValueError, match="max_key_age"):
        Envelope(keyring, KEY, max_key_age=0)
    with pytest.raises(ValueError, match="max_key_uses"):
        Envelope(keyring, KEY, max_key_uses=0)
