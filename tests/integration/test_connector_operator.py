"""The DataConnector controller on a real control plane, as the chart's ServiceAccount.

The reconcile is called the way a worker calls it, with the chart's identity and RBAC,
so that a permission the controller lacks fails here. KWOK runs the Pods; they serve
nothing, so the sidecars' metrics come from an injected reader.
"""

from __future__ import annotations

import base64
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client, config

from privatellm.api import GROUP, VERSION
from privatellm.controllers.connector import reconcile
from privatellm.controllers.events import ReportedError
from privatellm.devcluster import Toolchain
from privatellm.keys.transit import VaultError
from privatellm.kube.client import KINDS, Kube

from .admission import refusing_deployments
from .conftest import ROOT, Cluster, VaultServer, wait_until
from .operator_process import (
    USERNAME,
    OperatorProcess,
    running_operator,
    service_account_kubeconfig,
    writes_by,
)
from .test_inference_operator import model

PLURAL = "dataconnectors"
NAME = "crm"
CHILD = f"privatellm-connector-{NAME}"
IMAGE = "registry.example/privatellm:test"
CA_PEM = "-----BEGIN CERTIFICATE-----\nMIIBtest\n-----END CERTIFICATE-----\n"
METRICS = """\
# TYPE privatellm_connector_items_total counter
privatellm_connector_items_total{outcome="passed"} 12
privatellm_connector_items_total{outcome="blocked"} 3
privatellm_connector_items_total{outcome="quarantined"} 2
# TYPE privatellm_connector_last_error_timestamp_seconds gauge
privatellm_connector_last_error_timestamp_seconds{reason="GatewayUnavailable"} 1900000000
"""
POLICY_MESSAGE = "connector Deployments are refused in this namespace"
HASH_KEY = "k" * 32
AUDIT_PEM = "-----BEGIN PRIVATE KEY-----\nMC4test\n-----END PRIVATE KEY-----\n"
# Where the operator finds the project image (controllers/gateway.py).
IMAGE_ENV = "PRIVATELLM_GATEWAY_IMAGE"


@pytest.fixture(scope="module")
def kube(crds: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Kube:
    """The API as the chart's ServiceAccount: only the chart's ClusterRole applies."""
    path = service_account_kubeconfig(crds, tmp_path_factory.mktemp("sa") / "kubeconfig")
    return Kube(config.new_client_from_config(str(path)))


def connector(name: str = NAME, **spec: Any) -> dict[str, Any]:
    base = {
        "type": "objectStore",
        "direction": "inbound",
        "endpoint": "https://s3.example.com/crm-exports",
        "models": ["chat"],
        "dataClasses": ["customer"],
        "credentialsSecret": "crm-login",
        "filters": {"allowedFileTypes": ["text/plain"], "dlpAction": "redact"},
        "egress": [{"cidr": "10.20.0.0/16", "ports": [443]}],
    }
    merged = {key: value for key, value in {**base, **spec}.items() if value is not None}
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "DataConnector",
        "metadata": {"name": name},
        "spec": merged,
    }


def read(cluster: Cluster, namespace: str, name: str = NAME) -> dict[str, Any]:
    obj: dict[str, Any] = cluster.custom.get_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, name
    )
    return obj


def condition(obj: dict[str, Any], type_: str) -> dict[str, Any]:
    conditions = (obj.get("status") or {}).get("conditions") or []
    return next((c for c in conditions if c["type"] == type_), {})


def sidecar_metrics(pod_ip: str) -> str:
    return METRICS


def unreachable(pod_ip: str) -> str:
    raise TimeoutError("timed out")


def step(kube: Kube, namespace: str, name: str = NAME, reader: Any = sidecar_metrics) -> None:
    """One reconcile, as a worker runs it on an event or a resync."""
    reconcile(kube, namespace, name, read_metrics=reader, image=IMAGE)


def ready(cluster: Cluster, kube: Kube, namespace: str, name: str = NAME) -> dict[str, Any]:
    """The connector once a reconcile finds it Ready, else {}."""
    step(kube, namespace, name)
    obj = read(cluster, namespace, name)
    return obj if condition(obj, "Ready").get("status") == "True" else {}


def secret(cluster: Cluster, namespace: str, name: str, **data: str) -> None:
    cluster.core.create_namespaced_secret(
        namespace, client.V1Secret(metadata=client.V1ObjectMeta(name=name), string_data=data)
    )


