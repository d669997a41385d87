"""A model with `autoscaling.scaledBy: keda` on the real API server: KEDA's or the operator's.

No KEDA runs here: its ScaledObject CRD is installed bare, and the test plays KEDA's HPA
by setting a Deployment's scale. The model controller's reconcile is called the way a
worker calls it. The control plane is shared by the whole session, so the CRD is removed
again before the test ends.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from privatellm.api import GROUP, VERSION
from privatellm.controllers.inference import reconcile
from privatellm.kube.client import (
    FIELD_MANAGER,
    HANDOVER_FIELD_MANAGER,
    KINDS,
    Kube,
    applies_field,
)
from privatellm.render.inference_status import NodeView

from .conftest import Cluster

KEDA = "keda.sh"
SCALED_OBJECT_CRD = f"scaledobjects.{KEDA}"
ZONES = ["zone-a", "zone-b", "zone-c"]
REPLICAS = ("spec", "replicas")


def scaled_object_crd() -> dict[str, Any]:
    """A bare CRD for KEDA's ScaledObject: it stores whatever it is given."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": SCALED_OBJECT_CRD},
        "spec": {
            "group": KEDA,
            "scope": "Namespaced",
            "names": {
                "kind": "ScaledObject",
                "listKind": "ScaledObjectList",
                "plural": "scaledobjects",
                "singular": "scaledobject",
            },
            "versions": [
                {
                    "name": "v1alpha1",
                    "served": True,
                    "storage": True,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "x-kubernetes-preserve-unknown-fields": True,
                        }
                    },
                    "subresources": {"status": {}},
                }
            ],
        },
    }


@pytest.fixture
def keda(crds: Cluster) -> Iterator[Cluster]:
    """The cluster, with KEDA's ScaledObject CRD removed afterwards (see `install_keda`)."""
    yield crds
    crds.kubectl("delete", "crd", SCALED_OBJECT_CRD, "--ignore-not-found", "--wait=true")


def install_keda(cluster: Cluster) -> None:
    cluster.kubectl("apply", "-f", "-", stdin=yaml.safe_dump(scaled_object_crd()))
    cluster.kubectl(
        "wait", "--for=condition=Established", "--timeout=60s", f"crd/{SCALED_OBJECT_CRD}"
    )


def llama(scaled_by: str) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "InferenceDeployment",
        "metadata": {"name": "llama"},
        "spec": {
            "model": {"name": "llama", "source": {"uri": "pvc://weights/llama", "sizeGiB": 1}},
            "resources": {"accelerator": "cpu", "gpusPerReplica": 0, "cpu": "1", "memory": "1Gi"},
            "weightCache": {"enabled": False},
            "zones": ZONES,
            "autoscaling": {
                "minReplicas": 1,
                "maxReplicas": 4,
                "targetInFlightPerReplica": 2,
                "scaledBy": scaled_by,
            },
        },
    }


def test_keda_scales_the_zones_when_installed_and_the_operator_meanwhile(
    keda: Cluster, namespace: str
) -> None:
    kube = Kube(keda.api)
    keda.custom.create_namespaced_custom_object(
        GROUP, VERSION, namespace, "inferencedeployments", llama("keda")
    )
    nodes = [NodeView.from_node(n) for n in kube.list(KINDS["Node"])]

    def step() -> None:
        reconcile(kube, None, nodes, namespace, "llama")

    def condition(kind: str) -> dict[str, Any]:
        obj = kube.get(KINDS["InferenceDeployment"], namespace, "llama")
        assert obj is not None
        conditions = obj["status"]["conditions"]
        found: dict[str, Any] = next(c for c in conditions if c["type"] == kind)
        return found

    def status() -> dict[str, Any]:
        obj = kube.get(KINDS["InferenceDeployment"], namespace, "llama")
        assert obj is not None
        found: dict[str, Any] = obj["status"]
        return found

    def deployments() -> dict[str, dict[str, Any]]:
        return {
            zone: found
            for zone in ZONES
            if (found := kube.get(KINDS["Deployment"], namespace, f"llama-{zone}"))
        }

    def replicas() -> dict[str, int]:
        return {zone: d["spec"]["replicas"] for zone, d in deployments().items()}

    def scaled_objects() -> dict[str, dict[str, Any]]:
        return {o["metadata"]["name"]: o for o in kube.list(KINDS["ScaledObject"], namespace)}

    # Without KEDA: Degraded, saying which field asks for it, and the operator scales
    # (here without an autoscaler: the baseline, minReplicas, in the first zone).
    step()
    degraded = condition("Degraded")
    assert (degraded["status"], degraded["reason"]) == ("True", "KEDAUnavailable")
    assert "spec.autoscaling.scaledBy" in degraded["message"]
    assert replicas() == {"zone-a": 1, "zone-b": 0, "zone-c": 0}
    assert all(applies_field(d, REPLICAS) for d in deployments().values())

    install_keda(keda)
    step()
    # One ScaledObject per zone, each with its share of minReplicas 1 and maxReplicas 4.
    found = scaled_objects()
    assert sorted(found) == ["llama-zone-a", "llama-zone-b", "llama-zone-c"]
    bounds = {
        name: (
            o["spec"]["scaleTargetRef"]["name"],
            o["spec"]["minReplicaCount"],
            o["spec"]["maxReplicaCount"],
        )
        for name, o in found.items()
    }
    assert bounds == {
        "llama-zone-a": ("llama-zone-a", 1, 2),
        "llama-zone-b": ("llama-zone-b", 0, 1),
        "llama-zone-c": ("llama-zone-c", 0, 1),
    }
    owner = kube.get(KINDS["InferenceDeployment"], namespace, "llama")
    assert owner is not None
    uid = owner["metadata"]["uid"]
    assert all(o["metadata"]["ownerReferences"][0]["uid"] == uid for o in found.values())
    # The counts stayed as they were, and they are no longer the operator's to apply.
    assert replicas() == {"zone-a": 1, "zone-b": 0, "zone-c": 0}
    for deployment in deployments().values():
        assert not applies_field(deployment, REPLICAS, FIELD_MANAGER)
        assert applies_field(deployment, REPLICAS, HANDOVER_FIELD_MANAGER)
    degraded = condition("Degraded")
    assert degraded["status"] == "False", degraded

    # KEDA's HPA scales zone-b up: the operator leaves it, and reports what runs.
    keda.apps.patch_namespaced_deployment_scale(
        "llama-zone-b", namespace, {"spec": {"replicas": 1}}
    )
    step()
    step()
    assert replicas() == {"zone-a": 1, "zone-b": 1, "zone-c": 0}
    assert status()["replicas"] == 2
    assert {z["zone"]: z["replicas"] for z in status()["zones"]}["zone-b"] == 1
    assert "autoscaling" not in status()

    # Back to the operator: the ScaledObjects go, and the operator applies its count.
    keda.custom.patch_namespaced_custom_object(
        GROUP,
        VERSION,
        namespace,
        "inferencedeployments",
        "llama",
        {"spec": {"autoscaling": {"scaledBy": "operator"}}},
    )
    step()
    assert scaled_objects() == {}
    assert replicas() == {"zone-a": 1, "zone-b": 0, "zone-c": 0}
    assert all(applies_field(d, REPLICAS) for d in deployments().values())
    assert condition("Degraded")["status"] == "False"
