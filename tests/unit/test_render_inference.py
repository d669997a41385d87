"""What an InferenceDeployment renders to: golden files for the examples, plus behaviour.

Every example in examples/inference-deployments.yaml renders to golden/inference-<name>.yaml,
compared byte for byte. After an intended change to the renderers, regenerate them with

    UPDATE_GOLDEN=1 .venv/bin/pytest tests/unit/test_render_inference.py

and review the diff like code.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from privatellm.api import InferenceDeployment
from privatellm.api.base import DNS_LABEL, MAX_DNS_LABEL
from privatellm.api.inference import MAX_INFERENCE_DEPLOYMENT_NAME, MAX_NAME_AND_ZONE
from privatellm.render.engine import ALLOWED_EXTRA_FLAGS, check_extra_args, vllm_args
from privatellm.render.inference import (
    InvalidSpecError,
    baseline_replicas,
    render_children,
    render_zone_deployment,
    spec_errors,
    zone_replica_plan,
)
from privatellm.render.meta import GPU_PRODUCT_LABEL, GPU_RESOURCE, ZONE_LABEL, owner_reference
from privatellm.render.weights import (
    estimated_restore_seconds,
    render_prestage_job,
    render_weight_cache_pvc,
    weight_cache_size,
)
from privatellm.render.workload import (
    selector_labels,
)

ROOT = Path(__file__).resolve().parents[2]
GOLDEN_DIR = Path(__file__).parent / "golden"
EXAMPLES = ROOT / "examples/inference-deployments.yaml"
NAMESPACE = "team-support"
ZONES = ["zone-a", "zone-b", "zone-c"]

Manifest = dict[str, Any]


def example_documents() -> dict[str, dict[str, Any]]:
    """The examples as a user writes them, plus what the API server adds (uid, namespace)."""
    documents = {}
    for i, doc in enumerate(yaml.safe_load_all(EXAMPLES.read_text())):
        doc["metadata"]["namespace"] = NAMESPACE
        doc["metadata"]["uid"] = f"00000000-0000-4000-8000-{i + 1:012d}"
        documents[doc["metadata"]["name"]] = doc
    return documents


DOCUMENTS = example_documents()


def merged(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merged(out[key], value)
        else:
            out[key] = value
    return out


def example(name: str, **spec_changes: Any) -> InferenceDeployment:
    """An example InferenceDeployment, with `spec_changes` merged into its spec (camelCase)."""
    doc = DOCUMENTS[name]
    return InferenceDeployment.model_validate({**doc, "spec": merged(doc["spec"], spec_changes)})


def render(obj: InferenceDeployment) -> list[Manifest]:
    return render_children(obj, zone_replica_plan(baseline_replicas(obj.spec), obj.spec.zones))


def of_kind(children: list[Manifest], kind: str) -> list[Manifest]:
    return [child for child in children if child["kind"] == kind]


def pod_specs(children: list[Manifest]) -> Iterator[tuple[str, Manifest]]:
    for child in children:
        if child["kind"] in ("Deployment", "Job"):
            yield child["metadata"]["name"], child["spec"]["template"]["spec"]


def server_container(deployment: Manifest) -> Manifest:
    container: Manifest = deployment["spec"]["template"]["spec"]["containers"][0]
    return container


def node_requirements(pod_spec: Manifest) -> dict[str, list[str]]:
    terms = pod_spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    [term] = terms["nodeSelectorTerms"]
    return {e["key"]: e["values"] for e in term["matchExpressions"]}


class _GoldenDumper(yaml.SafeDumper):
    """Block style for multi-line strings, so that scripts in golden files read as scripts."""


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_GoldenDumper.add_representer(str, _represent_str)


def to_yaml(children: list[Manifest]) -> str:
    return yaml.dump_all(children, Dumper=_GoldenDumper, sort_keys=False, width=100)


# --- golden files ----------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(DOCUMENTS))
def test_example_renders_as_its_golden_file(name: str, golden: Callable[[str, str], None]) -> None:
    golden(f"inference-{name}.yaml", to_yaml(render(example(name))))


def test_every_golden_file_belongs_to_an_example() -> None:
    on_disk = {p.name for p in GOLDEN_DIR.glob("inference-*.yaml")}
    assert on_disk == {f"inference-{name}.yaml" for name in DOCUMENTS}


def test_rendering_is_deterministic() -> None:
    for name in DOCUMENTS:
        first, second = render(example(name)), render(example(name))
        assert first == second
        assert to_yaml(first) == to_yaml(second)


@pytest.mark.parametrize("obj", [example(name) for name in DOCUMENTS], ids=list(DOCUMENTS))
def test_children_share_no_mutable_objects(obj: InferenceDeployment) -> None:
    seen: dict[int, str] = {}

    def walk(node: Any, path: str) -> None:
        if isinstance(node, dict | list):
            assert id(node) not in seen, f"{path} is the same object as {seen[id(node)]}"
            seen[id(node)] = path
            items = node.items() if isinstance(node, dict) else enumerate(node)
            for key, value in items:
                walk(value, f"{path}.{key}")

    walk(render(obj), obj.metadata.name)


def serving_policy(children: list[Manifest]) -> Manifest:
    """The NetworkPolicy of the serving Pods (the other one is the pre-staging Pods')."""
    [policy] = [
        p for p in of_kind(children, "NetworkPolicy") if p["metadata"]["name"].endswith("-ingress")
    ]
    return policy


def test_the_order_creates_what_pods_need_first() -> None:
    kinds = [child["kind"] for child in render(example("llama-70b"))]
    assert kinds == [
        "ServiceAccount",
        *["NetworkPolicy"] * 2,
        "Service",
        "PodDisruptionBudget",
        *["PersistentVolumeClaim"] * 3,
        *["Job"] * 3,
        *["Deployment"] * 3,
    ]


# --- zone replica plan -----------------------------------------------------------------


def test_replicas_spread_evenly_over_zones() -> None:
    assert zone_replica_plan(6, ZONES) == {"zone-a": 2, "zone-b": 2, "zone-c": 2}


def test_the_remainder_goes_to_the_first_zones() -> None:
    assert zone_replica_plan(5, ZONES) == {"zone-a": 2, "zone-b": 2, "zone-c": 1}
    assert zone_replica_plan(1, ZONES) == {"zone-a": 1, "zone-b": 0, "zone-c": 0}
    assert zone_replica_plan(0, ZONES) == {"zone-a": 0, "zone-b": 0, "zone-c": 0}


def test_a_lost_zone_moves_its_replicas_to_the_healthy_zones() -> None:
    assert zone_replica_plan(6, ZONES, healthy={"zone-a", "zone-c"}) == {
        "zone-a": 3,
        "zone-b": 0,
        "zone-c": 3,
    }
    assert zone_replica_plan(3, ZONES, healthy=["zone-c"]) == {
        "zone-a": 0,
        "zone-b": 0,
        "zone-c": 3,
    }


def test_without_a_healthy_zone_the_spread_stays_over_all_zones() -> None:
    assert zone_replica_plan(4, ZONES, healthy=set()) == {"zone-a": 2, "zone-b": 1, "zone-c": 1}
    assert zone_replica_plan(4, ZONES, healthy={"zone-x"}) == zone_replica_plan(4, ZONES)


@pytest.mark.parametrize("total", [0, 1, 2, 7, 100])
@pytest.mark.parametrize("healthy", [None, {"zone-b"}, {"zone-a", "zone-c"}, set()])
def test_the_plan_keeps_the_total_and_the_spec_order(total: int, healthy: set[str] | None) -> None:
    plan = zone_replica_plan(total, ZONES, healthy)
    assert list(plan) == ZONES
    assert sum(plan.values()) == total
    counts = [plan[z] for z in ZONES if healthy is None or not healthy or z in healthy]
    assert max(counts) - min(counts) <= 1


def test_baseline_replicas_come_from_autoscaling_when_it_is_set() -> None:
    assert baseline_replicas(example("llama-70b").spec) == 3
    assert baseline_replicas(example("llama-8b").spec) == 3
    assert baseline_replicas(example("claims-classifier").spec) == 0
    assert baseline_replicas(example("llama-8b", replicas=5).spec) == 5


def test_each_zone_deployment_gets_its_planned_replicas() -> None:
    obj = example("llama-8b")
    plan = {"zone-a": 2, "zone-c": 4}
    deployments = of_kind(render_children(obj, plan), "Deployment")
    replicas = {d["metadata"]["name"]: d["spec"]["replicas"] for d in deployments}
    assert replicas == {"llama-8b-zone-a": 2, "llama-8b-zone-b": 0, "llama-8b-zone-c": 4}


# --- placement -------------------------------------------------------------------------


def test_each_zone_deployment_is_pinned_to_its_zone_and_mounts_its_cache() -> None:
    for deployment in of_kind(render(example("llama-70b")), "Deployment"):
        zone = deployment["metadata"]["labels"]["privatellm.io/zone"]
        pod = deployment["spec"]["template"]["spec"]
        assert deployment["metadata"]["name"] == f"llama-70b-{zone}"
        assert node_requirements(pod)[ZONE_LABEL] == [zone]
        [weights] = [v for v in pod["volumes"] if v["name"] == "weights"]
        assert weights["persistentVolumeClaim"]["claimName"] == f"llama-70b-weights-{zone}"
        [spread] = pod["topologySpreadConstraints"]
        assert spread["topologyKey"] == "kubernetes.io/hostname"
        assert spread["whenUnsatisfiable"] == "ScheduleAnyway"
        assert (
            spread["labelSelector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
        )


def test_prestage_jobs_run_in_their_zone_and_fill_its_cache() -> None:
    for job in of_kind(render(example("llama-70b")), "Job"):
        zone = job["metadata"]["labels"]["privatellm.io/zone"]
        pod = job["spec"]["template"]["spec"]
        assert node_requirements(pod) == {ZONE_LABEL: [zone]}
        [weights] = [v for v in pod["volumes"] if v["name"] == "weights"]
        assert weights["persistentVolumeClaim"]["claimName"] == f"llama-70b-weights-{zone}"
        assert "ttlSecondsAfterFinished" not in job["spec"]
        assert ".privatellm-ready" in pod["containers"][0]["command"][-1]


def test_service_pdb_and_network_policy_select_every_zone_but_no_prestage_pod() -> None:
    obj = example("llama-70b")
    children = render(obj)
    selector = selector_labels(obj)
    [service] = of_kind(children, "Service")
    [pdb] = of_kind(children, "PodDisruptionBudget")
    policy = serving_policy(children)
    assert service["spec"]["selector"] == selector
    assert pdb["spec"]["selector"]["matchLabels"] == selector
    assert pdb["spec"]["maxUnavailable"] == 1
    assert policy["spec"]["podSelector"]["matchLabels"] == selector
    for kind, selected in (("Deployment", True), ("Job", False)):
        for child in of_kind(children, kind):
            pod_labels = child["spec"]["template"]["metadata"]["labels"]
            assert (selector.items() <= pod_labels.items()) is selected, child["metadata"]["name"]


def test_only_the_gateway_reaches_the_serving_port_and_the_server_reaches_only_dns() -> None:
    policy = serving_policy(render(example("llama-8b")))
    assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"]
    [dns] = policy["spec"]["egress"]
    assert {p["port"] for p in dns["ports"]} == {53}
    [rule] = policy["spec"]["ingress"]
    assert rule["ports"] == [{"protocol": "TCP", "port": 8000}]
    assert rule["from"] == [
        {
            "podSelector": {
                "matchLabels": {
                    "app.kubernetes.io/component": "gateway",
                    "app.kubernetes.io/part-of": "privatellm",
                }
            }
        }
    ]


def test_the_operator_reaches_the_serving_port_of_the_models_it_scales_only() -> None:
    def ingress(name: str, operator_namespace: str | None) -> list[Manifest]:
        obj = example(name)
        plan = zone_replica_plan(baseline_replicas(obj.spec), obj.spec.zones)
        children = render_children(obj, plan, operator_namespace=operator_namespace)
        policy = serving_policy(children)
        rules: list[Manifest] = policy["spec"]["ingress"]
        return rules

    [rule] = ingress("llama-70b", "privatellm-system")
    assert rule["ports"] == [{"protocol": "TCP", "port": 8000}]
    gateway, operator = rule["from"]
    assert gateway["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "gateway"
    assert operator == {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "privatellm-system"}},
        "podSelector": {
            "matchLabels": {
                "app.kubernetes.io/component": "operator",
                "app.kubernetes.io/part-of": "privatellm",
            }
        },
    }
    # llama-8b has no spec.autoscaling: nothing of the operator reads it.
    assert ingress("llama-8b", "privatellm-system") == ingress("llama-8b", None)
    assert ingress("llama-70b", None) == ingress("llama-8b", None)


# --- GPUs and capacity -----------------------------------------------------------------


@pytest.mark.parametrize("name", ["llama-70b", "llama-8b", "claims-classifier"])
def test_gpu_requests_equal_the_tensor_parallel_size(name: str) -> None:
    obj = example(name)
    tensor_parallel = str(obj.spec.engine.tensor_parallel_size)
    for deployment in of_kind(render(obj), "Deployment"):
        container = server_container(deployment)
        assert container["resources"]["requests"][GPU_RESOURCE] == tensor_parallel
        assert container["resources"]["limits"][GPU_RESOURCE] == tensor_parallel
        args = container["args"]
        assert args[args.index("--tensor-parallel-size") + 1] == tensor_parallel
        tolerations = deployment["spec"]["template"]["spec"]["tolerations"]
        assert {"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"} in tolerations


def test_gpu_product_and_priority_class_constrain_the_pods() -> None:
    obj = example("llama-70b", priorityClassName="llm-interactive")
    for deployment in of_kind(render(obj), "Deployment"):
        pod = deployment["spec"]["template"]["spec"]
        assert node_requirements(pod)[GPU_PRODUCT_LABEL] == ["NVIDIA-H100-80GB-HBM3"]
        assert pod["priorityClassName"] == "llm-interactive"
        requests = server_container(deployment)["resources"]["requests"]
        assert (requests["cpu"], requests["memory"]) == ("16", "128Gi")


def test_a_cpu_only_model_gets_no_gpu() -> None:
    obj = example("llama-8b", resources={"accelerator": "cpu", "gpusPerReplica": 0, "cpu": "8"})
    for deployment in of_kind(render(obj), "Deployment"):
        pod = deployment["spec"]["template"]["spec"]
        resources = server_container(deployment)["resources"]
        assert resources == {"requests": {"cpu": "8", "memory": "32Gi"}}
        assert not [t for t in pod["tolerations"] if t["key"] == "nvidia.com/gpu"]
        assert GPU_PRODUCT_LABEL not in node_requirements(pod)


def test_pods_leave_a_lost_node_in_time_to_be_back_within_the_failover_bound() -> None:
    obj = example("llama-70b", health={"failoverSeconds": 300})  # restore estimate: 72 s
    pod = of_kind(render(obj), "Deployment")[0]["spec"]["template"]["spec"]
    lost = {t["key"]: t for t in pod["tolerations"] if t["effect"] == "NoExecute"}
    assert set(lost) == {"node.kubernetes.io/not-ready", "node.kubernetes.io/unreachable"}
    assert {t["tolerationSeconds"] for t in lost.values()} == {300 - 72}
    tight = example("llama-70b", health={"failoverSeconds": 30})
    pod = of_kind(render(tight), "Deployment")[0]["spec"]["template"]["spec"]
    assert {
        t.get("tolerationSeconds") for t in pod["tolerations"] if t["effect"] == "NoExecute"
    } == {0}


def test_spot_capacity_needs_spot_nodes_and_tolerates_their_taint() -> None:
    spot = of_kind(render(example("claims-classifier")), "Deployment")[0]
    pod = spot["spec"]["template"]["spec"]
    assert node_requirements(pod)["privatellm.io/capacity-type"] == ["spot"]
    assert {
        "key": "privatellm.io/capacity-type",
        "operator": "Equal",
        "value": "spot",
        "effect": "NoSchedule",
    } in pod["tolerations"]
    on_demand = of_kind(render(example("llama-8b")), "Deployment")[0]
    assert "privatellm.io/capacity-type" not in node_requirements(
        on_demand["spec"]["template"]["spec"]
    )


# --- security --------------------------------------------------------------------------

_RESTRICTED_VOLUME_SOURCES = {
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
}
_SAFE_SYSCTLS = {
    "kernel.shm_rmid_forced",
    "net.ipv4.ip_local_port_range",
    "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.tcp_syncookies",
    "net.ipv4.ping_group_range",
    "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time",
    "net.ipv4.tcp_fin_timeout",
    "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
}


def restricted_violations(pod: Manifest) -> list[str]:
    """Where a Pod spec breaks the "restricted" Pod Security Standard (baseline included)."""
    problems = [f"{key} is set" for key in ("hostNetwork", "hostPID", "hostIPC") if pod.get(key)]
    pod_context = pod.get("securityContext", {})
    for volume in pod.get("volumes", []):
        sources = set(volume) - {"name"}
        if not sources <= _RESTRICTED_VOLUME_SOURCES:
            problems.append(f"volume {volume['name']} uses {sorted(sources)}")
    for sysctl in pod_context.get("sysctls", []):
        if sysctl["name"] not in _SAFE_SYSCTLS:
            problems.append(f"sysctl {sysctl['name']} is not safe")
    if pod_context.get("runAsUser") == 0:
        problems.append("the Pod runs as user 0")
    containers = [
        *pod.get("initContainers", []),
        *pod.get("containers", []),
        *pod.get("ephemeralContainers", []),
    ]
    for c in containers:
        context = c.get("securityContext", {})
        where = f"container {c['name']}"
        if context.get("privileged"):
            problems.append(f"{where} is privileged")
        if context.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{where} allows privilege escalation")
        capabilities = context.get("capabilities", {})
        if "ALL" not in capabilities.get("drop", []):
            problems.append(f"{where} does not drop ALL capabilities")
        if not set(capabilities.get("add", [])) <= {"NET_BIND_SERVICE"}:
            problems.append(f"{where} adds capabilities")
        if context.get("runAsNonRoot", pod_context.get("runAsNonRoot")) is not True:
            problems.append(f"{where} may run as root")
        if context.get("runAsUser", pod_context.get("runAsUser")) == 0:
            problems.append(f"{where} runs as user 0")
        seccomp = context.get("seccompProfile", pod_context.get("seccompProfile", {}))
        if seccomp.get("type") not in ("RuntimeDefault", "Localhost"):
            problems.append(f"{where} has no RuntimeDefault or Localhost seccomp profile")
        if context.get("procMount", "Default") != "Default":
            problems.append(f"{where} unmasks /proc")
        if any(port.get("hostPort") for port in c.get("ports", [])):
            problems.append(f"{where} uses a host port")
    return problems


def all_variants() -> list[InferenceDeployment]:
    """The examples, plus variants that take the other branches of the pod renderers."""
    return [
        *(example(name) for name in DOCUMENTS),
        example("llama-70b", weightCache={"enabled": False}),
        example("llama-8b", weightCache={"enabled": False}, encryption={"tls": "server"}),
        example("claims-classifier", weightCache={"enabled": False}),
    ]


@pytest.mark.parametrize("obj", all_variants(), ids=lambda o: o.metadata.name)
def test_every_pod_satisfies_the_restricted_profile(obj: InferenceDeployment) -> None:
    for name, pod in pod_specs(render(obj)):
        assert restricted_violations(pod) == [], name
        assert pod["automountServiceAccountToken"] is False, name
        assert pod["securityContext"]["runAsUser"] == 1000, name
        for container in [*pod.get("initContainers", []), *pod["containers"]]:
            assert container["securityContext"]["readOnlyRootFilesystem"] is True, name


def test_the_checker_finds_what_the_profile_forbids() -> None:
    pod = {
        "hostNetwork": True,
        "securityContext": {"runAsUser": 0},
        "volumes": [{"name": "host", "hostPath": {"path": "/"}}],
        "containers": [{"name": "c", "securityContext": {"privileged": True}}],
    }
    assert restricted_violations(pod) == [
        "hostNetwork is set",
        "volume host uses ['hostPath']",
        "the Pod runs as user 0",
        "container c is privileged",
        "container c allows privilege escalation",
        "container c does not drop ALL capabilities",
        "container c may run as root",
        "container c runs as user 0",
        "container c has no RuntimeDefault or Localhost seccomp profile",
    ]


def test_vllm_writes_only_to_empty_dirs_and_stays_offline() -> None:
    deployment = of_kind(render(example("llama-8b")), "Deployment")[0]
    pod = deployment["spec"]["template"]["spec"]
    container = server_container(deployment)
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["HF_HUB_OFFLINE"] == env["TRANSFORMERS_OFFLINE"] == "1"
    empty_dirs = {v["name"]: v["emptyDir"] for v in pod["volumes"] if "emptyDir" in v}
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    writable = {path for path, m in mounts.items() if not m.get("readOnly")}
    assert {mounts[path]["name"] for path in writable} <= set(empty_dirs)
    for variable in ("HOME", "HF_HOME", "VLLM_CACHE_ROOT", "XDG_CACHE_HOME"):
        assert any(env[variable].startswith(path) for path in writable - {"/dev/shm"}), variable
    assert empty_dirs[mounts["/dev/shm"]["name"]]["medium"] == "Memory"
    assert "sizeLimit" in empty_dirs[mounts["/dev/shm"]["name"]]
    assert mounts["/weights"]["readOnly"] is True


def test_every_child_is_owned_by_the_inference_deployment() -> None:
    obj = example("llama-70b")
    expected = {
        "apiVersion": "privatellm.io/v1alpha1",
        "kind": "InferenceDeployment",
        "name": "llama-70b",
        "uid": "00000000-0000-4000-8000-000000000001",
        "controller": True,
        "blockOwnerDeletion": True,
    }
    assert owner_reference(obj) == expected
    for name in DOCUMENTS:
        for child in render(example(name)):
            assert child["metadata"]["ownerReferences"] == [owner_reference(example(name))]
            assert child["metadata"]["namespace"] == NAMESPACE


def test_an_object_without_uid_cannot_own_children() -> None:
    obj = example("llama-8b")
    obj.metadata.uid = None
    with pytest.raises(ValueError, match="uid"):
        owner_reference(obj)


# --- vLLM arguments and probes ---------------------------------------------------------


def test_vllm_args_for_mutual_tls() -> None:
    assert vllm_args(example("llama-70b").spec) == [
        "--model",
        "/weights",
        "--served-model-name",
        "llama-3.1-70b-instruct",
        "--tensor-parallel-size",
        "4",
        "--max-model-len",
        "32768",
        "--gpu-memory-utilization",
        "0.92",
        "--dtype",
        "bfloat16",
        "--port",
        "8000",
        "--ssl-certfile",
        "/etc/privatellm/tls/tls.crt",
        "--ssl-keyfile",
        "/etc/privatellm/tls/tls.key",
        "--ssl-ca-certs",
        "/etc/privatellm/tls/ca.crt",
        "--ssl-cert-reqs",
        "2",
        "--enable-prefix-caching",
    ]


def test_vllm_args_for_server_tls_with_quantization() -> None:
    spec = example(
        "claims-classifier", encryption={"tls": "server"}, engine={"quantization": "awq"}
    ).spec
    args = vllm_args(spec)
    assert "--ssl-ca-certs" not in args
    assert "--ssl-cert-reqs" not in args
    assert "--max-model-len" not in args
    assert args[args.index("--quantization") + 1] == "awq"
    assert args[args.index("--ssl-certfile") + 1] == "/etc/privatellm/tls/tls.crt"


def test_tls_certificates_come_from_the_tls_secret() -> None:
    deployment = of_kind(render(example("llama-8b")), "Deployment")[0]
    pod = deployment["spec"]["template"]["spec"]
    [tls] = [v for v in pod["volumes"] if v["name"] == "tls"]
    assert tls["secret"]["secretName"] == "llama-8b-tls"


def test_startup_probe_allows_the_startup_budget() -> None:
    obj = example("llama-8b", health={"startupBudgetSeconds": 1805})
    container = server_container(of_kind(render(obj), "Deployment")[0])
    startup = container["startupProbe"]
    assert (startup["periodSeconds"], startup["failureThreshold"]) == (10, 181)
    liveness, readiness = container["livenessProbe"], container["readinessProbe"]
    assert liveness["failureThreshold"] > readiness["failureThreshold"]


def test_server_tls_probes_get_health_over_https() -> None:
    obj = example("llama-8b", encryption={"tls": "server"})
    container = server_container(of_kind(render(obj), "Deployment")[0])
    for probe in ("startupProbe", "livenessProbe"):
        assert container[probe]["httpGet"] == {
            "path": "/health",
            "port": "https",
            "scheme": "HTTPS",
        }
    readiness = container["readinessProbe"]["exec"]["command"]
    assert readiness[-2:] == ["", ""], "no client certificate without mutual TLS"


def test_mutual_tls_probes_present_the_pods_certificate() -> None:
    container = server_container(of_kind(render(example("llama-8b")), "Deployment")[0])
    for probe in ("startupProbe", "livenessProbe"):
        command = container[probe]["exec"]["command"]
        assert "/health" in command[-1]
        assert "load_cert_chain" in command[-1]
        compile(command[-1], probe, "exec")
    readiness = container["readinessProbe"]["exec"]["command"]
    assert readiness[-2:] == ["/etc/privatellm/tls/tls.crt", "/etc/privatellm/tls/tls.key"]


def test_readiness_asks_the_model_for_one_token_within_the_bound() -> None:
    obj = example("llama-8b", health={"maxFirstTokenLatencyMs": 2500, "intervalSeconds": 15})
    probe = server_container(of_kind(render(obj), "Deployment")[0])["readinessProbe"]
    python, flag, script, url, model, prompt, bound = probe["exec"]["command"][:7]
    assert (python, flag) == ("python3", "-c")
    compile(script, "readiness", "exec")
    assert (url, model, prompt, bound) == (
        "https://127.0.0.1:8000",
        "llama-3.1-8b-instruct",
        "Reply with OK.",
        "2500",
    )
    assert probe["periodSeconds"] == 15
    assert probe["timeoutSeconds"] == 5


# --- extra arguments -------------------------------------------------------------------


def test_known_extra_args_are_accepted() -> None:
    assert (
        check_extra_args(
            [
                "--enable-prefix-caching",
                "--max-num-seqs",
                "256",
                "--kv-cache-dtype=fp8",
                "--seed",
                "-1",
                "--speculative-config",
                '{"method": "ngram", "num_speculative_tokens": 4}',
                "--enforce-eager",
            ]
        )
        == []
    )


def test_an_unknown_flag_is_refused() -> None:
    [error] = check_extra_args(["--enable-prefix-caching", "--load-format", "dummy"])
    assert error.startswith("spec.engine.extraArgs[1]: --load-format is not a vLLM flag")


def test_a_flag_the_operator_sets_is_refused() -> None:
    [error] = check_extra_args(["--max-model-len", "4096"])
    assert error == (
        "spec.engine.extraArgs[0]: --max-model-len is set by the operator"
        " from spec.engine.maxModelLen"
    )
    [error] = check_extra_args(["--enforce-eager", "--ssl-cert-reqs=0"])
    assert error.startswith("spec.engine.extraArgs[1]: --ssl-cert-reqs is set by the operator")


def test_trust_remote_code_is_refused_for_security() -> None:
    [error] = check_extra_args(["--trust-remote-code"])
    assert error.startswith("spec.engine.extraArgs[0]: --trust-remote-code is not allowed")
    assert "security" in error


def test_a_repeated_flag_is_refused() -> None:
    [error] = check_extra_args(["--max-num-seqs", "8", "--max-num-seqs=16"])
    assert error == "spec.engine.extraArgs[2]: --max-num-seqs is given more than once"


def test_values_must_match_what_the_flag_takes() -> None:
    assert check_extra_args(["--max-num-seqs", "--enforce-eager", "--block-size"]) == [
        "spec.engine.extraArgs[0]: --max-num-seqs needs a value",
        "spec.engine.extraArgs[2]: --block-size needs a value",
    ]
    assert check_extra_args(["--enforce-eager=true", "--enable-lora", "yes", "stray"]) == [
        "spec.engine.extraArgs[0]: --enforce-eager takes no value",
        "spec.engine.extraArgs[2]: 'yes' is neither a --flag nor the value of one",
        "spec.engine.extraArgs[3]: 'stray' is neither a --flag nor the value of one",
    ]


def test_every_allowed_flag_is_accepted_alone() -> None:
    for flag, takes_value in ALLOWED_EXTRA_FLAGS.items():
        assert check_extra_args([flag, "1"] if takes_value else [flag]) == [], flag


def test_invalid_extra_args_render_nothing() -> None:
    obj = example("llama-8b", engine={"extraArgs": ["--trust-remote-code", "--max-num-seqs"]})
    with pytest.raises(InvalidSpecError) as raised:
        render_children(obj, {"zone-a": 1})
    assert [e.split(":")[0] for e in raised.value.errors] == [
        "spec.engine.extraArgs[0]",
        "spec.engine.extraArgs[1]",
    ]
    assert "spec.engine.extraArgs[0]: --trust-remote-code" in str(raised.value)


def test_names_that_cannot_become_child_names_are_reported() -> None:
    obj = example("llama-8b", zones=["zone-a", "Zone_B"])
    assert spec_errors(obj) == [
        "spec.zones[1]: 'Zone_B' is part of child object names, so it may contain only"
        " lowercase letters, digits and '-'"
    ]
    long_zone = example("llama-8b", zones=["z" * (MAX_NAME_AND_ZONE - len("llama-8b") + 1)])
    assert spec_errors(long_zone)[0].startswith("spec.zones[0]: the pre-staging Job name")
    dotted = InferenceDeployment.model_validate(
        {**DOCUMENTS["llama-8b"], "metadata": {"name": "llama-3.1-8b", "uid": "u"}}
    )
    assert spec_errors(dotted)[0].startswith("metadata.name: 'llama-3.1-8b' also names")


def label_values(manifest: Any) -> Iterator[str]:
    """Every label value in `manifest`: its own, its Pod template's and its selectors'."""
    if isinstance(manifest, dict):
        for key, value in manifest.items():
            if key in ("labels", "matchLabels"):
                yield from value.values()
            else:
                yield from label_values(value)
    elif isinstance(manifest, list):
        for item in manifest:
            yield from label_values(item)


@pytest.mark.parametrize(
    ("name", "zone"),
    [
        ("m" * MAX_INFERENCE_DEPLOYMENT_NAME, "a"),
        ("llama-8b", "z" * (MAX_NAME_AND_ZONE - len("llama-8b"))),
    ],
    ids=["longest-name", "longest-zone"],
)
def test_the_longest_names_the_api_server_accepts_give_valid_child_names(
    name: str, zone: str
) -> None:
    """The API server's limits on metadata.name and zones (api/inference.py) are the
    renderers' own: at the limit, every child name is a DNS label and every label value fits."""
    doc = DOCUMENTS["llama-8b"]
    obj = InferenceDeployment.model_validate(
        {
            **doc,
            "metadata": {**doc["metadata"], "name": name},
            "spec": {**doc["spec"], "zones": [zone]},
        }
    )
    assert spec_errors(obj) == []
    children = render(obj)
    names = [child["metadata"]["name"] for child in children]
    assert [n for n in names if len(n) > MAX_DNS_LABEL or not re.fullmatch(DNS_LABEL, n)] == []
    assert max(len(n) for n in names) == MAX_DNS_LABEL, "the limit is no tighter than needed"
    assert [v for v in label_values(children) if len(v) > MAX_DNS_LABEL] == []


def test_an_image_source_needs_a_path() -> None:
    obj = example("claims-classifier", model={"source": {"uri": "image://registry/m:1"}})
    assert spec_errors(obj) == [
        "spec.model.source.uri: an image:// source needs the path of the weights inside the"
        " image, as image://<image>//<path>"
    ]


# --- weight cache ----------------------------------------------------------------------


def test_restore_time_is_size_over_bandwidth_rounded_up() -> None:
    assert estimated_restore_seconds(example("llama-70b").spec) == 72  # 143360 MiB / 2000
    assert estimated_restore_seconds(example("claims-classifier").spec) == 17  # 8192 / 500
    exact = example(
        "llama-8b", model={"source": {"sizeGiB": 1}}, weightCache={"bandwidthMiBps": 1024}
    )
    assert estimated_restore_seconds(exact.spec) == 1


def test_cache_size_defaults_to_one_point_two_times_the_weights() -> None:
    assert weight_cache_size(example("llama-70b").spec) == "168Gi"
    assert weight_cache_size(example("claims-classifier").spec) == "10Gi"  # 9.6
    assert weight_cache_size(example("llama-8b", weightCache={"size": "50Gi"}).spec) == "50Gi"
    with_class = example("llama-70b", weightCache={"storageClassName": "fast-ssd"})
    pvc = render_weight_cache_pvc(with_class, "zone-b")
    assert pvc["metadata"]["name"] == "llama-70b-weights-zone-b"
    assert pvc["spec"] == {
        "accessModes": ["ReadWriteMany"],
        "storageClassName": "fast-ssd",
        "resources": {"requests": {"storage": "168Gi"}},
    }
    assert "storageClassName" not in render_weight_cache_pvc(example("llama-8b"), "zone-a")["spec"]


def copy_container(job: Manifest) -> Manifest:
    container: Manifest = job["spec"]["template"]["spec"]["containers"][0]
    return container


def env_of(container: Manifest) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container["env"]}


