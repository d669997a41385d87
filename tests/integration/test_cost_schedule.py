"""Business hours, idle timeouts and spot placement of a CostBudget, on the real API server.

The budget's and the models' reconciles run as a worker calls them, with the moment
passed in: a Friday evening and the Monday morning after it pass in no time. The
autoscaler reads its demand from a gateway that reports no load (the demand source is
the input, as the gateway's own tests cover its reports).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from typing import Any

import pytest

from privatellm.api import GROUP, VERSION
from privatellm.autoscale import EngineReport, GatewayReport
from privatellm.controllers import budget
from privatellm.controllers.autoscaling import Autoscaler
from privatellm.controllers.inference import reconcile
from privatellm.kube.client import KINDS, Kube
from privatellm.render.inference_status import NodeView

from .conftest import Cluster
from .test_cost_ledger import PRICES, cost_budget, status_of

H100 = "NVIDIA-H100-80GB-HBM3"
FRIDAY_EVENING = "2026-12-04T17:30:00Z"  # 18:30 in Amsterdam
MONDAY_MORNING = "2026-12-07T07:00:30Z"  # 08:00:30


def at(text: str) -> float:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def model(name: str, **spec: Any) -> dict[str, Any]:
    base = {
        "model": {"name": name, "source": {"uri": f"pvc://weights/{name}", "sizeGiB": 1}},
        "resources": {"gpusPerReplica": 1, "gpuProduct": H100},
        "weightCache": {"enabled": False},
        "zones": ["zone-a", "zone-b", "zone-c"],
    }
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "InferenceDeployment",
        "metadata": {"name": name, "labels": {"team": "research"}},
        "spec": {**base, **spec},
    }


class QuietGateway:
    """One gateway replica that has nothing in flight for any model."""

    def watch(self, namespace: str) -> None:
        pass

    def reports(self, namespace: str, model: str) -> list[GatewayReport]:
        return [GatewayReport("gateway-0", 0, 0, 0, 0, 0.0, 0.0)]

    def engines(self, namespace: str, model: str) -> list[EngineReport]:
        return []


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def kube(crds: Cluster) -> Iterator[Kube]:
    yield Kube(crds.api)


def replicas(crds: Cluster, namespace: str, model: str) -> int:
    deployments = crds.apps.list_namespaced_deployment(
        namespace, label_selector=f"privatellm.io/inference-deployment={model}"
    ).items
    return sum(d.spec.replicas or 0 for d in deployments)


def model_status(kube: Kube, namespace: str, name: str) -> dict[str, Any]:
    found = kube.get(KINDS["InferenceDeployment"], namespace, name)
    assert found is not None
    status: dict[str, Any] = found.get("status") or {}
    return status


def events(crds: Cluster, namespace: str) -> list[str]:
    found = crds.core.list_namespaced_event(
        namespace, field_selector="involvedObject.kind=CostBudget"
    ).items
    return sorted(e.reason for e in found)


def test_off_hours_hold_every_model_in_scope_and_lift_on_monday(
    crds: Cluster, kube: Kube, namespace: str
) -> None:
    for body in (
        model("fixed", replicas=6),
        model("scaled", autoscaling={"minReplicas": 3, "maxReplicas": 6}),
        model("other", replicas=3),
    ):
        if body["metadata"]["name"] == "other":
            body["metadata"]["labels"] = {"team": "sales"}
        crds.custom.create_namespaced_custom_object(
            GROUP, VERSION, namespace, "inferencedeployments", body
        )
    hours = {"timezone": "Europe/Amsterdam", "offHoursMaxReplicas": 1}
    body = cost_budget(
        "research", businessHours=hours, selector={"matchLabels": {"team": "research"}}
    )
    crds.custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "costbudgets", body)
    nodes = [NodeView.from_node(n) for n in kube.list(KINDS["Node"])]
    clock = Clock(at(FRIDAY_EVENING))
    autoscaler = Autoscaler(QuietGateway(), clock)

    def models_at(moment: str) -> None:
        clock.now = at(moment)
        budget.reconcile(kube, namespace, "research", int(clock.now))
        for name in ("fixed", "scaled", "other"):
            reconcile(kube, None, nodes, namespace, name, autoscaler)

    models_at(FRIDAY_EVENING)
    status = status_of(crds, namespace, "research")
    assert status["offHours"] is True and status["models"] == ["fixed", "scaled"]
    off = next(c for c in status["conditions"] if c["type"] == "OffHours")
    assert off["message"] == (
        "outside business hours until Mon 2026-12-07 08:00 CET: models in scope run at most"
        " 1 replica"
    )
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert (ready["status"], ready["reason"]) == ("True", "Accounted")
    assert replicas(crds, namespace, "fixed") == 1
    assert replicas(crds, namespace, "scaled") == 1
    assert replicas(crds, namespace, "other") == 3, "out of the budget's scope"
    scaled = model_status(kube, namespace, "scaled")["autoscaling"]
    assert "CostBudget 'research' off hours: at most 1" in scaled["message"], scaled

    models_at(MONDAY_MORNING)
    assert status_of(crds, namespace, "research")["offHours"] is False
    assert replicas(crds, namespace, "fixed") == 6
    assert replicas(crds, namespace, "scaled") == 3, "back to minReplicas"
    assert events(crds, namespace) == ["OffHours", "OffHoursLifted"]


def test_an_idle_timeout_sends_a_model_to_zero_whatever_its_minimum_or_count(
    crds: Cluster, kube: Kube, namespace: str
) -> None:
    scaling = {"minReplicas": 2, "maxReplicas": 4}
    for body in (model("scaled", autoscaling=scaling), model("fixed", replicas=2)):
        crds.custom.create_namespaced_custom_object(
            GROUP, VERSION, namespace, "inferencedeployments", body
        )
    body = cost_budget("idle", idleTimeout="10m")
    crds.custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "costbudgets", body)
    nodes = [NodeView.from_node(n) for n in kube.list(KINDS["Node"])]
    start = at(MONDAY_MORNING)
    clock = Clock(start)
    autoscaler = Autoscaler(QuietGateway(), clock)
    budget.reconcile(kube, namespace, "idle", int(start))
    status = status_of(crds, namespace, "idle")
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert (ready["status"], ready["reason"]) == ("True", "Accounted"), "it reaches both"

    def step(minutes: int) -> None:
        clock.now = start + minutes * 60
        for name in ("scaled", "fixed"):
            reconcile(kube, None, nodes, namespace, name, autoscaler)

    step(0)
    assert (replicas(crds, namespace, "scaled"), replicas(crds, namespace, "fixed")) == (2, 2)
    step(9)
    assert (replicas(crds, namespace, "scaled"), replicas(crds, namespace, "fixed")) == (2, 2)
    step(10)
    assert (replicas(crds, namespace, "scaled"), replicas(crds, namespace, "fixed")) == (0, 0)
    for name in ("scaled", "fixed"):
        scaled = model_status(kube, namespace, name)["autoscaling"]
        assert scaled["reason"] == "ScaledToZero"
        assert "CostBudget 'idle' idleTimeout 10m" in scaled["message"]


def test_batch_work_runs_on_spot_where_the_budget_prices_spot(
    crds: Cluster, kube: Kube, namespace: str
) -> None:
    for body in (
        model("batch", workloadClass="batch", replicas=1),
        model("pinned", workloadClass="batch", capacityType="on-demand", replicas=1),
    ):
        crds.custom.create_namespaced_custom_object(
            GROUP, VERSION, namespace, "inferencedeployments", body
        )
    assert PRICES[0]["gpuProduct"] == H100 and PRICES[0]["spotPerHour"]
    crds.custom.create_namespaced_custom_object(
        GROUP, VERSION, namespace, "costbudgets", cost_budget("spot")
    )
    nodes = [NodeView.from_node(n) for n in kube.list(KINDS["Node"])]
    for name in ("batch", "pinned"):
        reconcile(kube, None, nodes, namespace, name, None)
    assert not spot_tolerated(crds, namespace, "batch"), "no budget status yet: on demand"
    budget.reconcile(kube, namespace, "spot", int(at(MONDAY_MORNING)))
    for name in ("batch", "pinned"):
        reconcile(kube, None, nodes, namespace, name, None)
    assert spot_tolerated(crds, namespace, "batch")
    assert not spot_tolerated(crds, namespace, "pinned"), "capacityType chosen in the spec"


def spot_tolerated(crds: Cluster, namespace: str, model: str) -> bool:
    deployments = crds.apps.list_namespaced_deployment(
        namespace, label_selector=f"privatellm.io/inference-deployment={model}"
    ).items
    assert deployments
    found = set()
    for deployment in deployments:
        pod = deployment.spec.template.spec
        tolerations = pod.tolerations or []
        terms = pod.affinity.node_affinity.required_during_scheduling_ignored_during_execution
        keys = {e.key for t in terms.node_selector_terms for e in t.match_expressions or []}
        found.add(
            any(t.key == "privatellm.io/capacity-type" for t in tolerations)
            and "privatellm.io/capacity-type" in keys
        )
    assert len(found) == 1, "every zone alike"
    return found.pop()
