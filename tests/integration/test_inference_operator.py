"""The InferenceDeployment operator on a real control plane, running as the chart's identity."""

from __future__ import annotations

import base64
import hashlib
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509
from kubernetes import client

from privatellm.api import GROUP, VERSION
from privatellm.audit import Signer
from privatellm.audit.query import AuditIntegrityError, AuditQuery, query_log
from privatellm.devcluster import DevVault, Toolchain
from privatellm.devcluster.nodes import NodePlan, render_nodes
from privatellm.keys.envelope import Envelope, RecordContext
from privatellm.keys.tenancy import operator_policy
from privatellm.keys.tls import serial_hex, signed_by
from privatellm.keys.transit import TransitClient, VaultClient, VaultError

from .conftest import ROOT, Cluster, wait_until
from .operator_process import NAMESPACE as OPERATOR_NAMESPACE
from .operator_process import (
    SERVICE_ACCOUNT,
    USERNAME,
    OperatorProcess,
    chart_rbac,
    running_operator,
    writes_by,
)

PLURAL = "inferencedeployments"
ZONE_LABEL = "topology.kubernetes.io/zone"
OWNER_LABEL = "privatellm.io/inference-deployment"


@pytest.fixture(scope="module")
def vault(crds: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevVault]:
    """A dev-mode Vault whose Kubernetes auth trusts the test cluster's ServiceAccounts."""
    dev = DevVault(tmp_path_factory.mktemp("vault"), Toolchain.locate())
    dev.start()
    config = yaml.safe_load(crds.kubeconfig.read_text())["clusters"][0]["cluster"]
    ca = Path(config["certificate-authority"]).read_text()
    dev.enable_kubernetes_auth(config["server"], ca)
    yield dev
    dev.stop()


OPERATOR_AUDIT_SIGNER = Signer.generate()


@pytest.fixture(scope="module")
def operator(
    crds: Cluster, vault: DevVault, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorProcess]:
    """The operator, logging in to Vault as its own ServiceAccount with the operator policy."""
    root = vault.client()
    root.request("PUT", "sys/policies/acl/privatellm-operator", {"policy": operator_policy()})
    root.request(
        "POST",
        "auth/kubernetes/role/privatellm-operator",
        {
            "bound_service_account_names": [SERVICE_ACCOUNT],
            "bound_service_account_namespaces": [OPERATOR_NAMESPACE],
            "token_policies": ["privatellm-operator"],
            "token_ttl": "10m",
        },
    )
    workdir = tmp_path_factory.mktemp("operator")
    jwt_file = workdir / "vault.jwt"
    env = {
        "BAO_ADDR": vault.addr,
        "PRIVATELLM_VAULT_ROLE": "privatellm-operator",
        "PRIVATELLM_VAULT_JWT_FILE": str(jwt_file),
        # As the chart's Deployment sets them.
        "PRIVATELLM_GATEWAY_TOKENREVIEW_BINDING": token_review_binding(),
        "POD_NAMESPACE": OPERATOR_NAMESPACE,
    }
    # Vault reviews each login with the token being checked (no reviewer JWT configured).
    binding = "privatellm-under-test-vault-review"
    crds.kubectl(
        "create",
        "clusterrolebinding",
        binding,
        "--clusterrole=system:auth-delegator",
        f"--serviceaccount={OPERATOR_NAMESPACE}:{SERVICE_ACCOUNT}",
    )
    # Its control actions go to an audit log of its own.
    (workdir / "audit.pem").write_bytes(OPERATOR_AUDIT_SIGNER.private_pem())
    audit = ["--audit-dir", str(workdir / "audit")]
    audit += ["--audit-signing-key", str(workdir / "audit.pem")]
    try:
        yield from running_operator(crds, workdir, env, jwt_file, audit)
    finally:
        crds.kubectl("delete", "clusterrolebinding", binding, check=False)


def token_review_binding() -> str:
    """The chart's binding of the gateways to system:auth-delegator."""
    bindings: list[Any] = [o for o in chart_rbac() if o["kind"] == "ClusterRoleBinding"]
    return next(
        str(b["metadata"]["name"])
        for b in bindings
        if b["roleRef"]["name"] == "system:auth-delegator"
    )


