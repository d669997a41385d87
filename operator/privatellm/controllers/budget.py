"""CostBudget controller: read -> status. Nothing accounts for spend yet.

The status says what is true today (`privatellm.render.budget`): the budget was read, its
spec is or is not valid, and nothing acts on it, so it is never Ready. The budget has no
children; it reads no other kind.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from privatellm.api import API_VERSION, CostBudget
from privatellm.kube.client import Kind, Kube, Obj, namespace_and_name
from privatellm.render.budget import budget_status
from privatellm.render.conditions import transition_events, validation_messages

from .builder import Context, Controller, For, Key
from .events import event_for, now

COST_BUDGET = Kind(API_VERSION, "CostBudget", "costbudgets")


def reconcile(kube: Kube, namespace: str, name: str) -> None:
    """Write one CostBudget's status: InvalidSpec, or NotReconciled."""
    raw = kube.get(COST_BUDGET, namespace, name)
    if raw is None or raw["metadata"].get("deletionTimestamp"):
        return
    invalid: list[str] = []
    try:
        CostBudget.model_validate(raw)
    except ValidationError as error:
        # Stored before a stricter schema: say why, naming each field.
        invalid = validation_messages(error)
    previous = raw.get("status") or {}
    status = budget_status(raw["metadata"].get("generation"), invalid, previous, now())
    _write_status(kube, raw, previous, status)


def _write_status(kube: Kube, raw: Obj, previous: Mapping[str, Any], status: Obj) -> None:
    """Patch the status when it differs; an Event for each change of Ready or Degraded."""
    if all(previous.get(key) == value for key, value in status.items()):
        return
    kube.patch_status(COST_BUDGET, *namespace_and_name(raw), status)
    for type_, reason, message in transition_events(
        previous.get("conditions") or [], status["conditions"]
    ):
        kube.post_event(event_for(raw, type_, reason, message))


def _reconcile(context: Context, key: Key) -> None:
    reconcile(context.kube, *key)


CONTROLLER = Controller(
    name="CostBudget",
    for_=For(COST_BUDGET),
    reconcile=_reconcile,
    # One worker: a status write per budget, and only when its spec changes.
    workers=1,
)
