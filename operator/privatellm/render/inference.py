"""Children of an InferenceDeployment: per-zone vLLM Deployments and what they need.

Everything here is a pure function of the custom resource (and, for Deployments, of the
replica count per zone the controller chose): no I/O, no clock, no randomness, so the same
input gives the same objects byte for byte and reconciling twice changes nothing.

A spec can pass the API server's schema and still be unrenderable (an unknown vLLM flag, or
a name or zone stored before the CRD's rules refused it). `spec_errors` lists such problems,
each naming the field; `render_children` raises `InvalidSpecError` with all of them before it
renders anything, so the controller sets Degraded with the message and applies nothing.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping, Sequence

from privatellm.api import InferenceDeployment, InferenceDeploymentSpec
from privatellm.api.base import DNS_1035_LABEL, DNS_LABEL, MAX_DNS_LABEL

from .engine import (
    HOME_DIR,
    SERVING_PORT,
    TLS_DIR,
    WEIGHTS_DIR,
    check_extra_args,
    vllm_args,
)
from .meta import (
    CAPACITY_TYPE_LABEL,
    COMPONENT_LABEL,
    GATEWAY_COMPONENT,
    GPU_PRODUCT_LABEL,
    GPU_RESOURCE,
    HOSTNAME_LABEL,
    PART_OF,
    PART_OF_LABEL,
    SPOT,
    TLS_REVISION_ANNOTATION,
    ZONE_LABEL,
    operator_pods,
)
from .network import Resolution, network_policy, tcp
from .probe import server_probes
from .weights import (
    estimated_restore_seconds,
    render_prestage_job,
    render_prestage_network_policy,
    render_weight_cache_pvc,
    render_weight_source_fqdn_policy,
    weight_cache_size,
    weight_copy_container,
    weight_source,
    weight_source_egress,
    weight_source_volumes,
)
from .workload import (
    Manifest,
    child_metadata,
    container_security_context,
    empty_dir,
    env_vars,
    labels,
    network_policy_name,
    node_affinity,
    node_label_in,
    pod_disruption_budget_name,
    pod_security_context,
    prestage_job_name,
    selector_labels,
    service_account_name,
    service_name,
    tls_secret_name,
    weight_cache_pvc_name,
    zone_deployment_name,
    zone_selector,
)

# NCCL moves tensors between the GPUs of one replica through /dev/shm; the vLLM Kubernetes
# guide uses 2Gi, enough for its buffers at tensor-parallel sizes up to 8.
SHM_SIZE = "2Gi"
# Weights take minutes to load; a rollout must not count that as a stalled Deployment.
PROGRESS_SLACK_SECONDS = 600
_DNS_LABEL = re.compile(DNS_LABEL)
_DNS_1035_LABEL = re.compile(DNS_1035_LABEL)


class InvalidSpecError(ValueError):
    """The spec passed the API server's schema, but the operator cannot render it."""

    def __init__(self, errors: Sequence[str]) -> None:
        self.errors = tuple(errors)
        super().__init__("; ".join(self.errors))


def spec_errors(obj: InferenceDeployment) -> list[str]:
    """What keeps `obj` from being rendered, each message naming its field; empty when fine."""
    spec = obj.spec
    errors = check_extra_args(spec.engine.extra_args)
    source = weight_source(spec)
    if source.scheme == "image" and not source.path:
        errors.append(
            "spec.model.source.uri: an image:// source needs the path of the weights inside"
            " the image, as image://<image>//<path>"
        )
    # The CRD refuses these names and zones on create; an object stored under
    # an older CRD keeps them, and only what would really break the children is refused here.
    name = obj.metadata.name
    if not _DNS_1035_LABEL.fullmatch(name) or len(name) > MAX_DNS_LABEL:
        errors.append(
            f"metadata.name: {name!r} also names the Service, so it must be at most 63 lowercase"
            " letters, digits and '-', starting with a letter"
        )
    for i, zone in enumerate(spec.zones):
        if not _DNS_LABEL.fullmatch(zone):
            errors.append(
                f"spec.zones[{i}]: {zone!r} is part of child object names, so it may contain"
                " only lowercase letters, digits and '-'"
            )
        elif spec.weight_cache.enabled and len(prestage_job_name(obj, zone)) > MAX_DNS_LABEL:
            errors.append(
                f"spec.zones[{i}]: the pre-staging Job name {prestage_job_name(obj, zone)!r}"
                " is longer than 63 characters; use a shorter metadata.name"
            )
    return errors


