"""A CostBudget's status: the month's spend from the GPU ledger, and what is not enforced.

Pure. Spend is accounted from what really ran (privatellm.cost); each action the
thresholds name has a condition that says whether spend has reached it. Throttling,
business hours and idle timeouts are not acted on yet, so a budget that sets any of them
is never Ready: reason ActionsNotEnforced names them, and `kubectl wait`, Argo CD and
kstatus see that truth instead of a budget that looks enforced. A GPU product in scope without a
price, or a time zone the runtime cannot load, is Degraded, and the spend is then a
floor (`spendComplete: false`), never a zero.
"""

from __future__ import annotations

from collections.abc import Collection, Hashable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from privatellm.api.budget import CostBudgetSpec, ThresholdAction
from privatellm.cost.spend import Spend, cents
from privatellm.gateway.config import BudgetBlock

from .conditions import ConditionState, merge_conditions
from .inference_status import Problem, invalid_spec_conditions

ACCOUNTED = "Accounted"
ACTIONS_NOT_ENFORCED = "ActionsNotEnforced"
# Threshold actions from the mildest to the strictest; each has a condition of its own.
ACTIONS = ("alert", "throttle", "scaleDown", "block")
ACTION_CONDITIONS = {
    "alert": "Alerting",
    "throttle": "Throttling",
    "scaleDown": "ScaledDown",
    "block": "Blocked",
}
# What the operator carries out so far; the others are named in ActionsNotEnforced.
ENFORCED_ACTIONS = frozenset({"alert", "scaleDown", "block"})


@dataclass(frozen=True)
class Figures:
    """A budget's month as the ledger gives it."""

    month: str
    models: Sequence[str]
    spent: Spend
    forecast: Decimal


def crossed_thresholds(spec: CostBudgetSpec, percent: Decimal) -> list[ThresholdAction]:
    """The thresholds spend has reached, lowest first."""
    return sorted((t for t in spec.thresholds if percent >= t.percent), key=lambda t: t.percent)


def action_in_force(crossed: Sequence[ThresholdAction]) -> str | None:
    """The strictest action of the crossed thresholds."""
    return max((t.action for t in crossed), key=ACTIONS.index, default=None)


def action_conditions(spec: CostBudgetSpec, percent: Decimal | None) -> list[ConditionState]:
    """One condition per action the thresholds name: True from the first threshold of that
    action spend has reached, until the month turns or the limit is raised."""
    crossed = crossed_thresholds(spec, percent) if percent is not None else []
    states = []
    for action in ACTIONS:
        named = [t for t in spec.thresholds if t.action == action]
        if not named:
            continue
        reached = [t for t in crossed if t.action == action]
        condition = ACTION_CONDITIONS[action]
        if reached:
            message = (
                f"spend is at {percent:.2f}% of the monthly limit, past the"
                f" {reached[0].percent}% threshold: {action}"
            )
            states.append(ConditionState(condition, "True", "ThresholdReached", message))
        else:
            lowest = min(t.percent for t in named)
            message = f"below the {lowest}% threshold"
            states.append(ConditionState(condition, "False", "BelowThreshold", message))
    return states


def unenforced_fields(spec: CostBudgetSpec) -> list[str]:
    """The fields the spec sets that nothing acts on yet."""
    fields = [
        f"spec.thresholds[{i}] ({t.action})"
        for i, t in enumerate(spec.thresholds)
        if t.action not in ENFORCED_ACTIONS
    ]
    if spec.business_hours is not None:
        fields.append("spec.businessHours (its timezone sets the month; the hours act on nothing)")
    if spec.idle_timeout:
        fields.append("spec.idleTimeout")
    return fields


def figures_problems(figures: Figures) -> list[Problem]:
    """Degraded reasons: GPU products in scope that have no price."""
    products = sorted({product or "(unknown)" for product, _ in figures.spent.unpriced})
    if not products:
        return []
    models = sorted({model for _, model in figures.spent.unpriced})
    return [
        Problem(
            "UnpricedGPU",
            f"spec.gpuPrices: no price for {', '.join(products)} (models {', '.join(models)});"
            " spentThisMonth counts the priced GPUs only",
        )
    ]


def budget_conditions(
    invalid: Sequence[str], problems: Sequence[Problem], unenforced: Sequence[str]
) -> list[ConditionState]:
    """InvalidSpec when the stored spec is refused; else Degraded for `problems`, and
    Ready only when nothing the spec sets is left unenforced."""
    if invalid:
        return invalid_spec_conditions(invalid)
    degraded = "; ".join(p.message for p in problems)
    reason = problems[0].reason if problems else ACCOUNTED
    if problems:
        ready = ConditionState("Ready", "False", reason, degraded)
    elif unenforced:
        message = "spend is accounted; not acted on yet: " + ", ".join(unenforced)
        ready = ConditionState("Ready", "False", ACTIONS_NOT_ENFORCED, message)
    else:
        ready = ConditionState("Ready", "True", ACCOUNTED, "spend is accounted from the GPU ledger")
    return [
        ready,
        ConditionState("Progressing", "False", reason, "nothing to roll out"),
        ConditionState("Degraded", "True" if problems else "False", reason, degraded),
    ]


