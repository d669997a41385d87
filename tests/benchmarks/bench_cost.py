"""GPU cost under a CostBudget: what a working day costs, and whether a month adds up.

1. The synthetic working day of bench_autoscale (the same seeded requests, the same
   simulation of replicas, queueing and start-up, imported from there) is replayed for
   an interactive and a batch model: on a static deployment sized for the day's peak;
   autoscaled as their specs say; and autoscaled under a CostBudget with business hours
   and an idle timeout. The budget acts as the operator makes it act: at each decision
   `privatellm.cost.schedule.off_hours` says whether the moment is outside business
   hours, `privatellm.render.budget.model_limits` turns the budget into
   `privatellm.autoscale.Limits`, and `privatellm.autoscale.limited` applies them to the
   spec's policy. Each replica's lifetime becomes a ledger run (`privatellm.cost.ledger`)
   and is priced by `privatellm.cost.spend.spend`, so the cost is what the operator
   would report. The batch model is priced once more on spot, where its budget's price
   puts it.
2. A scripted month of Pods (October 2026 in Europe/Amsterdam, the month daylight
   saving time ends) goes through the real ledger (`observe`, `merge`, the ConfigMap's
   `dump` and `load`) and `spend`, and is compared with a hand computation in Decimal
   from the script itself: seconds within the month times the hourly price over 3600.

Run: python -m tests.benchmarks.bench_cost [--seed N] [--engine-start S] [--no-write]
"""

from __future__ import annotations

import argparse
import bisect
import datetime as dt
import math
import random
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

from privatellm.api.budget import BusinessHours, CostBudgetSpec, GPUPrice
from privatellm.autoscale import Policy, limited, policy_for
from privatellm.cost.ledger import Capacity, dump, load, merge, observe
from privatellm.cost.ledger import Run as LedgerRun
from privatellm.cost.schedule import off_hours
from privatellm.cost.spend import Spend, cents, month_named, month_of, spend
from privatellm.render.budget_actions import model_limits
from privatellm.render.meta import (
    CAPACITY_TYPE_LABEL,
    COMPONENT_LABEL,
    GPU_PRODUCT_LABEL,
    GPU_RESOURCE,
    INFERENCE_DEPLOYMENT_LABEL,
    SPOT,
)
from privatellm.render.weights import estimated_restore_seconds
from privatellm.render.workload import SERVER_COMPONENT

from .bench_autoscale import (
    DAY,
    ENGINE_START_SECONDS,
    HOUR,
    TARGET_IN_FLIGHT,
    Day,
    Request,
    Workload,
    percentile,
    spec_for,
    workloads,
)
from .report import write_section

SECTION = "cost"
ZONE = "Europe/Amsterdam"
CURRENCY = "EUR"
H100 = "NVIDIA-H100-80GB-HBM3"
L4 = "NVIDIA-L4"
A100 = "NVIDIA-A100-SXM4-80GB"
ON_DEMAND_PER_HOUR = 4.10
SPOT_PER_HOUR = 1.64
# A Tuesday: the synthetic day is a working day of the budget's week.
DAY_DATE = dt.date(2026, 10, 13)
# 1, not 0: with 0 the evening's requests (traffic runs to 20:00) would be held until
# 08:00 the next morning.
OFF_HOURS_MAX_REPLICAS = 1
IDLE_TIMEOUT = "10m"
BUDGET_NAME = "team"
# One budget over both models, as a team's budget selects every model of its namespace.
BUDGET_SPEC: dict[str, Any] = {
    "currency": CURRENCY,
    "monthlyLimit": 20000,
    "gpuPrices": [
        {"gpuProduct": H100, "onDemandPerHour": ON_DEMAND_PER_HOUR, "spotPerHour": SPOT_PER_HOUR}
    ],
    "businessHours": {
        "timezone": ZONE,
        "days": ["Mon", "Tue", "Wed", "Thu", "Fri"],
        "start": "08:00",
        "end": "18:00",
        "offHoursMaxReplicas": OFF_HOURS_MAX_REPLICAS,
    },
    "idleTimeout": IDLE_TIMEOUT,
}
# bench_autoscale's workloads this benchmark prices, by the model name they run as.
MODELS = {"chat": 0, "batch": 2}


