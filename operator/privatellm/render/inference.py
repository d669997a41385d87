"""Children of an InferenceDeployment: per-zone vLLM Deployments and what they need.

Everything here is a pure function of the custom resource (and, for Deployments, of the
replica count per zone the controller chose): no I/O, no clock, no randomness, so the same
input gives the same objects byte for byte and reconciling twice changes nothing.

A spec can pass the API server's schema and still be unrenderable (an unknown vLLM flag,
a zone name that cannot appear in an object name). `spec_errors` lists such problems, each
naming the field; `render_children` raises `InvalidSpecError` with all of them before it
renders anything, so the controller sets Degraded with the message and applies nothing.
"""

from __future__ import annotations

import math
import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Literal

from privatellm.api import InferenceDeployment, InferenceDeploymentSpec

from .engine import (
    HOME_DIR,
    SERVING_PORT,
    TLS_CERT_FILE,
    TLS_DIR,
    TLS_KEY_FILE,
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
    INFERENCE_DEPLOYMENT_LABEL,
    INSTANCE_LABEL,
    MANAGED_BY,
    MANAGED_BY_LABEL,
    NAME_LABEL,
    PART_OF,
    PART_OF_LABEL,
    POD_ZONE_LABEL,
    SPOT,
    TLS_REVISION_ANNOTATION,
    WEIGHTS_REVISION_ANNOTATION,
    ZONE_LABEL,
    owner_reference,
)
from .probe import golden_prompt_command

Manifest = dict[str, Any]

SERVER_COMPONENT = "inference-server"
PRESTAGE_COMPONENT = "weight-prestage"

# The vLLM images run as root by default; any fixed non-root id works because every
# writable path is an emptyDir or a volume owned by fsGroup.
RUN_AS_ID = 1000
# NCCL moves tensors between the GPUs of one replica through /dev/shm; the vLLM Kubernetes
# guide uses 2Gi, enough for its buffers at tensor-parallel sizes up to 8.
SHM_SIZE = "2Gi"
# Headroom over the weights for filesystem overhead and the shards a new revision adds.
CACHE_HEADROOM = Decimal("1.2")
# Weights take minutes to load; a rollout must not count that as a stalled Deployment.
PROGRESS_SLACK_SECONDS = 600

PROBE_PERIOD_SECONDS = 10
PROBE_TIMEOUT_SECONDS = 5
READINESS_FAILURE_THRESHOLD = 3
# A busy engine may answer /health late; restarting it drops every request in flight and
# reloads the weights, so liveness tolerates a minute of silence.
LIVENESS_FAILURE_THRESHOLD = 6

# Pre-staging copies run in ordinary (CPU) nodes of the zone; a copy is I/O-bound, and
# requests keep it out of the BestEffort class that is evicted first.
PRESTAGE_RESOURCES = {"cpu": "500m", "memory": "512Mi"}
PRESTAGE_BACKOFF_LIMIT = 3
# aws-cli v2 reads AWS_ENDPOINT_URL (2.13 and later) and a credentials file; mirror it in
# the company registry like the vLLM image.
S3_SYNC_IMAGE = "amazon/aws-cli:2.17.50"
CACHE_MOUNT = "/cache"
SOURCE_MOUNT = "/source"
S3_CREDENTIALS_DIR = "/var/run/secrets/privatellm/s3"
READY_MARKER = ".privatellm-ready"

# Kept idempotent: a Job re-created for the same revision finds the marker and stops; the
# marker is written last and atomically, so a half-copied cache never looks warm. Inputs
# come through the environment so that no URI is ever parsed by the shell.
_COPY_SCRIPT = """\
set -eu
marker={cache}/{marker}
if [ "$(cat "$marker" 2>/dev/null)" = "$WEIGHTS_REVISION" ]; then exit 0; fi
rm -f "$marker"
{copy}
printf '%s\\n' "$WEIGHTS_REVISION" > "$marker.tmp"
mv "$marker.tmp" "$marker"
"""
# -R, not -a: the copy runs as a non-root user, which cannot preserve ownership.
_COPY_DIRECTORY = f'cp -R "$SOURCE_DIR/." {CACHE_MOUNT}/'
_SYNC_BUCKET = f'aws s3 sync "$SOURCE_URI" {CACHE_MOUNT} --only-show-errors'

