"""Keep each namespace's CA and each model server's certificate present and fresh.

The namespace CA is always the operator's. Where cert-manager is installed (its
Certificate CRD exists, checked on every reconcile so a later install is picked up),
the CA is handed to a cert-manager Issuer and leaf certificates are requested as
Certificates; otherwise the operator issues them itself, only when missing, signed
by another CA, or close to expiry, and else reads two Secrets and writes nothing.
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
from privatellm.kube.client import KINDS, Kube, Obj
from privatellm.render.certmanager import (
    CERTIFICATE_CRD,
    cert_manager_installed,
    render_ca_issuer,
    render_ca_keypair_secret,
    render_server_certificate,
)
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
CRD = KINDS["CustomResourceDefinition"]


def cert_manager_present(kube: Kube) -> bool:
    """Whether cert-manager is installed in the cluster: one GET of its Certificate CRD."""
    return cert_manager_installed(kube.get(CRD, None, CERTIFICATE_CRD))


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
    if cert_manager_present(kube):
        return request_certificate(kube, ca, render_server_certificate(obj))
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


def request_certificate(kube: Kube, ca: KeyPair, certificate: Obj) -> str:
    """Have cert-manager issue `certificate` from the namespace CA; return its revision.

    The revision is the serial of the certificate cert-manager wrote into the Secret,
    empty until it has written one: Pods mounting the Secret wait for it, and roll
    once more when it arrives or is renewed.
    """
    namespace = certificate["metadata"]["namespace"]
    kube.apply(render_ca_keypair_secret(namespace, ca.cert_pem, ca.key_pem))
    kube.apply(render_ca_issuer(namespace))
    kube.apply(certificate)
    secret = kube.get(SECRET, namespace, certificate["spec"]["secretName"])
    try:
        return serial_hex(secret_bytes(secret, "tls.crt"))
    except ValueError:
        return ""
