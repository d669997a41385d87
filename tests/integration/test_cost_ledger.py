"""A scripted month of GPU spend on the real control plane, priced to the cent.

Serving Pods are created on GPU nodes with the times their kubelet would report written
into their status by the test (nothing runs on these nodes: KWOK manages only nodes
annotated for it). The ledger and budget reconciles run with an injected clock. Every
reconcile reads the ledger from its ConfigMap, as an operator restarted mid-month does.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from privatellm.api import GROUP, VERSION
from privatellm.audit import AuditLog, Signer
from privatellm.cli.main import main
from privatellm.controllers import budget, ledger
from privatellm.controllers.gateway import reconcile_gateway
from privatellm.cost.ledger import (
    ARCHIVES_ANNOTATION,
    LEDGER_CONFIGMAP,
    archive_name,
    load,
    timestamp,
)
from privatellm.kube.client import KINDS, Kube
from privatellm.render.gateway import CONFIG_KEY, CONFIG_SECRET

from .conftest import Cluster
from .test_inference_operator import model

H100 = "NVIDIA-H100-80GB-HBM3"
L4 = "NVIDIA-L4"
NODES = {
    "gpu-on-demand": {"nvidia.com/gpu.product": H100},
    "gpu-spot": {"nvidia.com/gpu.product": H100, "privatellm.io/capacity-type": "spot"},
    "gpu-l4": {"nvidia.com/gpu.product": L4},
}
PRICES = [
    {"gpuProduct": H100, "onDemandPerHour": 4.10, "spotPerHour": 1.64},
    {"gpuProduct": L4, "onDemandPerHour": 0.81},
]


def at(text: str) -> int:
    moment = timestamp(text)
    assert moment is not None
    return moment


@pytest.fixture
def gpu_nodes(crds: Cluster) -> Iterator[dict[str, dict[str, str]]]:
    """Nodes that nothing manages: the Pods bound to them keep the status the test writes."""
    for name, labels in NODES.items():
        crds.core.create_node(client.V1Node(metadata=client.V1ObjectMeta(name=name, labels=labels)))
    try:
        yield NODES
    finally:
        for name in NODES:
            crds.core.delete_node(name)


def serving_pod(name: str, model: str, node: str, gpus: int) -> dict[str, Any]:
    limits = {"nvidia.com/gpu": str(gpus)}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "labels": {
                "app.kubernetes.io/component": "inference-server",
                "privatellm.io/inference-deployment": model,
            },
        },
        "spec": {
            "nodeName": node,
            "containers": [
                {
                    "name": "vllm",
                    "image": "vllm/vllm-openai:v0.32.0",
                    "resources": {"limits": limits, "requests": limits},
                }
            ],
        },
    }


def run_pod(
    crds: Cluster, namespace: str, pod: dict[str, Any], started: str, finished: str | None = None
) -> None:
    """Create the Pod and write the status its kubelet would: started, perhaps finished."""
    name = pod["metadata"]["name"]
    crds.core.create_namespaced_pod(namespace, pod)
    state = (
        {"terminated": {"exitCode": 0, "startedAt": started, "finishedAt": finished}}
        if finished
        else {"running": {"startedAt": started}}
    )
    status = {
        "phase": "Succeeded" if finished else "Running",
        "startTime": started,
        "containerStatuses": [
            {
                "name": "vllm",
                "image": "vllm/vllm-openai:v0.32.0",
                "imageID": "",
                "ready": not finished,
                "restartCount": 0,
                "state": state,
            }
        ],
    }
    crds.core.patch_namespaced_pod_status(name, namespace, {"status": status})


def run_llama_a(crds: Cluster, namespace: str) -> None:
    """A: 2 on-demand H100s, 01:00 to 11:00 on 1 December: 10 h x 2 x 4.10 = 82.00."""
    pod = serving_pod("llama-a", "llama", "gpu-on-demand", 2)
    run_pod(crds, namespace, pod, "2026-12-01T01:00:00Z", "2026-12-01T11:00:00Z")


def gone(crds: Cluster, namespace: str, name: str) -> None:
    """Deleted at once, as after a node's loss: no kubelet says when it stopped."""
    crds.core.delete_namespaced_pod(name, namespace, grace_period_seconds=0)


def cost_budget(name: str, **spec: Any) -> dict[str, Any]:
    base = {"currency": "EUR", "monthlyLimit": 1000, "gpuPrices": PRICES}
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "CostBudget",
        "metadata": {"name": name},
        "spec": {**base, **spec},
    }


def status_of(crds: Cluster, namespace: str, name: str) -> dict[str, Any]:
    found = crds.custom.get_namespaced_custom_object(GROUP, VERSION, namespace, "costbudgets", name)
    result: dict[str, Any] = found["status"]
    return result