def baseline_replicas(spec: InferenceDeploymentSpec) -> int:
    """Replicas before any usage-driven scaling: autoscaling.minReplicas, else replicas."""
    return spec.autoscaling.min_replicas if spec.autoscaling else spec.replicas


def zone_replica_plan(
    total: int, zones: Sequence[str], healthy: Collection[str] | None = None
) -> dict[str, int]:
    """Spread `total` replicas evenly over the healthy zones, in order; 0 for the others.

    The first zones take the remainder. `healthy=None` means every zone is healthy. When no
    zone is healthy there is nowhere better to go, so the replicas stay spread over all zones.
    """
    if not zones:
        raise ValueError("at least one zone is needed")
    targets = [zone for zone in zones if healthy is None or zone in healthy] or list(zones)
    each, remainder = divmod(total, len(targets))
    plan = dict.fromkeys(zones, 0)
    for i, zone in enumerate(targets):
        plan[zone] = each + (1 if i < remainder else 0)
    return plan


def _server_resources(spec: InferenceDeploymentSpec) -> Manifest:
    requests: dict[str, str] = {"cpu": spec.resources.cpu, "memory": spec.resources.memory}
    if spec.resources.accelerator != "gpu":
        return {"requests": requests}
    gpus = str(spec.resources.gpus_per_replica)
    return {"requests": {**requests, GPU_RESOURCE: gpus}, "limits": {GPU_RESOURCE: gpus}}


def _server_env() -> list[Manifest]:
    cache = f"{HOME_DIR}/.cache"
    return env_vars(
        {
            "HOME": HOME_DIR,
            # torch looks the user name up for its cache paths; uid 1000 has no passwd entry.
            "USER": "vllm",
            "XDG_CACHE_HOME": cache,
            "HF_HOME": f"{cache}/huggingface",
            "VLLM_CACHE_ROOT": f"{cache}/vllm",
            # Weights come from the cache only, and nothing is reported to the internet.
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "VLLM_NO_USAGE_STATS": "1",
            "DO_NOT_TRACK": "1",
        }
    )


def _server_container(obj: InferenceDeployment, weights_sub_path: str) -> Manifest:
    spec = obj.spec
    weights_mount: Manifest = {"name": "weights", "mountPath": WEIGHTS_DIR, "readOnly": True}
    if weights_sub_path:
        weights_mount["subPath"] = weights_sub_path
    return {
        "name": "vllm",
        "image": spec.engine.image,
        # The image's entrypoint (`vllm serve`) wants the model as a positional argument and
        # deprecates --model; the API server module takes the flags as they are.
        "command": ["python3", "-m", "vllm.entrypoints.openai.api_server"],
        "args": vllm_args(spec),
        "ports": [{"name": "https", "containerPort": SERVING_PORT, "protocol": "TCP"}],
        "env": _server_env(),
        "resources": _server_resources(spec),
        **server_probes(spec),
        "securityContext": container_security_context(),
        "volumeMounts": [
            weights_mount,
            {"name": "tls", "mountPath": TLS_DIR, "readOnly": True},
            {"name": "tmp", "mountPath": "/tmp"},
            {"name": "home", "mountPath": HOME_DIR},
            {"name": "shm", "mountPath": "/dev/shm"},
        ],
    }


def _server_weights(obj: InferenceDeployment, zone: str) -> tuple[Manifest, str, bool]:
    """The weights volume of a serving Pod, the sub-path to mount, and whether to copy first.

    With the cache on, the zone's cache PVC. Without it, a pvc:// source is mounted directly
    and any other source is copied into an emptyDir by an init container.
    """
    spec = obj.spec
    if spec.weight_cache.enabled:
        claim = {"claimName": weight_cache_pvc_name(obj, zone), "readOnly": True}
        return {"name": "weights", "persistentVolumeClaim": claim}, "", False
    source = weight_source(spec)
    if source.scheme == "pvc":
        claim = {"claimName": source.location, "readOnly": True}
        return {"name": "weights", "persistentVolumeClaim": claim}, source.path, False
    return {"name": "weights", "emptyDir": {"sizeLimit": weight_cache_size(spec)}}, "", True


