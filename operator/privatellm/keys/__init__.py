"""Keys for layer 4: a Vault Transit client and envelope encryption of records.

`transit` speaks the Vault HTTP API (HashiCorp Vault or OpenBao) for Transit keys:
create, rotate, issue and unwrap data keys, rewrap, revoke old versions.
`envelope` encrypts each record locally with AES-256-GCM under a data key that
Transit issued and wrapped, binding the record to its namespace, model and id.
`drill` rotates a key and runs the compromise drill over stored records.
See docs/encryption.md.
"""

from .envelope import (
    DecryptionError,
    Envelope,
    EnvelopeRecord,
    RecordContext,
    RecordFormatError,
    TransitKeys,
)
from .transit import (
    TransitClient,
    TransitKey,
    VaultClient,
    VaultError,
    VaultUnavailableError,
)

__all__ = [
    "DecryptionError",
    "Envelope",
    "EnvelopeRecord",
    "RecordContext",
    "RecordFormatError",
    "TransitClient",
    "TransitKey",
    "TransitKeys",
    "VaultClient",
    "VaultError",
    "VaultUnavailableError",
]
