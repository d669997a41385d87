"""Keep each namespace's CA and each model server's certificate present and fresh.

The namespace CA is always the operator's. Where cert-manager is installed (its
Certificate CRD exists, checked on every reconcile so a later install is picked up),
the CA is handed to a cert-manager Issuer and leaf certificates are requested as
Certificates; otherwise the operator issues them itself, only when missing, signed
by another CA, or close to expiry, and else reads two Secrets and writes nothing.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable
from http import HTTPStatus

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
from privatellm.kube.client import KINDS, ApiError, Kube, Obj
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
# A lost race is followed by a read of the winner's CA; more attempts mean churn elsewhere.
_CA_WRITE_ATTEMPTS = 3
CRD = KINDS["CustomResourceDefinition"]


def cert_manager_present(kube: Kube) -> bool:
    """Whether cert-manager is installed in the cluster: one GET of its Certificate CRD."""
    return cert_manager_installed(kube.get(CRD, None, CERTIFICATE_CRD))


def namespace_ca(kube: Kube, namespace: str, now: datetime.datetime) -> KeyPair:
    """The namespace's CA, issued when missing or within half a year of expiry.

    Workers reconciling models of one namespace find a missing CA at the same moment.
    Only the first write counts; the others read and use its CA, so that no certificate
    is signed by a CA that is then replaced (which would roll Pods for nothing).
    """
    for _ in range(_CA_WRITE_ATTEMPTS):
        secret = kube.get(SECRET, namespace, NAMESPACE_CA_SECRET)
        ca = KeyPair(secret_bytes(secret, CA_CERT_KEY), secret_bytes(secret, CA_KEY_KEY))
        if ca.cert_pem and ca.key_pem and not needs_renewal(ca.cert_pem, now, CA_RENEW_BEFORE):
            return ca
        ca = issue_ca(namespace, now)
        try:
            kube.write_if_unchanged(
                render_namespace_ca_secret(namespace, ca.cert_pem, ca.key_pem), secret
            )
        except ApiError as error:
            if error.status != HTTPStatus.CONFLICT:
                raise
            continue  # another worker's CA won: read it
        return ca
    raise RuntimeError(f"the CA of namespace {namespace} kept changing while it was written")


def ensure_server_certificate(kube: Kube, obj: InferenceDeployment, now: datetime.datetime) -> str:
    """Make sure the model server's certificate is valid and current; return its revision."""
    return ensure_certificate(
        kube,
        obj.metadata.namespace or "",
        service_name(obj),
        tls_secret_name(obj),
        lambda cert, key, ca: render_tls_secret(obj, cert, key, ca),
        lambda: render_server_certificate(obj),
        now,
    )


def ensure_certificate(
    kube: Kube,
    namespace: str,
    service: str,
    secret_name: str,
    render_secret: Callable[[bytes, bytes, bytes], Obj],
    render_certificate: Callable[[], Obj],
    now: datetime.datetime,
) -> str:
    """Keep the certificate of `service` in `secret_name` valid and current; its revision.

    `render_secret(cert, key, ca)` is the Secret the operator writes itself;
    `render_certificate()` the cert-manager Certificate asked for instead where
    cert-manager is installed. The Secret is applied on every call, which writes
    only when it changed (its owners, say).
    """
    ca = namespace_ca(kube, namespace, now)
    if cert_manager_present(kube):
        return request_certificate(kube, ca, render_certificate())
    secret = kube.get(SECRET, namespace, secret_name)
    cert, key = secret_bytes(secret, "tls.crt"), secret_bytes(secret, "tls.key")
    current = bool(
        cert
        and key
        and secret_bytes(secret, CA_CERT_KEY) == ca.cert_pem
        and signed_by(cert, ca.cert_pem)
        and not needs_renewal(cert, now)
    )
    if not current:
        leaf = issue_leaf(ca, service, service_names(service, namespace), now)
        cert, key = leaf.cert_pem, leaf.key_pem
    kube.apply(render_secret(cert, key, ca.cert_pem), live=secret)
    return serial_hex(cert)


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