def _server_scheduling(obj: InferenceDeployment, zone: str) -> Manifest:
    """Affinity, spread and tolerations that place a serving Pod in `zone`."""
    spec = obj.spec
    expressions = [node_label_in(ZONE_LABEL, zone)]
    tolerations: list[Manifest] = []
    if spec.resources.accelerator == "gpu":
        tolerations.append({"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"})
        if spec.resources.gpu_product:
            expressions.append(node_label_in(GPU_PRODUCT_LABEL, spec.resources.gpu_product))
    if spec.capacity_type == "spot":
        expressions.append(node_label_in(CAPACITY_TYPE_LABEL, SPOT))
        tolerations.append(
            {"key": CAPACITY_TYPE_LABEL, "operator": "Equal", "value": SPOT, "effect": "NoSchedule"}
        )
    tolerations += _lost_node_tolerations(spec)
    scheduling: Manifest = {
        "affinity": node_affinity(expressions),
        # One node failing should take as few replicas of the zone with it as possible.
        "topologySpreadConstraints": [
            {
                "maxSkew": 1,
                "topologyKey": HOSTNAME_LABEL,
                "whenUnsatisfiable": "ScheduleAnyway",
                "labelSelector": {"matchLabels": zone_selector(obj, zone)},
            }
        ],
    }
    if tolerations:
        scheduling["tolerations"] = tolerations
    if spec.priority_class_name:
        scheduling["priorityClassName"] = spec.priority_class_name
    return scheduling


def _lost_node_tolerations(spec: InferenceDeploymentSpec) -> list[Manifest]:
    """Leave a node that stopped answering early enough to be back within failoverSeconds.

    The cluster default keeps a Pod on an unreachable node for 300 s. Evicting it after
    failoverSeconds minus the time a replacement needs to load the weights from the warm
    cache lets the replacement serve within the bound.
    """
    seconds = max(0, spec.health.failover_seconds - estimated_restore_seconds(spec))
    return [
        {"key": taint, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": seconds}
        for taint in ("node.kubernetes.io/not-ready", "node.kubernetes.io/unreachable")
    ]


def render_service_account(obj: InferenceDeployment) -> Manifest:
    """The identity of the vLLM and pre-staging Pods; they never talk to the API server."""
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": child_metadata(obj, service_account_name(obj)),
        "automountServiceAccountToken": False,
    }


def render_network_policy(
    obj: InferenceDeployment,
    operator_namespace: str | None = None,
    source_egress: Resolution | None = None,
) -> Manifest:
    """Admits traffic to the vLLM Pods only from the gateway in the same namespace, and,
    for an autoscaled model, from the operator's Pods in `operator_namespace`. The Pods
    reach DNS only, and the weights' store when they copy the weights themselves (no
    weight cache): `source_egress` is how they reach it."""
    gateway = {COMPONENT_LABEL: GATEWAY_COMPONENT, PART_OF_LABEL: PART_OF}
    callers: list[Manifest] = [{"podSelector": {"matchLabels": gateway}}]
    if obj.spec.autoscaling is not None and operator_namespace:
        # The autoscaler reads vLLM's own figures at GET /metrics, which vLLM serves on
        # its API port (docs/autoscaling.md); models without autoscaling stay gateway-only.
        callers.append(operator_pods(operator_namespace))
    copies_weights = not obj.spec.weight_cache.enabled
    return network_policy(
        child_metadata(obj, network_policy_name(obj)),
        {"matchLabels": selector_labels(obj)},
        ingress=[{"from": callers, "ports": tcp(SERVING_PORT)}],
        egress=weight_source_egress(source_egress if copies_weights else None),
    )


def render_service(obj: InferenceDeployment) -> Manifest:
    """The ClusterIP Service in front of the serving Pods of all zones."""
    port = {
        "name": "https",
        "protocol": "TCP",
        "appProtocol": "https",
        "port": SERVING_PORT,
        "targetPort": "https",
    }
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": child_metadata(obj, service_name(obj)),
        "spec": {"type": "ClusterIP", "selector": selector_labels(obj), "ports": [port]},
    }


def render_pod_disruption_budget(obj: InferenceDeployment) -> Manifest:
    """Voluntary disruptions (drains, upgrades) take at most one serving Pod at a time."""
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": child_metadata(obj, pod_disruption_budget_name(obj)),
        "spec": {
            "maxUnavailable": 1,
            "selector": {"matchLabels": selector_labels(obj)},
            # A Pod that is not serving anyway must not block a node drain.
            "unhealthyPodEvictionPolicy": "AlwaysAllow",
        },
    }