def test_a_scripted_month_costs_what_the_pods_ran_to_the_cent(
    crds: Cluster, namespace: str, gpu_nodes: dict[str, dict[str, str]]
) -> None:
    kube = Kube(crds.api)
    for body in (
        cost_budget("utc"),
        # Amsterdam's December starts an hour earlier: 23:00 UTC on 30 November.
        cost_budget("amsterdam", businessHours={"timezone": "Europe/Amsterdam"}),
    ):
        crds.custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "costbudgets", body)

    run_llama_a(crds, namespace)
    # C: an L4 from 23:30 on 30 November to 00:30 on 1 December, at 0.81 an hour:
    # half an hour of the UTC December (0.405), the whole hour of Amsterdam's (0.81).
    run_pod(
        crds,
        namespace,
        serving_pod("small-c", "small", "gpu-l4", 1),
        "2026-11-30T23:30:00Z",
        "2026-12-01T00:30:00Z",
    )
    ledger.reconcile(kube, namespace, gpu_nodes, at("2026-12-01T12:00:00Z"))
    gone(crds, namespace, "llama-a")
    gone(crds, namespace, "small-c")

    # B: a spot H100 from 00:00 on 2 December, last seen at 06:00, then lost with its node:
    # charged to the last sighting, 6 h x 1.64 = 9.84.
    run_pod(crds, namespace, serving_pod("llama-b", "llama", "gpu-spot", 1), "2026-12-02T00:00:00Z")
    ledger.reconcile(kube, namespace, gpu_nodes, at("2026-12-02T06:00:00Z"))
    gone(crds, namespace, "llama-b")
    ledger.reconcile(kube, namespace, gpu_nodes, at("2026-12-02T07:00:00Z"))

    stored = kube.get(ledger.CONFIG_MAP, namespace, LEDGER_CONFIGMAP)
    assert stored is not None and "ownerReferences" not in stored["metadata"]
    runs = {run.pod: run for run in load(stored["data"]).values()}
    assert {name: (r.capacity, r.gpus, r.end) for name, r in runs.items()} == {
        "llama-a": ("on-demand", 2, at("2026-12-01T11:00:00Z")),
        "small-c": ("on-demand", 1, at("2026-12-01T00:30:00Z")),
        "llama-b": ("spot", 1, at("2026-12-02T06:00:00Z")),
    }

    moment = at("2026-12-02T07:00:00Z")
    for name in ("utc", "amsterdam"):
        budget.reconcile(kube, namespace, name, moment)
    utc = status_of(crds, namespace, "utc")
    # 82.00 + 9.84 + 0.405 = 92.245, rounded half to even: 92.24.
    assert (utc["month"], utc["spentThisMonth"], utc["gpuHoursThisMonth"]) == (
        "2026-12",
        92.24,
        26.5,
    )
    assert (utc["spendComplete"], utc["percentOfLimit"]) == (True, 9.22)
    # Their InferenceDeployments are gone (never made here): their runs still count.
    assert utc["models"] == ["llama", "small"]
    amsterdam = status_of(crds, namespace, "amsterdam")
    assert amsterdam["spentThisMonth"] == 92.65  # 82.00 + 9.84 + 0.81
    assert {c["type"]: c["reason"] for c in amsterdam["conditions"]}["Ready"] == "Accounted"

    # A new month in the budget's time zone starts from nothing.
    budget.reconcile(kube, namespace, "utc", at("2027-01-01T00:00:30Z"))
    january = status_of(crds, namespace, "utc")
    assert (january["month"], january["spentThisMonth"]) == ("2027-01", 0.0)


def events_by_reason(crds: Cluster, namespace: str, name: str) -> dict[str, int]:
    found = crds.core.list_namespaced_event(
        namespace, field_selector=f"involvedObject.kind=CostBudget,involvedObject.name={name}"
    ).items
    counts: dict[str, int] = {}
    for event in found:
        counts[event.reason] = counts.get(event.reason, 0) + (event.count or 1)
    return counts


def gateway_block(kube: Kube, namespace: str) -> Any:
    """The llama route's budget block in the gateway configuration the operator wrote."""
    secret = kube.get(KINDS["Secret"], namespace, CONFIG_SECRET)
    assert secret is not None
    config = yaml.safe_load(base64.b64decode(secret["data"][CONFIG_KEY]))
    [route] = [m for m in config["models"] if m["name"] == "llama"]
    return route.get("budgetBlock")


def set_limit(crds: Cluster, namespace: str, limit: int) -> None:
    crds.custom.patch_namespaced_custom_object(
        GROUP, VERSION, namespace, "costbudgets", "tight", {"spec": {"monthlyLimit": limit}}
    )


