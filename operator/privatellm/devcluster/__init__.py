"""A local simulated cluster (real control plane, KWOK nodes), a dev-mode Vault and an S3
server with Object Lock, for tests."""

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
