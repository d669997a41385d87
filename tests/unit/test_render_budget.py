"""A CostBudget's status: the month's spend, and Ready only when nothing it sets is left
unenforced."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

from privatellm.api.budget import CostBudgetSpec
from privatellm.api.inference import InferenceDeploymentSpec
from privatellm.autoscale import Limits
from privatellm.controllers import budget as controller
from privatellm.controllers import ledger
from privatellm.controllers.builder import KnownKeys, WatchEvent
from privatellm.controllers.runtime import CONTROLLERS
from privatellm.cost.chargeback import UsageFigures
from privatellm.cost.schedule import period_at
from privatellm.cost.spend import Spend
from privatellm.render.budget import (
    ACCOUNTED,
    ACTIONS_NOT_ENFORCED,
    Figures,
    action_transitions,
    budget_status,
)
from privatellm.render.budget_actions import (
    budget_blocks,
    budget_spec,
    budget_throttles,
    idle_timeouts,
    model_limits,
    stricter_elsewhere,
)
from privatellm.render.conditions import find_condition
from privatellm.render.inference_status import Problem

T0, T1 = "2026-01-01T00:00:00Z", "2026-01-01T00:05:00Z"
PRICES = [{"gpuProduct": "NVIDIA-H100-80GB-HBM3", "onDemandPerHour": 4.1}]


def spec(**fields: Any) -> CostBudgetSpec:
    base = {"currency": "EUR", "monthlyLimit": 1000, "gpuPrices": PRICES}
    return CostBudgetSpec.model_validate({**base, **fields})


def figures(amount: str = "123.456", seconds: int = 9000, **spent: Any) -> Figures:
    return Figures(
        "2026-01", ["llama"], Spend(seconds, Decimal(amount), **spent), Decimal("250.004")
    )


def states(status: dict[str, object]) -> dict[str, tuple[str, str]]:
    conditions = status["conditions"]
    assert isinstance(conditions, list)
    return {c["type"]: (c["status"], c["reason"]) for c in conditions}


def test_a_budget_with_only_a_limit_and_prices_is_accounted_and_ready() -> None:
    status = budget_status(3, [], {}, T0, spec(), figures())
    assert states(status) == {
        "Ready": ("True", ACCOUNTED),
        "Progressing": ("False", ACCOUNTED),
        "Degraded": ("False", ACCOUNTED),
    }
    assert {k: v for k, v in status.items() if k not in ("conditions", "observedGeneration")} == {
        "month": "2026-01",
        "models": ["llama"],
        "spentThisMonth": 123.46,
        "spendComplete": True,
        "unpricedGpuProducts": [],
        "percentOfLimit": 12.35,
        "gpuHoursThisMonth": 2.5,
        "forecastThisMonth": 250.0,
    }


def test_what_cannot_act_on_a_model_in_scope_keeps_it_from_ready_and_is_named() -> None:
    acting = spec(
        thresholds=[{"percent": 80, "action": "alert"}, {"percent": 90, "action": "scaleDown"}],
        businessHours={"timezone": "Europe/Amsterdam"},
        idleTimeout="30m",
    )
    everything = budget_status(1, [], {}, T0, acting, figures())
    assert states(everything)["Ready"] == ("True", ACCOUNTED), "the operator reaches all"
    status = budget_status(1, [], {}, T0, acting, figures(), keda=["big"])
    assert states(status)["Ready"] == ("False", ACTIONS_NOT_ENFORCED)
    ready = find_condition(status["conditions"], "Ready")
    assert ready is not None
    assert ready["message"] == (
        "spend is accounted; cannot act on every model in scope:"
        " spec.idleTimeout (models scaled by KEDA: big),"
        " spec.businessHours (models scaled by KEDA: big),"
        " spec.thresholds[1] (scaleDown: models scaled by KEDA: big)"
    )
    assert status["spentThisMonth"] == 123.46, "the figures are there all the same"
    alerting = spec(thresholds=[{"percent": 80, "action": "alert"}])
    only_alerts = budget_status(1, [], {}, T0, alerting, figures(), keda=["big"])
    assert states(only_alerts)["Ready"] == ("True", ACCOUNTED), "an alert needs no scaling"


def test_off_hours_is_a_condition_with_the_ceiling_and_when_it_ends() -> None:
    hours = spec(businessHours={"timezone": "Europe/Amsterdam", "offHoursMaxReplicas": 0})
    assert hours.business_hours is not None
    friday_evening = at("2026-12-04T17:30:00Z")  # 18:30 in Amsterdam
    status = budget_status(
        1, [], {}, T0, hours, figures(), period=period_at(hours.business_hours, friday_evening)
    )
    assert status["offHours"] is True
    off = find_condition(status["conditions"], "OffHours")
    assert off is not None and off["status"] == "True"
    assert off["message"] == (
        "outside business hours until Mon 2026-12-07 08:00 CET: models in scope run at most"
        " 0 replicas"
    )
    monday = period_at(hours.business_hours, at("2026-12-07T07:00:00Z"))
    working = budget_status(1, [], status, T1, hours, figures(), period=monday)
    assert working["offHours"] is False
    assert [c[:2] for c in action_transitions(status["conditions"], working["conditions"])] == [
        ("OffHours", "lifted")
    ]


def at(text: str) -> float:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


ACTIONS = [
    {"percent": 50, "action": "alert"},
    {"percent": 80, "action": "alert"},
    {"percent": 100, "action": "block"},
    {"percent": 90, "action": "scaleDown"},
]


def test_each_action_has_a_condition_true_from_its_first_threshold_reached() -> None:
    # 123.456 of 1000: 12.35 %, below every threshold.
    below = budget_status(1, [], {}, T0, spec(thresholds=ACTIONS), figures())
    assert {t: states(below)[t] for t in ("Alerting", "ScaledDown", "Blocked")} == {
        "Alerting": ("False", "BelowThreshold"),
        "ScaledDown": ("False", "BelowThreshold"),
        "Blocked": ("False", "BelowThreshold"),
    }
    assert "Throttling" not in states(below), "only the actions the thresholds name"
    assert "activeAction" not in below and states(below)["Ready"] == ("True", ACCOUNTED)

    at_85 = budget_status(1, [], below, T1, spec(thresholds=ACTIONS), figures("850"))
    assert states(at_85)["Alerting"] == ("True", "ThresholdReached")
    assert states(at_85)["ScaledDown"] == ("False", "BelowThreshold")
    alerting = find_condition(at_85["conditions"], "Alerting")
    assert alerting is not None
    assert alerting["message"] == (
        "spend is at 85.00% of the monthly limit, past the 50% threshold: alert"
    )
    assert at_85["activeAction"] == "alert"

    spent = budget_status(1, [], at_85, T1, spec(thresholds=ACTIONS), figures("1000"))
    assert spent["activeAction"] == "block", "the strictest in force"
    assert states(spent)["Blocked"] == ("True", "ThresholdReached")
    # A raised limit lifts what no longer applies.
    raised = spec(thresholds=ACTIONS, monthlyLimit=5000)
    lifted = budget_status(2, [], spent, T1, raised, figures("1000"))
    assert "activeAction" not in lifted
    assert states(lifted)["Blocked"] == ("False", "BelowThreshold")


def test_an_unpriced_gpu_is_degraded_and_the_spend_a_floor_never_a_zero() -> None:
    unpriced = figures(unpriced={("NVIDIA-B200", "llama"), ("", "small")})
    status = budget_status(1, [], {}, T0, spec(), unpriced)
    assert states(status)["Degraded"] == ("True", "UnpricedGPU")
    assert states(status)["Ready"] == ("False", "UnpricedGPU")
    degraded = find_condition(status["conditions"], "Degraded")
    assert degraded is not None
    assert degraded["message"].startswith(
        "spec.gpuPrices: no price for (unknown), NVIDIA-B200 (models llama, small)"
    )
    assert (status["spendComplete"], status["spentThisMonth"]) == (False, 123.46)
    assert status["unpricedGpuProducts"] == ["(unknown)", "NVIDIA-B200"]


def test_a_time_zone_the_runtime_cannot_load_reports_no_figures() -> None:
    problem = Problem("UnknownTimeZone", "spec.businessHours.timezone: cannot load 'X/Y'")
    status = budget_status(1, [], {}, T0, spec(), problems=[problem])
    assert states(status)["Degraded"] == ("True", "UnknownTimeZone")
    assert "spentThisMonth" not in status


def test_a_spec_the_models_refuse_is_degraded_with_each_field_named() -> None:
    invalid = ["spec.currency: String should match pattern '^[A-Z]{3}$'", "spec.gpuPrices: x"]
    status = budget_status(2, invalid, {}, T0)
    assert states(status) == {
        "Ready": ("False", "InvalidSpec"),
        "Progressing": ("False", "InvalidSpec"),
        "Degraded": ("True", "InvalidSpec"),
    }
    degraded = find_condition(status["conditions"], "Degraded")
    assert degraded is not None
    assert degraded["message"] == "; ".join(invalid)


def test_recomputing_an_unchanged_budget_writes_nothing() -> None:
    first = budget_status(1, [], {}, T0, spec(), figures())
    assert budget_status(1, [], first, T1, spec(), figures()) == first


def test_a_fixed_spec_turns_degraded_off_at_the_time_it_was_fixed() -> None:
    broken = budget_status(1, ["spec.currency: bad"], {}, T0)
    fixed = budget_status(2, [], broken, T1, spec(), figures())
    degraded = find_condition(fixed["conditions"], "Degraded")
    assert degraded is not None
    assert (degraded["status"], degraded["lastTransitionTime"]) == ("False", T1)
    assert fixed["observedGeneration"] == 2


def test_conditions_of_other_writers_are_kept() -> None:
    theirs = {"type": "Synced", "status": "True", "reason": "Applied", "message": ""}
    status = budget_status(1, [], {"conditions": [theirs]}, T0, spec(), figures())
    assert status["conditions"][-1] == theirs


def test_the_controllers_are_declared_and_the_ledger_queues_its_namespaces_budgets() -> None:
    assert controller.CONTROLLER in CONTROLLERS and ledger.CONTROLLER in CONTROLLERS
    body = {"kind": "CostBudget", "metadata": {"namespace": "team", "name": "support"}}
    assert controller.CONTROLLER.for_.requests(WatchEvent("ADDED", body, True), KnownKeys()) == [
        (("team", "support"), True)
    ]
    known = [("team", "support"), ("team", "gpu"), ("other", "x")]
    pod_event = WatchEvent(
        "MODIFIED", {"kind": "Pod", "metadata": {"namespace": "team", "name": "llama-1"}}, False
    )
    watch = controller.CONTROLLER.watches[0]
    assert watch.labels == {"app.kubernetes.io/component": "inference-server"}
    assert sorted(k for k, _ in watch.requests(pod_event, known)) == [
        ("team", "gpu"),
        ("team", "support"),
    ]


def raw_budget(
    name: str, action: str | None, models: list[str], groups: list[str], **spec: Any
) -> Any:
    status: dict[str, Any] = {"observedGeneration": 1, "models": models}
    if action:
        status["activeAction"] = action
    if "offHours" in spec:
        status["offHours"] = spec.pop("offHours")
    base = {"currency": "EUR", "monthlyLimit": 1000, "gpuPrices": PRICES}
    return {
        "metadata": {"name": name, "generation": 1},
        "spec": {**base, "breakGlassGroups": groups, **spec},
        "status": status,
    }


def test_blocks_follow_the_budgets_in_force() -> None:
    budgets = [
        raw_budget("a", "block", ["llama", "small"], ["oncall", "sre"]),
        raw_budget("b", "block", ["llama"], ["sre"]),
        raw_budget("c", "scaleDown", ["mixtral"], []),
        raw_budget("d", "alert", ["gemma"], []),
    ]
    blocks = budget_blocks(budgets)
    # Blocked by two: only who both let through still is.
    assert blocks["llama"].budget == "a" and blocks["llama"].break_glass_groups == ["sre"]
    assert blocks["small"].break_glass_groups == ["oncall", "sre"]
    assert set(blocks) == {"llama", "small"}
    stale = raw_budget("e", "block", ["qwen"], [])
    stale["metadata"]["generation"] = 2  # a limit raised, not reconciled yet
    assert budget_blocks([stale]) == {} and not model_limits([stale], "qwen")


def test_the_strictest_limit_of_the_budgets_covering_a_model_applies() -> None:
    hours = {"timezone": "UTC", "offHoursMaxReplicas": 2}
    budgets = [
        raw_budget("a", "scaleDown", ["llama"], []),
        raw_budget("b", None, ["llama", "small"], [], businessHours=hours, offHours=True),
        raw_budget(
            "c",
            None,
            ["llama"],
            [],
            businessHours={**hours, "offHoursMaxReplicas": 1},
            offHours=True,
            idleTimeout="1h",
        ),
        raw_budget("d", None, ["llama", "small"], [], idleTimeout="10m"),
        raw_budget(
            "e", None, ["small"], [], businessHours={"offHoursMaxReplicas": 0}, offHours=False
        ),
    ]
    llama = model_limits(budgets, "llama")
    assert (llama.to_minimum, llama.ceiling, llama.idle_after_seconds) == (True, 1, 600.0)
    assert llama.reasons == (
        "CostBudget 'a' at scaleDown",
        "CostBudget 'b' off hours: at most 2",
        "CostBudget 'c' off hours: at most 1",
        "CostBudget 'c' idleTimeout 1h",
        "CostBudget 'd' idleTimeout 10m",
    )
    small = model_limits(budgets, "small")
    assert (small.to_minimum, small.ceiling, small.idle_after_seconds) == (False, 2, 600.0)
    assert not model_limits(budgets, "gemma"), "no budget covers it"
    assert idle_timeouts(budgets) == {"llama", "small"}, "the gateway holds their requests"


def test_throttles_combine_to_the_lowest_figures_and_the_common_priority() -> None:
    budgets = [
        raw_budget(
            "a",
            "throttle",
            ["llama", "small"],
            [],
            throttle={
                "quotaPercent": 50,
                "requestsPerMinute": 30,
                "priorityGroups": ["sre", "exec"],
                "priorityPolicies": ["oncall"],
            },
        ),
        raw_budget(
            "b",
            "throttle",
            ["llama"],
            [],
            throttle={"quotaPercent": 20, "requestsPerMinute": 60, "priorityGroups": ["sre"]},
        ),
        raw_budget("c", "alert", ["gemma"], []),
    ]
    throttles = budget_throttles(budgets)
    assert set(throttles) == {"llama", "small"}
    llama = throttles["llama"]
    assert (llama.quota_percent, llama.requests_per_minute) == (20, 30)
    assert (llama.priority_groups, llama.priority_policies) == (["sre"], [])
    small = throttles["small"]
    assert (small.budget, small.quota_percent, small.priority_groups) == ("a", 50, ["exec", "sre"])
    defaults = budget_throttles([raw_budget("z", "throttle", ["x"], [])])["x"]
    assert (defaults.quota_percent, defaults.requests_per_minute) == (25, 10)


def model_spec(**fields: Any) -> InferenceDeploymentSpec:
    base = {
        "model": {"name": "llama", "source": {"uri": "pvc://weights/llama", "sizeGiB": 16}},
        "resources": {"gpuProduct": "NVIDIA-H100-80GB-HBM3"},
        "zones": ["zone-a"],
    }
    return InferenceDeploymentSpec.model_validate({**base, **fields})


def test_batch_work_goes_to_spot_where_a_budget_prices_spot_for_its_gpu() -> None:
    spot_prices = [{**PRICES[0], "spotPerHour": 1.64}]
    priced = [raw_budget("a", None, ["batch"], [], gpuPrices=spot_prices)]
    batch = model_spec(workloadClass="batch")
    placed, held = budget_spec(batch, "batch", priced, Limits())
    assert placed.capacity_type == "spot" and held == ""
    on_demand = budget_spec(batch, "batch", [raw_budget("a", None, ["batch"], [])], Limits())
    assert on_demand[0].capacity_type is None, "no spot price: on demand"
    chosen = model_spec(workloadClass="batch", capacityType="on-demand")
    assert budget_spec(chosen, "batch", priced, Limits())[0].capacity_type == "on-demand"
    interactive = model_spec()
    assert budget_spec(interactive, "batch", priced, Limits())[0].capacity_type is None


def test_off_hours_hold_a_model_without_autoscaling_below_its_replicas() -> None:
    fixed = model_spec(replicas=3)
    limits = Limits(ceiling=1, reasons=("CostBudget 'a' off hours: at most 1",))
    held_spec, held = budget_spec(fixed, "llama", [], limits)
    assert held_spec.replicas == 1
    assert held == "3 -> 1 replicas: CostBudget 'a' off hours: at most 1"
    scaled = model_spec(autoscaling={"minReplicas": 1, "maxReplicas": 4})
    assert budget_spec(scaled, "llama", [], limits) == (scaled, ""), "the autoscaler's to apply"


def test_a_model_another_budget_holds_stricter_is_named() -> None:
    mine = raw_budget("mine", "alert", ["llama", "small"], [])
    others = [
        mine,
        raw_budget("hard", "block", ["llama"], []),
        raw_budget("soft", "alert", ["small"], []),
        raw_budget("idle", None, ["small"], []),
    ]
    assert stricter_elsewhere(mine, ["llama", "small"], others) == [
        "llama: block (CostBudget/hard)"
    ]
    status = budget_status(
        1, [], {}, T0, spec(), figures(), stricter_elsewhere=["llama: block (CostBudget/hard)"]
    )
    assert status["stricterElsewhere"] == ["llama: block (CostBudget/hard)"]


def test_an_action_is_said_once_when_it_starts_and_once_when_it_lifts() -> None:
    thresholds = spec(thresholds=[{"percent": 80, "action": "block"}])
    below = budget_status(1, [], {}, T0, thresholds, figures())["conditions"]
    over = budget_status(1, [], {"conditions": below}, T1, thresholds, figures("900"))
    assert action_transitions(below, over["conditions"]) == [
        (
            "Blocked",
            "started",
            "spend is at 90.00% of the monthly limit, past the 80% threshold: block",
        )
    ]
    assert action_transitions(over["conditions"], over["conditions"]) == []
    lifted = budget_status(1, [], over, T1, thresholds, figures("10"))["conditions"]
    assert [c[:2] for c in action_transitions(over["conditions"], lifted)] == [
        ("Blocked", "lifted")
    ]
    assert action_transitions([], below) == [], "a new budget below its thresholds says nothing"


def test_usage_figures_join_the_spend_and_a_ratio_without_a_divisor_is_left_out() -> None:
    used = Figures(
        "2026-01",
        ["llama"],
        Spend(9000, Decimal("123.456")),
        Decimal("250"),
        UsageFigures(3, Decimal("41.15"), Decimal("61728.00"), 2000, 7),
        Decimal("0.625"),
    )
    status = budget_status(1, [], {}, T0, spec(), used)
    assert {k: status[k] for k in ("requestsThisMonth", "tokensThisMonth", "activeUsers")} == {
        "requestsThisMonth": 7,
        "tokensThisMonth": 2000,
        "activeUsers": 3,
    }
    assert (status["costPerActiveUser"], status["costPerMillionTokens"]) == (41.15, 61728.0)
    assert status["idleGpuShare"] == 0.625
    idle = Figures(
        "2026-01", ["llama"], Spend(0, Decimal(0)), Decimal(0), UsageFigures(0, None, None, 0)
    )
    quiet = budget_status(1, [], {}, T0, spec(), idle)
    assert quiet["activeUsers"] == 0 and "costPerActiveUser" not in quiet
    assert "activeUsers" not in budget_status(1, [], {}, T0, spec(), figures()), "not measured"
