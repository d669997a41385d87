"""What the gateway and the model controller act on, read from CostBudgets' status.

Pure. The budget controller (render/budget.py) writes each budget's month: the action in
force, whether business hours are over, the models in scope. From those, for a
namespace's budgets: the gateway's blocks and throttles per model (`budget_blocks`,
`budget_throttles`), the zones it counts usage by and the models whose requests it holds
while an idle timeout leaves them at zero; the bounds of a model's replica count
(`model_limits`) and the spec it runs by (`budget_spec`, spot placement and the
off-hours count). A model several budgets cover gets the strictest of each. Figures of
an older spec than the status was written for act on nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Hashable, Mapping, Sequence
from typing import Any, TypeVar

from pydantic import ValidationError

from privatellm.api.base import duration_seconds
from privatellm.api.budget import Throttle
from privatellm.api.inference import InferenceDeploymentSpec
from privatellm.autoscale import Limits
from privatellm.gateway.config import BudgetBlock, BudgetThrottle

from .budget import ACTIONS

T = TypeVar("T")


def _current(budget: Mapping[str, Any]) -> bool:
    """Whether the status is of the budget's spec: figures of an older spec (a limit
    raised since) do not act."""
    status = budget.get("status") or {}
    return bool(status) and status.get("observedGeneration") == budget["metadata"].get("generation")


def _in_force(budget: Mapping[str, Any], actions: Collection[str]) -> bool:
    return _current(budget) and (budget.get("status") or {}).get("activeAction") in actions


def _per_model(
    budgets: Sequence[Mapping[str, Any]],
    action: str,
    own: Callable[[Mapping[str, Any]], T | None],
    combine: Callable[[T, T], T],
) -> dict[str, T]:
    """For each model a budget at `action` covers, what `own` makes of that budget (None:
    nothing), `combine`d over every such budget, taken by name."""
    found: dict[str, T] = {}
    for budget in sorted(budgets, key=lambda b: b["metadata"]["name"]):
        if not _in_force(budget, (action,)) or (mine := own(budget)) is None:
            continue
        for model in budget["status"].get("models") or []:
            found[model] = combine(found[model], mine) if model in found else mine
    return found


def budget_blocks(budgets: Sequence[Mapping[str, Any]]) -> dict[str, BudgetBlock]:
    """The models that budgets at a block threshold stop, by name, as the budgets' status
    says. A model several budgets block lets through only who every one of them lets."""

    def own(budget: Mapping[str, Any]) -> BudgetBlock:
        groups = (budget.get("spec") or {}).get("breakGlassGroups") or []
        return BudgetBlock(budget=budget["metadata"]["name"], break_glass_groups=sorted(groups))

    def combine(a: BudgetBlock, b: BudgetBlock) -> BudgetBlock:
        allowed = set(a.break_glass_groups) & set(b.break_glass_groups)
        return BudgetBlock(budget=a.budget, break_glass_groups=sorted(allowed))

    return _per_model(budgets, "block", own, combine)


def idle_timeouts(budgets: Sequence[Mapping[str, Any]]) -> set[str]:
    """The models a budget's idleTimeout can send to zero."""
    return {
        model
        for budget in budgets
        if _current(budget) and (budget.get("spec") or {}).get("idleTimeout")
        for model in budget["status"].get("models") or []
    }


def usage_time_zones(budgets: Sequence[Mapping[str, Any]]) -> list[str]:
    """The zones whose calendar months the gateways count usage by: UTC, for reports
    across budgets, and each budget's own."""
    zones = {"UTC"}
    for budget in budgets:
        zones.add(((budget.get("spec") or {}).get("businessHours") or {}).get("timezone", "UTC"))
    return sorted(zones)


def budget_throttles(budgets: Sequence[Mapping[str, Any]]) -> dict[str, BudgetThrottle]:
    """The models that budgets at a throttle threshold hold to lower quotas, by name. A
    model several budgets throttle gets the lowest figures, and spares only who every one
    of them spares."""

    def own(budget: Mapping[str, Any]) -> BudgetThrottle | None:
        try:
            settings = Throttle.model_validate((budget.get("spec") or {}).get("throttle") or {})
        except ValidationError:
            return None  # its own status says why
        return BudgetThrottle(
            budget=budget["metadata"]["name"],
            quota_percent=settings.quota_percent,
            requests_per_minute=settings.requests_per_minute,
            priority_groups=sorted(settings.priority_groups),
            priority_policies=sorted(settings.priority_policies),
        )

    def combine(a: BudgetThrottle, b: BudgetThrottle) -> BudgetThrottle:
        return BudgetThrottle(
            budget=a.budget,
            quota_percent=min(a.quota_percent, b.quota_percent),
            requests_per_minute=min(a.requests_per_minute, b.requests_per_minute),
            priority_groups=sorted(set(a.priority_groups) & set(b.priority_groups)),
            priority_policies=sorted(set(a.priority_policies) & set(b.priority_policies)),
        )

    return _per_model(budgets, "throttle", own, combine)