def model(name: str, **spec: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "model": {
            "name": name,
            "source": {
                "uri": f"s3://models/{name}",
                "s3Endpoint": "https://minio.storage.svc:9000",
                "sizeGiB": 16,
            },
        },
        "resources": {"gpusPerReplica": 1, "gpuProduct": "NVIDIA-H100-80GB-HBM3"},
        "zones": ["zone-a", "zone-b", "zone-c"],
        "replicas": 6,
    }
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "InferenceDeployment",
        "metadata": {"name": name},
        "spec": {**base, **spec},
    }


def create(cluster: Cluster, namespace: str, body: dict[str, Any]) -> None:
    cluster.custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)


def patch_spec(cluster: Cluster, namespace: str, name: str, spec: dict[str, Any]) -> None:
    cluster.custom.patch_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, name, {"spec": spec}
    )


def read(cluster: Cluster, namespace: str, name: str) -> dict[str, Any]:
    obj: dict[str, Any] = cluster.custom.get_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, name
    )
    return obj


def condition(obj: dict[str, Any], type_: str) -> dict[str, Any]:
    conditions = (obj.get("status") or {}).get("conditions") or []
    return next((c for c in conditions if c["type"] == type_), {})


def settled(cluster: Cluster, namespace: str, name: str, ready: int) -> dict[str, Any] | None:
    """The object once it is Ready with `ready` replicas and nothing in progress."""
    obj = read(cluster, namespace, name)
    status = obj.get("status") or {}
    if (
        status.get("observedGeneration") == obj["metadata"]["generation"]
        and condition(obj, "Ready").get("status") == "True"
        and condition(obj, "Progressing").get("status") == "False"
        and status.get("readyReplicas") == ready
    ):
        return obj
    return None


def running_pods(cluster: Cluster, namespace: str, name: str) -> list[client.V1Pod]:
    pods = cluster.core.list_namespaced_pod(
        namespace,
        label_selector=f"{OWNER_LABEL}={name},app.kubernetes.io/component=inference-server",
    ).items
    return [p for p in pods if p.status.phase == "Running" and not p.metadata.deletion_timestamp]


def zones_of(cluster: Cluster, pods: list[client.V1Pod]) -> Counter[str]:
    nodes = {n.metadata.name: n for n in cluster.core.list_node().items}
    return Counter(nodes[p.spec.node_name].metadata.labels[ZONE_LABEL] for p in pods)


def events_for(cluster: Cluster, namespace: str, name: str) -> list[client.CoreV1Event]:
    events = cluster.core.list_namespaced_event(
        namespace,
        field_selector=f"involvedObject.name={name},involvedObject.kind=InferenceDeployment",
    ).items
    return list(events)


def test_create_spreads_running_replicas_over_three_zones(
    operator: OperatorProcess, cluster: Cluster, namespace: str
) -> None:
    create(cluster, namespace, model("chat"))
    obj = wait_until(lambda: settled(cluster, namespace, "chat", 6), timeout=120, what="Ready")
    pods = running_pods(cluster, namespace, "chat")
    assert zones_of(cluster, pods) == {"zone-a": 2, "zone-b": 2, "zone-c": 2}
    assert all(p.spec.containers[0].resources.limits["nvidia.com/gpu"] == "1" for p in pods)
    status = obj["status"]
    assert [(z["zone"], z["readyReplicas"], z["cacheWarm"]) for z in status["zones"]] == [
        ("zone-a", 2, True),
        ("zone-b", 2, True),
        ("zone-c", 2, True),
    ]
    assert status["endpoint"] == f"https://chat.{namespace}.svc:8000"
    secret = cluster.core.read_namespaced_secret("chat-tls", namespace)
    ca = cluster.core.read_namespaced_secret("privatellm-ca", namespace)
    assert secret.type == "kubernetes.io/tls"
    cert_pem = base64.b64decode(secret.data["tls.crt"])
    assert signed_by(cert_pem, base64.b64decode(ca.data["ca.crt"]))
    assert f"chat.{namespace}.svc" in x509.load_pem_x509_certificate(
        cert_pem
    ).extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.DNSName
    )
    template = cluster.apps.read_namespaced_deployment("chat-zone-a", namespace).spec.template
    assert template.metadata.annotations["privatellm.io/tls-revision"] == serial_hex(cert_pem)
    assert status["estimatedRestoreSeconds"] == 33
    assert condition(obj, "Degraded")["status"] == "False"

    patch_spec(cluster, namespace, "chat", {"replicas": 9})
    wait_until(lambda: settled(cluster, namespace, "chat", 9), timeout=90, what="scaled to 9")
    assert zones_of(cluster, running_pods(cluster, namespace, "chat")) == {
        "zone-a": 3,
        "zone-b": 3,
        "zone-c": 3,
    }


