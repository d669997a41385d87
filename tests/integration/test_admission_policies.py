"""The chart's admission policies on a real API server: each refuses what it should, with
a message naming the field, only in namespaces labelled managed, and never the operator's
own objects."""

from __future__ import annotations

import copy
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from kubernetes import client

from privatellm.api import InferenceDeployment
from privatellm.controllers.gateway import DEFAULT_IMAGE
from privatellm.render.gateway import GatewayInputs, GatewayKeys, render_gateway

from .conftest import ROOT, Cluster, wait_until
from .test_chart import CHART, KUBE_VERSION, helm, helm_binary  # noqa: F401

MANAGED_LABEL = "privatellm.io/managed"
TEMPLATE = "templates/admission-policies.yaml"
PLAIN = ROOT / "policies" / "admission-policies.yaml"
GOLDEN = ROOT / "tests" / "unit" / "golden"
IMAGE = "docker.io/vllm/vllm-openai:v0.32.0"
GATEWAY = {"app.kubernetes.io/component": "gateway", "app.kubernetes.io/part-of": "privatellm"}


def render_policies(binary: str, *set_values: str) -> list[dict[str, Any]]:
    args = ["template", "privatellm", str(CHART), "-n", "privatellm-system"]
    args += [f"--kube-version={KUBE_VERSION}", "-s", TEMPLATE]
    args += [f"--set={value}" for value in set_values]
    return [doc for doc in yaml.safe_load_all(helm(binary, *args).stdout) if doc]


def pod(
    *,
    image: str = IMAGE,
    labels: dict[str, str] | None = None,
    volumes: list[dict[str, Any]] | None = None,
    privileged: bool = False,
    **spec: Any,
) -> dict[str, Any]:
    container: dict[str, Any] = {"name": "main", "image": image}
    if privileged:
        container["securityContext"] = {"privileged": True}
    body: dict[str, Any] = {"containers": [container], **spec}
    if volumes:
        body["volumes"] = volumes
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "p", "labels": labels or {}},
        "spec": body,
    }


def deployment(template: dict[str, Any]) -> dict[str, Any]:
    labels = {"app": "d", **template["metadata"]["labels"]}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "d"},
        "spec": {
            "selector": {"matchLabels": {"app": "d"}},
            "template": {"metadata": {"labels": labels}, "spec": template["spec"]},
        },
    }


def cronjob(template: dict[str, Any]) -> dict[str, Any]:
    spec = {**template["spec"], "restartPolicy": "Never"}
    return {
        "apiVersion": "batch/v1",
        "kind": "CronJob",
        "metadata": {"name": "c"},
        "spec": {
            "schedule": "0 * * * *",
            "jobTemplate": {"spec": {"template": {"spec": spec}}},
        },
    }


def service(kind: str) -> dict[str, Any]:
    spec: dict[str, Any] = {"type": kind, "ports": [{"port": 80}], "selector": {"app": "x"}}
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s"}, "spec": spec}


def secret_volume(secret: str, name: str = "tls") -> dict[str, Any]:
    return {"name": name, "secret": {"secretName": secret}}


MODEL_A = {"privatellm.io/inference-deployment": "model-a"}

