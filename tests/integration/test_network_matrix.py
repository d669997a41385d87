"""Who may connect to whom in a managed namespace: the NetworkPolicies the API server stored,
judged by cyclonus over the Pods the stored workloads would run.

The test control plane enforces no NetworkPolicy (KWOK runs the Pods, there is no CNI), so
nothing here opens a connection. The allowed-connection matrix is computed instead: the
operator's reconciles write a namespace's stack (an InferenceDeployment with a weight
cache and autoscaling, an AccessPolicy, an outbound DataConnector, the gateway), the
NetworkPolicies are read back from the API server as it stored them (defaults filled in,
not the renderers' output), and cyclonus (tests/support/cyclonus.py) judges each
connection of the matrix against them. The stack's ends carry the labels of the Pod
templates the API server stored: the gateway StatefulSet's (two replicas), each zone's
vLLM Deployment's, each zone's pre-staging Job's and the connector Deployment's. The
other ends (clients, the ingress controller, Prometheus, the operator, DNS, Vault, the
WORM bucket, the weight store, the CRM, the internet) are made up, each at an address
of its own. One end is made up inside the stack too: a Pod with only the stack's
managed-by label, which no component's policy selects. Every real workload has a policy
of its own, so default-deny changes nothing for them; that Pod shows what it is for.

The gateway's rule to the API server (kubernetes.default.svc) is not in the matrix: the
local control plane advertises 127.0.0.1, so that Service has no endpoints there, the
gateway's policy gets no rule for it, and the reconcile says so (EgressNotExpressible).

With PRIVATELLM_TEST_KUBECONFIG the suite runs against that cluster just the same, since
it needs only an API server; it still computes the matrix there and sends no packet. The
harness has nothing that probes connections through an enforcing CNI: that the CNI does
what the NetworkPolicy API says is left to the CNI.

With PRIVATELLM_WRITE_NETWORK_MATRIX naming a file, the computed matrix is written there
as a Markdown table (for docs/network.md).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import pytest
from kubernetes import client

from privatellm.api import GROUP, VERSION
from privatellm.controllers import connector as connector_controller
from privatellm.controllers import inference as inference_controller
from privatellm.controllers.gateway import GatewaySettings, reconcile_gateway
from privatellm.controllers.network import NetworkSettings
from privatellm.devcluster import Toolchain
from privatellm.devcluster.cluster import CYCLONUS_BINARY
from privatellm.kube.client import KINDS, Kube
from privatellm.render.gateway import GATEWAY_NAME, AuditShipping
from privatellm.render.network import DEFAULT_DENY_NAME
from tests.support.cyclonus import Connection, External, Pod, judge

from .conftest import Cluster, recycle_released_volumes, wait_until

WRITE_MATRIX_ENV = "PRIVATELLM_WRITE_NETWORK_MATRIX"

MODEL = "chat"
CONNECTOR = "crm"
ZONES = ("zone-a", "zone-b")
OPERATOR_NAMESPACE = "privatellm-system"
MONITORING_NAMESPACE = "monitoring"
INGRESS_NAMESPACE = "ingress"
CLIENT_NAMESPACE = "apps"
VAULT_ADDR = "https://10.9.0.10:8200"
WORM_ENDPOINT = "http://10.9.0.20:9000"
WEIGHT_STORE = "http://10.9.0.30:9000"
CRM_CIDR = "10.2.0.0/16"

# The NetworkPolicies the reconciles store in the namespace, one per component.
POLICIES = (
    DEFAULT_DENY_NAME,
    GATEWAY_NAME,
    f"{MODEL}-ingress",
    f"{MODEL}-prestage",
    f"privatellm-connector-{CONNECTOR}",
)

ALLOWED, DENIED = "allowed", "denied"


class Row(NamedTuple):
    """A connection of the matrix: from every Pod of `source` to every Pod of `destination`."""

    source: str
    destination: str
    port: int
    protocol: str = "TCP"

    def __str__(self) -> str:
        return f"{self.source} -> {self.destination}:{self.port}/{self.protocol}"


# The ends of the matrix, in the order the Markdown table lists them, with what each is.
PARTIES = {
    "client@apps": f"a client Pod in `{CLIENT_NAMESPACE}`, an AccessPolicy's sourceNamespaces",
    "client@ns": "an unlabelled Pod of another app in the model's namespace",
    "ingress": f"the ingress controller's Pod in `{INGRESS_NAMESPACE}` (client namespace)",
    "elsewhere": "a Pod in `elsewhere`, a namespace nothing names",
    "operator": f"the operator's Pod in `{OPERATOR_NAMESPACE}`",
    "prometheus": f"Prometheus in `{MONITORING_NAMESPACE}`",
    "gateway": "the gateway's Pods (both replicas of the StatefulSet)",
    "vllm": "the model's vLLM Pods (every zone's Deployment)",
    "prestage": "the model's pre-staging Pods (every zone's Job; weight cache on)",
    "connector": "the DataConnector's Pod (objectStore, outbound)",
    "unselected": "a Pod with only the stack's managed-by label, which no component's"
    " policy selects: what default-deny is there for",
    "kube-dns": "cluster DNS in `kube-system`",
    "dns@elsewhere": "a DNS-like Pod in `elsewhere`",
    "vault": f"Vault outside the cluster ({VAULT_ADDR})",
    "worm": f"the WORM bucket's S3 endpoint ({WORM_ENDPOINT})",
    "weight-store": f"the weights' S3 endpoint ({WEIGHT_STORE})",
    "crm": f"the CRM, in the connector's egress CIDR {CRM_CIDR} (10.2.0.5)",
    "internet": "an address on the internet (93.184.216.34)",
}

# fmt: off
INTENDED_ROWS: list[tuple[str, str, int, str, str]] = [
    # source          destination       port  protocol  verdict
    # The gateway is the door: the namespaces the policies and the platform name, its own.
    ("client@apps",   "gateway",        8443, "TCP",    ALLOWED),
    ("client@ns",     "gateway",        8443, "TCP",    ALLOWED),
    ("ingress",       "gateway",        8443, "TCP",    ALLOWED),
    ("connector",     "gateway",        8443, "TCP",    ALLOWED),
    ("elsewhere",     "gateway",        8443, "TCP",    DENIED),
    ("internet",      "gateway",        8443, "TCP",    DENIED),
    ("prometheus",    "gateway",        8443, "TCP",    DENIED),
    ("vllm",          "gateway",        8443, "TCP",    DENIED),
    ("prestage",      "gateway",        8443, "TCP",    DENIED),
    # Metrics: Prometheus and the operator.
    ("prometheus",    "gateway",        9090, "TCP",    ALLOWED),
    ("operator",      "gateway",        9090, "TCP",    ALLOWED),
    ("elsewhere",     "gateway",        9090, "TCP",    DENIED),
    # Peer port: the other replicas and the operator.
    ("gateway",       "gateway",        8444, "TCP",    ALLOWED),
    ("operator",      "gateway",        8444, "TCP",    ALLOWED),
    ("elsewhere",     "gateway",        8444, "TCP",    DENIED),
    ("client@apps",   "gateway",        8444, "TCP",    DENIED),
    ("connector",     "gateway",        8444, "TCP",    DENIED),
    # vLLM: the gateway, and the operator since the model is autoscaled.
    ("gateway",       "vllm",           8000, "TCP",    ALLOWED),
    ("operator",      "vllm",           8000, "TCP",    ALLOWED),
    ("client@apps",   "vllm",           8000, "TCP",    DENIED),
    ("client@ns",     "vllm",           8000, "TCP",    DENIED),
    ("connector",     "vllm",           8000, "TCP",    DENIED),
    ("prometheus",    "vllm",           8000, "TCP",    DENIED),
    # The connector's sidecar metrics: the operator and Prometheus read its counts.
    ("operator",      "connector",      9090, "TCP",    ALLOWED),
    ("prometheus",    "connector",      9090, "TCP",    ALLOWED),
    ("elsewhere",     "connector",      9090, "TCP",    DENIED),
    ("client@apps",   "connector",      9090, "TCP",    DENIED),
    ("internet",      "connector",      9090, "TCP",    DENIED),
    # DNS: cluster DNS only, for every Pod of the stack.
    ("gateway",       "kube-dns",       53,   "UDP",    ALLOWED),
    ("gateway",       "kube-dns",       53,   "TCP",    ALLOWED),
    ("vllm",          "kube-dns",       53,   "UDP",    ALLOWED),
    ("vllm",          "kube-dns",       53,   "TCP",    ALLOWED),
    ("prestage",      "kube-dns",       53,   "UDP",    ALLOWED),
    ("prestage",      "kube-dns",       53,   "TCP",    ALLOWED),
    ("connector",     "kube-dns",       53,   "UDP",    ALLOWED),
    ("connector",     "kube-dns",       53,   "TCP",    ALLOWED),
    ("gateway",       "dns@elsewhere",  53,   "UDP",    DENIED),
    ("gateway",       "dns@elsewhere",  53,   "TCP",    DENIED),
    ("vllm",          "dns@elsewhere",  53,   "UDP",    DENIED),
    ("vllm",          "dns@elsewhere",  53,   "TCP",    DENIED),
    ("prestage",      "dns@elsewhere",  53,   "UDP",    DENIED),
    ("prestage",      "dns@elsewhere",  53,   "TCP",    DENIED),
    ("connector",     "dns@elsewhere",  53,   "UDP",    DENIED),
    ("connector",     "dns@elsewhere",  53,   "TCP",    DENIED),
    # Out of the cluster: what each configured, nothing else.
    ("gateway",       "vault",          8200, "TCP",    ALLOWED),
    ("gateway",       "worm",           9000, "TCP",    ALLOWED),
    ("gateway",       "weight-store",   9000, "TCP",    DENIED),
    ("gateway",       "internet",       443,  "TCP",    DENIED),
    ("prestage",      "weight-store",   9000, "TCP",    ALLOWED),
    ("prestage",      "vault",          8200, "TCP",    DENIED),
    ("prestage",      "internet",       443,  "TCP",    DENIED),
    ("vllm",          "weight-store",   9000, "TCP",    DENIED),  # the cache: prestage fetches
    ("vllm",          "vault",          8200, "TCP",    DENIED),
    ("vllm",          "internet",       443,  "TCP",    DENIED),
    ("connector",     "crm",            443,  "TCP",    ALLOWED),
    ("connector",     "crm",            80,   "TCP",    DENIED),
    ("connector",     "worm",           9000, "TCP",    DENIED),
    ("connector",     "internet",       443,  "TCP",    DENIED),
    # A stack Pod no component's policy selects: default-deny shuts it in and out.
    ("client@ns",     "unselected",     8000, "TCP",    DENIED),
    ("unselected",    "kube-dns",       53,   "UDP",    DENIED),
    ("unselected",    "internet",       443,  "TCP",    DENIED),
]
# fmt: on
INTENDED = {Row(*row[:4]): row[4] for row in INTENDED_ROWS}


@dataclass(frozen=True)
class Party:
    """One end of the matrix: the Pods (or address) it stands for, and the names of the
    container ports of its Pods by (port, protocol), which policies may name."""

    ends: tuple[Pod | External, ...]
    port_names: Mapping[tuple[int, str], str] = field(default_factory=dict)


@dataclass(frozen=True)
class Stack:
    """What the API server stored for the namespace: its NetworkPolicies by name, the Pod
    templates of its workloads by "Kind/name", and the matrix's ends."""

    namespace: str
    policies: Mapping[str, dict[str, Any]]
    templates: Mapping[str, dict[str, Any]]
    parties: Mapping[str, Party]


