"""A local simulated cluster (real control plane, KWOK nodes) and a dev-mode Vault, for tests."""

from .cluster import LocalCluster, Toolchain, ToolchainMissingError
from .nodes import NodePlan, render_nodes
from .vault import DevVault, enable_transit

__all__ = [
    "DevVault",
    "LocalCluster",
    "NodePlan",
    "Toolchain",
    "ToolchainMissingError",
    "enable_transit",
    "render_nodes",
]
