"""The simulated cluster has GPU and CPU nodes in three zones."""

from __future__ import annotations

from collections import Counter

from privatellm.devcluster.nodes import GPU_RESOURCE, ZONE_LABEL, NodePlan, render_nodes


def test_default_plan_has_two_gpu_nodes_and_one_cpu_node_per_zone() -> None:
    nodes = render_nodes(NodePlan())
    gpu = [n for n in nodes if GPU_RESOURCE in n["status"]["capacity"]]
    cpu = [n for n in nodes if GPU_RESOURCE not in n["status"]["capacity"]]
    assert Counter(n["metadata"]["labels"][ZONE_LABEL] for n in gpu) == {
        "zone-a": 2,
        "zone-b": 2,
        "zone-c": 2,
    }
    assert Counter(n["metadata"]["labels"][ZONE_LABEL] for n in cpu) == {
        "zone-a": 1,
        "zone-b": 1,
        "zone-c": 1,
    }
    assert all(n["status"]["allocatable"][GPU_RESOURCE] == "8" for n in gpu)
    assert all(n["spec"]["taints"][0]["key"] == GPU_RESOURCE for n in gpu)
    spot = [n for n in gpu if n["metadata"]["labels"].get("privatellm.io/capacity-type") == "spot"]
    assert [n["metadata"]["name"] for n in spot] == ["gpu-a-2", "gpu-b-2", "gpu-c-2"]
    assert all(len(n["spec"]["taints"]) == 2 for n in spot)
    assert all("nvidia.com/gpu.product" in n["metadata"]["labels"] for n in gpu)


def test_node_names_are_unique_and_stable() -> None:
    plan = NodePlan(zones=("zone-a", "zone-b"), gpu_nodes_per_zone=1, cpu_nodes_per_zone=0)
    assert plan.names() == ["gpu-a-1", "gpu-b-1"]
    assert render_nodes(plan) == render_nodes(plan)
