"""A CostBudget's status while nothing accounts for spend yet.

Pure. No part of the operator prices GPU-hours or acts on thresholds so far, so a budget
is never Ready: its status says that it was read, whether its spec is valid, and that
nothing enforces it. `kubectl wait --for=condition=Ready=false`, Argo CD and kstatus then
see the truth instead of a budget that looks enforced.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from .conditions import ConditionState, merge_conditions
from .inference_status import invalid_spec_conditions

# Ready=False with this reason: the object is valid and observed, and nothing acts on it.
NOT_RECONCILED = "NotReconciled"
NOT_RECONCILED_MESSAGE = "spend accounting is not built yet: nothing acts on this budget"

NOT_RECONCILED_CONDITIONS = (
    ConditionState("Ready", "False", NOT_RECONCILED, NOT_RECONCILED_MESSAGE),
    ConditionState("Progressing", "False", NOT_RECONCILED, "nothing to roll out"),
    ConditionState("Degraded", "False", NOT_RECONCILED, ""),
)


def budget_conditions(invalid: Sequence[str]) -> list[ConditionState]:
    """InvalidSpec with every reason when the stored spec is refused; else NotReconciled."""
    return invalid_spec_conditions(invalid) if invalid else list(NOT_RECONCILED_CONDITIONS)


def budget_status(
    generation: int | None, invalid: Sequence[str], previous: Mapping[str, Any], now: str
) -> dict[str, Any]:
    """The status fields the operator owns; equal to `previous` when nothing changed."""
    conditions = merge_conditions(
        previous.get("conditions") or [], budget_conditions(invalid), generation, now
    )
    return {"observedGeneration": generation, "conditions": conditions}
