"""The autoscaler's decision in an InferenceDeployment's plan, status and Events."""

from __future__ import annotations

from typing import Any

from privatellm.autoscale import EngineReport, GatewayReport
from privatellm.controllers.autoscaling import Autoscaler
from privatellm.render.inference_status import (
    Observed,
    ZoneView,
    compute_status,
    replica_plan,
)

from .test_inference_status import NOW, WARM, cluster, conditions, model

SCALED = {"minReplicas": 0, "maxReplicas": 6, "targetInFlightPerReplica": 4}


class Reports:
    """What the gateways and engines report, set by the test; `watched` says which
    namespaces were asked."""

    def __init__(self) -> None:
        self.by_model: dict[str, list[GatewayReport]] = {}
        self.engines_by_model: dict[str, list[EngineReport]] = {}
        self.watched: set[str] = set()

    def watch(self, namespace: str) -> None:
        self.watched.add(namespace)

    def reports(self, namespace: str, model: str) -> list[GatewayReport]:
        return self.by_model.get(model, [])

    def engines(self, namespace: str, model: str) -> list[EngineReport]:
        return self.engines_by_model.get(model, [])

    def set(self, in_flight: int = 0, held: int = 0, wanted: bool = False) -> None:
        report = GatewayReport("gw-0", in_flight, 0, held, 0, 0.0, 0.0, wanted)
        self.by_model["m"] = [report]


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def status_for(obj: Any, autoscaler: Autoscaler, previous: dict[str, Any]) -> dict[str, Any]:
    decision = autoscaler.decide(obj, previous)
    assert decision is not None
    plan = replica_plan(obj, cluster(), WARM, decision.replicas)
    zones = {z: ZoneView(desired=n, ready=n, updated=n, cache_warm=True) for z, n in plan.items()}
    observed = Observed(nodes=cluster(), zones=zones)
    return compute_status(obj, observed, plan, [], previous, NOW, scaling=decision)


def test_a_model_at_zero_is_ready_idle_and_wakes_on_the_first_request() -> None:
    reports, clock = Reports(), Clock()
    autoscaler = Autoscaler(reports, clock)
    obj = model(autoscaling=SCALED)
    reports.set()
    idle = status_for(obj, autoscaler, {})
    assert reports.watched == {"ns"}
    assert conditions(idle)["Ready"] == ("True", "ScaledToZero")
    assert idle["replicas"] == 0 and idle["autoscaling"]["desiredReplicas"] == 0

    reports.set(held=50, wanted=True)
    woken = status_for(obj, autoscaler, idle)
    assert woken["autoscaling"]["reason"] == "WakeFromZero"
    assert woken["replicas"] == 1, "fifty held requests are one scale-up"
    assert woken["autoscaling"]["lastScaleTime"] == NOW


def test_load_scales_up_to_the_maximum_spread_over_zones() -> None:
    reports, clock = Reports(), Clock()
    autoscaler = Autoscaler(reports, clock)
    obj = model(autoscaling={**SCALED, "minReplicas": 1})
    reports.set(in_flight=4)
    assert status_for(obj, autoscaler, {})["replicas"] == 1
    reports.set(in_flight=1000)
    previous: dict[str, Any] = {}
    for _ in range(3):
        previous = status_for(obj, autoscaler, previous)
    assert previous["replicas"] == 6 and previous["autoscaling"]["reason"] == "AtMaximum"
    assert [z["replicas"] for z in previous["zones"]] == [2, 2, 2]


def test_full_kv_caches_raise_the_count_where_the_requests_alone_would_not() -> None:
    reports, clock = Reports(), Clock()
    autoscaler = Autoscaler(reports, clock)
    obj = model(autoscaling={**SCALED, "minReplicas": 2})
    reports.set(in_flight=8)
    steady = status_for(obj, autoscaler, {})
    assert steady["replicas"] == 2 and steady["autoscaling"]["reason"] == "Steady"

    # Few but long requests: the two replicas' KV caches are 95% full.
    reports.engines_by_model["m"] = [EngineReport(f"vllm-{i}", 4, 0, 0.95) for i in range(2)]
    pressed = status_for(obj, autoscaler, steady)
    assert pressed["replicas"] == 3
    assert pressed["autoscaling"]["reason"] == "ScaleUp"
    assert pressed["autoscaling"]["signal"] == "kvCacheUsage"

    # An engine whose figures are absurd is left out, not believed.
    reports.engines_by_model["m"] = [EngineReport("vllm-0", 4, 0, 3.5)]
    assert status_for(obj, autoscaler, pressed)["replicas"] == 3


def test_without_a_gateway_report_the_count_holds_and_status_says_so() -> None:
    autoscaler = Autoscaler(Reports(), Clock())
    status = status_for(model(autoscaling={**SCALED, "minReplicas": 2}), autoscaler, {})
    assert status["replicas"] == 2
    assert status["autoscaling"]["reason"] == "DemandUnknown"
    degraded = next(c for c in status["conditions"] if c["type"] == "Degraded")
    assert (degraded["status"], degraded["reason"]) == ("True", "DemandUnknown")
    assert degraded["message"].startswith("spec.autoscaling: ")


def test_after_a_restart_the_count_in_status_stands() -> None:
    reports, clock = Reports(), Clock()
    obj = model(autoscaling={**SCALED, "minReplicas": 1})
    reports.set(in_flight=20)
    before = status_for(obj, Autoscaler(reports, clock), {})
    reports.set(in_flight=0)
    restarted = status_for(obj, Autoscaler(reports, clock), before)
    assert restarted["replicas"] == before["replicas"] == 5
    assert restarted["autoscaling"]["lastScaleTime"] == before["autoscaling"]["lastScaleTime"]


def test_a_model_without_autoscaling_is_not_decided() -> None:
    reports = Reports()
    assert Autoscaler(reports, Clock()).decide(model(), {}) is None
    assert reports.watched == set()


def test_fewer_replicas_than_zones_is_explained() -> None:
    reports = Reports()
    reports.set(in_flight=100)
    obj = model(autoscaling={"minReplicas": 1, "maxReplicas": 2, "targetInFlightPerReplica": 4})
    status = status_for(obj, Autoscaler(reports, Clock()), {})
    status = status_for(obj, Autoscaler(reports, Clock()), status)
    assert [z["replicas"] for z in status["zones"]] == [1, 1, 0]
    assert "maxReplicas 2 is below the 3 zones" in status["autoscaling"]["message"]