def percent_of_limit(spec: CostBudgetSpec, figures: Figures) -> Decimal:
    return figures.spent.amount * 100 / Decimal(repr(spec.monthly_limit))


def figures_status(spec: CostBudgetSpec, figures: Figures) -> dict[str, Any]:
    """The status fields of the month's figures, amounts to the cent, and the action in
    force."""
    spent = figures.spent
    percent = percent_of_limit(spec, figures)
    active = action_in_force(crossed_thresholds(spec, percent))
    return {
        "month": figures.month,
        "models": list(figures.models),
        "spentThisMonth": float(cents(spent.amount)),
        "spendComplete": spent.complete,
        "unpricedGpuProducts": sorted({p or "(unknown)" for p, _ in spent.unpriced}),
        "percentOfLimit": float(percent.quantize(Decimal("0.01"))),
        "gpuHoursThisMonth": float((Decimal(spent.gpu_seconds) / 3600).quantize(Decimal("0.01"))),
        "forecastThisMonth": float(cents(figures.forecast)),
        **({"activeAction": active} if active else {}),
    }


def budget_status(
    generation: int | None,
    invalid: Sequence[str],
    previous: Mapping[str, Any],
    now: str,
    spec: CostBudgetSpec | None = None,
    figures: Figures | None = None,
    problems: Sequence[Problem] = (),
) -> dict[str, Any]:
    """The status fields the operator owns; equal to `previous` when nothing changed."""
    figures_fields = figures_status(spec, figures) if spec and figures else {}
    all_problems = [*problems, *(figures_problems(figures) if figures else [])]
    states = budget_conditions(invalid, all_problems, unenforced_fields(spec) if spec else [])
    if spec is not None and not invalid:
        percent = percent_of_limit(spec, figures) if figures else None
        states += action_conditions(spec, percent)
    conditions = merge_conditions(previous.get("conditions") or [], states, generation, now)
    return {"observedGeneration": generation, **figures_fields, "conditions": conditions}


def _in_force(budget: Mapping[str, Any], actions: Collection[str]) -> bool:
    status = budget.get("status") or {}
    generation = budget.get("metadata", {}).get("generation")
    # Figures of an older spec (a limit raised since) do not act.
    current = status.get("observedGeneration") == generation
    return current and status.get("activeAction") in actions


def budget_blocks(budgets: Sequence[Mapping[str, Any]]) -> dict[str, BudgetBlock]:
    """The models that budgets at a block threshold stop, by name, as the budgets' status
    says. A model several budgets block lets through only who every one of them lets."""
    blocks: dict[str, BudgetBlock] = {}
    for budget in sorted(budgets, key=lambda b: b["metadata"]["name"]):
        if not _in_force(budget, ("block",)):
            continue
        groups = (budget.get("spec") or {}).get("breakGlassGroups") or []
        for model in (budget.get("status") or {}).get("models") or []:
            earlier = blocks.get(model)
            allowed = set(groups) & set(earlier.break_glass_groups) if earlier else set(groups)
            name = earlier.budget if earlier else budget["metadata"]["name"]
            blocks[model] = BudgetBlock(budget=name, break_glass_groups=sorted(allowed))
    return blocks


def scaled_down_models(budgets: Sequence[Mapping[str, Any]]) -> set[str]:
    """Models whose autoscaler ceiling a budget drops to its minimum: at a scaleDown
    threshold or past it at block (a blocked model's GPUs would only sit idle)."""
    return {
        model
        for budget in budgets
        if _in_force(budget, ("scaleDown", "block"))
        for model in (budget.get("status") or {}).get("models") or []
    }


def action_signature(budget: Mapping[str, Any]) -> Hashable:
    """What of a budget the gateway and the autoscaler act on: an event that leaves it as it
    was (the spend moving within a threshold) queues nothing."""
    status = budget.get("status") or {}
    in_force = _in_force(budget, ACTIONS) and status.get("activeAction")
    groups = (budget.get("spec") or {}).get("breakGlassGroups") or []
    return (in_force, tuple(status.get("models") or []), tuple(groups))


def action_transitions(
    previous: Sequence[Mapping[str, Any]], conditions: Sequence[Mapping[str, Any]]
) -> list[tuple[str, str, str]]:
    """(condition, "started" or "lifted", message) for each action condition that changed
    since `previous`: once when spend reaches a threshold, once when it is lifted."""
    before = {c.get("type"): c.get("status") for c in previous}
    changes = []
    for condition in conditions:
        kind = condition["type"]
        if kind not in ACTION_CONDITIONS.values() or before.get(kind) == condition["status"]:
            continue
        if condition["status"] == "True":
            changes.append((kind, "started", condition["message"]))
        elif before.get(kind) == "True":
            changes.append((kind, "lifted", condition["message"]))
    return changes