# The kubelet cannot present a client certificate, so with mutual TLS an httpGet probe
# never passes the handshake: the check runs in the container and presents the Pod's own
# certificate (which must therefore allow client authentication too). It talks to its own
# process over loopback, so it does not verify the server.
_MUTUAL_TLS_HEALTH_CHECK = f"""\
import ssl, urllib.request
context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
context.check_hostname = False
context.verify_mode = ssl.CERT_NONE
context.load_cert_chain("{TLS_DIR}/{TLS_CERT_FILE}", "{TLS_DIR}/{TLS_KEY_FILE}")
urllib.request.urlopen(
    "https://127.0.0.1:{SERVING_PORT}/health", context=context, timeout={PROBE_TIMEOUT_SECONDS - 1}
)
"""

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS_1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_MAX_LABEL_VALUE = 63


class InvalidSpecError(ValueError):
    """The spec passed the API server's schema, but the operator cannot render it."""

    def __init__(self, errors: Sequence[str]) -> None:
        self.errors = tuple(errors)
        super().__init__("; ".join(self.errors))


# --- names -----------------------------------------------------------------------------


def zone_deployment_name(obj: InferenceDeployment, zone: str) -> str:
    """Name of the vLLM Deployment serving `zone`."""
    return f"{obj.metadata.name}-{zone}"


def weight_cache_pvc_name(obj: InferenceDeployment, zone: str) -> str:
    """Name of the weight-cache PVC of `zone`."""
    return f"{obj.metadata.name}-weights-{zone}"


def prestage_job_name(obj: InferenceDeployment, zone: str) -> str:
    """Name of the Job that fills the weight cache of `zone`."""
    return f"{obj.metadata.name}-prestage-{zone}"


def service_name(obj: InferenceDeployment) -> str:
    """Name of the Service in front of all zones' vLLM Pods."""
    return obj.metadata.name


def pod_disruption_budget_name(obj: InferenceDeployment) -> str:
    """Name of the PodDisruptionBudget over all zones' vLLM Pods."""
    return obj.metadata.name


def service_account_name(obj: InferenceDeployment) -> str:
    """Name of the ServiceAccount the vLLM and pre-staging Pods run as."""
    return f"{obj.metadata.name}-vllm"


def network_policy_name(obj: InferenceDeployment) -> str:
    """Name of the NetworkPolicy that admits only the gateway."""
    return f"{obj.metadata.name}-ingress"


def tls_secret_name(obj: InferenceDeployment) -> str:
    """Name of the Secret (tls.crt, tls.key, ca.crt) the vLLM server's TLS comes from."""
    return f"{obj.metadata.name}-tls"


# --- labels ----------------------------------------------------------------------------


def labels(obj: InferenceDeployment) -> dict[str, str]:
    """Labels on every child of `obj`."""
    return {
        NAME_LABEL: "vllm",
        INSTANCE_LABEL: obj.metadata.name,
        PART_OF_LABEL: PART_OF,
        MANAGED_BY_LABEL: MANAGED_BY,
        INFERENCE_DEPLOYMENT_LABEL: obj.metadata.name,
    }


def selector_labels(obj: InferenceDeployment) -> dict[str, str]:
    """Labels that select the serving Pods of all zones (and not the pre-staging Pods)."""
    return {INFERENCE_DEPLOYMENT_LABEL: obj.metadata.name, COMPONENT_LABEL: SERVER_COMPONENT}


# --- validation ------------------------------------------------------------------------


def spec_errors(obj: InferenceDeployment) -> list[str]:
    """What keeps `obj` from being rendered, each message naming its field; empty when fine."""
    spec = obj.spec
    errors = check_extra_args(spec.engine.extra_args)
    source = _weight_source(spec)
    if source.scheme == "image" and not source.path:
        errors.append(
            "spec.model.source.uri: an image:// source needs the path of the weights inside"
            " the image, as image://<image>//<path>"
        )
    name = obj.metadata.name
    if not _DNS_1035_LABEL.match(name) or len(name) > _MAX_LABEL_VALUE:
        errors.append(
            f"metadata.name: {name!r} also names the Service, so it must be at most 63 lowercase"
            " letters, digits and '-', starting with a letter"
        )
    for i, zone in enumerate(spec.zones):
        if not _DNS_LABEL.match(zone):
            errors.append(
                f"spec.zones[{i}]: {zone!r} is part of child object names, so it may contain"
                " only lowercase letters, digits and '-'"
            )
        elif spec.weight_cache.enabled and len(prestage_job_name(obj, zone)) > _MAX_LABEL_VALUE:
            errors.append(
                f"spec.zones[{i}]: the pre-staging Job name {prestage_job_name(obj, zone)!r}"
                " is longer than 63 characters; use a shorter metadata.name"
            )
    return errors