def terms(cluster: Cluster, namespace: str) -> dict[str, Any]:
    found = cluster.core.read_namespaced_secret(CHILD, namespace)
    loaded: dict[str, Any] = json.loads(base64.b64decode(found.data["terms.json"]))
    return loaded


def config_hash(cluster: Cluster, namespace: str) -> str:
    deployment = cluster.apps.read_namespaced_deployment(CHILD, namespace)
    return str(deployment.spec.template.metadata.annotations["privatellm.io/config-hash"])


@pytest.fixture
def stack(crds: Cluster, namespace: str) -> str:
    """A restricted namespace with a model, a policy protecting names and terms, the
    connector's credentials and the namespace CA: everything a connector refers to."""
    crds.core.patch_namespace(
        namespace, {"metadata": {"labels": {"pod-security.kubernetes.io/enforce": "restricted"}}}
    )
    crds.custom.create_namespaced_custom_object(
        GROUP, VERSION, namespace, "inferencedeployments", model("chat", replicas=1)
    )
    secret(crds, namespace, "customers", entities="Globex\nAcme Corp\n")
    secret(crds, namespace, "crm-login", token="s3cr3t")
    secret(crds, namespace, "privatellm-ca", **{"ca.crt": CA_PEM, "ca.key": "unused"})
    # As the gateway's controller keeps them (render/gateway.py).
    gateway_keys = {"hash.key": HASH_KEY, "audit.pem": AUDIT_PEM, "gateway.yaml": "{}"}
    secret(crds, namespace, "privatellm-gateway-config", **gateway_keys)
    policy = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "AccessPolicy",
        "metadata": {"name": "team"},
        "spec": {
            "subjects": [
                {"kind": "ServiceAccount", "name": CHILD, "namespace": namespace},
            ],
            "models": ["chat"],
            "outbound": {"protectedEntitiesSecret": "customers", "internalTerms": ["PL-7"]},
        },
    }
    crds.custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "accesspolicies", policy)
    return namespace