def test_spec_change_rolls_out(operator: OperatorProcess, cluster: Cluster, namespace: str) -> None:
    create(cluster, namespace, model("roll", replicas=3))
    wait_until(lambda: settled(cluster, namespace, "roll", 3), timeout=120, what="Ready")
    patch_spec(cluster, namespace, "roll", {"engine": {"maxModelLen": 4096}})

    def rolled_out() -> bool:
        pods = running_pods(cluster, namespace, "roll")
        new = [p for p in pods if "4096" in p.spec.containers[0].args]
        return len(new) == 3 and settled(cluster, namespace, "roll", 3) is not None

    wait_until(rolled_out, timeout=120, what="every replica runs with --max-model-len 4096")
    assert read(cluster, namespace, "roll")["status"]["observedGeneration"] == 2


def owned_children(cluster: Cluster, namespace: str, name: str) -> list[str]:
    selector = f"{OWNER_LABEL}={name}"
    found = []
    for kind, lister in (
        ("Deployment", cluster.apps.list_namespaced_deployment),
        ("Service", cluster.core.list_namespaced_service),
        ("ServiceAccount", cluster.core.list_namespaced_service_account),
        ("PersistentVolumeClaim", cluster.core.list_namespaced_persistent_volume_claim),
        ("Job", client.BatchV1Api(cluster.api).list_namespaced_job),
        (
            "PodDisruptionBudget",
            client.PolicyV1Api(cluster.api).list_namespaced_pod_disruption_budget,
        ),
        ("NetworkPolicy", client.NetworkingV1Api(cluster.api).list_namespaced_network_policy),
    ):
        found += [
            f"{kind}/{o.metadata.name}" for o in lister(namespace, label_selector=selector).items
        ]
    return found


def test_delete_garbage_collects_every_child(
    operator: OperatorProcess, cluster: Cluster, namespace: str
) -> None:
    create(cluster, namespace, model("gone", replicas=3))
    wait_until(lambda: settled(cluster, namespace, "gone", 3), timeout=120, what="Ready")
    children = owned_children(cluster, namespace, "gone")
    assert {c.split("/")[0] for c in children} == {
        "Deployment",
        "Service",
        "ServiceAccount",
        "PersistentVolumeClaim",
        "Job",
        "PodDisruptionBudget",
        "NetworkPolicy",
    }
    cluster.custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "gone")
    wait_until(
        lambda: not owned_children(cluster, namespace, "gone"),
        timeout=90,
        what="children garbage-collected",
    )


def test_invalid_engine_arguments_degrade_and_render_nothing(
    operator: OperatorProcess, cluster: Cluster, namespace: str
) -> None:
    create(cluster, namespace, model("bad", engine={"extraArgs": ["--trust-remote-code"]}))

    def degraded() -> dict[str, Any]:
        return condition(read(cluster, namespace, "bad"), "Degraded")

    found = wait_until(lambda: degraded().get("status") == "True" and degraded(), what="Degraded")
    assert found["reason"] == "InvalidSpec"
    assert "spec.engine.extraArgs[0]: --trust-remote-code is not allowed" in found["message"]
    assert owned_children(cluster, namespace, "bad") == []
    assert any(e.reason == "InvalidSpec" for e in events_for(cluster, namespace, "bad"))
    assert operator.alive()


