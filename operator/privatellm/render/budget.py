"""A CostBudget's status: the month's spend from the GPU ledger, and what is not enforced.

Pure. Spend is accounted from what really ran (privatellm.cost); each action the
thresholds name has a condition that says whether spend has reached it, and OffHours
says whether business hours are over. The gateway (block, throttle) and the model
controller (scaleDown, off hours, idle) act on what the status says (budget_actions.py).
What cannot act on a model in
scope (a bound on a model KEDA scales) keeps the budget from Ready: reason
ActionsNotEnforced names it, so `kubectl wait`, Argo CD and kstatus see that truth
instead of a budget that looks enforced. A GPU product in scope without a price, or a
time zone the runtime cannot load, is Degraded, and the spend is then a floor
(`spendComplete: false`), never a zero.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from privatellm.api.budget import CostBudgetSpec, ThresholdAction
from privatellm.cost.chargeback import UsageFigures
from privatellm.cost.schedule import Period
from privatellm.cost.spend import Spend, cents

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
OFF_HOURS = "OffHours"
# Conditions whose changes are Events and audit records.
TRACKED_CONDITIONS = (*ACTION_CONDITIONS.values(), OFF_HOURS)


@dataclass(frozen=True)
class Figures:
    """A budget's month as the ledgers give it."""

    month: str
    models: Sequence[str]
    spent: Spend
    forecast: Decimal
    # The gateways' usage of the models in scope; None while no gateway has reported.
    usage: UsageFigures | None = None
    # Of the GPU time, the share no request was in flight on (cost/chargeback.py).
    idle_gpu_share: Decimal | None = None
    # GPU ledger archives the live ledger lists and nobody can read: spend is a floor.
    missing_archives: Sequence[str] = ()


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


def unenforced_fields(spec: CostBudgetSpec, keda: Sequence[str]) -> list[str]:
    """The fields the spec sets that cannot act on every model in scope: `keda`, the
    models in scope KEDA's HPAs scale, which no budget bound reaches."""
    if not keda:
        return []
    models = ", ".join(keda)
    fields = [
        f"spec.{name} (models scaled by KEDA: {models})"
        for name, value in (
            ("idleTimeout", spec.idle_timeout),
            ("businessHours", spec.business_hours),
        )
        if value
    ]
    return fields + [
        f"spec.thresholds[{i}] ({t.action}: models scaled by KEDA: {models})"
        for i, t in enumerate(spec.thresholds)
        if t.action == "scaleDown"
    ]


def off_hours_condition(spec: CostBudgetSpec, period: Period) -> ConditionState:
    """Whether business hours are over, with the ceiling and until when."""
    assert spec.business_hours is not None
    hours = spec.business_hours
    until = period.until.strftime("%a %Y-%m-%d %H:%M %Z")
    if period.inside:
        message = f"business hours until {until}"
        return ConditionState(OFF_HOURS, "False", "BusinessHours", message)
    ceiling = hours.off_hours_max_replicas
    message = (
        f"outside business hours until {until}: models in scope run at most {ceiling}"
        f" replica{'' if ceiling == 1 else 's'}"
    )
    return ConditionState(OFF_HOURS, "True", "OutsideBusinessHours", message)


def figures_problems(figures: Figures) -> list[Problem]:
    """Degraded reasons: GPU products in scope that have no price, ledger archives that
    cannot be read."""
    problems = []
    if products := sorted({product or "(unknown)" for product, _ in figures.spent.unpriced}):
        models = sorted({model for _, model in figures.spent.unpriced})
        message = (
            f"spec.gpuPrices: no price for {', '.join(products)} (models {', '.join(models)});"
            " spentThisMonth counts the priced GPUs only"
        )
        problems.append(Problem("UnpricedGPU", message))
    if figures.missing_archives:
        message = (
            f"the GPU ledger archives {', '.join(figures.missing_archives)} are missing;"
            " spentThisMonth counts the runs still recorded only"
        )
        problems.append(Problem("LedgerArchiveMissing", message))
    return problems


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
        message = "spend is accounted; cannot act on every model in scope: " + ", ".join(unenforced)
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
        "spendComplete": spent.complete and not figures.missing_archives,
        "unpricedGpuProducts": sorted({p or "(unknown)" for p, _ in spent.unpriced}),
        "percentOfLimit": float(percent.quantize(Decimal("0.01"))),
        "gpuHoursThisMonth": float((Decimal(spent.gpu_seconds) / 3600).quantize(Decimal("0.01"))),
        "forecastThisMonth": float(cents(figures.forecast)),
        **({"activeAction": active} if active else {}),
        **(_usage_status(figures) if figures.usage else {}),
    }


def _usage_status(figures: Figures) -> dict[str, Any]:
    """Usage and what it cost; a ratio with nothing to divide by is left out."""
    usage = figures.usage
    assert usage is not None
    ratios = {
        "costPerActiveUser": usage.cost_per_active_user,
        "costPerMillionTokens": usage.cost_per_million_tokens,
        "idleGpuShare": figures.idle_gpu_share,
    }
    return {
        "requestsThisMonth": usage.requests,
        "tokensThisMonth": usage.tokens,
        "activeUsers": usage.active_users,
        **{key: float(value) for key, value in ratios.items() if value is not None},
    }


def budget_status(
    generation: int | None,
    invalid: Sequence[str],
    previous: Mapping[str, Any],
    now: str,
    spec: CostBudgetSpec | None = None,
    figures: Figures | None = None,
    problems: Sequence[Problem] = (),
    period: Period | None = None,
    keda: Sequence[str] = (),
    stricter_elsewhere: Sequence[str] = (),
) -> dict[str, Any]:
    """The status fields the operator owns; equal to `previous` when nothing changed.

    `period`: the business-hours period now (None without businessHours, or when the
    zone cannot be loaded); `stricter_elsewhere`: see `stricter_elsewhere()`."""
    fields = figures_status(spec, figures) if spec and figures else {}
    all_problems = [*problems, *(figures_problems(figures) if figures else [])]
    unenforced = unenforced_fields(spec, keda) if spec else []
    states = budget_conditions(invalid, all_problems, unenforced)
    if spec is not None and not invalid:
        percent = percent_of_limit(spec, figures) if figures else None
        states += action_conditions(spec, percent)
        if period is not None and spec.business_hours is not None:
            states.append(off_hours_condition(spec, period))
            fields["offHours"] = not period.inside
        if stricter_elsewhere:
            fields["stricterElsewhere"] = list(stricter_elsewhere)
    conditions = merge_conditions(previous.get("conditions") or [], states, generation, now)
    return {"observedGeneration": generation, **fields, "conditions": conditions}


def action_transitions(
    previous: Sequence[Mapping[str, Any]], conditions: Sequence[Mapping[str, Any]]
) -> list[tuple[str, str, str]]:
    """(condition, "started" or "lifted", message) for each action condition that changed
    since `previous`: once when spend reaches a threshold, once when it is lifted."""
    before = {c.get("type"): c.get("status") for c in previous}
    changes = []
    for condition in conditions:
        kind = condition["type"]
        if kind not in TRACKED_CONDITIONS or before.get(kind) == condition["status"]:
            continue
        if condition["status"] == "True":
            changes.append((kind, "started", condition["message"]))
        elif before.get(kind) == "True":
            changes.append((kind, "lifted", condition["message"]))
    return changes