# --- sizing ----------------------------------------------------------------------------


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


def estimated_restore_seconds(spec: InferenceDeploymentSpec) -> int:
    """Seconds to read the weights from the cache: size divided by the cache bandwidth."""
    mebibytes = Decimal(repr(spec.model.source.size_gi_b)) * 1024
    return math.ceil(mebibytes / spec.weight_cache.bandwidth_mi_bps)


def weight_cache_size(spec: InferenceDeploymentSpec) -> str:
    """Size of a zone's weight cache: weightCache.size, else 1.2 x the weights, in whole Gi."""
    if spec.weight_cache.size:
        return spec.weight_cache.size
    # Decimal, so that 1.2 x 140 is 168 and not 168.00000000000003 rounded up to 169.
    return f"{math.ceil(Decimal(repr(spec.model.source.size_gi_b)) * CACHE_HEADROOM)}Gi"


# --- weight source ---------------------------------------------------------------------


@dataclass(frozen=True)
class _WeightSource:
    scheme: Literal["pvc", "s3", "image"]
    # claim name, s3:// URL or image reference
    location: str
    # inside the claim or image, without leading or trailing "/"; "" for the root
    path: str


def _weight_source(spec: InferenceDeploymentSpec) -> _WeightSource:
    uri = spec.model.source.uri
    if uri.startswith("s3://"):
        return _WeightSource("s3", uri, "")
    if uri.startswith("pvc://"):
        claim, _, path = uri.removeprefix("pvc://").partition("/")
        return _WeightSource("pvc", claim, path.strip("/"))
    image, _, path = uri.removeprefix("image://").partition("//")
    return _WeightSource("image", image, path.strip("/"))


def _weights_revision(spec: InferenceDeploymentSpec) -> str:
    """What the ready marker records: the pinned revision, else the source itself."""
    return spec.model.revision or spec.model.source.uri


# --- pod building blocks ---------------------------------------------------------------


def _pod_security_context() -> Manifest:
    return {
        "runAsNonRoot": True,
        "runAsUser": RUN_AS_ID,
        "runAsGroup": RUN_AS_ID,
        "fsGroup": RUN_AS_ID,
        # Re-owning a few hundred GiB of weights on every Pod start would delay it by minutes.
        "fsGroupChangePolicy": "OnRootMismatch",
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def _container_security_context() -> Manifest:
    return {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "readOnlyRootFilesystem": True,
    }


def _env(values: Mapping[str, str]) -> list[Manifest]:
    return [{"name": name, "value": value} for name, value in values.items()]


def _node_affinity(match_expressions: list[Manifest]) -> Manifest:
    return {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [{"matchExpressions": match_expressions}]
            }
        }
    }


def _node_label_in(key: str, value: str) -> Manifest:
    return {"key": key, "operator": "In", "values": [value]}


def _empty_dir(name: str) -> Manifest:
    return {"name": name, "emptyDir": {}}


def _weight_source_volumes(obj: InferenceDeployment) -> list[Manifest]:
    """Volumes the copy container reads the weights or the store's credentials from."""
    source = _weight_source(obj.spec)
    credentials = obj.spec.model.source.credentials
    if source.scheme == "pvc":
        claim = {"claimName": source.location, "readOnly": True}
        return [{"name": "source", "persistentVolumeClaim": claim}]
    if source.scheme == "s3" and credentials:
        secret = {
            "secretName": credentials.name,
            "items": [{"key": credentials.key, "path": "credentials"}],
            "defaultMode": 0o440,
        }
        return [{"name": "s3-credentials", "secret": secret}]
    return []