def test_what_the_api_server_cannot_judge_is_degraded_with_the_field(
    operator: OperatorProcess, cluster: Cluster, namespace: str
) -> None:
    create(
        cluster, namespace, model("nogpu", resources={"gpusPerReplica": 1, "gpuProduct": "B300"})
    )
    create(cluster, namespace, model("nozone", zones=["zone-a", "zone-x"], replicas=2))

    def degraded(name: str) -> dict[str, Any]:
        found = condition(read(cluster, namespace, name), "Degraded")
        return found if found.get("status") == "True" else {}

    nogpu = wait_until(lambda: degraded("nogpu"), what="nogpu Degraded")
    assert nogpu["reason"] == "UnknownGPUProduct"
    assert nogpu["message"].startswith("spec.resources.gpuProduct:")
    nozone = wait_until(lambda: degraded("nozone"), what="nozone Degraded")
    assert nozone["reason"] == "ZoneUnavailable"
    assert "spec.zones[1]: zone 'zone-x' has no nodes" in nozone["message"]
    # the zone that exists serves both replicas
    wait_until(
        lambda: read(cluster, namespace, "nozone")["status"].get("readyReplicas") == 2,
        timeout=90,
        what="zone-a serves both replicas",
    )
    assert any(
        e.type == "Warning" and e.reason == "ZoneUnavailable"
        for e in events_for(cluster, namespace, "nozone")
    )
    assert operator.alive()
    if cluster.audit_log is not None:
        # Degraded is a steady state, not a retry loop: once settled, resyncs write nothing.
        time.sleep(2 * operator.resync_seconds)
        before = len(writes_by(cluster.audit_log, USERNAME))
        time.sleep(2 * operator.resync_seconds)
        assert writes_by(cluster.audit_log, USERNAME)[before:] == []


def test_every_rendered_pod_is_admitted_under_restricted_pod_security(
    operator: OperatorProcess, cluster: Cluster, namespace: str
) -> None:
    cluster.core.patch_namespace(
        namespace, {"metadata": {"labels": {"pod-security.kubernetes.io/enforce": "restricted"}}}
    )
    create(cluster, namespace, model("strict", replicas=3))
    wait_until(lambda: settled(cluster, namespace, "strict", 3), timeout=120, what="Ready")
    rejected = [
        e for e in cluster.core.list_namespaced_event(namespace).items if e.reason == "FailedCreate"
    ]
    assert rejected == []


def test_operator_restart_makes_no_writes(
    operator: OperatorProcess, cluster: Cluster, namespace: str
) -> None:
    if cluster.audit_log is None:
        pytest.skip("needs the local control plane's audit log")
    create(cluster, namespace, model("steady", replicas=3))
    wait_until(lambda: settled(cluster, namespace, "steady", 3), timeout=120, what="Ready")
    # Earlier tests' namespaces are being deleted; their models' finalizers are released
    # with writes that have nothing to do with the restart.
    wait_until(
        lambda: (
            not [n for n in cluster.core.list_namespace().items if n.status.phase == "Terminating"]
        ),
        timeout=180,
        what="earlier test namespaces gone",
    )
    time.sleep(2 * operator.resync_seconds)  # let every object in the cluster settle
    operator.restart()
    before = len(writes_by(cluster.audit_log, USERNAME))
    time.sleep(3 * operator.resync_seconds)  # a start-up pass and two resyncs
    assert operator.alive()
    assert writes_by(cluster.audit_log, USERNAME)[before:] == []


def test_zone_failure_moves_replicas_and_the_zone_returns(
    operator: OperatorProcess, cluster: Cluster, namespace: str, tmp_path: Path
) -> None:
    create(cluster, namespace, model("ha", replicas=6, health={"failoverSeconds": 60}))
    wait_until(lambda: settled(cluster, namespace, "ha", 6), timeout=120, what="Ready")
    zone_a = [
        n for n in render_nodes(NodePlan()) if n["metadata"]["labels"][ZONE_LABEL] == "zone-a"
    ]
    started = time.monotonic()
    for node in zone_a:
        cluster.core.delete_node(node["metadata"]["name"])
    try:

        def failed_over() -> bool:
            pods = running_pods(cluster, namespace, "ha")
            placed = zones_of(
                cluster, [p for p in pods if p.spec.node_name and _node_exists(cluster, p)]
            )
            degraded = condition(read(cluster, namespace, "ha"), "Degraded")
            return (
                placed == {"zone-b": 3, "zone-c": 3} and degraded.get("reason") == "ZoneUnavailable"
            )

        wait_until(failed_over, timeout=60, what="replicas of zone-a running in zone-b and zone-c")
        elapsed = time.monotonic() - started
        degraded = condition(read(cluster, namespace, "ha"), "Degraded")
        assert "spec.zones[0]: zone 'zone-a' has no nodes" in degraded["message"]
        assert elapsed < 60, f"failover took {elapsed:.0f}s"
        assert any(e.reason == "ZoneUnavailable" for e in events_for(cluster, namespace, "ha"))
    finally:
        cluster.kubectl("apply", "-f", "-", stdin=yaml.safe_dump_all(zone_a))
        cluster.kubectl("wait", "--for=condition=Ready", "node", "--all", "--timeout=60s")

    def spread_restored() -> bool:
        obj = settled(cluster, namespace, "ha", 6)
        return (
            bool(obj)
            and condition(obj, "Degraded").get("status") == "False"
            and zones_of(cluster, running_pods(cluster, namespace, "ha"))
            == {"zone-a": 2, "zone-b": 2, "zone-c": 2}
        )

    wait_until(spread_restored, timeout=120, what="spread over three zones again")