# Ends outside the model's namespace: made up, each at an address of its own.
OPERATOR_LABELS = {
    "app.kubernetes.io/component": "operator",
    "app.kubernetes.io/part-of": "privatellm",
}
OUTSIDE: dict[str, Pod | External] = {
    "client@apps": Pod(CLIENT_NAMESPACE, {"app": "web"}, "10.244.2.10"),
    "ingress": Pod(INGRESS_NAMESPACE, {"app.kubernetes.io/name": "ingress-nginx"}, "10.244.3.10"),
    "elsewhere": Pod("elsewhere", {"app": "web"}, "10.244.4.10"),
    "dns@elsewhere": Pod("elsewhere", {"k8s-app": "kube-dns"}, "10.244.4.53"),
    "operator": Pod(OPERATOR_NAMESPACE, OPERATOR_LABELS, "10.244.5.10"),
    "prometheus": Pod(
        MONITORING_NAMESPACE, {"app.kubernetes.io/name": "prometheus"}, "10.244.6.10"
    ),
    "kube-dns": Pod("kube-system", {"k8s-app": "kube-dns"}, "10.244.7.53"),
    "vault": External("10.9.0.10"),
    "worm": External("10.9.0.20"),
    "weight-store": External("10.9.0.30"),
    "crm": External("10.2.0.5"),
    "internet": External("93.184.216.34"),
}


