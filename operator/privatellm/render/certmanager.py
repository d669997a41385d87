"""cert-manager objects that issue the model servers' and gateways' certificates.

Used when cert-manager is installed. The namespace CA the operator makes stays the
trust anchor: it is handed to a namespaced CA Issuer, and each Certificate asks for
the same Secret, names and lifetimes the operator would issue itself. For CA
issuers cert-manager also writes `ca.crt` into the Secret, so the Secrets keep the
layout the model servers and the gateway mount.

Pure: the key material and the owners are inputs.
"""

from __future__ import annotations

import base64
import datetime
from collections.abc import Sequence
from typing import Any

from privatellm.api import InferenceDeployment
from privatellm.keys.tls import LEAF_VALIDITY, RENEW_BEFORE, service_names

from .meta import (
    MANAGED_BY,
    MANAGED_BY_LABEL,
    PART_OF,
    PART_OF_LABEL,
    crd_installed,
    owner_reference,
)
from .workload import labels, service_name, tls_secret_name

Manifest = dict[str, Any]

CERT_MANAGER_API_VERSION = "cert-manager.io/v1"
# Its presence is what "cert-manager is installed" means to the operator.
CERTIFICATE_CRD = "certificates.cert-manager.io"
CA_KEYPAIR_SECRET = "privatellm-ca-keypair"
CA_ISSUER = "privatellm-ca"
# Both directions, as the operator's own certificates: the model server presents its
# certificate to clients and to its readiness probe, the gateway to the model servers.
USAGES = ("server auth", "client auth", "digital signature", "key encipherment")


def cert_manager_installed(certificate_crd: Manifest | None) -> bool:
    """Whether cert-manager can take Certificates, given its CRD as read (None: absent)."""
    return crd_installed(certificate_crd)


def _hours(duration: datetime.timedelta) -> str:
    """A duration as cert-manager reads it (Go's time.ParseDuration)."""
    return f"{int(duration.total_seconds()) // 3600}h"


def _operator_labels() -> dict[str, str]:
    return {PART_OF_LABEL: PART_OF, MANAGED_BY_LABEL: MANAGED_BY}


def render_ca_keypair_secret(namespace: str, ca_cert_pem: bytes, ca_key_pem: bytes) -> Manifest:
    """The namespace CA in the kubernetes.io/tls layout a cert-manager CA Issuer reads.

    Like the CA Secret it copies, it has no owner: the whole namespace relies on it.
    """
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": CA_KEYPAIR_SECRET,
            "namespace": namespace,
            "labels": _operator_labels(),
        },
        "type": "kubernetes.io/tls",
        "data": {
            "tls.crt": base64.b64encode(ca_cert_pem).decode(),
            "tls.key": base64.b64encode(ca_key_pem).decode(),
        },
    }


def render_ca_issuer(namespace: str) -> Manifest:
    """The namespace's Issuer: signs with the namespace CA, and only in this namespace."""
    return {
        "apiVersion": CERT_MANAGER_API_VERSION,
        "kind": "Issuer",
        "metadata": {"name": CA_ISSUER, "namespace": namespace, "labels": _operator_labels()},
        "spec": {"ca": {"secretName": CA_KEYPAIR_SECRET}},
    }


def render_certificate(
    name: str,
    namespace: str,
    common_name: str,
    dns_names: Sequence[str],
    labels: dict[str, str],
    owner_references: Sequence[Manifest],
) -> Manifest:
    """A Certificate for `dns_names` written to the Secret `name`, issued by the namespace CA.

    The Certificate and its Secret share the name; the Secret carries the same labels.
    """
    return {
        "apiVersion": CERT_MANAGER_API_VERSION,
        "kind": "Certificate",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": labels,
            "ownerReferences": [*owner_references],
        },
        "spec": {
            "secretName": name,
            "secretTemplate": {"labels": labels},
            "commonName": common_name,
            "dnsNames": [*dns_names],
            "usages": [*USAGES],
            # A new key with every certificate, as the operator's own issuance does.
            "privateKey": {"algorithm": "ECDSA", "size": 256, "rotationPolicy": "Always"},
            "duration": _hours(LEAF_VALIDITY),
            "renewBefore": _hours(RENEW_BEFORE),
            "issuerRef": {"group": "cert-manager.io", "kind": "Issuer", "name": CA_ISSUER},
        },
    }


def render_server_certificate(obj: InferenceDeployment) -> Manifest:
    """The model server's Certificate: its Service's names, into the Secret its Pods mount."""
    namespace = obj.metadata.namespace or ""
    service = service_name(obj)
    return render_certificate(
        tls_secret_name(obj),
        namespace,
        service,
        service_names(service, namespace),
        labels(obj),
        [owner_reference(obj)],
    )
