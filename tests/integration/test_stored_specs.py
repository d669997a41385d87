"""An InferenceDeployment stored before a stricter schema says why at once (real API server)."""

from __future__ import annotations

from typing import Any

import yaml

from privatellm.api import GROUP, VERSION
from privatellm.controllers.inference import reconcile
from privatellm.kube.client import KINDS, Kube

from .conftest import ROOT, Cluster, wait_until

CRD_FILE = ROOT / "crds" / f"{GROUP}_inferencedeployments.yaml"


def _without_argument_bound(crd: dict[str, Any]) -> dict[str, Any]:
    """The CRD as it was before engine arguments had a maximum length."""
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    engine = schema["properties"]["spec"]["properties"]["engine"]
    del engine["properties"]["extraArgs"]["items"]["maxLength"]
    return crd


def model(argument: str) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "InferenceDeployment",
        "metadata": {"name": "old"},
        "spec": {
            "model": {"name": "old", "source": {"uri": "pvc://weights/old", "sizeGiB": 1}},
            "zones": ["zone-a"],
            "engine": {"extraArgs": [argument]},
        },
    }


def _created(cluster: Cluster, namespace: str, body: dict[str, Any]) -> bool:
    try:
        cluster.custom.create_namespaced_custom_object(
            GROUP, VERSION, namespace, "inferencedeployments", body
        )
    except Exception:
        return False  # the looser schema is not in force yet
    return True


def test_a_spec_stored_before_a_stricter_schema_is_degraded_naming_the_field(
    crds: Cluster, namespace: str
) -> None:
    loose = yaml.safe_dump(_without_argument_bound(yaml.safe_load(CRD_FILE.read_text())))
    crds.kubectl("apply", "--server-side", "--force-conflicts", "-f", "-", stdin=loose)
    try:
        body = model("--chat-template=" + "x" * 2000)
        wait_until(lambda: _created(crds, namespace, body), what="the looser schema")
    finally:
        crds.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRD_FILE))
    kube = Kube(crds.api)
    reconcile(kube, None, [], namespace, "old")
    reconcile(kube, None, [], namespace, "old")  # the same again changes nothing
    stored = kube.get(KINDS["InferenceDeployment"], namespace, "old")
    assert stored is not None
    conditions = {c["type"]: c for c in stored["status"]["conditions"]}
    assert (conditions["Ready"]["status"], conditions["Ready"]["reason"]) == (
        "False",
        "InvalidSpec",
    )
    assert conditions["Degraded"]["status"] == "True"
    assert "spec.engine.extraArgs.0" in conditions["Degraded"]["message"]
    assert stored["status"]["observedGeneration"] == stored["metadata"]["generation"]
    events = crds.core.list_namespaced_event(
        namespace, field_selector="involvedObject.name=old,reason=InvalidSpec"
    ).items
    # One per condition that changed, and none for the reconcile that changed nothing.
    assert sorted((e.message or "").split(":")[0] for e in events) == [
        "Degraded=True",
        "Ready=False",
    ]
    assert kube.list(KINDS["Deployment"], namespace) == []