def _weight_copy_container(obj: InferenceDeployment) -> Manifest:
    """A container that copies the weights from the source into the volume named weights."""
    spec = obj.spec
    source = _weight_source(spec)
    # HOME on /tmp: the root filesystem is read-only and aws-cli keeps state under ~/.aws.
    env = {"HOME": "/tmp", "WEIGHTS_REVISION": _weights_revision(spec)}
    mounts: list[Manifest] = [
        {"name": "weights", "mountPath": CACHE_MOUNT},
        {"name": "tmp", "mountPath": "/tmp"},
    ]
    if source.scheme == "s3":
        image, copy = S3_SYNC_IMAGE, _SYNC_BUCKET
        env["SOURCE_URI"] = source.location
        if spec.model.source.s3_endpoint:
            env["AWS_ENDPOINT_URL"] = spec.model.source.s3_endpoint
        if spec.model.source.credentials:
            env["AWS_SHARED_CREDENTIALS_FILE"] = f"{S3_CREDENTIALS_DIR}/credentials"
            mounts.append(
                {"name": "s3-credentials", "mountPath": S3_CREDENTIALS_DIR, "readOnly": True}
            )
    elif source.scheme == "pvc":
        # The vLLM image is already mirrored and has a shell: no further image to trust.
        image, copy = spec.engine.image, _COPY_DIRECTORY
        env["SOURCE_DIR"] = f"{SOURCE_MOUNT}/{source.path}".rstrip("/")
        mounts.append({"name": "source", "mountPath": SOURCE_MOUNT, "readOnly": True})
    else:
        # The model image is the source: it needs sh and cp, as busybox-based ones have.
        image, copy = source.location, _COPY_DIRECTORY
        env["SOURCE_DIR"] = f"/{source.path}"
    script = _COPY_SCRIPT.format(cache=CACHE_MOUNT, marker=READY_MARKER, copy=copy)
    return {
        "name": "copy-weights",
        "image": image,
        "command": ["/bin/sh", "-c", script],
        "env": _env(env),
        "resources": {"requests": dict(PRESTAGE_RESOURCES)},
        "securityContext": _container_security_context(),
        "volumeMounts": mounts,
    }


def _health_check(spec: InferenceDeploymentSpec) -> Manifest:
    if spec.encryption.tls == "mutual":
        return {"exec": {"command": ["python3", "-c", _MUTUAL_TLS_HEALTH_CHECK]}}
    return {"httpGet": {"path": "/health", "port": "https", "scheme": "HTTPS"}}


def _golden_prompt_check(spec: InferenceDeploymentSpec) -> Manifest:
    cert, key = "", ""
    if spec.encryption.tls == "mutual":
        cert, key = f"{TLS_DIR}/{TLS_CERT_FILE}", f"{TLS_DIR}/{TLS_KEY_FILE}"
    command = golden_prompt_command(
        f"https://127.0.0.1:{SERVING_PORT}",
        spec.model.name,
        spec.health.probe_prompt,
        spec.health.max_first_token_latency_ms,
        cert,
        key,
    )
    return {"exec": {"command": command}}


def _probes(spec: InferenceDeploymentSpec) -> Manifest:
    """Startup, readiness and liveness probes of the vLLM container.

    Startup and liveness ask vLLM's /health: the engine runs. Startup allows
    health.startupBudgetSeconds for loading the weights. Readiness asks the model itself
    (render/probe.py): one token of health.probePrompt within maxFirstTokenLatencyMs, every
    health.intervalSeconds; a replica that answers too slowly leaves the Service without
    being restarted.
    """
    health = spec.health
    startup_threshold = math.ceil(health.startup_budget_seconds / PROBE_PERIOD_SECONDS)

    def engine_alive(failure_threshold: int) -> Manifest:
        return {
            **_health_check(spec),
            "periodSeconds": PROBE_PERIOD_SECONDS,
            "timeoutSeconds": PROBE_TIMEOUT_SECONDS,
            "failureThreshold": failure_threshold,
        }

    return {
        "startupProbe": engine_alive(startup_threshold),
        "readinessProbe": {
            **_golden_prompt_check(spec),
            "periodSeconds": health.interval_seconds,
            # the check itself gives up a second after the bound
            "timeoutSeconds": math.ceil(health.max_first_token_latency_ms / 1000) + 2,
            "failureThreshold": READINESS_FAILURE_THRESHOLD,
        },
        "livenessProbe": engine_alive(LIVENESS_FAILURE_THRESHOLD),
    }


def _server_resources(spec: InferenceDeploymentSpec) -> Manifest:
    requests: dict[str, str] = {"cpu": spec.resources.cpu, "memory": spec.resources.memory}
    if spec.resources.accelerator != "gpu":
        return {"requests": requests}
    gpus = str(spec.resources.gpus_per_replica)
    return {"requests": {**requests, GPU_RESOURCE: gpus}, "limits": {GPU_RESOURCE: gpus}}