def model_limits(budgets: Sequence[Mapping[str, Any]], model: str) -> Limits:
    """What the budgets covering `model` impose on its replica count now: a scaleDown
    threshold (or block: a blocked model's GPUs would only sit idle) drops the ceiling to
    the minimum; off hours to offHoursMaxReplicas; idleTimeout sends it to zero when idle.
    The strictest of each applies."""
    to_minimum, ceiling, idle, reasons = False, None, None, []
    for budget in _covering(budgets, model):
        status, spec = budget["status"], budget.get("spec") or {}
        name = budget["metadata"]["name"]
        if status.get("activeAction") in ("scaleDown", "block"):
            to_minimum = True
            reasons.append(f"CostBudget {name!r} at {status['activeAction']}")
        if status.get("offHours"):
            most = (spec.get("businessHours") or {}).get("offHoursMaxReplicas", 1)
            ceiling = most if ceiling is None else min(ceiling, most)
            reasons.append(f"CostBudget {name!r} off hours: at most {most}")
        if spec.get("idleTimeout"):
            seconds = duration_seconds(spec["idleTimeout"])
            idle = seconds if idle is None else min(idle, seconds)
            reasons.append(f"CostBudget {name!r} idleTimeout {spec['idleTimeout']}")
    return Limits(to_minimum, ceiling, idle, tuple(reasons))


def budget_spec(
    spec: InferenceDeploymentSpec, model: str, budgets: Sequence[Mapping[str, Any]], limits: Limits
) -> tuple[InferenceDeploymentSpec, str]:
    """The spec `model` runs by under the budgets covering it, and why its count is held
    below spec.replicas ("" when it is not). A batch model that leaves capacityType unset
    runs on spot where a budget prices spot for its GPU product; a model without
    autoscaling is held to the off-hours ceiling (the autoscaler applies `limits` to the
    others)."""
    update: dict[str, Any] = {}
    product = spec.resources.gpu_product
    unplaced = spec.workload_class == "batch" and spec.capacity_type is None
    if unplaced and product and any(_prices_spot(b, product) for b in _covering(budgets, model)):
        update["capacity_type"] = "spot"
    held = ""
    if spec.autoscaling is None and limits.ceiling is not None and limits.ceiling < spec.replicas:
        update["replicas"] = limits.ceiling
        held = f"{spec.replicas} -> {limits.ceiling} replicas: {'; '.join(limits.reasons)}"
    return spec.model_copy(update=update), held


def _covering(budgets: Sequence[Mapping[str, Any]], model: str) -> list[Mapping[str, Any]]:
    """The budgets whose current status has `model` in scope, by name."""
    return sorted(
        (b for b in budgets if _current(b) and model in (b["status"].get("models") or [])),
        key=lambda b: b["metadata"]["name"],
    )


def _prices_spot(budget: Mapping[str, Any], product: str) -> bool:
    prices = (budget.get("spec") or {}).get("gpuPrices") or []
    return any(p.get("gpuProduct") == product and p.get("spotPerHour") for p in prices)


def stricter_elsewhere(
    budget: Mapping[str, Any], models: Sequence[str], others: Sequence[Mapping[str, Any]]
) -> list[str]:
    """A line for each of `models` that another budget holds to an action stricter than
    this budget's own: "llama: block (CostBudget/team-b)"."""
    own = ACTIONS.index(action) if (action := _action(budget)) else -1
    lines = []
    for other in sorted(others, key=lambda b: b["metadata"]["name"]):
        theirs = _action(other)
        if other["metadata"]["name"] == budget["metadata"]["name"] or theirs is None:
            continue
        if ACTIONS.index(theirs) <= own:
            continue
        covered = set((other.get("status") or {}).get("models") or [])
        name = other["metadata"]["name"]
        lines += [f"{model}: {theirs} (CostBudget/{name})" for model in models if model in covered]
    return sorted(lines)


def _action(budget: Mapping[str, Any]) -> str | None:
    action = (budget.get("status") or {}).get("activeAction")
    return action if _current(budget) and action in ACTIONS else None


def action_signature(budget: Mapping[str, Any]) -> Hashable:
    """What of a budget the gateway and the autoscaler act on: an event that leaves it as it
    was (the spend moving within a threshold) queues nothing."""
    status = budget.get("status") or {}
    spec = budget.get("spec") or {}
    in_force = _in_force(budget, ACTIONS) and status.get("activeAction")
    acting = (
        spec.get("breakGlassGroups"),
        spec.get("throttle"),
        spec.get("idleTimeout"),
        (spec.get("businessHours") or {}).get("offHoursMaxReplicas"),
        status.get("offHours"),
    )
    return (in_force, tuple(status.get("models") or []), repr(acting))
