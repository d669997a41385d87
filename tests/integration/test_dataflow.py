"""The data-flow map of the demo's namespace, read from the real control plane."""

from __future__ import annotations

import json

from privatellm.cli.dataflow_cmd import read_dataflow
from privatellm.controllers.gateway import reconcile_gateway
from privatellm.kube.client import Kube
from privatellm.render.dataflow import format_dataflow

from .conftest import ROOT, Cluster


def test_the_map_of_the_examples_names_connectors_subjects_models_volumes_and_keys(
    crds: Cluster, namespace: str
) -> None:
    crds.kubectl("apply", "-n", namespace, "-f", str(ROOT / "examples"))
    kube = Kube(crds.api)
    reconcile_gateway(kube, namespace)

    shown = json.loads(format_dataflow(read_dataflow(kube, namespace), "json"))

    assert shown["namespace_key"] == f"privatellm-{namespace}"
    assert {c["name"]: c["direction"] for c in shown["connectors"]} == {
        "crm-writeback": "outbound",
        "support-mailbox": "inbound",
    }
    (access,) = shown["access"]
    assert access["policy"] == "support-agents"
    assert access["subjects"] == [
        "Group:support-agents",
        "ServiceAccount:support/ticket-summarizer",
        "APIKey:helpdesk-integration",
    ]
    assert access["models"] == ["llama-70b", "llama-8b"]
    keys = {m["name"]: m["transit_key"] for m in shown["models"]}
    assert keys == {
        "claims-classifier": f"privatellm-{namespace}",
        "llama-70b": "support-data",
        "llama-8b": f"privatellm-{namespace}",
    }
    stores = {s["name"]: s for s in shown["stores"]}
    # The gateway's StatefulSet exists now: its replicas' audit claims are named as made.
    assert "audit-privatellm-gateway-0" in stores and "audit-privatellm-gateway-1" in stores
    assert stores["llama-70b-weights-zone-c"]["keys"] == []
    quarantine = stores["privatellm-connector-support-mailbox state"]
    assert quarantine["keys"] == [f"privatellm-{namespace}"]
    assert [o["destination"] for o in shown["outputs"] if o["source"] == "crm-writeback"] == [
        "crm.internal:443"
    ]