def _server_env() -> list[Manifest]:
    cache = f"{HOME_DIR}/.cache"
    return _env(
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
        **_probes(spec),
        "securityContext": _container_security_context(),
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
    source = _weight_source(spec)
    if source.scheme == "pvc":
        claim = {"claimName": source.location, "readOnly": True}
        return {"name": "weights", "persistentVolumeClaim": claim}, source.path, False
    return {"name": "weights", "emptyDir": {"sizeLimit": weight_cache_size(spec)}}, "", True


def _server_scheduling(obj: InferenceDeployment, zone: str) -> Manifest:
    """Affinity, spread and tolerations that place a serving Pod in `zone`."""
    spec = obj.spec
    expressions = [_node_label_in(ZONE_LABEL, zone)]
    tolerations: list[Manifest] = []
    if spec.resources.accelerator == "gpu":
        tolerations.append({"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"})
        if spec.resources.gpu_product:
            expressions.append(_node_label_in(GPU_PRODUCT_LABEL, spec.resources.gpu_product))
    if spec.capacity_type == "spot":
        expressions.append(_node_label_in(CAPACITY_TYPE_LABEL, SPOT))
        tolerations.append(
            {"key": CAPACITY_TYPE_LABEL, "operator": "Equal", "value": SPOT, "effect": "NoSchedule"}
        )
    tolerations += _lost_node_tolerations(spec)
    scheduling: Manifest = {
        "affinity": _node_affinity(expressions),
        # One node failing should take as few replicas of the zone with it as possible.
        "topologySpreadConstraints": [
            {
                "maxSkew": 1,
                "topologyKey": HOSTNAME_LABEL,
                "whenUnsatisfiable": "ScheduleAnyway",
                "labelSelector": {"matchLabels": _zone_selector(obj, zone)},
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


def _zone_selector(obj: InferenceDeployment, zone: str) -> dict[str, str]:
    return {**selector_labels(obj), POD_ZONE_LABEL: zone}


def _metadata(
    obj: InferenceDeployment,
    name: str,
    zone: str | None = None,
    annotations: Mapping[str, str] | None = None,
) -> Manifest:
    meta: Manifest = {"name": name}
    if obj.metadata.namespace:
        meta["namespace"] = obj.metadata.namespace
    meta["labels"] = {**labels(obj), POD_ZONE_LABEL: zone} if zone else labels(obj)
    if annotations:
        meta["annotations"] = dict(annotations)
    meta["ownerReferences"] = [owner_reference(obj)]
    return meta


# --- children --------------------------------------------------------------------------


def render_service_account(obj: InferenceDeployment) -> Manifest:
    """The identity of the vLLM and pre-staging Pods; they never talk to the API server."""
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": _metadata(obj, service_account_name(obj)),
        "automountServiceAccountToken": False,
    }


def render_network_policy(obj: InferenceDeployment) -> Manifest:
    """Admits traffic to the vLLM Pods only from the gateway in the same namespace."""
    gateway = {COMPONENT_LABEL: GATEWAY_COMPONENT, PART_OF_LABEL: PART_OF}
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": _metadata(obj, network_policy_name(obj)),
        "spec": {
            "podSelector": {"matchLabels": selector_labels(obj)},
            "policyTypes": ["Ingress"],
            "ingress": [
                {
                    "from": [{"podSelector": {"matchLabels": gateway}}],
                    "ports": [{"protocol": "TCP", "port": SERVING_PORT}],
                }
            ],
        },
    }


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
        "metadata": _metadata(obj, service_name(obj)),
        "spec": {"type": "ClusterIP", "selector": selector_labels(obj), "ports": [port]},
    }


def render_pod_disruption_budget(obj: InferenceDeployment) -> Manifest:
    """Voluntary disruptions (drains, upgrades) take at most one serving Pod at a time."""
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": _metadata(obj, pod_disruption_budget_name(obj)),
        "spec": {
            "maxUnavailable": 1,
            "selector": {"matchLabels": selector_labels(obj)},
            # A Pod that is not serving anyway must not block a node drain.
            "unhealthyPodEvictionPolicy": "AlwaysAllow",
        },
    }


def render_weight_cache_pvc(obj: InferenceDeployment, zone: str) -> Manifest:
    """The weight cache of `zone`.

    A WaitForFirstConsumer StorageClass provisions its volume in the zone of the first Pod
    that mounts it: the pre-staging Job, which is pinned to `zone`.
    """
    spec = obj.spec
    pvc_spec: Manifest = {"accessModes": [spec.weight_cache.access_mode]}
    if spec.weight_cache.storage_class_name:
        pvc_spec["storageClassName"] = spec.weight_cache.storage_class_name
    pvc_spec["resources"] = {"requests": {"storage": weight_cache_size(spec)}}
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": _metadata(obj, weight_cache_pvc_name(obj, zone), zone),
        "spec": pvc_spec,
    }