def inference_deployment() -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "InferenceDeployment",
        "metadata": {"name": MODEL},
        "spec": {
            "model": {
                "name": MODEL,
                "source": {
                    "uri": f"s3://models/{MODEL}",
                    "s3Endpoint": WEIGHT_STORE,
                    "sizeGiB": 16,
                },
            },
            "weightCache": {"enabled": True},
            "resources": {"gpusPerReplica": 1, "gpuProduct": "NVIDIA-H100-80GB-HBM3"},
            "zones": list(ZONES),
            "autoscaling": {"minReplicas": 1, "maxReplicas": 4, "targetInFlightPerReplica": 8},
        },
    }


def access_policy() -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "AccessPolicy",
        "metadata": {"name": "app-users"},
        "spec": {
            "subjects": [{"kind": "Group", "name": "app-users"}],
            "models": [MODEL],
            "sourceNamespaces": [CLIENT_NAMESPACE],
        },
    }


def data_connector() -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "DataConnector",
        "metadata": {"name": CONNECTOR},
        "spec": {
            "type": "objectStore",
            "direction": "outbound",
            "endpoint": "https://10.2.0.5/exports",
            "models": [MODEL],
            "dataClasses": ["internal"],
            "egress": [{"cidr": CRM_CIDR, "ports": [443]}],
        },
    }


