"""Conditions keep their transition time while their status holds."""

from __future__ import annotations

from privatellm.render.conditions import ConditionState, find_condition, merge_conditions

T0, T1 = "2026-01-01T00:00:00Z", "2026-01-01T00:05:00Z"


def test_new_conditions_get_now_and_the_generation() -> None:
    merged = merge_conditions([], [ConditionState("Ready", "False", "Waiting", "0/3")], 4, T0)
    assert merged == [
        {
            "type": "Ready",
            "status": "False",
            "reason": "Waiting",
            "message": "0/3",
            "lastTransitionTime": T0,
            "observedGeneration": 4,
        }
    ]


def test_unchanged_status_keeps_its_time_even_when_the_message_changes() -> None:
    before = merge_conditions([], [ConditionState("Ready", "False", "Waiting", "0/3")], 1, T0)
    after = merge_conditions(before, [ConditionState("Ready", "False", "Waiting", "1/3")], 1, T1)
    assert after[0]["lastTransitionTime"] == T0
    assert after[0]["message"] == "1/3"


def test_flipped_status_gets_a_new_time() -> None:
    before = merge_conditions([], [ConditionState("Ready", "False", "Waiting")], 1, T0)
    after = merge_conditions(before, [ConditionState("Ready", "True", "ReplicasReady")], 1, T1)
    assert after[0]["lastTransitionTime"] == T1


def test_recomputing_the_same_state_is_a_fixed_point() -> None:
    states = [ConditionState("Ready", "True", "Ok"), ConditionState("Degraded", "False", "Fine")]
    once = merge_conditions([], states, 2, T0)
    assert merge_conditions(once, states, 2, T1) == once


def test_foreign_conditions_are_kept_after_ours() -> None:
    foreign = {"type": "Synced", "status": "True", "reason": "ArgoCD"}
    merged = merge_conditions([foreign], [ConditionState("Ready", "True", "Ok")], None, T0)
    assert [c["type"] for c in merged] == ["Ready", "Synced"]
    assert "observedGeneration" not in merged[0]
    assert find_condition(merged, "Synced") == foreign
    assert find_condition(merged, "Degraded") is None
