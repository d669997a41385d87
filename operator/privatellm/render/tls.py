"""Secrets that carry certificates: the namespace CA and each model server's certificate.

Pure: the key material is an input (issued by privatellm.keys.tls), so the same input
gives the same Secret.
"""

from __future__ import annotations

import base64
from typing import Any

from privatellm.api import InferenceDeployment

from .meta import MANAGED_BY, MANAGED_BY_LABEL, PART_OF, PART_OF_LABEL, owner_reference
from .workload import (
    labels,
    tls_secret_name,
)

NAMESPACE_CA_SECRET = "privatellm-ca"
CA_CERT_KEY = "ca.crt"
CA_KEY_KEY = "ca.key"


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def render_namespace_ca_secret(namespace: str, cert_pem: bytes, key_pem: bytes) -> dict[str, Any]:
    """The namespace's CA. It has no owner: every model and the gateway of the namespace use it."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": NAMESPACE_CA_SECRET,
            "namespace": namespace,
            "labels": {PART_OF_LABEL: PART_OF, MANAGED_BY_LABEL: MANAGED_BY},
        },
        "type": "Opaque",
        "data": {CA_CERT_KEY: _b64(cert_pem), CA_KEY_KEY: _b64(key_pem)},
    }


def render_tls_secret(
    obj: InferenceDeployment, cert_pem: bytes, key_pem: bytes, ca_cert_pem: bytes
) -> dict[str, Any]:
    """The model server's certificate, key and CA, in the kubernetes.io/tls layout."""
    metadata = {
        "name": tls_secret_name(obj),
        "namespace": obj.metadata.namespace,
        "labels": labels(obj),
        "ownerReferences": [owner_reference(obj)],
    }
    return tls_secret(metadata, cert_pem, key_pem, ca_cert_pem)


def tls_secret(
    metadata: dict[str, Any], cert_pem: bytes, key_pem: bytes, ca_cert_pem: bytes
) -> dict[str, Any]:
    """A certificate, its key and the CA that signed it, in the kubernetes.io/tls layout."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": metadata,
        "type": "kubernetes.io/tls",
        "data": {
            "tls.crt": _b64(cert_pem),
            "tls.key": _b64(key_pem),
            CA_CERT_KEY: _b64(ca_cert_pem),
        },
    }


def secret_bytes(secret: dict[str, Any] | None, key: str) -> bytes:
    """A value of a Secret read from the API server; empty when absent."""
    value = ((secret or {}).get("data") or {}).get(key)
    return base64.b64decode(value) if value else b""
