"""With cert-manager's CRDs installed, the operator requests Certificates instead of issuing.

No cert-manager runs here: its two CRDs are installed bare, and the test plays
cert-manager by writing the Secret a Certificate asks for. The control plane is shared
by the whole session, so the CRDs are removed again before the test ends.
"""

from __future__ import annotations

import base64
import datetime
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from kubernetes import client

from privatellm.keys.tls import KeyPair, issue_leaf, serial_hex, service_names, signed_by

from .conftest import Cluster, wait_until
from .operator_process import USERNAME, OperatorProcess, running_operator, writes_by
from .test_inference_operator import create, model, token_review_binding

CERT_MANAGER = "cert-manager.io"
KINDS = {"certificates": "Certificate", "issuers": "Issuer"}
REVISION = "privatellm.io/tls-revision"
GATEWAY = "privatellm-gateway"


def cert_manager_crd(plural: str) -> dict[str, Any]:
    """A bare CRD for one of cert-manager's kinds: it stores whatever it is given."""
    kind = KINDS[plural]
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{CERT_MANAGER}"},
        "spec": {
            "group": CERT_MANAGER,
            "scope": "Namespaced",
            "names": {
                "kind": kind,
                "listKind": f"{kind}List",
                "plural": plural,
                "singular": kind.lower(),
            },
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "x-kubernetes-preserve-unknown-fields": True,
                        }
                    },
                    "subresources": {"status": {}},
                }
            ],
        },
    }


def remove_cert_manager(cluster: Cluster) -> None:
    """Delete the CRDs (and with them every Certificate and Issuer) and wait until gone."""
    names = [f"{plural}.{CERT_MANAGER}" for plural in KINDS]
    cluster.kubectl("delete", "crd", *names, "--ignore-not-found", "--wait=true")


