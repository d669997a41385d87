"""Typed models of the four custom resources (privatellm.io/v1alpha1)."""

from .access import AccessPolicy, AccessPolicySpec
from .base import API_VERSION, GROUP, VERSION, Condition, Resource
from .budget import CostBudget, CostBudgetSpec
from .connector import DataConnector, DataConnectorSpec
from .inference import InferenceDeployment, InferenceDeploymentSpec

KINDS: dict[str, type[Resource]] = {
    r.crd_info.kind: r for r in (InferenceDeployment, AccessPolicy, DataConnector, CostBudget)
}

__all__ = [
    "API_VERSION",
    "GROUP",
    "KINDS",
    "VERSION",
    "AccessPolicy",
    "AccessPolicySpec",
    "Condition",
    "CostBudget",
    "CostBudgetSpec",
    "DataConnector",
    "DataConnectorSpec",
    "InferenceDeployment",
    "InferenceDeploymentSpec",
    "Resource",
]
