"""Namespace CAs and model-server certificates: issued, checked and renewed in time."""

from __future__ import annotations

import datetime

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from privatellm.api import InferenceDeployment
from privatellm.keys.tls import (
    issue_ca,
    issue_client,
    issue_leaf,
    needs_renewal,
    serial_hex,
    service_names,
    signed_by,
)
from privatellm.render.tls import render_tls_secret, secret_bytes

NOW = datetime.datetime(2026, 11, 29, tzinfo=datetime.UTC)
DAY = datetime.timedelta(days=1)


def test_a_leaf_serves_the_service_names_and_loopback_for_both_auth_directions() -> None:
    ca = issue_ca("team-a", NOW)
    leaf = issue_leaf(ca, "chat", service_names("chat", "team-a"), NOW).certificate
    sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == [
        "chat",
        "chat.team-a",
        "chat.team-a.svc",
        "chat.team-a.svc.cluster.local",
        "localhost",
    ]
    assert [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    usages = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(usages) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    assert not leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca


def test_a_leaf_is_signed_by_its_namespace_ca_only() -> None:
    ca, other = issue_ca("team-a", NOW), issue_ca("team-b", NOW)
    leaf = issue_leaf(ca, "chat", ["chat"], NOW)
    assert signed_by(leaf.cert_pem, ca.cert_pem)
    assert not signed_by(leaf.cert_pem, other.cert_pem)
    assert not signed_by(b"not a certificate", ca.cert_pem)


def test_a_client_certificate_authenticates_a_client_only_and_names_no_host() -> None:
    ca = issue_ca("team-a", NOW)
    client = issue_client(ca, "privatellm-operator", NOW, DAY)
    cert = client.certificate
    usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usages) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    with pytest.raises(x509.ExtensionNotFound):
        cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert signed_by(client.cert_pem, ca.cert_pem)
    assert cert.not_valid_after_utc == NOW + DAY


def test_renewal_comes_thirty_days_before_expiry() -> None:
    leaf = issue_leaf(issue_ca("ns", NOW), "chat", ["chat"], NOW)
    assert not needs_renewal(leaf.cert_pem, NOW)
    assert not needs_renewal(leaf.cert_pem, NOW + 59 * DAY)
    assert needs_renewal(leaf.cert_pem, NOW + 61 * DAY)
    assert needs_renewal(b"garbage", NOW)


def test_each_issue_is_a_new_certificate() -> None:
    ca = issue_ca("ns", NOW)
    first, second = issue_leaf(ca, "chat", ["chat"], NOW), issue_leaf(ca, "chat", ["chat"], NOW)
    assert serial_hex(first.cert_pem) != serial_hex(second.cert_pem)
    assert first.key_pem != second.key_pem


def test_the_server_secret_is_owned_and_in_the_tls_layout() -> None:
    obj = InferenceDeployment.model_validate(
        {
            "metadata": {"name": "chat", "namespace": "team-a", "uid": "u-1"},
            "spec": {
                "model": {"name": "chat", "source": {"uri": "pvc://w/chat", "sizeGiB": 1}},
                "zones": ["zone-a"],
            },
        }
    )
    secret = render_tls_secret(obj, b"CERT", b"KEY", b"CA")
    assert secret["type"] == "kubernetes.io/tls"
    assert secret["metadata"]["name"] == "chat-tls"
    assert secret["metadata"]["ownerReferences"][0]["uid"] == "u-1"
    assert [secret_bytes(secret, k) for k in ("tls.crt", "tls.key", "ca.crt")] == [
        b"CERT",
        b"KEY",
        b"CA",
    ]
    assert secret_bytes(None, "tls.crt") == b""
