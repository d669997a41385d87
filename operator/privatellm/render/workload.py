"""What every child of an InferenceDeployment shares: names, labels, metadata, pod blocks."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from privatellm.api import InferenceDeployment

from .meta import (
    COMPONENT_LABEL,
    INFERENCE_DEPLOYMENT_LABEL,
    INSTANCE_LABEL,
    MANAGED_BY,
    MANAGED_BY_LABEL,
    NAME_LABEL,
    PART_OF,
    PART_OF_LABEL,
    POD_ZONE_LABEL,
    owner_reference,
)

Manifest = dict[str, Any]
SERVER_COMPONENT = "inference-server"
PRESTAGE_COMPONENT = "weight-prestage"
# The vLLM images run as root by default; any fixed non-root id works because every
# writable path is an emptyDir or a volume owned by fsGroup.
RUN_AS_ID = 1000


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


def pod_security_context() -> Manifest:
    return {
        "runAsNonRoot": True,
        "runAsUser": RUN_AS_ID,
        "runAsGroup": RUN_AS_ID,
        "fsGroup": RUN_AS_ID,
        # Re-owning a few hundred GiB of weights on every Pod start would delay it by minutes.
        "fsGroupChangePolicy": "OnRootMismatch",
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def container_security_context() -> Manifest:
    return {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "readOnlyRootFilesystem": True,
    }


def env_vars(values: Mapping[str, str]) -> list[Manifest]:
    return [{"name": name, "value": value} for name, value in values.items()]


def node_affinity(match_expressions: list[Manifest]) -> Manifest:
    return {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [{"matchExpressions": match_expressions}]
            }
        }
    }


def node_label_in(key: str, value: str) -> Manifest:
    return {"key": key, "operator": "In", "values": [value]}


def empty_dir(name: str) -> Manifest:
    return {"name": name, "emptyDir": {}}


def zone_selector(obj: InferenceDeployment, zone: str) -> dict[str, str]:
    return {**selector_labels(obj), POD_ZONE_LABEL: zone}


def child_metadata(
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