def _node_exists(cluster: Cluster, pod: client.V1Pod) -> bool:
    names = {n.metadata.name for n in cluster.core.list_node().items}
    return pod.spec.node_name in names


def test_the_namespace_gets_a_rotating_key_only_its_gateway_can_use(
    operator: OperatorProcess, cluster: Cluster, namespace: str, vault: DevVault
) -> None:
    create(cluster, namespace, model("secret", replicas=3))
    key = f"privatellm-{namespace}"

    def key_reported() -> dict[str, Any]:
        found: dict[str, Any] = (read(cluster, namespace, "secret").get("status") or {}).get(
            "encryptionKey"
        ) or {}
        return found

    assert wait_until(key_reported, what="status.encryptionKey") == {"name": key, "version": 1}
    root = TransitClient(vault.client())
    assert root.read_key(key).auto_rotate_period_seconds == 720 * 3600

    # The operator made the gateway's ServiceAccount and let it review tokens, which
    # is also what Vault needs to check its logins (no reviewer JWT configured).
    gateway_sa = "privatellm-gateway"
    wait_until(
        lambda: may_review_tokens(cluster, namespace, gateway_sa),
        what="the gateway's ServiceAccount allowed to call TokenReview",
    )
    jwt = cluster.kubectl("create", "token", gateway_sa, "-n", namespace).split()[0]
    login = VaultClient(vault.addr, "").request(
        "POST",
        "auth/kubernetes/login",
        {"role": f"privatellm-gateway-{namespace}", "jwt": jwt},
    )
    gateway = TransitClient(VaultClient(vault.addr, login["auth"]["client_token"]))
    envelope = Envelope(gateway, key)
    context = RecordContext(namespace, "secret", "req-1")
    assert envelope.decrypt(envelope.encrypt(b"a prompt", context), context) == b"a prompt"
    root.create_key("someone-else")
    for forbidden in (
        lambda: gateway.datakey("someone-else"),
        lambda: gateway.rotate(key),
        lambda: gateway.read_key(key),
    ):
        with pytest.raises(VaultError) as denied:
            forbidden()
        assert denied.value.status == 403


def may_review_tokens(cluster: Cluster, namespace: str, account: str) -> bool:
    answer = cluster.kubectl(
        "auth",
        "can-i",
        "create",
        "tokenreviews.authentication.k8s.io",
        f"--as=system:serviceaccount:{namespace}:{account}",
        check=False,
    )
    # stdout ("yes" or "no") comes first; a warning may follow on stderr.
    return answer.startswith("yes")


def test_deleting_the_last_model_revokes_gateway_access_but_keeps_the_key(
    operator: OperatorProcess, cluster: Cluster, namespace: str, vault: DevVault
) -> None:
    create(cluster, namespace, model("kept", replicas=3))
    create(cluster, namespace, model("revoked", replicas=3, encryption={"onDelete": "Revoke"}))
    key, policy = f"privatellm-{namespace}", f"privatellm-gateway-{namespace}"
    root = vault.client()

    def finalized(name: str) -> bool:
        finalizers = read(cluster, namespace, name)["metadata"].get("finalizers") or []
        return "privatellm.io/transit-key" in finalizers

    wait_until(lambda: finalized("kept") and finalized("revoked"), what="Vault finalizers")

    def gone(name: str) -> bool:
        return not [
            o
            for o in cluster.custom.list_namespaced_custom_object(
                GROUP, VERSION, namespace, PLURAL
            )["items"]
            if o["metadata"]["name"] == name
        ]

    # Another model still uses the key: deleting one leaves the gateway's access alone.
    cluster.custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "revoked")
    wait_until(lambda: gone("revoked"), what="revoked deleted")
    assert root.request("GET", f"sys/policies/acl/{policy}")["data"]["policy"]

    patch_spec(cluster, namespace, "kept", {"encryption": {"onDelete": "Revoke"}})
    time.sleep(operator.resync_seconds)
    cluster.custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "kept")
    wait_until(lambda: gone("kept"), what="kept deleted")
    for path in (f"sys/policies/acl/{policy}", f"auth/kubernetes/role/{policy}"):
        with pytest.raises(VaultError) as missing:
            root.request("GET", path)
        assert missing.value.status == 404, path
    assert TransitClient(root).read_key(key).latest_version == 1, "the key itself is kept"
    wait_until(
        lambda: not may_review_tokens(cluster, namespace, "privatellm-gateway"),
        what="the gateway of a namespace without models no longer allowed TokenReview",
    )
    assert any(e.reason == "TransitKeyReleased" for e in events_for(cluster, namespace, "kept"))


