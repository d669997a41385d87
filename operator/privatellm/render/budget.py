"""A CostBudget's status: the month's spend from the GPU ledger, and what is not enforced.

Pure. Spend is accounted from what really ran (privatellm.cost); each action the
thresholds name has a condition that says whether spend has reached it, and OffHours
says whether business hours are over. The gateway (block, throttle) and the model
controller (scaleDown, off hours, idle) act on what the status says, through
`budget_blocks`, `budget_throttles` and `model_limits`. What cannot act on a model in
scope (a bound on a model KEDA scales) keeps the budget from Ready: reason
ActionsNotEnforced names it, so `kubectl wait`, Argo CD and kstatus see that truth
instead of a budget that looks enforced. A GPU product in scope without a price, or a
time zone the runtime cannot load, is Degraded, and the spend is then a floor
(`spendComplete: false`), never a zero.
"""

from __future__ import annotations

from collections.abc import Collection, Hashable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from pydantic import ValidationError

from privatellm.api.base import duration_seconds
from privatellm.api.budget import CostBudgetSpec, ThresholdAction, Throttle
from privatellm.api.inference import InferenceDeploymentSpec
from privatellm.autoscale import Limits
from privatellm.cost.schedule import Period
from privatellm.cost.spend import Spend, cents
from privatellm.cost.usage import UsageFigures
from privatellm.gateway.config import BudgetBlock, BudgetThrottle

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
    # Of the GPU time, the share no request was in flight on (cost/usage.py).
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


def _current(budget: Mapping[str, Any]) -> bool:
    """Whether the status is of the budget's spec: figures of an older spec (a limit
    raised since) do not act."""
    status = budget.get("status") or {}
    return bool(status) and status.get("observedGeneration") == budget["metadata"].get("generation")


def _in_force(budget: Mapping[str, Any], actions: Collection[str]) -> bool:
    return _current(budget) and (budget.get("status") or {}).get("activeAction") in actions


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
    throttles: dict[str, BudgetThrottle] = {}
    for budget in sorted(budgets, key=lambda b: b["metadata"]["name"]):
        if not _in_force(budget, ("throttle",)):
            continue
        try:
            settings = Throttle.model_validate((budget.get("spec") or {}).get("throttle") or {})
        except ValidationError:
            continue  # its own status says why
        own = BudgetThrottle(
            budget=budget["metadata"]["name"],
            quota_percent=settings.quota_percent,
            requests_per_minute=settings.requests_per_minute,
            priority_groups=sorted(settings.priority_groups),
            priority_policies=sorted(settings.priority_policies),
        )
        for model in (budget.get("status") or {}).get("models") or []:
            earlier = throttles.get(model)
            throttles[model] = _stricter(earlier, own) if earlier else own
    return throttles


def _stricter(a: BudgetThrottle, b: BudgetThrottle) -> BudgetThrottle:
    return BudgetThrottle(
        budget=a.budget,
        quota_percent=min(a.quota_percent, b.quota_percent),
        requests_per_minute=min(a.requests_per_minute, b.requests_per_minute),
        priority_groups=sorted(set(a.priority_groups) & set(b.priority_groups)),
        priority_policies=sorted(set(a.priority_policies) & set(b.priority_policies)),
    )


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
