"""A local simulated cluster (real control plane, KWOK nodes) and a dev-mode Vault, for tests."""

from .cluster import LocalCluster, Toolchain, ToolchainMissingError
from .nodes import NodePlan, render_nodes
from .s3 import DevS3
from .vault import DevVault, enable_transit

__all__ = [
    "DevS3",
    "DevVault",
    "LocalCluster",
    "NodePlan",
    "Toolchain",
    "ToolchainMissingError",
    "enable_transit",
    "render_nodes",
]
