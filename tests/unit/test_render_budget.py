"""A CostBudget's status while nothing accounts for spend: observed, never Ready."""

from __future__ import annotations

from privatellm.controllers import budget as controller
from privatellm.controllers.builder import KnownKeys, WatchEvent
from privatellm.controllers.runtime import CONTROLLERS
from privatellm.render.budget import (
    NOT_RECONCILED,
    NOT_RECONCILED_MESSAGE,
    budget_conditions,
    budget_status,
)
from privatellm.render.conditions import find_condition

T0, T1 = "2026-01-01T00:00:00Z", "2026-01-01T00:05:00Z"


def states(status: dict[str, object]) -> dict[str, tuple[str, str]]:
    conditions = status["conditions"]
    assert isinstance(conditions, list)
    return {c["type"]: (c["status"], c["reason"]) for c in conditions}


def test_a_valid_budget_is_observed_but_never_ready() -> None:
    status = budget_status(3, [], {}, T0)
    assert status["observedGeneration"] == 3
    assert states(status) == {
        "Ready": ("False", NOT_RECONCILED),
        "Progressing": ("False", NOT_RECONCILED),
        "Degraded": ("False", NOT_RECONCILED),
    }
    ready = find_condition(status["conditions"], "Ready")
    assert ready is not None
    assert ready["message"] == NOT_RECONCILED_MESSAGE
    assert ready["observedGeneration"] == 3
    assert ready["lastTransitionTime"] == T0


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
    first = budget_status(1, [], {}, T0)
    assert budget_status(1, [], first, T1) == first


def test_a_new_generation_moves_observed_generation_and_keeps_transition_times() -> None:
    first = budget_status(1, [], {}, T0)
    second = budget_status(2, [], first, T1)
    assert second["observedGeneration"] == 2
    assert {c["lastTransitionTime"] for c in second["conditions"]} == {T0}
    assert {c["observedGeneration"] for c in second["conditions"]} == {2}


def test_a_fixed_spec_turns_degraded_off_at_the_time_it_was_fixed() -> None:
    broken = budget_status(1, ["spec.currency: bad"], {}, T0)
    fixed = budget_status(2, [], broken, T1)
    degraded = find_condition(fixed["conditions"], "Degraded")
    ready = find_condition(fixed["conditions"], "Ready")
    assert degraded is not None and ready is not None
    assert (degraded["status"], degraded["lastTransitionTime"]) == ("False", T1)
    assert (ready["reason"], ready["lastTransitionTime"]) == (NOT_RECONCILED, T0)


def test_conditions_of_other_writers_are_kept() -> None:
    theirs = {"type": "Synced", "status": "True", "reason": "Applied", "message": ""}
    status = budget_status(1, [], {"conditions": [theirs]}, T0)
    assert status["conditions"][-1] == theirs


def test_no_condition_says_ready() -> None:
    for invalid in ([], ["spec.x: bad"]):
        assert all(
            not (c.type == "Ready" and c.status == "True") for c in budget_conditions(invalid)
        )


def test_the_controller_is_declared_and_keyed_by_the_budget() -> None:
    assert controller.CONTROLLER in CONTROLLERS
    body = {"kind": "CostBudget", "metadata": {"namespace": "team", "name": "support"}}
    for_ = controller.CONTROLLER.for_
    assert for_.kind.plural == "costbudgets"
    assert for_.requests(WatchEvent("ADDED", body, True), KnownKeys()) == [
        (("team", "support"), True)
    ]
    assert controller.CONTROLLER.owns == () and controller.CONTROLLER.watches == ()
