"""Keep each namespace's CA and each model server's certificate present and fresh.

Certificates are issued only when missing, signed by another CA, or close to expiry;
otherwise this reads two Secrets and writes nothing.
"""

from __future__ import annotations

import datetime

from privatellm.api import InferenceDeployment
from privatellm.keys.tls import (
    CA_RENEW_BEFORE,
    KeyPair,
    issue_ca,
    issue_leaf,
    needs_renewal,
    serial_hex,
    service_names,
    signed_by,
)
from privatellm.kube.client import KINDS, Kube
from privatellm.render.tls import (
    CA_CERT_KEY,
    CA_KEY_KEY,
    NAMESPACE_CA_SECRET,
    render_namespace_ca_secret,
    render_tls_secret,
    secret_bytes,
)
from privatellm.render.workload import (
    service_name,
    tls_secret_name,
)

SECRET = KINDS["Secret"]


def namespace_ca(kube: Kube, namespace: str, now: datetime.datetime) -> KeyPair:
    """The namespace's CA, issued when missing or within half a year of expiry."""
    secret = kube.get(SECRET, namespace, NAMESPACE_CA_SECRET)
    ca = KeyPair(secret_bytes(secret, CA_CERT_KEY), secret_bytes(secret, CA_KEY_KEY))
    if ca.cert_pem and ca.key_pem and not needs_renewal(ca.cert_pem, now, CA_RENEW_BEFORE):
        return ca
    ca = issue_ca(namespace, now)
    kube.apply(render_namespace_ca_secret(namespace, ca.cert_pem, ca.key_pem), live=secret)
    return ca


def ensure_server_certificate(kube: Kube, obj: InferenceDeployment, now: datetime.datetime) -> str:
    """Make sure the model server's certificate is valid and current; return its revision."""
    namespace = obj.metadata.namespace or ""
    ca = namespace_ca(kube, namespace, now)
    secret = kube.get(SECRET, namespace, tls_secret_name(obj))
    cert = secret_bytes(secret, "tls.crt")
    current = bool(
        cert
        and secret_bytes(secret, "tls.key")
        and secret_bytes(secret, CA_CERT_KEY) == ca.cert_pem
        and signed_by(cert, ca.cert_pem)
        and not needs_renewal(cert, now)
    )
    if current:
        return serial_hex(cert)
    service = service_name(obj)
    leaf = issue_leaf(ca, service, service_names(service, namespace), now)
    kube.apply(render_tls_secret(obj, leaf.cert_pem, leaf.key_pem, ca.cert_pem), live=secret)
    return serial_hex(leaf.cert_pem)