def test_a_connector_runs_ready_on_the_cluster_and_kubectl_wait_sees_it(
    crds: Cluster, kube: Kube, stack: str
) -> None:
    namespace = stack
    crds.custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, connector())
    step(kube, namespace)

    account = crds.core.read_namespaced_service_account(CHILD, namespace)
    assert account.automount_service_account_token is False
    assert account.metadata.owner_references[0].kind == "DataConnector"

    config_map = crds.core.read_namespaced_config_map(CHILD, namespace)
    document = json.loads(config_map.data["connector.json"])
    assert document["name"] == NAME and document["namespace"] == namespace
    assert document["models"] == ["chat"] and document["dataClasses"] == ["customer"]
    assert document["filters"]["allowedFileTypes"] == ["text/plain"]
    assert document["filters"]["dlpAction"] == "redact"
    assert document["gateway"] == f"https://privatellm-gateway.{namespace}.svc"
    assert document["sidecar"] == "http://127.0.0.1:8480"
    assert document["stateDir"] == "/var/lib/privatellm/connector"
    assert document["hashKeyFile"] == "/etc/privatellm/sidecar/hash.key"
    assert config_map.data["ca.crt"] == CA_PEM
    assert terms(crds, namespace) == {
        "protectedEntities": ["Acme Corp", "Globex"],
        "internalTerms": ["PL-7"],
    }
    sidecar_secret = crds.core.read_namespaced_secret(CHILD, namespace).data
    assert base64.b64decode(sidecar_secret["hash.key"]).decode() == HASH_KEY
    assert base64.b64decode(sidecar_secret["audit.pem"]).decode() == AUDIT_PEM

    deployment = crds.apps.read_namespaced_deployment(CHILD, namespace)
    pod = deployment.spec.template.spec
    assert pod.service_account_name == CHILD
    assert pod.automount_service_account_token is False
    assert pod.security_context.run_as_non_root is True
    assert pod.security_context.seccomp_profile.type == "RuntimeDefault"
    containers = {c.name: c for c in pod.containers}
    assert set(containers) == {"connector", "sidecar"}
    assert containers["connector"].args == [
        "connector",
        "run",
        "--config",
        "/etc/privatellm/connector/connector.json",
    ]
    assert containers["sidecar"].args[0] == "sidecar"
    for each in containers.values():
        assert each.image == IMAGE
        assert each.security_context.allow_privilege_escalation is False
        assert each.security_context.read_only_root_filesystem is True
        assert each.security_context.capabilities.drop == ["ALL"]
    connector_mounts = {m.name for m in containers["connector"].volume_mounts}
    sidecar_mounts = {m.name for m in containers["sidecar"].volume_mounts}
    assert "credentials" in connector_mounts and "credentials" not in sidecar_mounts
    assert "token" in sidecar_mounts and "token" not in connector_mounts
    volumes = {v.name: v for v in pod.volumes}
    assert volumes["credentials"].secret.secret_name == "crm-login"
    assert volumes["state"].empty_dir.size_limit == "2Gi"

    # KWOK runs the Pod; the reconcile the Deployment's status change brings finds it ready.
    obj = wait_until(lambda: ready(crds, kube, namespace), timeout=120, what="Ready")
    status = obj["status"]
    assert status["observedGeneration"] == obj["metadata"]["generation"]
    assert condition(obj, "Degraded")["status"] == "False"
    assert condition(obj, "Progressing")["reason"] == "Complete"
    assert condition(obj, "CountersCurrent")["status"] == "True"
    assert condition(obj, "Quarantine")["reason"] == "NotSealed"
    assert (status["itemsPassed"], status["itemsBlocked"], status["itemsQuarantined"]) == (12, 3, 2)
    assert status["lastError"]["reason"] == "GatewayUnavailable"
    assert status["lastError"]["time"] == "2030-03-17T17:46:40Z"
    crds.kubectl(
        "wait", "--for=condition=Ready", f"dataconnector/{NAME}", "-n", namespace, "--timeout=10s"
    )
    printed = crds.kubectl("get", "dataconnector", NAME, "-n", namespace)
    assert printed.split("\n")[0].split() == [
        "NAME",
        "READY",
        "TYPE",
        "DIRECTION",
        "PASSED",
        "BLOCKED",
        "QUARANTINED",
        "AGE",
    ]
    rejected = [
        e for e in crds.core.list_namespaced_event(namespace).items if e.reason == "FailedCreate"
    ]
    assert rejected == [], "the Pod is admitted under restricted Pod security"

    # Nothing changed: a reconcile writes nothing.
    if crds.audit_log is not None:
        before = len(writes_by(crds.audit_log, USERNAME))
        step(kube, namespace)
        assert writes_by(crds.audit_log, USERNAME)[before:] == []

    # A sidecar that cannot be read leaves the counts as they were, and says so.
    step(kube, namespace, reader=unreachable)
    obj = read(crds, namespace)
    assert obj["status"]["itemsPassed"] == 12
    counters = condition(obj, "CountersCurrent")
    assert counters["status"] == "False"
    assert counters["message"].endswith(": timed out; the counts are as last read")
    assert condition(obj, "Ready")["status"] == "True"


def test_children_come_back_and_a_policy_change_reaches_the_sidecar(
    crds: Cluster, kube: Kube, stack: str
) -> None:
    namespace = stack
    crds.custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, connector())
    step(kube, namespace)
    first_hash = config_hash(crds, namespace)

    crds.core.delete_namespaced_config_map(CHILD, namespace)
    crds.apps.delete_namespaced_deployment(CHILD, namespace)
    wait_until(lambda: not crds.apps.list_namespaced_deployment(namespace).items, what="deleted")
    step(kube, namespace)
    assert crds.core.read_namespaced_config_map(CHILD, namespace).data["connector.json"]
    assert config_hash(crds, namespace) == first_hash

    crds.custom.patch_namespaced_custom_object(
        GROUP,
        VERSION,
        namespace,
        "accesspolicies",
        "team",
        {"spec": {"outbound": {"internalTerms": ["PL-7", "PL-9"]}}},
    )
    step(kube, namespace)
    assert terms(crds, namespace)["internalTerms"] == ["PL-7", "PL-9"]
    assert config_hash(crds, namespace) != first_hash, "the sidecar restarts with the new terms"


def test_a_webhook_connector_is_reachable_through_its_service_until_its_type_changes(
    crds: Cluster, kube: Kube, stack: str
) -> None:
    namespace = stack
    body = connector("hook", type="webhook", credentialsSecret=None)
    crds.custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)
    step(kube, namespace, "hook")
    service = crds.core.read_namespaced_service("privatellm-connector-hook", namespace)
    assert [(p.name, p.port) for p in service.spec.ports] == [("webhook", 8080)]
    crds.custom.patch_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, "hook", {"spec": {"type": "documentStore"}}
    )
    step(kube, namespace, "hook")
    assert not crds.core.list_namespaced_service(namespace).items