def test_a_pvc_source_is_copied_from_the_read_only_claim() -> None:
    job = render_prestage_job(example("llama-8b"), "zone-a")
    container = copy_container(job)
    volumes = {v["name"]: v for v in job["spec"]["template"]["spec"]["volumes"]}
    assert volumes["source"]["persistentVolumeClaim"] == {
        "claimName": "model-weights",
        "readOnly": True,
    }
    assert env_of(container)["SOURCE_DIR"] == "/source/llama-3.1-8b-instruct"
    assert 'cp -R "$SOURCE_DIR/." /cache/' in container["command"][-1]


def test_an_s3_source_is_synced_with_the_stores_endpoint_and_credentials() -> None:
    job = render_prestage_job(example("llama-70b"), "zone-a")
    container = copy_container(job)
    env = env_of(container)
    assert env["SOURCE_URI"] == "s3://models/llama-3.1-70b-instruct"
    assert env["AWS_ENDPOINT_URL"] == "https://minio.storage.svc:9000"
    volumes = {v["name"]: v for v in job["spec"]["template"]["spec"]["volumes"]}
    assert volumes["s3-credentials"]["secret"]["secretName"] == "model-store"
    assert volumes["s3-credentials"]["secret"]["items"] == [
        {"key": "credentials", "path": "credentials"}
    ]
    assert "aws s3 sync" in container["command"][-1]


