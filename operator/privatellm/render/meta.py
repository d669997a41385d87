"""Object metadata the renderers share: label keys, node labels and taints, owner references."""

from __future__ import annotations

from typing import Any

from privatellm.api.base import Resource

# Recommended labels (https://kubernetes.io/docs/concepts/overview/working-with-objects/common-labels/).
NAME_LABEL = "app.kubernetes.io/name"
INSTANCE_LABEL = "app.kubernetes.io/instance"
COMPONENT_LABEL = "app.kubernetes.io/component"
PART_OF_LABEL = "app.kubernetes.io/part-of"
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
PART_OF = "privatellm"
MANAGED_BY = "privatellm-operator"
# The gateway's Pods carry COMPONENT_LABEL=GATEWAY_COMPONENT and PART_OF_LABEL=PART_OF;
# network policies admit traffic from exactly those.
GATEWAY_COMPONENT = "gateway"
# The chart's operator Pods carry COMPONENT_LABEL=OPERATOR_COMPONENT and PART_OF_LABEL=PART_OF
# whatever the release is called (charts/privatellm/templates/_helpers.tpl); network
# policies admit the operator by those two labels in its own namespace.
OPERATOR_COMPONENT = "operator"
# Set by the API server on every namespace: a namespaceSelector picks one namespace by it.
NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"

# Project labels: which custom resource a child belongs to, and which zone a Pod serves.
INFERENCE_DEPLOYMENT_LABEL = "privatellm.io/inference-deployment"
POD_ZONE_LABEL = "privatellm.io/zone"
WEIGHTS_REVISION_ANNOTATION = "privatellm.io/weights-revision"
TLS_REVISION_ANNOTATION = "privatellm.io/tls-revision"

# Well-known node labels.
ZONE_LABEL = "topology.kubernetes.io/zone"
HOSTNAME_LABEL = "kubernetes.io/hostname"
# Set by NVIDIA GPU feature discovery (part of the GPU operator) on every GPU node.
GPU_PRODUCT_LABEL = "nvidia.com/gpu.product"
# The extended resource of the NVIDIA device plugin; GPU node pools are usually tainted with
# the same key so that only Pods asking for GPUs land there.
GPU_RESOURCE = "nvidia.com/gpu"

# Spot capacity is named differently by every provider (karpenter.sh/capacity-type,
# eks.amazonaws.com/capacityType, cloud.google.com/gke-spot,
# kubernetes.azure.com/scalesetpriority), so the operator uses one neutral pair: the
# platform team labels spot nodes CAPACITY_TYPE_LABEL=spot and taints them
# CAPACITY_TYPE_LABEL=spot:NoSchedule (a Karpenter NodePool or node group template does both),
# which keeps every workload that did not ask for spot off those nodes.
CAPACITY_TYPE_LABEL = "privatellm.io/capacity-type"
SPOT = "spot"


def owner_reference(obj: Resource) -> dict[str, Any]:
    """The controller owner reference a child of `obj` carries, so it is garbage-collected with it.

    Raises ValueError when `obj` has no metadata.uid: only an object read from the API server
    can own children.
    """
    if not obj.metadata.uid:
        raise ValueError(f"{obj.kind} {obj.metadata.name!r} has no metadata.uid")
    return {
        "apiVersion": obj.api_version,
        "kind": obj.kind,
        "name": obj.metadata.name,
        "uid": obj.metadata.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def crd_installed(crd: dict[str, Any] | None) -> bool:
    """Whether a kind another project adds is served, given its CRD as read (None: absent).

    A CRD being deleted counts as absent: its objects are going with it.
    """
    return crd is not None and not crd["metadata"].get("deletionTimestamp")


def operator_pods(namespace: str) -> dict[str, Any]:
    """A NetworkPolicy peer: the operator's Pods in `namespace`, the chart's release namespace."""
    return {
        "namespaceSelector": {"matchLabels": {NAMESPACE_NAME_LABEL: namespace}},
        "podSelector": {
            "matchLabels": {COMPONENT_LABEL: OPERATOR_COMPONENT, PART_OF_LABEL: PART_OF}
        },
    }
