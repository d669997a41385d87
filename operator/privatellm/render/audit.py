"""ConfigMaps that publish audit public keys, so auditors verify logs without Secret access."""

from __future__ import annotations

from .meta import MANAGED_BY, MANAGED_BY_LABEL, PART_OF, PART_OF_LABEL
from .workload import Manifest

AUDIT_PUBLIC_KEY_KEY = "audit.pem.pub"
OPERATOR_AUDIT_PUBLIC_KEY_CONFIGMAP = "privatellm-operator-audit-public-key"


def render_public_key_configmap(metadata: Manifest, public_pem: str) -> Manifest:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": metadata,
        "data": {AUDIT_PUBLIC_KEY_KEY: public_pem},
    }


def render_operator_audit_public_key(namespace: str, public_pem: str) -> Manifest:
    """The key that verifies the operator's own audit log, in the operator's namespace."""
    metadata = {
        "name": OPERATOR_AUDIT_PUBLIC_KEY_CONFIGMAP,
        "namespace": namespace,
        "labels": {MANAGED_BY_LABEL: MANAGED_BY, PART_OF_LABEL: PART_OF},
    }
    return render_public_key_configmap(metadata, public_pem)