def test_an_image_source_copies_from_the_image_itself() -> None:
    container = copy_container(render_prestage_job(example("claims-classifier"), "zone-a"))
    assert container["image"] == "registry.internal/models/claims-classifier:2.3"
    assert env_of(container)["SOURCE_DIR"] == "/weights"


def test_the_marker_records_the_pinned_revision() -> None:
    job = render_prestage_job(example("llama-8b", model={"revision": "sha256:abc"}), "zone-a")
    assert env_of(copy_container(job))["WEIGHTS_REVISION"] == "sha256:abc"
    assert job["metadata"]["annotations"] == {"privatellm.io/weights-revision": "sha256:abc"}


def test_without_a_cache_a_pvc_source_is_mounted_directly() -> None:
    children = render(example("llama-8b", weightCache={"enabled": False}))
    assert of_kind(children, "PersistentVolumeClaim") == of_kind(children, "Job") == []
    deployment = render_zone_deployment(
        example("llama-8b", weightCache={"enabled": False}), "zone-a", 1
    )
    pod = deployment["spec"]["template"]["spec"]
    [weights] = [v for v in pod["volumes"] if v["name"] == "weights"]
    assert weights["persistentVolumeClaim"] == {"claimName": "model-weights", "readOnly": True}
    [mount] = [m for m in server_container(deployment)["volumeMounts"] if m["name"] == "weights"]
    assert mount["subPath"] == "llama-3.1-8b-instruct"
    assert "initContainers" not in pod


def test_without_a_cache_other_sources_are_copied_by_an_init_container() -> None:
    obj = example("llama-70b", weightCache={"enabled": False})
    pod = render_zone_deployment(obj, "zone-a", 1)["spec"]["template"]["spec"]
    [init] = pod["initContainers"]
    assert env_of(init)["SOURCE_URI"] == "s3://models/llama-3.1-70b-instruct"
    [weights] = [v for v in pod["volumes"] if v["name"] == "weights"]
    assert weights["emptyDir"] == {"sizeLimit": "168Gi"}