def day_start() -> int:
    """The synthetic day's midnight, in seconds since the epoch."""
    midnight = dt.datetime.combine(DAY_DATE, dt.time(), tzinfo=ZoneInfo(ZONE))
    return int(midnight.timestamp())


class WatchedDay(Day):
    """A replay that also notes when each replica stopped taking requests, to tell which
    requests arrived while no replica was ready."""

    def __init__(self, requests: Sequence[Request], start_seconds: float) -> None:
        super().__init__(requests, start_seconds)
        self.left: dict[int, float] = {}

    def scale_to(self, count: int, now: float) -> None:
        super().scale_to(count, now)
        for replica in self.replicas:
            if replica.leaving:
                self.left.setdefault(id(replica), now)

    def serving_periods(self) -> list[tuple[float, float]]:
        """The union of the times some replica was ready and taking requests."""
        spans = sorted(
            (r.ready_at, self.left.get(id(r), DAY))
            for r in self.replicas
            if r.ready_at < self.left.get(id(r), DAY)
        )
        merged: list[tuple[float, float]] = []
        for start, end in spans:
            if merged and start <= merged[-1][1]:
                merged[-1] = (merged[-1][0], max(merged[-1][1], end))
            else:
                merged.append((start, end))
        return merged


def unserved_arrivals(day: WatchedDay) -> list[int]:
    """The requests that arrived while no replica was ready: they waited for a wake."""
    periods = day.serving_periods()
    starts = [start for start, _ in periods]
    found = []
    for index, request in enumerate(day.requests):
        i = bisect.bisect_right(starts, request.arrival) - 1
        if i < 0 or request.arrival >= periods[i][1]:
            found.append(index)
    return found


def budget_object(spec: Mapping[str, Any], models: Sequence[str], off: bool) -> dict[str, Any]:
    """The CostBudget as the model controller reads it: spec, and a current status that
    covers `models` and says whether business hours are over."""
    return {
        "metadata": {"name": BUDGET_NAME, "generation": 1},
        "spec": spec,
        "status": {"observedGeneration": 1, "models": list(models), "offHours": off},
    }


def budget_policy(
    model: str, hours: BusinessHours, start: int
) -> Callable[[Policy, float], Policy]:
    """`policy_at` for Day.replay: the spec's policy within what the budget imposes now."""

    def at(policy: Policy, now: float) -> Policy:
        budget = budget_object(BUDGET_SPEC, list(MODELS), off_hours(hours, start + now))
        return limited(policy, model_limits([budget], model))

    return at


def ledger_runs(day: Day, model: str, capacity: Capacity, start: int) -> list[LedgerRun]:
    """Each replica of the day as the ledger records its Pod: whole seconds from the
    moment it was asked for until it let its GPU go (or the day ended)."""
    runs = []
    for i, replica in enumerate(day.replicas):
        released = replica.released if replica.released is not None else DAY
        end = start + math.ceil(min(DAY, released))
        runs.append(
            LedgerRun(
                uid=f"{model}-{capacity}-{i}",
                pod=f"{model}-{i}",
                model=model,
                gpu_product=H100,
                capacity=capacity,
                gpus=1,
                start=start + math.floor(replica.asked),
                end=end,
                seen=end,
            )
        )
    return runs


@dataclass
class Arm:
    model: str
    name: str
    capacity: Capacity
    day: WatchedDay
    spent: Spend
    # The same requests' waits on the static deployment.
    baseline: Sequence[float]
    unserved: Sequence[int]

    @property
    def added(self) -> list[float]:
        return [a - s for a, s in zip(self.day.waits, self.baseline, strict=True)]


@dataclass
class Model:
    name: str
    workload: Workload
    static: int
    policy: Policy
    # Under the budget, at night and at noon.
    off_hours_policy: Policy
    business_hours_policy: Policy
    start_seconds: float
    # Per request: whether it arrived outside business hours.
    arrived_off_hours: list[bool]
    arms: list[Arm]


def price(day: WatchedDay, model: str, capacity: Capacity, prices: Sequence[GPUPrice]) -> Spend:
    start = day_start()
    month = month_of(start, ZONE)
    return spend(ledger_runs(day, model, capacity, start), prices, None, month, start + int(DAY))


