"""KEDA's side of the model controller: whether KEDA is installed, and handing it replicas.

KEDA is optional. Its ScaledObject CRD is read on every reconcile, so a later install
(or removal) is picked up; render/keda.py decides what KEDA gets.
"""

from __future__ import annotations

from privatellm.kube.client import KINDS, Kube, Obj, applies_field
from privatellm.render.keda import SCALED_OBJECT_CRD, keda_installed

CRD = KINDS["CustomResourceDefinition"]
REPLICAS = ("spec", "replicas")


def keda_present(kube: Kube) -> bool:
    """Whether KEDA is installed in the cluster: one GET of its ScaledObject CRD."""
    return keda_installed(kube.get(CRD, None, SCALED_OBJECT_CRD))


def hand_over_replicas(kube: Kube, deployment: Obj) -> None:
    """Let KEDA's HPA own the replicas of a live Deployment whose count the operator applied.

    Were the operator simply to stop applying the count, the API server would reset it
    to the default of 1 until the HPA next writes it; a second field manager keeps the
    current count until then.
    """
    if not applies_field(deployment, REPLICAS):
        return
    meta = deployment["metadata"]
    kube.hand_over(
        {
            "apiVersion": deployment["apiVersion"],
            "kind": deployment["kind"],
            "metadata": {"name": meta["name"], "namespace": meta["namespace"]},
            "spec": {"replicas": deployment["spec"].get("replicas", 1)},
        }
    )
