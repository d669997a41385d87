"""Certificates between the parts: one CA per namespace, a certificate per model server.

Every namespace gets its own CA, so a gateway trusts only the model servers of its
own namespace, and a model server accepts only clients its namespace's CA signed.
Each certificate serves and authenticates (server and client auth): the vLLM
server presents it, and its readiness probe presents it to its own server under
mutual TLS. Keys are ECDSA P-256. Time is an argument, so tests control it.
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_VALIDITY = datetime.timedelta(days=365 * 3)
LEAF_VALIDITY = datetime.timedelta(days=90)
# Renew a third of the way before expiry: a missed reconcile or two never lets one lapse.
RENEW_BEFORE = datetime.timedelta(days=30)
CA_RENEW_BEFORE = datetime.timedelta(days=180)
# Clocks drift; a certificate valid from a few minutes ago is accepted everywhere at once.
BACKDATE = datetime.timedelta(minutes=5)


@dataclass(frozen=True)
class KeyPair:
    """A PEM certificate and its PEM private key."""

    cert_pem: bytes
    key_pem: bytes

    @property
    def certificate(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate(self.cert_pem)


def new_key() -> ec.EllipticCurvePrivateKey:
    """A fresh ECDSA P-256 private key."""
    return ec.generate_private_key(ec.SECP256R1())


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    """A private key as unencrypted PKCS#8 PEM."""
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def self_signed_ca(
    subject: x509.Name, now: datetime.datetime, validity: datetime.timedelta = CA_VALIDITY
) -> KeyPair:
    """A CA that signs end-entity certificates only (path length 0)."""
    key = new_key()
    usage = x509.KeyUsage(
        digital_signature=True,
        key_cert_sign=True,
        crl_sign=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        encipher_only=False,
        decipher_only=False,
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + validity)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(usage, critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return KeyPair(cert.public_bytes(serialization.Encoding.PEM), key_pem(key))


def issue_certificate(
    ca: KeyPair,
    subject: x509.Name,
    usages: list[x509.ObjectIdentifier],
    sans: list[x509.GeneralName],
    now: datetime.datetime,
    validity: datetime.timedelta = LEAF_VALIDITY,
) -> KeyPair:
    """An end-entity certificate for `usages` and `sans` (may be empty), signed by `ca`."""
    ca_key = serialization.load_pem_private_key(ca.key_pem, password=None)
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise ValueError("the CA key is not an ECDSA key")
    key = new_key()
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + validity)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    return KeyPair(cert.public_bytes(serialization.Encoding.PEM), key_pem(key))


def issue_ca(namespace: str, now: datetime.datetime) -> KeyPair:
    """A self-signed CA for one namespace."""
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "privatellm"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"privatellm CA {namespace}"),
        ]
    )
    return self_signed_ca(subject, now)


def service_names(service: str, namespace: str) -> list[str]:
    """The DNS names a Service answers to inside the cluster."""
    return [
        service,
        f"{service}.{namespace}",
        f"{service}.{namespace}.svc",
        f"{service}.{namespace}.svc.cluster.local",
    ]


def issue_leaf(
    ca: KeyPair, common_name: str, dns_names: list[str], now: datetime.datetime
) -> KeyPair:
    """A certificate for server and client auth, for `dns_names` and loopback, signed by `ca`."""
    sans: list[x509.GeneralName] = [x509.DNSName(n) for n in [*dns_names, "localhost"]]
    sans.append(x509.IPAddress(ipaddress.ip_address("127.0.0.1")))
    return issue_certificate(
        ca,
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]),
        [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH],
        sans,
        now,
    )


def issue_client(
    ca: KeyPair, common_name: str, now: datetime.datetime, validity: datetime.timedelta
) -> KeyPair:
    """A certificate for client auth only, naming no host, signed by `ca`."""
    return issue_certificate(
        ca,
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]),
        [ExtendedKeyUsageOID.CLIENT_AUTH],
        [],
        now,
        validity,
    )


def needs_renewal(
    cert_pem: bytes, now: datetime.datetime, renew_before: datetime.timedelta = RENEW_BEFORE
) -> bool:
    """Whether a certificate is unreadable or expires within `renew_before`."""
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
    except ValueError:
        return True
    return cert.not_valid_after_utc - now < renew_before


def signed_by(cert_pem: bytes, ca_cert_pem: bytes) -> bool:
    """Whether `cert_pem` was issued by the CA in `ca_cert_pem` (signature checked)."""
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
        ca = x509.load_pem_x509_certificate(ca_cert_pem)
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def serial_hex(cert_pem: bytes) -> str:
    """The certificate's serial number, as a short revision string."""
    return format(x509.load_pem_x509_certificate(cert_pem).serial_number, "x")