def test_what_the_operator_cannot_confine_or_find_keeps_the_connector_not_ready(
    crds: Cluster, kube: Kube, stack: str
) -> None:
    namespace = stack
    body = connector(
        direction="outbound",
        models=["chat", "missing"],
        egress=[{"host": "crm.example.com", "ports": [443]}],
    )
    crds.custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)

    def held_back() -> dict[str, Any]:
        step(kube, namespace)
        obj = read(crds, namespace)
        return obj if condition(obj, "Ready").get("reason") == "InvalidReference" else {}

    # Once its Pod is ready, what is left undone is what keeps it from Ready.
    obj = wait_until(held_back, timeout=120, what="the Pod ready, the connector not Ready")
    assert condition(obj, "Ready")["status"] == "False"
    assert condition(obj, "Degraded")["status"] == "True"
    message = condition(obj, "Degraded")["message"]
    assert "spec.models[1]: InferenceDeployment 'missing' not found" in message
    assert "spec.egress[0].host: a NetworkPolicy cannot name a host" in message
    policy = client.NetworkingV1Api(crds.api).read_namespaced_network_policy(CHILD, namespace)
    assert policy.spec.policy_types == ["Ingress", "Egress"]


@pytest.fixture
def refusing_policy(crds: Cluster, stack: str) -> Iterator[str]:
    """An admission policy that refuses the connector's Deployment in the test's namespace:
    the operator learns of it only from the answer to its apply."""
    namespace = stack
    name = f"privatellm-test-refuse-connectors-{namespace}"
    allowed = (
        "!has(object.metadata.labels)"
        " || !('app.kubernetes.io/component' in object.metadata.labels)"
        " || object.metadata.labels['app.kubernetes.io/component'] != 'connector'"
    )
    with refusing_deployments(
        crds,
        namespace,
        name,
        allowed,
        POLICY_MESSAGE,
        lambda: _dry_run_connector_deployment(crds, namespace),
    ):
        yield name


def _dry_run_connector_deployment(cluster: Cluster, namespace: str) -> str:
    labels = {"app": "probe", "app.kubernetes.io/component": "connector"}
    probe = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "probe", "namespace": namespace, "labels": labels},
        "spec": {
            "selector": {"matchLabels": {"app": "probe"}},
            "template": {
                "metadata": {"labels": {"app": "probe"}},
                "spec": {"containers": [{"name": "c", "image": "probe"}]},
            },
        },
    }
    return cluster.kubectl(
        "create", "--dry-run=server", "-f", "-", stdin=yaml.safe_dump(probe), check=False
    )


def test_a_refused_child_is_degraded_with_the_api_servers_message(
    crds: Cluster, kube: Kube, stack: str, refusing_policy: str
) -> None:
    namespace = stack
    crds.custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, connector())
    with pytest.raises(ReportedError, match=POLICY_MESSAGE):
        step(kube, namespace)
    obj = read(crds, namespace)
    degraded = condition(obj, "Degraded")
    assert (degraded["status"], degraded["reason"]) == ("True", "ApplyFailed")
    assert degraded["message"].startswith(f'Deployment/{CHILD}: deployments.apps "{CHILD}"')
    assert POLICY_MESSAGE in degraded["message"]
    assert (condition(obj, "Ready")["status"], condition(obj, "Ready")["reason"]) == (
        "False",
        "ApplyFailed",
    )
    assert obj["status"]["observedGeneration"] == obj["metadata"]["generation"]
    # The other children were applied all the same.
    assert crds.core.read_namespaced_config_map(CHILD, namespace).data["connector.json"]
    events = crds.core.list_namespaced_event(
        namespace, field_selector=f"involvedObject.name={NAME},involvedObject.kind=DataConnector"
    ).items
    warnings = [(e.type, e.reason) for e in events if e.reason == "ApplyFailed"]
    assert warnings == [("Warning", "ApplyFailed"), ("Warning", "ApplyFailed")]
    with pytest.raises(ReportedError):
        step(kube, namespace)  # the same refusal again records nothing new
    again = crds.core.list_namespaced_event(
        namespace, field_selector=f"involvedObject.name={NAME},involvedObject.kind=DataConnector"
    ).items
    assert len(again) == len(events)

    for kind in ("validatingadmissionpolicybinding", "validatingadmissionpolicy"):
        crds.kubectl("delete", kind, refusing_policy, "--ignore-not-found")

    def recovered() -> dict[str, Any]:
        try:
            found = ready(crds, kube, namespace)
        except ReportedError:
            return {}  # the policy is still in force for a moment
        return found if condition(found, "Degraded").get("status") == "False" else {}

    wait_until(recovered, timeout=120, what="Ready and no longer Degraded once allowed")