def no_metrics(pod_ip: str) -> str:
    raise OSError("the test reads no sidecar")


def create(cluster: Cluster, namespace: str, plural: str, body: dict[str, Any]) -> None:
    cluster.custom.create_namespaced_custom_object(GROUP, VERSION, namespace, plural, body)


def port_names(template: Mapping[str, Any]) -> dict[tuple[int, str], str]:
    containers = (template.get("spec") or {}).get("containers") or []
    return {
        (port["containerPort"], port.get("protocol", "TCP")): port["name"]
        for container in containers
        for port in container.get("ports") or []
        if port.get("name")
    }


def stack_party(
    namespace: str,
    namespace_labels: Mapping[str, str],
    templates: Sequence[Mapping[str, Any]],
    ips: Iterable[str],
) -> Party:
    """Pods with the labels of stored templates, one per address."""
    ends = tuple(
        Pod(namespace, dict(t["metadata"].get("labels") or {}), ip, namespace_labels)
        for t, ip in zip(templates, ips, strict=True)
    )
    names: dict[tuple[int, str], str] = {}
    for template in templates:
        names.update(port_names(template))
    return Party(ends, names)


def read_stack(kube: Kube, namespace: str) -> Stack:
    """The namespace's NetworkPolicies and workloads as the API server stored them."""
    policies = {p["metadata"]["name"]: p for p in kube.list(KINDS["NetworkPolicy"], namespace)}
    templates = {
        f"{kind}/{w['metadata']['name']}": w["spec"]["template"]
        for kind in ("StatefulSet", "Deployment", "Job")
        for w in kube.list(KINDS[kind], namespace)
    }
    stored_namespace = kube.get(KINDS["Namespace"], None, namespace)
    assert stored_namespace is not None
    ns_labels = dict(stored_namespace["metadata"].get("labels") or {})

    def of(*keys: str) -> list[dict[str, Any]]:
        return [templates[key] for key in keys]

    gateway = of(f"StatefulSet/{GATEWAY_NAME}")[0]
    parties: dict[str, Party] = {name: Party((end,)) for name, end in OUTSIDE.items()}
    parties["client@ns"] = Party((Pod(namespace, {}, "10.244.1.5", ns_labels),))
    # Both replicas, so that one replica calling the other is a connection between two Pods.
    parties["gateway"] = stack_party(
        namespace, ns_labels, [gateway, gateway], ["10.244.1.10", "10.244.1.11"]
    )
    parties["vllm"] = stack_party(
        namespace,
        ns_labels,
        of(*(f"Deployment/{MODEL}-{zone}" for zone in ZONES)),
        (f"10.244.1.{20 + n}" for n in range(len(ZONES))),
    )
    parties["prestage"] = stack_party(
        namespace,
        ns_labels,
        of(*(f"Job/{MODEL}-prestage-{zone}" for zone in ZONES)),
        (f"10.244.1.{30 + n}" for n in range(len(ZONES))),
    )
    parties["connector"] = stack_party(
        namespace, ns_labels, of(f"Deployment/privatellm-connector-{CONNECTOR}"), ["10.244.1.40"]
    )
    # Not from a stored template: a Pod of the stack that no component's policy selects,
    # such as a workload added later or a template whose labels drifted from its policy.
    managed_only = {"app.kubernetes.io/managed-by": "privatellm-operator"}
    parties["unselected"] = Party((Pod(namespace, managed_only, "10.244.1.50", ns_labels),))
    assert set(parties) == set(PARTIES)
    return Stack(namespace, policies, templates, parties)