def simulate(name: str, workload: Workload, engine_start: float) -> Model:
    spec_budget = CostBudgetSpec.model_validate(BUDGET_SPEC)
    hours = spec_budget.business_hours
    assert hours is not None
    prices = spec_budget.gpu_prices
    start = day_start()
    static = math.ceil(workload.peak_in_flight / TARGET_IN_FLIGHT)
    spec = spec_for(workload, max_replicas=static)
    policy = policy_for(spec)
    start_seconds = estimated_restore_seconds(spec) + engine_start
    at = budget_policy(name, hours, start)

    def replay(static_only: bool, budget: bool) -> WatchedDay:
        day = WatchedDay(workload.requests, start_seconds)
        day.replay(None if static_only else policy, static, at if budget else None)
        return day

    fixed = replay(static_only=True, budget=False)
    scaled = replay(static_only=False, budget=False)
    budgeted = replay(static_only=False, budget=True)
    days = [("static peak", fixed), ("autoscaled (spec)", scaled), ("budget", budgeted)]
    arms = [
        Arm(
            name,
            label,
            "on-demand",
            day,
            price(day, name, "on-demand", prices),
            fixed.waits,
            unserved_arrivals(day),
        )
        for label, day in days
    ]
    if workload.workload_class == "batch":
        # Batch may run on spot capacity (interactive may not), and the budget prices it.
        budget_arm = arms[-1]
        arms.append(
            Arm(
                name,
                "budget, on spot",
                "spot",
                budgeted,
                price(budgeted, name, "spot", prices),
                fixed.waits,
                budget_arm.unserved,
            )
        )
    off = [off_hours(hours, start + r.arrival) for r in workload.requests]
    night, noon = at(policy, 0.0), at(policy, 12 * HOUR)
    return Model(name, workload, static, policy, night, noon, start_seconds, off, arms)


# --- 2. A scripted month against a hand computation ---------------------------------

MONTH = (2026, 10)
# The month's bounds in UTC, written out rather than derived from the zone: midnight
# CEST (UTC+2) on 1 October and midnight CET (UTC+1) on 1 November, 745 hours apart.
MONTH_START_UTC = dt.datetime(2026, 9, 30, 22, tzinfo=dt.UTC)
MONTH_END_UTC = dt.datetime(2026, 10, 31, 23, tzinfo=dt.UTC)
MONTH_PRICES: list[dict[str, Any]] = [
    {"gpuProduct": H100, "onDemandPerHour": ON_DEMAND_PER_HOUR, "spotPerHour": SPOT_PER_HOUR},
    {"gpuProduct": A100, "onDemandPerHour": 2.93, "spotPerHour": 1.17},
    # No spot price: its spot Pods are charged on demand.
    {"gpuProduct": L4, "onDemandPerHour": 0.81},
]
# The same prices typed by hand, per (product, on spot).
HAND_PRICES = {
    (H100, False): Decimal("4.10"),
    (H100, True): Decimal("1.64"),
    (A100, False): Decimal("2.93"),
    (A100, True): Decimal("1.17"),
    (L4, False): Decimal("0.81"),
    (L4, True): Decimal("0.81"),
}


@dataclass(frozen=True)
class ScriptedPod:
    """One serving Pod of the script: what it ran on, from when to when (UTC)."""

    name: str
    model: str
    product: str
    spot: bool
    gpus: int
    start: dt.datetime
    # None: still running when the month is priced.
    end: dt.datetime | None
    # How its end shows: "deleted" (deletionTimestamp) or "finished" (its containers').
    ended_by: str = "deleted"


