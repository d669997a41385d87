"""What an AccessPolicy names that matches nothing yet is said in its status, not kept silent."""

from __future__ import annotations

from typing import Any

from privatellm.api import GROUP, VERSION
from privatellm.controllers.gateway import reconcile_gateway
from privatellm.kube.client import Kube

from .conftest import Cluster
from .test_inference_operator import model


def policy_status(cluster: Cluster, namespace: str) -> dict[str, dict[str, Any]]:
    found = cluster.custom.get_namespaced_custom_object(
        GROUP, VERSION, namespace, "accesspolicies", "team"
    )
    return {c["type"]: c for c in (found.get("status") or {}).get("conditions") or []}


def test_a_source_namespace_that_does_not_exist_is_a_warning_until_it_does(
    crds: Cluster, namespace: str
) -> None:
    kube = Kube(crds.api)
    crds.custom.create_namespaced_custom_object(
        GROUP, VERSION, namespace, "inferencedeployments", model("chat", replicas=1)
    )
    missing = f"{namespace}-clients"
    policy = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "AccessPolicy",
        "metadata": {"name": "team"},
        "spec": {
            "subjects": [{"kind": "ServiceAccount", "name": "app", "namespace": missing}],
            "models": ["chat"],
            "sourceNamespaces": [namespace, missing],
        },
    }
    crds.custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "accesspolicies", policy)
    reconcile_gateway(kube, namespace)

    conditions = policy_status(crds, namespace)
    assert conditions["Ready"]["status"] == "True"  # enforced: it admits nobody from there
    sources = conditions["SourceNamespacesFound"]
    assert (sources["status"], sources["reason"]) == ("False", "NamespaceNotFound")
    assert sources["message"].startswith(f"spec.sourceNamespaces[1]: namespace '{missing}'")
    events = crds.core.list_namespaced_event(
        namespace, field_selector="involvedObject.kind=AccessPolicy,reason=NamespaceNotFound"
    ).items
    assert len(events) == 1

    crds.kubectl("create", "namespace", missing)
    try:
        reconcile_gateway(kube, namespace)
        assert policy_status(crds, namespace)["SourceNamespacesFound"]["status"] == "True"
    finally:
        crds.kubectl("delete", "namespace", missing, "--wait=false")
