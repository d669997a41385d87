"""Sealing prompts and responses before anything keeps them: envelope encryption, fail closed.

Each payload becomes an envelope record (AES-256-GCM under a data key from
Vault Transit) bound to its namespace, model and request id, sealed under the
model's key and then under the subject's own key, so that one subject's
payloads can be erased by deleting that key (see privatellm.audit.payloads). When no data key
can be had, sealing raises and the gateway answers 503 without forwarding or
writing anything: no plaintext is ever kept in place of a record.
"""

from __future__ import annotations

import asyncio
import base64
import os
import ssl
from pathlib import Path

from privatellm.audit.payloads import SubjectEnvelopes
from privatellm.keys.envelope import Envelope, RecordContext
from privatellm.keys.transit import (
    KubernetesAuthVaultClient,
    TransitClient,
    VaultClient,
    VaultError,
)

from .config import EncryptionSettings
from .errors import GatewayError


def vault_client(settings: EncryptionSettings) -> VaultClient:
    """Log in as the gateway's ServiceAccount when a role is set, else use the token in env."""
    tls = ssl.create_default_context(cafile=settings.ca_file) if settings.ca_file else None
    if settings.role:
        return KubernetesAuthVaultClient(
            settings.vault_addr,
            settings.role,
            Path(settings.jwt_file),
            mount=settings.auth_mount,
            ssl_context=tls,
        )
    token = os.environ.get("BAO_TOKEN") or os.environ.get("VAULT_TOKEN") or ""
    return VaultClient(settings.vault_addr, token, ssl_context=tls)


class PayloadSealer:
    """One Envelope per Transit key; Vault is called only when a data key is due."""

    def __init__(self, settings: EncryptionSettings, client: VaultClient | None = None) -> None:
        self.settings = settings
        self._transit = TransitClient(client or vault_client(settings), settings.transit_mount)
        self._envelopes: dict[str, Envelope] = {}
        self._subjects = SubjectEnvelopes(self._transit, max_key_age=settings.data_key_seconds)

    def _envelope(self, key_name: str) -> Envelope:
        envelope = self._envelopes.get(key_name)
        if envelope is None:
            envelope = self._envelopes[key_name] = Envelope(
                self._transit, key_name, max_key_age=self.settings.data_key_seconds
            )
        return envelope

    async def seal(
        self, key_name: str, subject: str, context: RecordContext, payload: bytes
    ) -> str:
        """The payload as a base64 record; GatewayError 503 when Vault cannot help."""
        envelope = self._envelope(key_name)
        # With both data keys cached no Vault call is needed: seal here, without the
        # hop to a thread, which costs more than the sealing itself.
        inner = envelope.encrypt_cached(payload, context)
        by_subject = self._subjects.cached(subject)
        if inner is not None and by_subject is not None:
            outer = by_subject.encrypt_cached(inner, context)
            if outer is not None:
                return base64.b64encode(outer).decode()

        def seal_twice() -> bytes:
            return self._subjects.seal(subject, context, envelope.encrypt(payload, context))

        try:
            # Vault is a blocking HTTP call: it runs in a thread.
            record = await asyncio.to_thread(seal_twice)
        except VaultError as error:
            raise GatewayError(
                503,
                "encryption_unavailable",
                "the request cannot be recorded encrypted right now; nothing was sent",
            ) from error
        return base64.b64encode(record).decode()
