"""Standard status conditions: Ready, Progressing, Degraded.

`merge_conditions` keeps `lastTransitionTime` when a condition's status did not change,
so that recomputing the same state yields the same status and the operator writes
nothing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import ValidationError

ConditionStatus = Literal["True", "False", "Unknown"]


@dataclass(frozen=True)
class ConditionState:
    """A condition as the operator computed it, before times are attached."""

    type: str
    status: ConditionStatus
    reason: str
    message: str = ""


def merge_conditions(
    previous: Sequence[dict[str, Any]],
    computed: Sequence[ConditionState],
    generation: int | None,
    now: str,
) -> list[dict[str, Any]]:
    """The conditions to store: `computed`, with times carried over from `previous`.

    A condition whose status is unchanged keeps its lastTransitionTime even when its reason
    or message changed; a new or flipped condition gets `now`. Conditions of other types
    (written by someone else) are kept as they are, after the computed ones.
    """
    by_type = {c.get("type"): c for c in previous}
    merged: list[dict[str, Any]] = []
    for state in computed:
        before = by_type.get(state.type)
        unchanged = before is not None and before.get("status") == state.status
        condition: dict[str, Any] = {
            "type": state.type,
            "status": state.status,
            "reason": state.reason,
            "message": state.message,
            "lastTransitionTime": before.get("lastTransitionTime", now)
            if unchanged and before
            else now,
        }
        if generation is not None:
            condition["observedGeneration"] = generation
        merged.append(condition)
    own = {s.type for s in computed}
    merged += [c for c in previous if c.get("type") not in own]
    return merged


def find_condition(conditions: Sequence[dict[str, Any]], type_: str) -> dict[str, Any] | None:
    """The condition of `type_`, if present."""
    return next((c for c in conditions if c.get("type") == type_), None)


def validation_messages(error: ValidationError) -> list[str]:
    """Each field of a stored object that fails the current API models, with why."""
    return [f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors()]


def transition_events(
    previous: Sequence[Mapping[str, Any]], conditions: Sequence[Mapping[str, Any]]
) -> list[tuple[str, str, str]]:
    """(type, reason, message) of an Event for each change of Ready or Degraded.

    A new object that is fine says nothing; Progressing would speak at every rollout
    and the counters at every failed read, so neither does.
    """
    events = []
    for condition in conditions:
        if condition["type"] not in ("Ready", "Degraded"):
            continue
        before = next((c for c in previous if c.get("type") == condition["type"]), None)
        bad = (condition["type"], condition["status"]) in (("Degraded", "True"), ("Ready", "False"))
        if before is None and not bad:
            continue
        if before and (before.get("status"), before.get("reason")) == (
            condition["status"],
            condition["reason"],
        ):
            continue
        message = f"{condition['type']}={condition['status']}: {condition['message']}"
        events.append(("Warning" if bad else "Normal", condition["reason"], message))
    return events