def _gateway_config(cluster: Cluster, namespace: str) -> dict[str, Any] | None:
    try:
        secret = cluster.core.read_namespaced_secret("privatellm-gateway-config", namespace)
    except client.ApiException:
        return None
    loaded: dict[str, Any] = yaml.safe_load(base64.b64decode(secret.data["gateway.yaml"]))
    return loaded


def _policy(name: str, models: list[str], subjects: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "AccessPolicy",
        "metadata": {"name": name},
        "spec": {"subjects": subjects, "models": models},
    }


def test_a_data_connector_reaches_the_gateway_configuration(
    operator: OperatorProcess, cluster: Cluster, namespace: str
) -> None:
    create(cluster, namespace, model("chat", replicas=1))
    connector = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "DataConnector",
        "metadata": {"name": "crm"},
        "spec": {
            "type": "crm",
            "direction": "inbound",
            "endpoint": "https://crm.example.com",
            "models": ["chat"],
            "dataClasses": ["customer"],
        },
    }
    cluster.custom.create_namespaced_custom_object(
        GROUP, VERSION, namespace, "dataconnectors", connector
    )
    config = wait_until(
        lambda: (c := _gateway_config(cluster, namespace)) and c.get("connectors") and c,
        timeout=60,
        what="the connector in the gateway configuration",
    )
    assert config["connectors"] == [
        {
            "name": "crm",
            "serviceAccount": "privatellm-connector-crm",
            "models": ["chat"],
            "dataClasses": ["customer"],
        }
    ]
    # A change to the connector reaches the configuration as a policy change does.
    cluster.custom.patch_namespaced_custom_object(
        GROUP, VERSION, namespace, "dataconnectors", "crm", {"spec": {"dataClasses": ["pii"]}}
    )
    wait_until(
        lambda: (
            ((_gateway_config(cluster, namespace) or {}).get("connectors") or [{}])[0].get(
                "dataClasses"
            )
            == ["pii"]
        ),
        timeout=60,
        what="the changed connector in the gateway configuration",
    )

    # The operator, with only its own Vault policy, gives the connectors their seal-only
    # role: their sidecars may quarantine.
    def quarantine() -> dict[str, Any]:
        found = cluster.custom.get_namespaced_custom_object(
            GROUP, VERSION, namespace, "dataconnectors", "crm"
        )
        conditions = (found.get("status") or {}).get("conditions") or []
        return next((c for c in conditions if c["type"] == "Quarantine"), {})

    sealed = wait_until(lambda: quarantine().get("reason") == "Sealed" and quarantine(), timeout=60)
    assert sealed["status"] == "True", sealed