@pytest.fixture(scope="module")
def operator(crds: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[OperatorProcess]:
    """The operator as the chart's ServiceAccount; no Vault, which plays no part here."""
    env = {"PRIVATELLM_GATEWAY_TOKENREVIEW_BINDING": token_review_binding()}
    yield from running_operator(crds, tmp_path_factory.mktemp("operator"), env)


@pytest.fixture
def cert_manager(operator: OperatorProcess, cluster: Cluster) -> Iterator[None]:
    """cert-manager's CRDs, Established; removed afterwards whatever the test did."""
    crds = [cert_manager_crd(plural) for plural in KINDS]
    cluster.kubectl("apply", "-f", "-", stdin=yaml.safe_dump_all(crds))
    for crd in crds:
        cluster.kubectl(
            "wait", "--for=condition=Established", "--timeout=60s", f"crd/{crd['metadata']['name']}"
        )
    try:
        yield
    finally:
        remove_cert_manager(cluster)


def custom(cluster: Cluster, namespace: str, plural: str, name: str) -> dict[str, Any] | None:
    try:
        obj: dict[str, Any] = cluster.custom.get_namespaced_custom_object(
            CERT_MANAGER, "v1", namespace, plural, name
        )
    except client.ApiException as error:
        if error.status == 404:
            return None
        raise
    return obj


def secret(cluster: Cluster, namespace: str, name: str) -> client.V1Secret | None:
    try:
        found: client.V1Secret = cluster.core.read_namespaced_secret(name, namespace)
    except client.ApiException as error:
        if error.status == 404:
            return None
        raise
    return found


def data(found: client.V1Secret | None, key: str) -> bytes:
    return base64.b64decode(((found.data if found else None) or {}).get(key) or "")


def revisions(cluster: Cluster, namespace: str, selector: str) -> set[str]:
    """The TLS revision in the pod template of each workload `selector` matches."""
    apps = cluster.apps
    workloads = [
        *apps.list_namespaced_deployment(namespace, label_selector=selector).items,
        *apps.list_namespaced_stateful_set(namespace, label_selector=selector).items,
    ]
    return {(w.spec.template.metadata.annotations or {}).get(REVISION, "") for w in workloads}


def namespace_ca(cluster: Cluster, namespace: str) -> KeyPair:
    ca = secret(cluster, namespace, "privatellm-ca")
    return KeyPair(data(ca, "ca.crt"), data(ca, "ca.key"))


def play_cert_manager(cluster: Cluster, namespace: str, name: str, common_name: str) -> str:
    """Issue what the Certificate asks for from the namespace CA, as cert-manager would."""
    ca = namespace_ca(cluster, namespace)
    now = datetime.datetime.now(datetime.UTC)
    leaf = issue_leaf(ca, common_name, service_names(common_name, namespace), now)
    body = client.V1Secret(
        metadata=client.V1ObjectMeta(name=name),
        type="kubernetes.io/tls",
        data={
            key: base64.b64encode(value).decode()
            for key, value in (
                ("tls.crt", leaf.cert_pem),
                ("tls.key", leaf.key_pem),
                ("ca.crt", ca.cert_pem),
            )
        },
    )
    cluster.core.create_namespaced_secret(namespace, body)
    return serial_hex(leaf.cert_pem)


MODEL_SELECTOR = "privatellm.io/inference-deployment=chat"
GATEWAY_SELECTOR = f"app.kubernetes.io/instance={GATEWAY}"


def test_with_cert_manager_certificates_are_requested_and_their_serial_rolls_the_pods(
    cert_manager: None, cluster: Cluster, namespace: str
) -> None:
    create(cluster, namespace, model("chat", replicas=3))
    issuer = wait_until(
        lambda: custom(cluster, namespace, "issuers", "privatellm-ca"), what="the Issuer"
    )
    assert issuer["spec"] == {"ca": {"secretName": "privatellm-ca-keypair"}}
    keypair = secret(cluster, namespace, "privatellm-ca-keypair")
    ca = namespace_ca(cluster, namespace)
    assert keypair is not None and keypair.type == "kubernetes.io/tls"
    assert (data(keypair, "tls.crt"), data(keypair, "tls.key")) == (ca.cert_pem, ca.key_pem)

    certificate = wait_until(
        lambda: custom(cluster, namespace, "certificates", "chat-tls"), what="the Certificate"
    )
    spec = certificate["spec"]
    assert spec["secretName"] == "chat-tls"
    assert spec["dnsNames"] == service_names("chat", namespace)
    assert spec["usages"] == ["server auth", "client auth", "digital signature", "key encipherment"]
    assert spec["issuerRef"]["name"] == "privatellm-ca"
    gateway_certificate = wait_until(
        lambda: custom(cluster, namespace, "certificates", "privatellm-gateway-tls"),
        what="the gateway's Certificate",
    )
    assert gateway_certificate["spec"]["secretName"] == "privatellm-gateway-tls"

    # Until cert-manager writes the Secrets, the Deployments exist without a revision,
    # and the operator writes no certificate of its own.
    assert wait_until(lambda: revisions(cluster, namespace, MODEL_SELECTOR) == {""}, what="zones")
    assert wait_until(lambda: revisions(cluster, namespace, GATEWAY_SELECTOR) == {""})
    assert secret(cluster, namespace, "chat-tls") is None
    assert secret(cluster, namespace, "privatellm-gateway-tls") is None
    if cluster.audit_log is not None:
        leaf_secrets = ("/secrets/chat-tls", "/secrets/privatellm-gateway-tls")
        written = [w for w in writes_by(cluster.audit_log, USERNAME) if f"/{namespace}/" in w]
        assert not [w for w in written if w.split("?")[0].endswith(leaf_secrets)], written

    serial = play_cert_manager(cluster, namespace, "chat-tls", "chat")
    wait_until(
        lambda: revisions(cluster, namespace, MODEL_SELECTOR) == {serial},
        what="the model's Deployments on the new serial",
    )
    gateway_serial = play_cert_manager(cluster, namespace, "privatellm-gateway-tls", GATEWAY)
    wait_until(
        lambda: revisions(cluster, namespace, GATEWAY_SELECTOR) == {gateway_serial},
        what="the gateway's StatefulSet on the new serial",
    )


def test_once_cert_manager_is_removed_the_operator_issues_certificates_itself(
    cert_manager: None, cluster: Cluster, namespace: str
) -> None:
    create(cluster, namespace, model("chat", replicas=3))
    wait_until(lambda: custom(cluster, namespace, "certificates", "chat-tls"), what="Certificate")
    assert secret(cluster, namespace, "chat-tls") is None

    remove_cert_manager(cluster)
    issued = wait_until(
        lambda: secret(cluster, namespace, "chat-tls"), what="the operator's own certificate"
    )
    cert_pem = data(issued, "tls.crt")
    assert signed_by(cert_pem, namespace_ca(cluster, namespace).cert_pem)
    wait_until(
        lambda: revisions(cluster, namespace, MODEL_SELECTOR) == {serial_hex(cert_pem)},
        what="the model's Deployments on the operator's certificate",
    )
    gateway = wait_until(lambda: secret(cluster, namespace, "privatellm-gateway-tls"))
    assert signed_by(data(gateway, "tls.crt"), namespace_ca(cluster, namespace).cert_pem)
