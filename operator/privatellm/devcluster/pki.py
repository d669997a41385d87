"""Certificates and keys for the local control plane: one CA, serving and client certs."""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from privatellm.keys.tls import issue_certificate, key_pem, new_key, self_signed_ca

VALIDITY = datetime.timedelta(days=30)


def _name(common_name: str, organization: str | None = None) -> x509.Name:
    parts = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    if organization:
        parts.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization))
    return x509.Name(parts)


@dataclass(frozen=True)
class Pki:
    """Paths of the files the control plane reads."""

    directory: Path

    @property
    def ca_cert(self) -> Path:
        return self.directory / "ca.crt"

    @property
    def ca_key(self) -> Path:
        return self.directory / "ca.key"

    @property
    def serving_cert(self) -> Path:
        return self.directory / "apiserver.crt"

    @property
    def serving_key(self) -> Path:
        return self.directory / "apiserver.key"

    @property
    def admin_cert(self) -> Path:
        return self.directory / "admin.crt"

    @property
    def admin_key(self) -> Path:
        return self.directory / "admin.key"

    @property
    def service_account_key(self) -> Path:
        return self.directory / "sa.key"

    @property
    def service_account_pub(self) -> Path:
        return self.directory / "sa.pub"


def create_pki(directory: Path) -> Pki:
    """Write a CA, the API server's serving cert, an admin client cert and the SA key pair."""
    directory.mkdir(parents=True, exist_ok=True)
    pki = Pki(directory)
    now = datetime.datetime.now(datetime.UTC)
    ca = self_signed_ca(_name("privatellm-local-ca"), now, VALIDITY)
    serving = issue_certificate(
        ca,
        _name("kube-apiserver"),
        [ExtendedKeyUsageOID.SERVER_AUTH],
        [
            x509.DNSName("localhost"),
            x509.DNSName("kubernetes"),
            x509.DNSName("kubernetes.default"),
            x509.DNSName("kubernetes.default.svc"),
            x509.DNSName("kubernetes.default.svc.cluster.local"),
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
            x509.IPAddress(ipaddress.ip_address("10.96.0.1")),
        ],
        now,
        VALIDITY,
    )
    admin = issue_certificate(
        ca, _name("admin", "system:masters"), [ExtendedKeyUsageOID.CLIENT_AUTH], [], now, VALIDITY
    )
    sa_key = new_key()

    files = {
        pki.ca_cert: ca.cert_pem,
        pki.ca_key: ca.key_pem,
        pki.serving_cert: serving.cert_pem,
        pki.serving_key: serving.key_pem,
        pki.admin_cert: admin.cert_pem,
        pki.admin_key: admin.key_pem,
        pki.service_account_key: key_pem(sa_key),
        pki.service_account_pub: sa_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ),
    }
    for path, data in files.items():
        path.write_bytes(data)
        path.chmod(0o600)
    return pki
