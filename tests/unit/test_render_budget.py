"""A CostBudget's status: the month's spend, and Ready only when nothing it sets is left
unenforced."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from privatellm.api.budget import CostBudgetSpec
from privatellm.controllers import budget as controller
from privatellm.controllers import ledger
from privatellm.controllers.builder import KnownKeys, WatchEvent
from privatellm.controllers.runtime import CONTROLLERS
from privatellm.cost.spend import Spend
from privatellm.render.budget import (
    ACCOUNTED,
    ACTIONS_NOT_ENFORCED,
    Figures,
    action_transitions,
    budget_blocks,
    budget_status,
    scaled_down_models,
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


def test_fields_nothing_enforces_keep_it_from_ready_and_are_named() -> None:
    acting = spec(
        thresholds=[{"percent": 80, "action": "alert"}, {"percent": 90, "action": "throttle"}],
        businessHours={"timezone": "Europe/Amsterdam"},
        idleTimeout="30m",
    )
    status = budget_status(1, [], {}, T0, acting, figures())
    assert states(status)["Ready"] == ("False", ACTIONS_NOT_ENFORCED)
    ready = find_condition(status["conditions"], "Ready")
    assert ready is not None
    assert ready["message"].startswith(
        "spend is accounted; not acted on yet: spec.thresholds[1] (throttle), spec.businessHours"
    )
    assert "spec.idleTimeout" in ready["message"] and "alert" not in ready["message"]
    assert status["spentThisMonth"] == 123.46, "the figures are there all the same"


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


def raw_budget(name: str, action: str | None, models: list[str], groups: list[str]) -> Any:
    status: dict[str, Any] = {"observedGeneration": 1, "models": models}
    if action:
        status["activeAction"] = action
    return {
        "metadata": {"name": name, "generation": 1},
        "spec": {"breakGlassGroups": groups},
        "status": status,
    }


def test_blocks_and_ceilings_follow_the_budgets_in_force() -> None:
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
    assert scaled_down_models(budgets) == {"llama", "small", "mixtral"}
    stale = raw_budget("e", "block", ["qwen"], [])
    stale["metadata"]["generation"] = 2  # a limit raised, not reconciled yet
    assert budget_blocks([stale]) == {} and scaled_down_models([stale]) == set()


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