# (case, object, a fragment of the refusal or None when it is allowed), in a managed namespace.
CASES: list[tuple[str, dict[str, Any], str | None]] = [
    # 1. Services
    ("loadbalancer", service("LoadBalancer"), "spec.type: LoadBalancer is not allowed"),
    ("nodeport", service("NodePort"), "spec.type: NodePort is not allowed"),
    ("clusterip", service("ClusterIP"), None),
    # 2. host access
    ("hostnetwork", pod(hostNetwork=True), "spec.hostNetwork: true is not allowed"),
    ("hostpid", pod(hostPID=True), "spec.hostPID: true is not allowed"),
    ("hostipc", pod(hostIPC=True), "spec.hostIPC: true is not allowed"),
    (
        "hostpath",
        pod(volumes=[{"name": "root", "hostPath": {"path": "/"}}]),
        "spec.volumes[root].hostPath is not allowed",
    ),
    ("privileged", pod(privileged=True), "spec.containers[main].securityContext.privileged"),
    (
        "privileged-deployment",
        deployment(pod(privileged=True)),
        "spec.template.spec.containers[main].securityContext.privileged",
    ),
    (
        "hostpath-cronjob",
        cronjob(pod(volumes=[{"name": "logs", "hostPath": {"path": "/var/log"}}])),
        "spec.jobTemplate.spec.template.spec.volumes[logs].hostPath",
    ),
    ("unprivileged", pod(hostNetwork=False, volumes=[{"name": "t", "emptyDir": {}}]), None),
    # 3. registries
    (
        "other-registry",
        pod(image="evil.example/vllm/vllm-openai:1"),
        "spec.containers[main] image evil.example/vllm/vllm-openai:1 is not from an allowed",
    ),
    ("docker-hub-library", pod(image="busybox:1.36"), "image busybox:1.36 is not from an"),
    ("prefix-boundary", pod(image="ghcr.io/privatellmx/x:1"), "is not from an allowed"),
    ("registry-lookalike", pod(image="ghcr.io.evil.example/privatellm/x"), "not from an allowed"),
    ("vllm-short-name", pod(image="vllm/vllm-openai:v0.32.0"), None),
    ("gateway-image", pod(image="ghcr.io/privatellm/privatellm:0.1.0"), None),
    (
        "digest",
        pod(image="docker.io/amazon/aws-cli@sha256:" + "0" * 64),
        None,
    ),
    # 4. a model's TLS Secret
    (
        "other-models-tls",
        pod(labels=MODEL_A, volumes=[secret_volume("model-b-tls")]),
        "spec.volumes[tls] mounts a TLS Secret (<model>-tls) of another model",
    ),
    (
        "unlabelled-pod-tls",
        deployment(pod(volumes=[secret_volume("model-a-tls", "certs")])),
        "spec.template.spec.volumes[certs] mounts a TLS Secret",
    ),
    (
        "projected-tls",
        pod(
            labels=MODEL_A,
            volumes=[{"name": "all", "projected": {"sources": [{"secret": {"name": "x-tls"}}]}}],
        ),
        "spec.volumes[all] mounts a TLS Secret",
    ),
    ("own-tls", pod(labels=MODEL_A, volumes=[secret_volume("model-a-tls")]), None),
    ("gateway-tls", pod(labels=GATEWAY, volumes=[secret_volume("model-a-tls")]), None),
    ("other-secret", pod(labels=MODEL_A, volumes=[secret_volume("model-b-config")]), None),
]


def create(cluster: Cluster, namespace: str, obj: dict[str, Any]) -> str:
    """A server-side dry-run create: admission runs in full, nothing is stored."""
    return cluster.kubectl(
        "create", "--dry-run=server", "-n", namespace, "-f", "-",
        stdin=yaml.safe_dump(obj), check=False,
    )  # fmt: skip


def refusal(output: str) -> str | None:
    """The API server's message when it refused, None when it would have created."""
    if "created (server dry run)" in output:
        return None
    assert "ValidatingAdmissionPolicy" in output, output
    return output


def new_namespace(cluster: Cluster, labels: dict[str, str]) -> str:
    name = f"vap-{uuid.uuid4().hex[:8]}"
    meta = client.V1ObjectMeta(name=name, labels=labels)
    cluster.core.create_namespace(client.V1Namespace(metadata=meta))
    wait_until(lambda: cluster.core.list_namespaced_service_account(name).items, what="SA")
    return name


@pytest.fixture(scope="module")
def namespaces(cluster: Cluster, helm_binary: str) -> Iterator[tuple[str, str]]:  # noqa: F811
    """(managed, unmanaged) namespaces with the chart's default policies in force."""
    objects = render_policies(helm_binary)
    cluster.kubectl("apply", "--server-side", "-f", "-", stdin=yaml.safe_dump_all(objects))
    managed = new_namespace(cluster, {MANAGED_LABEL: "true"})
    unmanaged = new_namespace(cluster, {})
    probe = service("NodePort")
    wait_until(
        lambda: "is not allowed" in create(cluster, managed, probe),
        timeout=30,
        what="the admission policies in force",
    )
    try:
        yield managed, unmanaged
    finally:
        for name in (managed, unmanaged):
            cluster.core.delete_namespace(name)
        cluster.kubectl(
            "delete", "-f", "-", "--ignore-not-found", stdin=yaml.safe_dump_all(objects)
        )


@pytest.mark.parametrize(("case", "obj", "message"), CASES, ids=[c[0] for c in CASES])
def test_policy_case_in_a_managed_namespace(
    cluster: Cluster, namespaces: tuple[str, str], case: str, obj: dict[str, Any], message: str
) -> None:
    managed, _ = namespaces
    refused = refusal(create(cluster, managed, obj))
    if message is None:
        assert refused is None, refused
    else:
        assert refused is not None and message in refused, refused
        # Every refusal says why and where it applies.
        assert f"{MANAGED_LABEL}=true" in refused, refused


