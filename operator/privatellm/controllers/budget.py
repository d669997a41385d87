"""CostBudget controller: the month's spend of the models in scope, from the GPU ledger.

Reads the budget, the namespace's InferenceDeployments (the selector's scope) and the
ledger the GPULedger controller keeps (controllers/ledger.py); writes status only. The
budget has no children.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Iterable, Mapping
from typing import Any
from zoneinfo import ZoneInfoNotFoundError

from pydantic import ValidationError

from privatellm.api import CostBudget, InferenceDeploymentSpec
from privatellm.audit import AuditLog
from privatellm.audit.records import control_record
from privatellm.cost.chargeback import idle_gpu_share, usage_figures
from privatellm.cost.ledger import Run
from privatellm.cost.schedule import period_at
from privatellm.cost.spend import forecast, month_of, spend
from privatellm.cost.usage import (
    UsageRow,
    busy_totals,
    month_busy,
    month_usage,
    tallies,
    usage_configmap,
    usage_rows,
)
from privatellm.kube.client import KINDS, Kube, Obj, namespace_and_name
from privatellm.render.budget import (
    ACTION_CONDITIONS,
    Figures,
    action_transitions,
    budget_status,
)
from privatellm.render.budget_actions import stricter_elsewhere
from privatellm.render.conditions import transition_events, validation_messages
from privatellm.render.inference_status import Problem
from privatellm.render.keda import scaled_by_keda
from privatellm.render.meta import COMPONENT_LABEL
from privatellm.render.workload import SERVER_COMPONENT

from .builder import Context, Controller, For, Key, Watches, WatchEvent
from .events import event_for, now
from .keda import keda_present
from .ledger import read_runs
from .metrics import BUDGET_ACTION_ACTIVE, BUDGET_SPENT_RATIO

COST_BUDGET = KINDS["CostBudget"]
INFERENCE = KINDS["InferenceDeployment"]
CONFIG_MAP = KINDS["ConfigMap"]
POD = KINDS["Pod"]


def in_scope(budget: CostBudget, models: list[Obj], runs: Iterable[Run]) -> list[str]:
    """The models the budget covers: the InferenceDeployments its selector picks now, and
    those of `runs`, the runs it picked when they ran (a deleted model's spend counts)."""
    selector = budget.spec.selector
    named = {
        m["metadata"]["name"] for m in models if selector.matches(m["metadata"].get("labels") or {})
    }
    return sorted(named | {run.model for run in runs})


def reconcile(
    kube: Kube, namespace: str, name: str, moment: int, audit: AuditLog | None = None
) -> None:
    """Write one CostBudget's status as of `moment` (seconds since the epoch); threshold
    actions started or lifted go on `audit`, the operator's log of control actions."""
    raw = kube.get(COST_BUDGET, namespace, name)
    if raw is None or raw["metadata"].get("deletionTimestamp"):
        return
    previous = raw.get("status") or {}
    generation = raw["metadata"].get("generation")
    try:
        budget = CostBudget.model_validate(raw)
    except ValidationError as error:
        # Stored before a stricter schema: say why, naming each field.
        invalid = validation_messages(error)
        _write_status(
            kube, raw, previous, budget_status(generation, invalid, previous, now()), audit
        )
        return
    spec = budget.spec
    zone = spec.time_zone
    try:
        month = month_of(moment, zone)
        period = period_at(spec.business_hours, moment) if spec.business_hours else None
    except ZoneInfoNotFoundError:
        problem = Problem(
            "UnknownTimeZone",
            f"spec.businessHours.timezone: this operator cannot load {zone!r}, so the month"
            " cannot be told, no spend is reported and business hours do not act",
        )
        status = budget_status(generation, [], previous, now(), spec, problems=[problem])
        _write_status(kube, raw, previous, status, audit)
        return
    ledger, missing = read_runs(kube, namespace, month.label)
    runs = [r for r in ledger.values() if r.selected_by(spec.selector.match_labels)]
    deployments = kube.list(INFERENCE, namespace)
    models = in_scope(budget, deployments, runs)
    spent = spend(runs, spec.gpu_prices, None, month, moment)
    problems = []
    usage = idle = None
    try:
        if (used := _month_usage(kube, namespace, zone, month.label, models)) is not None:
            rows, busy = used
            usage = usage_figures(rows, spent.amount)
            idle = idle_gpu_share(spent, busy, {run.model: run.gpus for run in runs})
    except ValueError as error:
        problems.append(
            Problem("UsageLedgerUnreadable", f"{usage_configmap(month.label)}: {error}")
        )
    figures = Figures(
        month.label, models, spent, forecast(spent, month, moment), usage, idle, missing
    )
    others = kube.list(COST_BUDGET, namespace)
    status = budget_status(
        generation,
        [],
        previous,
        now(),
        spec,
        figures,
        problems,
        period=period,
        keda=keda_scaled(kube, deployments, models),
        stricter_elsewhere=stricter_elsewhere(raw, models, others),
    )
    _write_status(kube, raw, previous, status, audit)


def _month_usage(
    kube: Kube, namespace: str, zone: str, month: str, models: Collection[str]
) -> tuple[list[UsageRow], dict[str, int]] | None:
    """The gateways' usage of `models` in the month, and their replica-busy milliseconds
    by model; None while no gateway has reported in the month. ValueError when the usage
    ledger cannot be read."""
    ledger = kube.get(CONFIG_MAP, namespace, usage_configmap(month))
    if ledger is None:
        return None
    answers = tallies(ledger.get("data"))
    rows = month_usage(usage_rows(answers), zone, month, models)
    return rows, month_busy(busy_totals(answers), zone, month, models)


def keda_scaled(kube: Kube, deployments: Iterable[Obj], models: Collection[str]) -> list[str]:
    """The models in scope KEDA scales (where it is installed): no budget bound reaches them."""
    if not keda_present(kube):
        return []
    found = []
    for raw in deployments:
        if raw["metadata"]["name"] not in models:
            continue
        try:
            spec = InferenceDeploymentSpec.model_validate(raw.get("spec") or {})
        except ValidationError:
            continue  # its own status says why; nothing scales it
        if scaled_by_keda(spec):
            found.append(raw["metadata"]["name"])
    return sorted(found)


def _write_status(
    kube: Kube, raw: Obj, previous: Mapping[str, Any], status: Obj, audit: AuditLog | None
) -> None:
    """Patch the status when it differs; an Event for each change of Ready or Degraded, and
    an Event and an audit record for each threshold action started or lifted."""
    namespace, name = namespace_and_name(raw)
    for action, condition in ACTION_CONDITIONS.items():
        in_force = any(
            c["type"] == condition and c["status"] == "True" for c in status["conditions"]
        )
        BUDGET_ACTION_ACTIVE.labels(namespace, name, action).set(1 if in_force else 0)
    if "percentOfLimit" in status:
        BUDGET_SPENT_RATIO.labels(namespace, name).set(status["percentOfLimit"] / 100)
    if all(previous.get(key) == value for key, value in status.items()):
        return
    # A field the new status no longer has (figures of a spec now invalid) is removed.
    removed = {key: None for key in previous if key not in status}
    kube.patch_status(COST_BUDGET, namespace, name, {**removed, **status})
    before = previous.get("conditions") or []
    for type_, reason, message in transition_events(before, status["conditions"]):
        kube.post_event(event_for(raw, type_, reason, message))
    for condition, change, message in action_transitions(before, status["conditions"]):
        started = change == "started"
        reason = condition if started else f"{condition}Lifted"
        # An action started is a warning; business hours ending is routine.
        warning = started and condition in ACTION_CONDITIONS.values()
        kube.post_event(event_for(raw, "Warning" if warning else "Normal", reason, message))
        if audit is not None:
            record = control_record(
                f"budget.{condition.lower()}.{change}",
                "privatellm-operator",
                target=f"CostBudget/{name}",
                namespace=namespace,
                details={"message": message, "models": status.get("models", [])},
            )
            audit.append_sync(record)


def _reconcile(context: Context, key: Key, clock: Callable[[], float] = time.time) -> None:
    reconcile(context.kube, *key, int(clock()), context.audit)


def _budgets_of_namespace(event: WatchEvent, known: Collection[Key]) -> list[Key]:
    """Every known budget of the event's namespace."""
    return [key for key in known if key[0] == event.namespace]


CONTROLLER = Controller(
    name="CostBudget",
    for_=For(COST_BUDGET),
    # A serving Pod starting or stopping moves the spend (its ledger entry is written on
    # the same event; the resync catches a budget read before it); models' labels move
    # the scope. Business hours turning, and other budgets' actions (stricterElsewhere),
    # are seen at the next resync. The ledger ConfigMap itself is not watched: the
    # operator may not list ConfigMaps.
    watches=(
        Watches(POD, _budgets_of_namespace, labels={COMPONENT_LABEL: SERVER_COMPONENT}),
        Watches(INFERENCE, _budgets_of_namespace),
    ),
    reconcile=_reconcile,
    # One worker: a status write per budget.
    workers=1,
)