@pytest.fixture(scope="module")
def cyclonus() -> Path:
    return Path(Toolchain.locate().required(CYCLONUS_BINARY))


@pytest.fixture(scope="module")
def stack(crds: Cluster) -> Iterator[Stack]:
    """A namespace with a model, a policy and a connector, reconciled as the operator would."""
    recycle_released_volumes(crds)
    namespace = f"t-{uuid.uuid4().hex[:8]}"
    crds.core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=namespace)))
    try:
        wait_until(
            lambda: crds.core.list_namespaced_service_account(namespace).items,
            what=f"default ServiceAccount in {namespace}",
        )
        create(crds, namespace, "inferencedeployments", inference_deployment())
        create(crds, namespace, "accesspolicies", access_policy())
        create(crds, namespace, "dataconnectors", data_connector())
        kube = Kube(crds.api)
        network = NetworkSettings(
            monitoring_namespace=MONITORING_NAMESPACE, client_namespaces=(INGRESS_NAMESPACE,)
        )
        inference_controller.reconcile(
            kube, None, [], namespace, MODEL, operator_namespace=OPERATOR_NAMESPACE
        )
        reconcile_gateway(
            kube,
            namespace,
            vault_addr=VAULT_ADDR,
            settings=GatewaySettings(
                audit_shipping=AuditShipping("audit-bucket", endpoint=WORM_ENDPOINT)
            ),
            operator_namespace=OPERATOR_NAMESPACE,
            network_settings=network,
        )
        # No Vault for the connector: its sidecar would need one that can give it a role.
        connector_controller.reconcile(
            kube,
            namespace,
            CONNECTOR,
            read_metrics=no_metrics,
            operator_namespace=OPERATOR_NAMESPACE,
            network_settings=network,
        )
        yield read_stack(kube, namespace)
    finally:
        crds.core.delete_namespace(namespace)


def compute(
    stack: Stack, policies: Iterable[Mapping[str, Any]], rows: Iterable[Row], binary: Path
) -> dict[Row, str]:
    """Each row's verdict: allowed or denied when every connection it stands for (each Pod
    of the source to each other Pod of the destination) agrees, else which are which."""
    asked: list[tuple[Row, Connection]] = []
    for row in rows:
        source, destination = stack.parties[row.source], stack.parties[row.destination]
        name = destination.port_names.get((row.port, row.protocol))
        asked += [
            (row, Connection(a, b, row.port, row.protocol, name))
            for a in source.ends
            for b in destination.ends
            if a.ip != b.ip
        ]
    verdicts = judge(list(policies), [c for _, c in asked], binary)
    seen: dict[Row, list[tuple[Connection, bool]]] = {}
    for (row, connection), verdict in zip(asked, verdicts, strict=True):
        seen.setdefault(row, []).append((connection, verdict))
    matrix = {}
    for row, found in seen.items():
        kinds = {verdict for _, verdict in found}
        if len(kinds) == 1:
            matrix[row] = ALLOWED if kinds.pop() else DENIED
        else:
            each = ", ".join(
                f"{c.source.ip}->{c.destination.ip} {ALLOWED if v else DENIED}" for c, v in found
            )
            matrix[row] = f"mixed ({each})"
    return matrix


def differences(
    expected: Mapping[Row, str], found: Mapping[Row, str], labels: tuple[str, str]
) -> list[str]:
    """The rows whose verdicts differ, one line each, the verdicts named by `labels`."""
    return [
        f"  {row!s:45} {labels[0]}: {expected[row]}, {labels[1]}: {found.get(row, 'not judged')}"
        for row in expected
        if found.get(row) != expected[row]
    ]


