"""The simulated nodes of the local cluster: GPU and CPU nodes in three zones."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

ZONE_LABEL = "topology.kubernetes.io/zone"
GPU_PRODUCT_LABEL = "nvidia.com/gpu.product"
GPU_RESOURCE = "nvidia.com/gpu"
# GPU nodes carry the taint the NVIDIA device plugin's deployments use, so only
# workloads that ask for GPUs (and tolerate it) land there.
GPU_TAINT = {"key": GPU_RESOURCE, "value": "present", "effect": "NoSchedule"}
KWOK_ANNOTATION = {"kwok.x-k8s.io/node": "fake"}
# The last GPU node of each zone is spot capacity, labelled and tainted the way the
# operator expects (privatellm.render.meta.CAPACITY_TYPE_LABEL), so batch models have
# somewhere to go and on-demand models stay off it.
CAPACITY_TYPE_LABEL = "privatellm.io/capacity-type"
SPOT_TAINT = {"key": CAPACITY_TYPE_LABEL, "value": "spot", "effect": "NoSchedule"}


@dataclass(frozen=True)
class NodePlan:
    """How many nodes of which kind in which zones."""

    zones: tuple[str, ...] = ("zone-a", "zone-b", "zone-c")
    gpu_nodes_per_zone: int = 2
    cpu_nodes_per_zone: int = 1
    gpus_per_node: int = 8
    gpu_product: str = "NVIDIA-H100-80GB-HBM3"
    spot_gpu_node: bool = True
    pods_per_node: int = 110
    volumes_per_zone: int = 40

    def names(self) -> list[str]:
        return [n["metadata"]["name"] for n in render_nodes(self)]


def default_node_plan() -> NodePlan:
    return NodePlan()


def _node(
    name: str,
    zone: str,
    labels: dict[str, str],
    capacity: dict[str, str],
    taints: list[dict[str, str]],
) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "annotations": dict(KWOK_ANNOTATION),
            "labels": {
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "topology.kubernetes.io/region": "local",
                ZONE_LABEL: zone,
                "type": "kwok",
                **labels,
            },
        },
        "spec": {"taints": taints} if taints else {},
        "status": {
            "allocatable": capacity,
            "capacity": capacity,
            "nodeInfo": {
                "architecture": "amd64",
                "operatingSystem": "linux",
                "kubeletVersion": "fake",
                "kubeProxyVersion": "fake",
            },
        },
    }


def render_nodes(plan: NodePlan) -> list[dict[str, Any]]:
    """Node objects for the plan; KWOK manages them because of their annotation."""
    nodes = []
    for zone in plan.zones:
        suffix = zone.removeprefix("zone-")
        for i in range(1, plan.gpu_nodes_per_zone + 1):
            labels = {
                GPU_PRODUCT_LABEL: plan.gpu_product,
                "nvidia.com/gpu.present": "true",
                "node.kubernetes.io/instance-type": "gpu-8x",
            }
            taints = [dict(GPU_TAINT)]
            if plan.spot_gpu_node and i == plan.gpu_nodes_per_zone > 1:
                labels[CAPACITY_TYPE_LABEL] = "spot"
                taints.append(dict(SPOT_TAINT))
            capacity = {
                "cpu": "96",
                "memory": "1Ti",
                "pods": str(plan.pods_per_node),
                GPU_RESOURCE: str(plan.gpus_per_node),
            }
            nodes.append(_node(f"gpu-{suffix}-{i}", zone, labels, capacity, taints))
        for i in range(1, plan.cpu_nodes_per_zone + 1):
            nodes.append(
                _node(
                    f"cpu-{suffix}-{i}",
                    zone,
                    {"node.kubernetes.io/instance-type": "cpu-32"},
                    {"cpu": "32", "memory": "128Gi", "pods": str(plan.pods_per_node)},
                    [],
                )
            )
    return nodes
