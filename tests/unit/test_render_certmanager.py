"""cert-manager's Issuer, CA keypair and Certificates, as the operator renders them."""

from __future__ import annotations

import datetime
from typing import Any

from privatellm.api import InferenceDeployment
from privatellm.keys.tls import LEAF_VALIDITY, RENEW_BEFORE
from privatellm.render.certmanager import (
    cert_manager_installed,
    render_ca_issuer,
    render_ca_keypair_secret,
    render_server_certificate,
)
from privatellm.render.gateway import GatewayInputs, render_gateway_certificate
from privatellm.render.tls import secret_bytes

USAGES = ["server auth", "client auth", "digital signature", "key encipherment"]


def model(name: str, uid: str) -> InferenceDeployment:
    return InferenceDeployment.model_validate(
        {
            "metadata": {"name": name, "namespace": "team-a", "uid": uid},
            "spec": {
                "model": {"name": name, "source": {"uri": f"pvc://w/{name}", "sizeGiB": 1}},
                "zones": ["zone-a"],
            },
        }
    )


def hours(spec: dict[str, Any], key: str) -> datetime.timedelta:
    value = spec[key]
    assert value.endswith("h")
    return datetime.timedelta(hours=int(value[:-1]))


def test_cert_manager_is_used_only_while_its_certificate_crd_exists() -> None:
    crd = {"metadata": {"name": "certificates.cert-manager.io"}}
    assert cert_manager_installed(crd)
    assert not cert_manager_installed(None)
    going = {"metadata": {**crd["metadata"], "deletionTimestamp": "2026-11-29T00:00:00Z"}}
    assert not cert_manager_installed(going)


def test_the_issuer_signs_with_the_namespace_ca_in_the_tls_layout() -> None:
    secret = render_ca_keypair_secret("team-a", b"CA CERT", b"CA KEY")
    assert (secret["metadata"]["name"], secret["metadata"]["namespace"]) == (
        "privatellm-ca-keypair",
        "team-a",
    )
    assert secret["type"] == "kubernetes.io/tls"
    assert (secret_bytes(secret, "tls.crt"), secret_bytes(secret, "tls.key")) == (
        b"CA CERT",
        b"CA KEY",
    )
    assert "ownerReferences" not in secret["metadata"]
    issuer = render_ca_issuer("team-a")
    assert (issuer["apiVersion"], issuer["kind"]) == ("cert-manager.io/v1", "Issuer")
    assert (issuer["metadata"]["name"], issuer["metadata"]["namespace"]) == (
        "privatellm-ca",
        "team-a",
    )
    assert issuer["spec"] == {"ca": {"secretName": "privatellm-ca-keypair"}}


def test_a_model_servers_certificate_asks_for_what_the_operator_would_issue() -> None:
    certificate = render_server_certificate(model("chat", "u-1"))
    assert (certificate["apiVersion"], certificate["kind"]) == ("cert-manager.io/v1", "Certificate")
    meta = certificate["metadata"]
    assert (meta["name"], meta["namespace"]) == ("chat-tls", "team-a")
    assert [(r["uid"], r["controller"]) for r in meta["ownerReferences"]] == [("u-1", True)]
    spec = certificate["spec"]
    assert spec["secretName"] == "chat-tls"
    assert spec["commonName"] == "chat"
    assert spec["dnsNames"] == [
        "chat",
        "chat.team-a",
        "chat.team-a.svc",
        "chat.team-a.svc.cluster.local",
    ]
    assert spec["usages"] == USAGES
    assert spec["privateKey"] == {"algorithm": "ECDSA", "size": 256, "rotationPolicy": "Always"}
    assert hours(spec, "duration") == LEAF_VALIDITY
    assert hours(spec, "renewBefore") == RENEW_BEFORE
    assert spec["issuerRef"] == {
        "group": "cert-manager.io",
        "kind": "Issuer",
        "name": "privatellm-ca",
    }
    # The Secret cert-manager writes is labelled like the one the operator writes.
    assert spec["secretTemplate"]["labels"] == meta["labels"]
    assert meta["labels"]["privatellm.io/inference-deployment"] == "chat"


def test_the_gateways_certificate_is_owned_by_every_model_of_the_namespace() -> None:
    inputs = GatewayInputs(
        namespace="team-a",
        image="registry.example/privatellm:1",
        models=[model("small", "u-2"), model("big", "u-1")],
        policies=[],
    )
    certificate = render_gateway_certificate(inputs)
    meta, spec = certificate["metadata"], certificate["spec"]
    assert (meta["name"], meta["namespace"]) == ("privatellm-gateway-tls", "team-a")
    assert [r["uid"] for r in meta["ownerReferences"]] == ["u-1", "u-2"]
    assert spec["secretName"] == "privatellm-gateway-tls"
    assert spec["commonName"] == "privatellm-gateway"
    assert spec["dnsNames"][-1] == "privatellm-gateway.team-a.svc.cluster.local"
    assert spec["usages"] == USAGES
    assert spec["issuerRef"]["name"] == "privatellm-ca"