def matrix_markdown(matrix: Mapping[Row, str]) -> str:
    """The matrix as a Markdown table: a row per source, a column per destination and port
    (TCP unless it says), cells allowed or denied; blank where the matrix has no verdict."""
    order = {name: index for index, name in enumerate(PARTIES)}

    def column(row: Row) -> str:
        suffix = "" if row.protocol == "TCP" else f"/{row.protocol}"
        return f"{row.destination}:{row.port}{suffix}"

    columns = sorted(
        {(order[r.destination], r.port, r.protocol, column(r)) for r in matrix},
    )
    sources = sorted({r.source for r in matrix}, key=order.__getitem__)
    cells = {(r.source, column(r)): verdict for r, verdict in matrix.items()}
    names = [c[3] for c in columns]
    lines = [
        "| from \\ to | " + " | ".join(names) + " |",
        "|---|" + "---|" * len(names),
    ]
    for source in sources:
        row = [cells.get((source, name), "") for name in names]
        lines.append(f"| {source} | " + " | ".join(row) + " |")
    note = "Ports are TCP unless marked; a blank cell is a connection the matrix does not check."
    legend = [f"- **{name}**: {what}" for name, what in PARTIES.items()]
    return "\n".join([*lines, "", note, "", *legend]) + "\n"


def selects(selector: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    """Whether a label selector (matchLabels and matchExpressions) selects these labels."""
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for expression in selector.get("matchExpressions") or []:
        key, operator = expression["key"], expression["operator"]
        values = expression.get("values") or []
        if operator == "In" and labels.get(key) not in values:
            return False
        if operator == "NotIn" and key in labels and labels[key] in values:
            return False
        if operator == "Exists" and key not in labels:
            return False
        if operator == "DoesNotExist" and key in labels:
            return False
    return True


def test_the_namespace_holds_one_policy_per_component(stack: Stack) -> None:
    assert sorted(stack.policies) == sorted(POLICIES)


def test_the_stored_policies_allow_exactly_the_intended_matrix(
    stack: Stack, cyclonus: Path
) -> None:
    matrix = compute(stack, stack.policies.values(), INTENDED, cyclonus)
    if target := os.environ.get(WRITE_MATRIX_ENV):
        Path(target).write_text(matrix_markdown(matrix))
    wrong = differences(INTENDED, matrix, ("intended", "cyclonus"))
    assert not wrong, "the stored NetworkPolicies disagree with the intended matrix:\n" + "\n".join(
        wrong
    )


@pytest.mark.parametrize("removed", POLICIES)
def test_removing_any_one_policy_changes_the_matrix(
    stack: Stack, cyclonus: Path, removed: str
) -> None:
    assert removed in stack.policies, f"{removed} is not stored in {stack.namespace}"
    whole = compute(stack, stack.policies.values(), INTENDED, cyclonus)
    rest = [p for name, p in stack.policies.items() if name != removed]
    without = compute(stack, rest, INTENDED, cyclonus)
    changed = differences(whole, without, ("with it", "without"))
    assert changed, f"without the NetworkPolicy {removed} the matrix is the same: it does nothing"


def test_default_deny_selects_every_stack_workload_and_no_one_elses_pods(stack: Stack) -> None:
    deny = stack.policies[DEFAULT_DENY_NAME]
    spec = deny["spec"]
    assert deny["metadata"]["namespace"] == stack.namespace
    assert sorted(spec["policyTypes"]) == ["Egress", "Ingress"]
    assert not spec.get("ingress") and not spec.get("egress"), "default-deny opens nothing"
    workloads = sorted(stack.templates)
    assert workloads == sorted(
        [
            f"StatefulSet/{GATEWAY_NAME}",
            *(f"Deployment/{MODEL}-{zone}" for zone in ZONES),
            *(f"Job/{MODEL}-prestage-{zone}" for zone in ZONES),
            f"Deployment/privatellm-connector-{CONNECTOR}",
        ]
    ), "every workload of the namespace is the stack's"
    unselected = [
        workload
        for workload, template in stack.templates.items()
        if not selects(spec["podSelector"], template["metadata"].get("labels") or {})
    ]
    assert unselected == [], "default-deny misses these Pod templates"
    # Labels alone: not even were they in the namespace (the operator, say) would they be.
    others = ("operator", "client@ns", "client@apps", "ingress", "prometheus", "kube-dns")
    for name in others:
        (end,) = stack.parties[name].ends
        assert isinstance(end, Pod)
        assert not selects(spec["podSelector"], end.labels), f"default-deny selects {name}"