def test_the_namespace_gets_a_gateway_configured_from_its_policies(
    operator: OperatorProcess, cluster: Cluster, namespace: str
) -> None:
    digest = hashlib.sha256(b"pllm-team-key").hexdigest()
    cluster.core.create_namespaced_secret(
        namespace,
        client.V1Secret(
            metadata=client.V1ObjectMeta(name="team-key"), string_data={"sha256": digest}
        ),
    )
    create(cluster, namespace, model("chat", replicas=3))
    key_subject = {"kind": "APIKey", "name": "team", "secretName": "team-key"}
    policies = cluster.custom
    policies.create_namespaced_custom_object(
        GROUP, VERSION, namespace, "accesspolicies", _policy("team", ["chat"], [key_subject])
    )
    policies.create_namespaced_custom_object(
        GROUP,
        VERSION,
        namespace,
        "accesspolicies",
        _policy("typo", ["chta"], [{"kind": "User", "name": "alice@example.com"}]),
    )

    config = wait_until(
        lambda: (c := _gateway_config(cluster, namespace)) and len(c["policies"]) == 2 and c,
        timeout=60,
        what="the gateway configuration with both policies",
    )
    [route] = config["models"]
    assert route["name"] == "chat"
    assert route["endpoints"] == [f"https://chat.{namespace}.svc:8000"]
    assert config["auth"]["apiKeys"] == {digest: "team"}
    # The operator has a Vault, so the gateway seals payloads, logging in with its own role.
    assert config["encryption"]["role"] == f"privatellm-gateway-{namespace}"
    assert route["transitKey"] == f"privatellm-{namespace}"

    def pods_running() -> list[client.V1Pod] | None:
        pods = cluster.core.list_namespaced_pod(
            namespace, label_selector="app.kubernetes.io/component=gateway"
        ).items
        running = [p for p in pods if p.status.phase == "Running"]
        return running if len(running) == 2 else None

    assert wait_until(
        lambda: may_review_tokens(cluster, namespace, "privatellm-gateway"), what="TokenReview"
    )
    pods = wait_until(pods_running, timeout=90, what="two running gateway Pods")
    assert len(zones_of(cluster, pods)) == 2, "the gateway's replicas share a zone"
    deployment = cluster.apps.read_namespaced_stateful_set("privatellm-gateway", namespace)
    container = deployment.spec.template.spec.containers[0]
    assert container.security_context.allow_privilege_escalation is False

    def policy_status(name: str) -> dict[str, Any]:
        obj = policies.get_namespaced_custom_object(
            GROUP, VERSION, namespace, "accesspolicies", name
        )
        return dict(obj.get("status") or {})

    good = wait_until(
        lambda: (s := policy_status("team")).get("conditions") and s, timeout=30, what="status"
    )
    assert good["resolvedModels"] == ["chat"]
    assert condition({"status": good}, "Ready")["status"] == "True"
    bad = wait_until(
        lambda: (s := policy_status("typo")).get("conditions") and s, timeout=30, what="status"
    )
    ready = condition({"status": bad}, "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "InvalidReference")
    assert "spec.models[0]" in ready["message"] and "'chta'" in ready["message"]
    warnings = wait_until(
        lambda: [
            e
            for e in cluster.core.list_namespaced_event(
                namespace, field_selector="involvedObject.name=typo"
            ).items
            if e.reason == "InvalidReference"
        ],
        timeout=30,
        what="a Warning Event on the policy",
    )
    assert warnings[0].type == "Warning"

    # A policy change reaches the configuration without a new gateway rollout.
    generation = deployment.metadata.generation
    policies.patch_namespaced_custom_object(
        GROUP, VERSION, namespace, "accesspolicies", "typo", {"spec": {"models": ["chat"]}}
    )
    wait_until(
        lambda: all(
            p["spec"]["models"] == ["chat"]
            for p in (_gateway_config(cluster, namespace) or {}).get(
                "policies", [{"spec": {"models": []}}]
            )
        ),
        timeout=60,
        what="the corrected policy in the gateway configuration",
    )
    fixed = wait_until(
        lambda: condition({"status": policy_status("typo")}, "Ready").get("status") == "True",
        timeout=30,
        what="the corrected policy Ready",
    )
    assert fixed
    deployment = cluster.apps.read_namespaced_stateful_set("privatellm-gateway", namespace)
    assert deployment.metadata.generation == generation

    # Each policy version the operator saw is on its audit record, once.
    def policy_records() -> list[tuple[str, str, int]] | None:
        try:
            found = query_log(
                operator.log.parent / "audit", OPERATOR_AUDIT_SIGNER.public_key, AuditQuery()
            ).records
        except AuditIntegrityError:  # a batch being written as it is read
            return None
        mine = [
            (r["action"], r["target"], r["details"]["generation"])
            for r in found
            if r.get("namespace") == namespace
        ]
        return mine if len(mine) >= 3 else None

    # Auditors find the key that verifies the operator's log next to the operator.
    published = cluster.core.read_namespaced_config_map(
        "privatellm-operator-audit-public-key", OPERATOR_NAMESPACE
    )
    assert published.data["audit.pem.pub"] == OPERATOR_AUDIT_SIGNER.public_pem().decode()
    assert wait_until(policy_records, timeout=30, what="the policy changes on record") == [
        ("policy.change", "AccessPolicy/team", 1),
        ("policy.change", "AccessPolicy/typo", 1),
        ("policy.change", "AccessPolicy/typo", 2),
    ]


def _loosen_secret_names(crd: dict[str, Any]) -> dict[str, Any]:
    """The AccessPolicy CRD as it was before Secret names were checked."""
    version = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    spec = version["properties"]["spec"]["properties"]
    del spec["outbound"]["properties"]["protectedEntitiesSecret"]["pattern"]
    return crd


def test_a_policy_stored_before_names_were_checked_is_left_out_and_degraded(
    operator: OperatorProcess, cluster: Cluster, namespace: str
) -> None:
    crd_file = ROOT / "crds" / f"{GROUP}_accesspolicies.yaml"
    crd = yaml.safe_load(crd_file.read_text())
    sneaky = _policy("sneaky", ["chat"], [{"kind": "APIKey", "name": "k", "secretName": "k"}])
    sneaky["spec"]["outbound"] = {"protectedEntitiesSecret": "../../kube-system/secrets/x"}
    create(cluster, namespace, model("chat", replicas=1))
    cluster.kubectl(
        "apply",
        "--server-side",
        "--force-conflicts",
        "-f",
        "-",
        stdin=yaml.safe_dump(_loosen_secret_names(crd)),
    )
    try:
        wait_until(lambda: _try_create_policy(cluster, namespace, sneaky), what="the looser schema")
    finally:
        cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(crd_file))
    honest = _policy("honest", ["chat"], [{"kind": "APIKey", "name": "h", "secretName": "h"}])
    cluster.custom.create_namespaced_custom_object(
        GROUP, VERSION, namespace, "accesspolicies", honest
    )

    def degraded() -> dict[str, Any]:
        obj = cluster.custom.get_namespaced_custom_object(
            GROUP, VERSION, namespace, "accesspolicies", "sneaky"
        )
        return (
            condition(obj, "Degraded") if condition(obj, "Degraded").get("status") == "True" else {}
        )

    found = wait_until(degraded, timeout=60, what="the stored policy Degraded")
    assert found["reason"] == "InvalidSpec"
    assert "protectedEntitiesSecret" in found["message"]
    config = wait_until(
        lambda: (c := _gateway_config(cluster, namespace)) and c.get("policies") and c,
        timeout=60,
        what="the gateway configured from the valid policy",
    )
    assert [p["name"] for p in config["policies"]] == ["honest"]