def test_thresholds_act_once_each_reach_the_gateway_and_lift_with_a_raised_limit(
    crds: Cluster,
    namespace: str,
    gpu_nodes: dict[str, dict[str, str]],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    kube = Kube(crds.api)
    crds.custom.create_namespaced_custom_object(
        GROUP, VERSION, namespace, "inferencedeployments", model("llama")
    )
    thresholds = [{"percent": 80, "action": "alert"}, {"percent": 100, "action": "block"}]
    body = cost_budget("tight", thresholds=thresholds, breakGlassGroups=["oncall"])
    body["spec"]["monthlyLimit"] = 100
    crds.custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "costbudgets", body)
    run_llama_a(crds, namespace)  # 82.00: 82 % of 100
    moment = at("2026-12-01T12:00:00Z")
    ledger.reconcile(kube, namespace, gpu_nodes, moment)
    signer = Signer.generate()
    audit = AuditLog(tmp_path / "audit", signer)
    try:
        budget.reconcile(kube, namespace, "tight", moment, audit)
        budget.reconcile(kube, namespace, "tight", moment, audit)  # again: nothing new to say
        assert status_of(crds, namespace, "tight")["activeAction"] == "alert"
        reconcile_gateway(kube, namespace)
        assert gateway_block(kube, namespace) is None

        set_limit(crds, namespace, 80)  # 102.5 %
        budget.reconcile(kube, namespace, "tight", moment, audit)
        blocked = status_of(crds, namespace, "tight")
        assert (blocked["activeAction"], blocked["percentOfLimit"]) == ("block", 102.5)
        reconcile_gateway(kube, namespace)
        assert gateway_block(kube, namespace) == {
            "budget": "tight",
            "breakGlassGroups": ["oncall"],
        }

        set_limit(crds, namespace, 1000)  # 8.2 %: both lift
        budget.reconcile(kube, namespace, "tight", moment, audit)
        assert "activeAction" not in status_of(crds, namespace, "tight")
        reconcile_gateway(kube, namespace)
        assert gateway_block(kube, namespace) is None
    finally:
        audit.close()

    assert events_by_reason(crds, namespace, "tight") == {
        "Alerting": 1,
        "Blocked": 1,
        "AlertingLifted": 1,
        "BlockedLifted": 1,
    }
    public_key = tmp_path / "audit.pub"
    public_key.write_bytes(signer.public_pem())
    query = ["audit", "query", str(tmp_path / "audit"), "--public-key", str(public_key)]
    capsys.readouterr()
    assert main([*query, "--subject", "privatellm-operator", "--format", "json"]) == 0
    # One JSON object per line.
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line]
    assert [r["action"] for r in records] == [
        "budget.alerting.started",
        "budget.blocked.started",
        "budget.alerting.lifted",
        "budget.blocked.lifted",
    ]


def test_closed_runs_move_to_archives_the_budget_still_counts_and_a_lost_one_is_said(
    crds: Cluster,
    namespace: str,
    gpu_nodes: dict[str, dict[str, str]],
    report: Any,
    capsys: pytest.CaptureFixture[str],
) -> None:
    kube = Kube(crds.api)
    crds.custom.create_namespaced_custom_object(
        GROUP, VERSION, namespace, "costbudgets", cost_budget("utc")
    )
    run_llama_a(crds, namespace)  # ended 1 December, 11:00
    later = at("2026-12-04T12:00:00Z")
    for _ in range(2):  # the second sees the Succeeded Pod again
        ledger.reconcile(kube, namespace, gpu_nodes, later)
    live = kube.get(KINDS["ConfigMap"], namespace, LEDGER_CONFIGMAP)
    assert live is not None and load(live.get("data")) == {}
    assert live["metadata"]["annotations"][ARCHIVES_ANNOTATION] == "2026-12.1"
    archived = kube.get(KINDS["ConfigMap"], namespace, archive_name("2026-12.1"))
    assert archived is not None
    assert [r.pod for r in load(archived["data"]).values()] == ["llama-a"]

    budget.reconcile(kube, namespace, "utc", later)
    status = status_of(crds, namespace, "utc")
    assert (status["spentThisMonth"], status["spendComplete"]) == (82.0, True)
    month = ["-n", namespace, "--month", "2026-12", "--format", "json"]
    rows = json.loads(report(capsys, *month))
    assert [(r["model"], r["amount"]) for r in rows] == [("llama", "82.00"), (None, "82.00")]

    crds.core.delete_namespaced_config_map(archive_name("2026-12.1"), namespace)
    budget.reconcile(kube, namespace, "utc", later)
    status = status_of(crds, namespace, "utc")
    assert (status["spentThisMonth"], status["spendComplete"]) == (0.0, False)
    degraded = next(c for c in status["conditions"] if c["type"] == "Degraded")
    assert (degraded["status"], degraded["reason"]) == ("True", "LedgerArchiveMissing")
    assert "privatellm-gpu-ledger-2026-12.1" in degraded["message"]
    error = report(capsys, *month, exit_code=2)
    assert (
        f"the GPU ledger archives {namespace}/privatellm-gpu-ledger-2026-12.1 are missing" in error
    )
