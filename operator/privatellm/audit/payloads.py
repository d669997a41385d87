"""Per-subject keys around stored payloads, so one subject's payloads can be erased.

The gateway seals a prompt or response under the model's Transit key (which
decides who may read model traffic); the result is sealed again under a Transit key of
the subject's own (`audit-subject-<hash>`). Deleting that key in Vault makes
every stored payload of the subject unreadable (crypto-shredding, GDPR Art. 17)
while the records themselves, and so the hash chain, stay as they are.
"""

from __future__ import annotations

import hashlib
import threading

from privatellm.keys.envelope import Envelope, EnvelopeRecord, RecordContext
from privatellm.keys.transit import TransitClient, VaultError, VaultUnavailableError

SUBJECT_KEY_PREFIX = "audit-subject-"


def subject_key_name(subject: str) -> str:
    """The subject's Transit key name; a hash, so the name reveals no identity."""
    return SUBJECT_KEY_PREFIX + hashlib.sha256(subject.encode()).hexdigest()[:32]


class SubjectEnvelopes:
    """One Envelope per subject key, creating the key in Transit on first use here."""

    def __init__(self, transit: TransitClient, *, max_key_age: float = 300.0) -> None:
        self.transit = transit
        self.max_key_age = max_key_age
        self._envelopes: dict[str, Envelope] = {}
        self._lock = threading.Lock()

    def envelope(self, subject: str) -> Envelope:
        name = subject_key_name(subject)
        with self._lock:
            envelope = self._envelopes.get(name)
        if envelope is None:
            self.transit.create_key(name)
            envelope = Envelope(self.transit, name, max_key_age=self.max_key_age)
            with self._lock:
                envelope = self._envelopes.setdefault(name, envelope)
        return envelope

    def cached(self, subject: str) -> Envelope | None:
        """The subject's Envelope if this process already has it (no Vault call)."""
        with self._lock:
            return self._envelopes.get(subject_key_name(subject))

    def seal(self, subject: str, context: RecordContext, record: bytes) -> bytes:
        envelope = self.envelope(subject)
        try:
            return envelope.encrypt(record, context)
        except VaultUnavailableError:
            raise
        except VaultError:
            # The key went away (the subject was erased, or Vault lost it): new
            # payloads get a new key; what the old one sealed stays unreadable.
            self.transit.create_key(envelope.key_name)
            return envelope.encrypt(record, context)

    def open(self, subject: str, context: RecordContext, sealed: bytes) -> bytes:
        """The inner record; DecryptionError when the subject's key is gone or refuses."""
        return Envelope(self.transit, subject_key_name(subject)).decrypt(sealed, context)


def open_payload(
    transit: TransitClient, subject: str, context: RecordContext, sealed: bytes
) -> bytes:
    """The plaintext of a doubly sealed payload: subject key first, then the model's key."""
    inner = SubjectEnvelopes(transit).open(subject, context, sealed)
    model_key = EnvelopeRecord.from_bytes(inner).key_name
    return Envelope(transit, model_key).decrypt(inner, context)


def erase_subject(transit: TransitClient, subject: str) -> str:
    """Delete the subject's key in Transit; returns its name. Irreversible by design."""
    name = subject_key_name(subject)
    transit.delete_key(name)
    return name