def render_zone_deployment(
    obj: InferenceDeployment, zone: str, replicas: int | None, tls_revision: str = ""
) -> Manifest:
    """The vLLM Deployment of `zone`: `replicas` Pods pinned to the zone and its weights.

    `replicas` None leaves the count out: another owner (KEDA's HPA) sets it, and a
    field the operator does not apply is not the operator's. `tls_revision` names the
    server certificate; vLLM reads it only at start, so a new certificate rolls the Pods.
    """
    spec = obj.spec
    weights, sub_path, copy_first = _server_weights(obj, zone)
    pod_spec: Manifest = {
        "serviceAccountName": service_account_name(obj),
        "automountServiceAccountToken": False,
        # Service links would put <SERVICE>_PORT variables in the environment, and vLLM reads
        # VLLM_PORT as its own setting: an InferenceDeployment named vllm would break them all.
        "enableServiceLinks": False,
        "securityContext": pod_security_context(),
        **_server_scheduling(obj, zone),
    }
    volumes = [weights]
    if copy_first:
        pod_spec["initContainers"] = [weight_copy_container(obj)]
        volumes += weight_source_volumes(obj)
    pod_spec["containers"] = [_server_container(obj, sub_path)]
    tls = {"secretName": tls_secret_name(obj), "defaultMode": 0o440}
    pod_spec["volumes"] = [
        *volumes,
        {"name": "tls", "secret": tls},
        empty_dir("tmp"),
        empty_dir("home"),
        {"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": SHM_SIZE}},
    ]
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": child_metadata(obj, zone_deployment_name(obj, zone), zone),
        "spec": {
            **({} if replicas is None else {"replicas": replicas}),
            "selector": {"matchLabels": zone_selector(obj, zone)},
            # Never give up a serving replica before its replacement has loaded the weights:
            # a rollout waits for a free GPU instead.
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
            },
            "progressDeadlineSeconds": spec.health.startup_budget_seconds + PROGRESS_SLACK_SECONDS,
            "template": {
                "metadata": _pod_template_metadata(obj, zone, tls_revision),
                "spec": pod_spec,
            },
        },
    }


def _pod_template_metadata(obj: InferenceDeployment, zone: str, tls_revision: str) -> Manifest:
    meta: Manifest = {"labels": {**labels(obj), **zone_selector(obj, zone)}}
    if tls_revision:
        meta["annotations"] = {TLS_REVISION_ANNOTATION: tls_revision}
    return meta


def render_children(
    obj: InferenceDeployment,
    replicas_per_zone: Mapping[str, int | None],
    tls_revision: str = "",
    operator_namespace: str | None = None,
    source_egress: Resolution | None = None,
) -> list[Manifest]:
    """Every child of `obj`, in a stable order that creates what Pods need before the Pods.

    Zones missing from `replicas_per_zone` get no replicas; a zone mapped to None gets a
    Deployment without a count (see `render_zone_deployment`). Raises `InvalidSpecError`
    with every problem `spec_errors` finds, before rendering anything. The TLS Secret is
    not among them: its key material comes from the controller (render/tls.py renders it).
    `operator_namespace` is where the operator runs; None when it runs outside the cluster.
    `source_egress` is how the Pods that copy the weights reach their store (an s3://
    source), as the controller resolved it; None for sources needing no network.
    """
    errors = spec_errors(obj)
    if errors:
        raise InvalidSpecError(errors)
    zones = obj.spec.zones
    children = [
        render_service_account(obj),
        render_network_policy(obj, operator_namespace, source_egress),
        render_prestage_network_policy(obj, source_egress),
        render_service(obj),
        render_pod_disruption_budget(obj),
    ]
    if source_egress is not None and source_egress.fqdn is not None:
        children.append(render_weight_source_fqdn_policy(obj, source_egress.fqdn))
    if obj.spec.weight_cache.enabled:
        children += [render_weight_cache_pvc(obj, zone) for zone in zones]
        children += [render_prestage_job(obj, zone) for zone in zones]
    children += [
        render_zone_deployment(obj, zone, replicas_per_zone.get(zone, 0), tls_revision)
        for zone in zones
    ]
    return children