def render_prestage_job(obj: InferenceDeployment, zone: str) -> Manifest:
    """Copies the weights into the cache of `zone`, then writes the ready marker.

    The Job is kept after it finishes: the controller reads its status to tell that the
    zone's cache is warm, and compares the weights-revision annotation to decide whether
    to replace it (a Job's template cannot change).
    """
    pod_labels = {**labels(obj), COMPONENT_LABEL: PRESTAGE_COMPONENT, POD_ZONE_LABEL: zone}
    cache_claim = {"claimName": weight_cache_pvc_name(obj, zone)}
    revision = {WEIGHTS_REVISION_ANNOTATION: _weights_revision(obj.spec)}
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": _metadata(obj, prestage_job_name(obj, zone), zone, revision),
        "spec": {
            "backoffLimit": PRESTAGE_BACKOFF_LIMIT,
            "template": {
                "metadata": {"labels": pod_labels},
                "spec": {
                    "restartPolicy": "Never",
                    "serviceAccountName": service_account_name(obj),
                    "automountServiceAccountToken": False,
                    "securityContext": _pod_security_context(),
                    "affinity": _node_affinity([_node_label_in(ZONE_LABEL, zone)]),
                    "containers": [_weight_copy_container(obj)],
                    "volumes": [
                        {"name": "weights", "persistentVolumeClaim": cache_claim},
                        _empty_dir("tmp"),
                        *_weight_source_volumes(obj),
                    ],
                },
            },
        },
    }


def render_zone_deployment(
    obj: InferenceDeployment, zone: str, replicas: int, tls_revision: str = ""
) -> Manifest:
    """The vLLM Deployment of `zone`: `replicas` Pods pinned to the zone and its weights.

    `tls_revision` names the server certificate; vLLM reads it only at start, so a new
    certificate rolls the Pods.
    """
    spec = obj.spec
    weights, sub_path, copy_first = _server_weights(obj, zone)
    pod_spec: Manifest = {
        "serviceAccountName": service_account_name(obj),
        "automountServiceAccountToken": False,
        # Service links would put <SERVICE>_PORT variables in the environment, and vLLM reads
        # VLLM_PORT as its own setting: an InferenceDeployment named vllm would break them all.
        "enableServiceLinks": False,
        "securityContext": _pod_security_context(),
        **_server_scheduling(obj, zone),
    }
    volumes = [weights]
    if copy_first:
        pod_spec["initContainers"] = [_weight_copy_container(obj)]
        volumes += _weight_source_volumes(obj)
    pod_spec["containers"] = [_server_container(obj, sub_path)]
    tls = {"secretName": tls_secret_name(obj), "defaultMode": 0o440}
    pod_spec["volumes"] = [
        *volumes,
        {"name": "tls", "secret": tls},
        _empty_dir("tmp"),
        _empty_dir("home"),
        {"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": SHM_SIZE}},
    ]
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _metadata(obj, zone_deployment_name(obj, zone), zone),
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": _zone_selector(obj, zone)},
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
    meta: Manifest = {"labels": {**labels(obj), **_zone_selector(obj, zone)}}
    if tls_revision:
        meta["annotations"] = {TLS_REVISION_ANNOTATION: tls_revision}
    return meta


def render_children(
    obj: InferenceDeployment, replicas_per_zone: Mapping[str, int], tls_revision: str = ""
) -> list[Manifest]:
    """Every child of `obj`, in a stable order that creates what Pods need before the Pods.

    Zones missing from `replicas_per_zone` get no replicas. Raises `InvalidSpecError` with every
    problem `spec_errors` finds, before rendering anything. The TLS Secret is not among them:
    its key material comes from the controller (render/tls.py renders it).
    """
    errors = spec_errors(obj)
    if errors:
        raise InvalidSpecError(errors)
    zones = obj.spec.zones
    children = [
        render_service_account(obj),
        render_network_policy(obj),
        render_service(obj),
        render_pod_disruption_budget(obj),
    ]
    if obj.spec.weight_cache.enabled:
        children += [render_weight_cache_pvc(obj, zone) for zone in zones]
        children += [render_prestage_job(obj, zone) for zone in zones]
    children += [
        render_zone_deployment(obj, zone, replicas_per_zone.get(zone, 0), tls_revision)
        for zone in zones
    ]
    return children