def _chart_operator_env(*values: str) -> dict[str, str]:
    args = ["template", "privatellm", str(ROOT / "charts/privatellm"), "--kube-version=1.36.0"]
    rendered = subprocess.run(
        [Toolchain.locate().binary("helm"), *args, *(f"--set={v}" for v in values)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    deployment = next(d for d in yaml.safe_load_all(rendered) if d and d["kind"] == "Deployment")
    env = deployment["spec"]["template"]["spec"]["containers"][0]["env"]
    return {e["name"]: e.get("value") for e in env}


def test_the_chart_runs_gateways_and_connectors_from_its_own_image() -> None:
    env = _chart_operator_env()
    assert env[IMAGE_ENV] == "ghcr.io/privatellm/privatellm:0.1.0"
    mirrored = _chart_operator_env("image.repository=mirror.example/pllm", "image.tag=1.2.3")
    assert mirrored[IMAGE_ENV] == "mirror.example/pllm:1.2.3"


@pytest.fixture
def operator(crds: Cluster, tmp_path: Path) -> Iterator[OperatorProcess]:
    """The operator process as the chart runs it, without Vault."""
    yield from running_operator(crds, tmp_path, {IMAGE_ENV: IMAGE})


def test_the_operator_makes_a_connector_ready_for_kubectl_wait(
    operator: OperatorProcess, crds: Cluster, stack: str
) -> None:
    namespace = stack
    crds.custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, connector())
    # The watch on the connector's Deployment brings the reconcile that finds it ready.
    crds.kubectl(
        "wait",
        "--for=condition=Ready",
        f"dataconnector/{NAME}",
        "-n",
        namespace,
        "--timeout=120s",
    )
    obj = read(crds, namespace)
    assert obj["status"]["observedGeneration"] == obj["metadata"]["generation"]
    # KWOK's Pods serve nothing: the counts say they could not be read.
    assert condition(obj, "CountersCurrent")["status"] == "False"
    deployment = crds.apps.read_namespaced_deployment(CHILD, namespace)
    assert {c.image for c in deployment.spec.template.spec.containers} == {IMAGE}

    crds.apps.delete_namespaced_deployment(CHILD, namespace)
    wait_until(
        lambda: _recreated(crds, namespace, deployment.metadata.uid),
        timeout=30,
        what="the deleted Deployment re-created",
    )


def _recreated(cluster: Cluster, namespace: str, uid: str) -> bool:
    try:
        found = cluster.apps.read_namespaced_deployment(CHILD, namespace)
    except client.ApiException:
        return False
    return bool(found.metadata.uid != uid)


def test_with_vault_the_sidecars_seal_under_a_role_of_their_own(
    crds: Cluster, kube: Kube, stack: str, vault: VaultServer
) -> None:
    namespace = stack
    crds.custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, connector())
    reconcile(kube, namespace, NAME, read_metrics=sidecar_metrics, image=IMAGE, vault=vault.client)
    quarantine = condition(read(crds, namespace), "Quarantine")
    assert (quarantine["status"], quarantine["reason"]) == ("True", "Sealed")
    config_map = crds.core.read_namespaced_config_map(CHILD, namespace)
    encryption = json.loads(config_map.data["connector.json"])["encryption"]
    assert encryption["vaultAddr"] == vault.addr
    assert encryption["role"] == f"privatellm-connector-{namespace}"
    policy = vault.client.request("GET", f"sys/policies/acl/privatellm-connector-{namespace}")
    assert f"transit/datakey/plaintext/privatellm-{namespace}" in policy["data"]["policy"]
    assert "decrypt" not in policy["data"]["policy"]

    # Deleted, the last connector takes the namespace's connector policy with it.
    crds.custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, NAME)
    wait_until(lambda: not kube.list(KINDS["DataConnector"], namespace), what="the deletion")
    reconcile(kube, namespace, NAME, vault=vault.client)
    with pytest.raises(VaultError) as gone:
        vault.client.request("GET", f"sys/policies/acl/privatellm-connector-{namespace}")
    assert gone.value.status == 404