REFUSED = [c for c in CASES if c[2] is not None]


@pytest.mark.parametrize(("case", "obj"), [c[:2] for c in REFUSED], ids=[c[0] for c in REFUSED])
def test_an_unlabelled_namespace_is_not_policed(
    cluster: Cluster, namespaces: tuple[str, str], case: str, obj: dict[str, Any]
) -> None:
    _, unmanaged = namespaces
    assert refusal(create(cluster, unmanaged, obj)) is None


def operator_objects(namespace: str) -> dict[str, list[dict[str, Any]]]:
    """Everything the operator renders for the example models and a gateway, per source."""
    rendered: dict[str, list[dict[str, Any]]] = {}
    for path in sorted(GOLDEN.glob("inference-*.yaml")):
        rendered[path.name] = [d for d in yaml.safe_load_all(path.read_text()) if d]
    model = InferenceDeployment.model_validate(
        {
            "metadata": {"name": "small", "namespace": namespace, "uid": "u1"},
            "spec": {
                "model": {"name": "org/small", "source": {"uri": "pvc://w/small", "sizeGiB": 1}},
                "zones": ["zone-a"],
            },
        }
    )
    inputs = GatewayInputs(namespace=namespace, image=DEFAULT_IMAGE, models=[model], policies=[])
    keys = GatewayKeys(hash_key_b64="aGFzaA==", audit_key_b64="a2V5", audit_public_pem="pem")
    rendered["gateway"] = copy.deepcopy(render_gateway(inputs, keys, tls_revision="r1"))
    for objects in rendered.values():
        for obj in objects:
            obj["metadata"]["namespace"] = namespace
    return rendered


def images(obj: dict[str, Any]) -> list[str]:
    spec = obj.get("spec", {})
    pod_spec = spec.get("template", {}).get("spec", spec)
    containers = pod_spec.get("containers", []) + pod_spec.get("initContainers", [])
    return [c["image"] for c in containers]


def test_the_operators_own_objects_pass(cluster: Cluster, namespaces: tuple[str, str]) -> None:
    managed, _ = namespaces
    checked = 0
    for source, objects in operator_objects(managed).items():
        for obj in objects:
            refused = refusal(create(cluster, managed, obj))
            what = f"{source}: {obj['kind']} {obj['metadata']['name']}"
            # The claims-classifier example's weights come from the company's own registry,
            # which the platform team adds to allowedRegistries: that alone is refused.
            if any(i.startswith("registry.internal/") for i in images(obj)):
                assert refused and "registry.internal/models" in refused, what
                assert "not from an allowed registry" in refused, what
            else:
                assert refused is None, f"{what}: {refused}"
            checked += 1
    assert checked > 30


def test_the_plain_policies_are_the_charts_defaults(helm_binary: str) -> None:  # noqa: F811
    plain = [d for d in yaml.safe_load_all(PLAIN.read_text()) if d]
    assert plain == render_policies(helm_binary)
    kinds = sorted(o["kind"] for o in plain)
    assert kinds == ["ValidatingAdmissionPolicy"] * 4 + ["ValidatingAdmissionPolicyBinding"] * 4
    for binding in (o for o in plain if o["kind"] == "ValidatingAdmissionPolicyBinding"):
        selector = binding["spec"]["matchResources"]["namespaceSelector"]
        assert selector == {"matchLabels": {MANAGED_LABEL: "true"}}


def test_the_values_switch_and_list(helm_binary: str) -> None:  # noqa: F811
    off = ["template", "x", str(CHART), f"--kube-version={KUBE_VERSION}"]
    rendered = helm(helm_binary, *off, "--set=admissionPolicies.enabled=false").stdout
    assert "ValidatingAdmissionPolicy" not in rendered
    objects = render_policies(
        helm_binary,
        "admissionPolicies.allowedRegistries={registry.internal/}",
        "image.repository=mirror.internal/privatellm",
    )
    policy = next(o for o in objects if o["metadata"]["name"].endswith("allowed-registries"))
    allowed = next(v for v in policy["spec"]["variables"] if v["name"] == "allowed")
    assert allowed["expression"] == '["registry.internal","mirror.internal/privatellm"]'
    for bad in ("{}", "{https://x.example}", "{Upper.example}"):
        result = helm(
            helm_binary, *off, f"--set=admissionPolicies.allowedRegistries={bad}", check=False
        )
        assert result.returncode != 0 and "allowedRegistries" in result.stderr, bad