def _rfc3339(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def manifest(pod: ScriptedPod) -> tuple[dict[str, Any], dict[str, str]]:
    """The Pod as the API server returns it, and its node's labels."""
    meta: dict[str, Any] = {
        "name": pod.name,
        "uid": f"uid-{pod.name}",
        "labels": {COMPONENT_LABEL: SERVER_COMPONENT, INFERENCE_DEPLOYMENT_LABEL: pod.model},
    }
    status: dict[str, Any] = {"startTime": _rfc3339(pod.start)}
    if pod.end is not None and pod.ended_by == "deleted":
        meta["deletionTimestamp"] = _rfc3339(pod.end)
        status["containerStatuses"] = [{"state": {"running": {}}}]
    elif pod.end is not None:
        finished = {"terminated": {"finishedAt": _rfc3339(pod.end)}}
        status["containerStatuses"] = [{"state": finished}]
    else:
        status["containerStatuses"] = [{"state": {"running": {}}}]
    container = {"name": "vllm", "resources": {"limits": {GPU_RESOURCE: str(pod.gpus)}}}
    node = {GPU_PRODUCT_LABEL: pod.product}
    if pod.spot:
        node[CAPACITY_TYPE_LABEL] = SPOT
    return {"metadata": meta, "spec": {"containers": [container]}, "status": status}, node


def local(day: dt.date, hours: float, fold: int = 0) -> dt.datetime:
    """Wall-clock time `hours` after midnight of `day` in the zone, in whole seconds."""
    seconds = round(hours * HOUR)
    clock = dt.time(seconds // 3600, seconds // 60 % 60, seconds % 60, fold=fold)
    return dt.datetime.combine(day, clock, tzinfo=ZoneInfo(ZONE)).astimezone(dt.UTC)


def month_script(seed: int) -> tuple[list[ScriptedPod], dt.datetime]:
    """A month of Pods created, scaled and deleted, with the moment it is priced.

    chat (H100 on demand) keeps one Pod through rollouts and scales to 2-4 on working
    days; batch (H100, spot unless spot is short) runs each night; embed (L4, one Pod
    on spot, one on demand) restarts twice; a 4-GPU A100 model runs a few experiments.
    Runs cross both month boundaries, and a night batch runs through 02:00-03:00 on
    25 October, the hour the clocks turn back.
    """
    rng = random.Random(seed)
    first, last = dt.date(2026, 9, 26), dt.date(2026, 11, 4)
    days = [first + dt.timedelta(days=i) for i in range((last - first).days + 1)]
    pods: list[ScriptedPod] = []

    def jitter(hours: float, minutes: float) -> float:
        return hours + rng.uniform(-minutes, minutes) / 60

    # chat: the long-lived Pod, replaced at each rollout; the last one still runs.
    start = local(dt.date(2026, 9, 14), 10.25)
    rollout = dt.date(2026, 10, 2)
    n = 0
    while rollout <= last:
        end = local(rollout, jitter(11, 60))
        pods.append(ScriptedPod(f"chat-base-{n}", "chat", H100, False, 1, start, end))
        # The new Pod starts before the old one goes.
        start, n = end - dt.timedelta(seconds=rng.randint(40, 90)), n + 1
        rollout += dt.timedelta(days=rng.randint(4, 9))
    pods.append(ScriptedPod(f"chat-base-{n}", "chat", H100, False, 1, start, None))
    for day in days:
        if day.weekday() >= 5:
            continue
        for extra in range(rng.randint(1, 3)):
            up = local(day, jitter(8.5 + extra, 30))
            down = local(day, jitter(17.5, 45))
            name = f"chat-{day:%m%d}-{extra}"
            pods.append(ScriptedPod(name, "chat", H100, False, 1, up, down))
    # batch: a nightly job on two Pods, spot unless spot capacity is short (one in five).
    for day in days:
        for replica in range(2):
            spot = rng.random() >= 0.2
            up = local(day, jitter(1.2, 10))
            down = local(day, jitter(3.6, 20))
            name = f"batch-{day:%m%d}-{replica}"
            pods.append(ScriptedPod(name, "batch", H100, spot, 1, up, down, "finished"))
    # The last night of the month also runs a late job into November.
    late = (local(dt.date(2026, 10, 31), 22.5), local(dt.date(2026, 11, 1), 2.25))
    pods.append(ScriptedPod("batch-1031-late", "batch", H100, True, 1, *late, "finished"))
    # embed: one spot Pod (charged on demand: no spot price) restarted twice, and one on
    # demand from mid-month on.
    restarts = [local(dt.date(2026, 9, 20), 9.0), local(dt.date(2026, 10, 9), 14.1)]
    restarts += [local(dt.date(2026, 10, 27), 7.7)]
    ends: list[dt.datetime | None] = [*restarts[1:], None]
    for i, (began, stopped) in enumerate(zip(restarts, ends, strict=True)):
        pods.append(ScriptedPod(f"embed-{i}", "embed", L4, True, 1, began, stopped, "finished"))
    embed_late = local(dt.date(2026, 10, 16), 12.0)
    pods.append(ScriptedPod("embed-od", "embed", L4, False, 1, embed_late, None))
    # large: 4-GPU experiments of a few hours on A100s, on demand or spot.
    for i in range(6):
        day = dt.date(2026, 10, rng.randint(1, 31))
        up = local(day, rng.uniform(9, 14))
        down = up + dt.timedelta(seconds=rng.randint(2 * 3600, 9 * 3600))
        pods.append(ScriptedPod(f"large-{i}", "large", A100, i % 2 == 1, 4, up, down))
    priced_at = local(dt.date(2026, 11, 4), 12.0)
    return pods, priced_at


def hand_amount(pod: ScriptedPod, priced_at: dt.datetime) -> tuple[int, Decimal]:
    """GPU-seconds of `pod` within the month and their price: seconds x price / 3600."""
    start = max(pod.start, MONTH_START_UTC)
    end = min(pod.end or priced_at, MONTH_END_UTC)
    seconds = max(0, int((end - start).total_seconds())) * pod.gpus
    return seconds, Decimal(seconds) * HAND_PRICES[(pod.product, pod.spot)] / Decimal(3600)


@dataclass
class MonthCheck:
    pods: int
    runs: int
    in_month: int
    crossing: int
    spot: int
    open_runs: int
    month_hours: float
    spent: Spend
    hand_seconds: int
    hand_amount: Decimal
    hand_by_model: dict[str, Decimal]
    dst_pod: ScriptedPod

    @property
    def cents_apart(self) -> Decimal:
        return (cents(self.spent.amount) - cents(self.hand_amount)) * 100

    @property
    def worst_model_cents_apart(self) -> Decimal:
        return max(
            abs(cents(self.spent.by_model.get(m, Decimal(0))) - cents(a)) * 100
            for m, a in self.hand_by_model.items()
        )


def check_month(seed: int) -> MonthCheck:
    pods, priced_at = month_script(seed)
    now = int(priced_at.timestamp())
    observed = [observe(*manifest(p)) for p in pods]
    runs = [r for r in observed if r is not None]
    # Through the ConfigMap, as the operator stores and reads the ledger.
    ledger = load(dump(merge({}, runs, now)))
    prices = [GPUPrice.model_validate(p) for p in MONTH_PRICES]
    month = month_named(*MONTH, ZONE)
    spent = spend(ledger.values(), prices, None, month, now)
    hand_seconds, hand_total = 0, Decimal(0)
    by_model: dict[str, Decimal] = {}
    in_month = 0
    for pod in pods:
        seconds, amount = hand_amount(pod, priced_at)
        hand_seconds += seconds
        hand_total += amount
        by_model[pod.model] = by_model.get(pod.model, Decimal(0)) + amount
        in_month += seconds > 0
    crossing = sum(
        1
        for p in pods
        if p.start < MONTH_START_UTC < (p.end or priced_at)
        or p.start < MONTH_END_UTC < (p.end or priced_at)
    )
    dst_pod = next(p for p in pods if p.name == "batch-1025-0")
    return MonthCheck(
        pods=len(pods),
        runs=len(ledger),
        in_month=in_month,
        crossing=crossing,
        spot=sum(p.spot for p in pods),
        open_runs=sum(1 for r in ledger.values() if r.end is None),
        month_hours=(month.end - month.start) / HOUR,
        spent=spent,
        hand_seconds=hand_seconds,
        hand_amount=hand_total,
        hand_by_model=by_model,
        dst_pod=dst_pod,
    )


# --- report -------------------------------------------------------------------------


def _money(amount: Decimal) -> str:
    return f"{cents(amount):,.2f}"


def _wake_waits(arm: Arm, arrived_off_hours: Sequence[bool]) -> str:
    if not arm.unserved:
        return "0"
    waits = [arm.day.waits[i] for i in arm.unserved]
    off = sum(arrived_off_hours[i] for i in arm.unserved)
    return f"{len(waits):,}, {off:,} off hours ({percentile(waits, 0.5):.0f} / {max(waits):.0f} s)"


def arm_row(arm: Arm, static: Arm, arrived_off_hours: Sequence[bool]) -> str:
    added = arm.added
    longer = [a for a in added if a > 0]
    ratio = arm.spent.amount / static.spent.amount
    return (
        f"| {arm.model} | {arm.name} | {arm.capacity} | {arm.spent.gpu_seconds / HOUR:.1f}"
        f" | {_money(arm.spent.amount)} | {ratio:.2f}"
        f" | {percentile(added, 0.5):.1f} / {percentile(added, 0.99):.1f}"
        f" | {len(longer):,}"
        f" | {percentile(longer, 0.5):.1f} / {percentile(longer, 0.99):.1f}"
        f" | {sum(arrived_off_hours):,} | {_wake_waits(arm, arrived_off_hours)} |"
    )


def total_rows(models: Sequence[Model]) -> list[str]:
    """Both models together for each arm; on spot, only batch may move there."""
    labels = {
        "static peak": "static peak",
        "autoscaled (spec)": "autoscaled (spec)",
        "budget": "budget",
        "budget, on spot": "budget, batch on spot",
    }
    totals: dict[str, tuple[int, Decimal]] = {}
    for label, total_label in labels.items():
        seconds, amount = 0, Decimal(0)
        for model in models:
            arms = {a.name: a for a in model.arms}
            arm = arms.get(label) or arms["budget"]
            seconds += arm.spent.gpu_seconds
            amount += arm.spent.amount
        totals[total_label] = (seconds, amount)
    static = totals["static peak"][1]
    return [
        f"| both | {label} | | {seconds / HOUR:.1f} | {_money(amount)} | {amount / static:.2f}"
        " | | | | | |"
        for label, (seconds, amount) in totals.items()
    ]


def _policy(p: Policy) -> str:
    after = p.scale_to_zero_after_seconds
    zero = "never" if after is None else f"{after / 60:.0f} min"
    return f"replicas {p.min_replicas}-{p.max_replicas}, to zero after {zero}"


def report(models: Sequence[Model], month: MonthCheck, seed: int, engine_start: float) -> str:
    rows = []
    for model in models:
        static = model.arms[0]
        rows += [arm_row(arm, static, model.arrived_off_hours) for arm in model.arms]
    notes = [
        f"- {m.name} (workloadClass {m.workload.workload_class}):"
        f" {len(m.workload.requests):,} requests; static {m.static} replicas; as the spec"
        f" says {_policy(m.policy)}; under the budget, in business hours"
        f" {_policy(m.business_hours_policy)}, off hours {_policy(m.off_hours_policy)}."
        for m in models
    ]
    spent = month.spent
    dst = month.dst_pod
    assert dst.end is not None
    zone = ZoneInfo(ZONE)
    start_local, end_local = dst.start.astimezone(zone), dst.end.astimezone(zone)
    wall_clock = end_local.replace(tzinfo=None) - start_local.replace(tzinfo=None)
    dst_local = (
        f"{start_local:%H:%M %Z} to {end_local:%H:%M %Z}, is"
        f" {wall_clock.total_seconds() / HOUR:.2f} h on the wall clock and"
        f" {(dst.end - dst.start).total_seconds() / HOUR:.2f} h on its GPU"
    )
    month_rows = [
        f"| Pods scripted / runs in the ledger | {month.pods:,} / {month.runs:,} |",
        f"| runs with time in the month / crossing a month boundary / still open"
        f" | {month.in_month:,} / {month.crossing} / {month.open_runs} |",
        f"| Pods on spot nodes | {month.spot:,} |",
        f"| month length | {month.month_hours:.0f} h |",
        f"| GPU-hours: spend() / by hand | {spent.gpu_seconds / HOUR:,.4f}"
        f" / {month.hand_seconds / HOUR:,.4f} |",
        f"| amount {CURRENCY}: spend() / by hand | {_money(spent.amount)}"
        f" / {_money(month.hand_amount)} |",
        f"| difference, total | {month.cents_apart:.0f} cents |",
        f"| largest difference of one model | {month.worst_model_cents_apart:.0f} cents |",
        f"| exact difference before rounding | {spent.amount - month.hand_amount} |",
    ]
    return "\n".join(
        [
            "## GPU cost under a CostBudget",
            "",
            "`make bench` (`python -m tests.benchmarks.bench_cost"
            f" --seed {seed} --engine-start {engine_start:g}`), simulated time, so the"
            " figures do not depend on the machine.",
            "",
            "### A working day",
            "",
            "The synthetic working day of the autoscaling benchmark (same seed, same"
            " requests, same simulation of start-up and queueing), as Tuesday"
            f" {DAY_DATE:%d %B %Y} in {ZONE}, for an interactive model (`chat`, minReplicas"
            " 1) and a batch model (`batch`, minReplicas 0). Arms: a static deployment"
            " sized for the day's peak for 24 h; autoscaled as the spec says; autoscaled"
            f" under one CostBudget over both models with businessHours Mon-Fri"
            f" 08:00-18:00, offHoursMaxReplicas {OFF_HOURS_MAX_REPLICAS} (0 would hold the"
            " evening's requests, which run to 20:00, until 08:00 the next day) and"
            f" idleTimeout {IDLE_TIMEOUT}. At each decision the budget acts through the"
            " operator's own code: `off_hours`, `model_limits` and `limited` on the"
            " spec's policy. Every replica's lifetime, from the moment it is asked for"
            " to the moment it lets its GPU go, is a ledger run of 1 GPU priced by"
            f" `spend()` at {ON_DEMAND_PER_HOUR:.2f} {CURRENCY}/GPU-hour on demand and"
            f" {SPOT_PER_HOUR:.2f} on spot ({H100}); batch runs once more on spot, the"
            " same simulation priced at the spot price.",
            "",
            "| model | arm | capacity | GPU-h | cost " + CURRENCY + " | cost / static peak"
            " | added wait p50 / p99 s | requests that waited longer"
            " | their added wait p50 / p99 s | arrived off hours"
            " | met no ready replica (wait p50 / max) |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
            *rows,
            *total_rows(models),
            "",
            *notes,
            "",
            "Added wait: a request's wait for a free replica minus its wait on the static"
            " deployment. Met no ready replica: the request arrived while the model was"
            " at zero or waking from it, and waited for the wake. The budget's saving on"
            " the interactive model comes from idleTimeout (idleTimeout alone gives the"
            " same GPU-hours here: the evening's and early morning's traffic fits in the"
            f" off-hours ceiling): the model goes to zero after {IDLE_TIMEOUT} idle instead"
            " of keeping minReplicas 1, and the night's few requests wait about a minute"
            " for a wake. For batch the off-hours ceiling of 1 replica stretches the 01:30"
            " job, whose requests queue behind one replica: that is where its p99 comes"
            " from. A model whose work runs at night belongs in a budget without"
            " businessHours, or with an offHoursMaxReplicas its jobs fit in. Not"
            " modelled: spot interruptions (a reclaimed spot replica's requests would be"
            " retried) and the GPUs of the gateway and weight cache.",
            "",
            "### Accounting on a scripted month",
            "",
            f"{MONTH[0]}-{MONTH[1]:02d} in {ZONE}: Pods created, scaled and deleted (a"
            " chat model with rollouts and office-hours replicas, a nightly batch job"
            " mostly on spot, an L4 model on spot without a spot price, so charged on"
            " demand, 4-GPU A100 experiments), runs crossing both month boundaries and"
            " some still open when the month is priced. The Pods go through the ledger"
            " (`observe`, `merge`, `dump`/`load`) and `spend()`; the hand computation"
            " takes each scripted Pod's seconds within the month (bounds written out in"
            " UTC), times its GPUs and its price typed as a Decimal, over 3600. The batch"
            f" Pod of 25 October, {dst_local}, all of it charged: the hour the clocks"
            " turn back passes twice. The exact difference is that of Decimal's 28"
            " significant digits in a division, far below a cent.",
            "",
            "| measure | value |",
            "|---|---|",
            *month_rows,
        ]
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--engine-start", type=float, default=ENGINE_START_SECONDS)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    days = workloads(args.seed)
    models = [simulate(name, days[i], args.engine_start) for name, i in MODELS.items()]
    month = check_month(args.seed)
    body = report(models, month, args.seed, args.engine_start)
    if not args.no_write:
        write_section(SECTION, body)
    print(body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
