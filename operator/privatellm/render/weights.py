"""The weight cache of an InferenceDeployment: per-zone PVCs and the Jobs that fill them.

Pure, like every renderer: the spec in, objects out. The sizes and the restore-time
estimate the status reports are computed here too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from decimal import Decimal
from typing import Literal

from privatellm.api import InferenceDeployment, InferenceDeploymentSpec

from .meta import (
    COMPONENT_LABEL,
    INFERENCE_DEPLOYMENT_LABEL,
    POD_ZONE_LABEL,
    WEIGHTS_REVISION_ANNOTATION,
    ZONE_LABEL,
)
from .network import (
    Endpoint,
    Resolution,
    dns_egress,
    endpoint_of,
    network_policy,
    render_fqdn_policy,
)
from .workload import (
    PRESTAGE_COMPONENT,
    SERVER_COMPONENT,
    Manifest,
    child_metadata,
    container_security_context,
    empty_dir,
    env_vars,
    labels,
    node_affinity,
    node_label_in,
    pod_security_context,
    prestage_job_name,
    service_account_name,
    weight_cache_pvc_name,
)

# Headroom over the weights for filesystem overhead and the shards a new revision adds.
CACHE_HEADROOM = Decimal("1.2")
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


@dataclass(frozen=True)
class WeightSource:
    scheme: Literal["pvc", "s3", "image"]
    # claim name, s3:// URL or image reference
    location: str
    # inside the claim or image, without leading or trailing "/"; "" for the root
    path: str


def weight_source(spec: InferenceDeploymentSpec) -> WeightSource:
    uri = spec.model.source.uri
    if uri.startswith("s3://"):
        return WeightSource("s3", uri, "")
    if uri.startswith("pvc://"):
        claim, _, path = uri.removeprefix("pvc://").partition("/")
        return WeightSource("pvc", claim, path.strip("/"))
    image, _, path = uri.removeprefix("image://").partition("//")
    return WeightSource("image", image, path.strip("/"))


def weights_revision(spec: InferenceDeploymentSpec) -> str:
    """What the ready marker records: the pinned revision, else the source itself."""
    return spec.model.revision or spec.model.source.uri


def weight_source_volumes(obj: InferenceDeployment) -> list[Manifest]:
    """Volumes the copy container reads the weights or the store's credentials from."""
    source = weight_source(obj.spec)
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


def weight_copy_container(obj: InferenceDeployment) -> Manifest:
    """A container that copies the weights from the source into the volume named weights."""
    spec = obj.spec
    source = weight_source(spec)
    # HOME on /tmp: the root filesystem is read-only and aws-cli keeps state under ~/.aws.
    env = {"HOME": "/tmp", "WEIGHTS_REVISION": weights_revision(spec)}
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
        "env": env_vars(env),
        "resources": {"requests": dict(PRESTAGE_RESOURCES)},
        "securityContext": container_security_context(),
        "volumeMounts": mounts,
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
        "metadata": child_metadata(obj, weight_cache_pvc_name(obj, zone), zone),
        "spec": pvc_spec,
    }


def render_prestage_job(obj: InferenceDeployment, zone: str) -> Manifest:
    """Copies the weights into the cache of `zone`, then writes the ready marker.

    The Job is kept after it finishes: the controller reads its status to tell that the
    zone's cache is warm, and compares the weights-revision annotation to decide whether
    to replace it (a Job's template cannot change).
    """
    pod_labels = {**labels(obj), **prestage_pod_labels(obj), POD_ZONE_LABEL: zone}
    cache_claim = {"claimName": weight_cache_pvc_name(obj, zone)}
    revision = {WEIGHTS_REVISION_ANNOTATION: weights_revision(obj.spec)}
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": child_metadata(obj, prestage_job_name(obj, zone), zone, revision),
        "spec": {
            "backoffLimit": PRESTAGE_BACKOFF_LIMIT,
            "template": {
                "metadata": {"labels": pod_labels},
                "spec": {
                    "restartPolicy": "Never",
                    "serviceAccountName": service_account_name(obj),
                    "automountServiceAccountToken": False,
                    "securityContext": pod_security_context(),
                    "affinity": node_affinity([node_label_in(ZONE_LABEL, zone)]),
                    "containers": [weight_copy_container(obj)],
                    "volumes": [
                        {"name": "weights", "persistentVolumeClaim": cache_claim},
                        empty_dir("tmp"),
                        *weight_source_volumes(obj),
                    ],
                },
            },
        },
    }


def weight_source_endpoint(spec: InferenceDeploymentSpec) -> Endpoint | None:
    """Where the weights are fetched from over the network: the store of an s3:// source.
    None for sources the kubelet mounts or pulls (pvc://, image://)."""
    if weight_source(spec).scheme != "s3" or not spec.model.source.s3_endpoint:
        return None
    return endpoint_of(spec.model.source.s3_endpoint)


def weight_source_egress(source: Resolution | None) -> list[Manifest]:
    """Egress of a Pod that copies the weights: DNS, and the store when the rule exists."""
    rules = [dns_egress()]
    if source is not None and source.rule is not None:
        rules.append(source.rule)
    return rules


def prestage_network_policy_name(obj: InferenceDeployment) -> str:
    return f"{obj.metadata.name}-prestage"


def prestage_pod_labels(obj: InferenceDeployment) -> dict[str, str]:
    """Labels that select the pre-staging Pods of all zones."""
    return {INFERENCE_DEPLOYMENT_LABEL: obj.metadata.name, COMPONENT_LABEL: PRESTAGE_COMPONENT}


def render_prestage_network_policy(obj: InferenceDeployment, source: Resolution | None) -> Manifest:
    """Pre-staging Pods take no connections and reach only DNS and the weights' store."""
    return network_policy(
        child_metadata(obj, prestage_network_policy_name(obj)),
        {"matchLabels": prestage_pod_labels(obj)},
        egress=weight_source_egress(source),
    )


def render_weight_source_fqdn_policy(obj: InferenceDeployment, store: Endpoint) -> Manifest:
    """The weights' store by name, for the Pods that copy the weights (Cilium only)."""
    fetchers = (
        prestage_pod_labels(obj)
        if obj.spec.weight_cache.enabled
        else {INFERENCE_DEPLOYMENT_LABEL: obj.metadata.name, COMPONENT_LABEL: SERVER_COMPONENT}
    )
    metadata = child_metadata(obj, f"{obj.metadata.name}-weight-source")
    return render_fqdn_policy(metadata, fetchers, [store])