def _try_create_policy(cluster: Cluster, namespace: str, body: dict[str, Any]) -> bool:
    try:
        cluster.custom.create_namespaced_custom_object(
            GROUP, VERSION, namespace, "accesspolicies", body
        )
    except client.ApiException:
        return False  # the looser schema is not in force yet
    return True


CLEAN_START_MODELS = 10


def test_a_clean_start_of_many_models_rolls_each_out_once(
    operator: OperatorProcess, cluster: Cluster, namespace: str
) -> None:
    cpu_only = {"accelerator": "cpu", "gpusPerReplica": 0, "cpu": "1", "memory": "1Gi"}
    names = [f"m{i}" for i in range(CLEAN_START_MODELS)]
    for name in names:
        create(cluster, namespace, model(name, replicas=3, resources=cpu_only))
    for name in names:
        wait_until(lambda n=name: settled(cluster, namespace, n, 3), timeout=180, what=name)
    # A Pod template change makes a new ReplicaSet: one each means each rolled out once.
    replica_sets = Counter(
        ref.name
        for rs in cluster.apps.list_namespaced_replica_set(namespace).items
        for ref in rs.metadata.owner_references or []
    )
    deployments = cluster.apps.list_namespaced_deployment(
        namespace, label_selector=OWNER_LABEL
    ).items
    assert {d.metadata.name: replica_sets[d.metadata.name] for d in deployments} == {
        d.metadata.name: 1 for d in deployments
    }
    assert len(deployments) == 3 * CLEAN_START_MODELS
