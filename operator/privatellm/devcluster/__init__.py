"""A local simulated cluster (real control plane, KWOK nodes) for tests and the demo."""

from .cluster import LocalCluster, Toolchain, ToolchainMissingError
from .nodes import NodePlan, render_nodes

__all__ = ["LocalCluster", "NodePlan", "Toolchain", "ToolchainMissingError", "render_nodes"]
