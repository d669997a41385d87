"""The cost benchmark's own helpers: its hand computation, its month bounds written out,
and the budget's policy at a moment, checked on small cases."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

from privatellm.api.budget import BusinessHours, GPUPrice
from privatellm.autoscale import Policy
from privatellm.cost.ledger import observe
from privatellm.cost.spend import month_named, spend
from tests.benchmarks.bench_cost import (
    A100,
    H100,
    L4,
    MONTH,
    MONTH_END_UTC,
    MONTH_PRICES,
    MONTH_START_UTC,
    ZONE,
    ScriptedPod,
    budget_policy,
    day_start,
    hand_amount,
    local,
    manifest,
)

UTC = dt.UTC


def test_the_month_bounds_written_out_are_the_zones_month() -> None:
    month = month_named(*MONTH, ZONE)
    assert (month.start, month.end) == (
        int(MONTH_START_UTC.timestamp()),
        int(MONTH_END_UTC.timestamp()),
    )


def test_the_hand_computation_agrees_with_spend_on_boundaries_dst_and_spot() -> None:
    priced_at = dt.datetime(2026, 11, 2, tzinfo=UTC)
    pods = [
        # From September into October.
        ScriptedPod("a", "m", H100, False, 1, dt.datetime(2026, 9, 30, 20, tzinfo=UTC), None),
        # Through the hour the clocks turn back, on spot, finished.
        ScriptedPod(
            "b",
            "m",
            H100,
            True,
            2,
            local(dt.date(2026, 10, 25), 1.5),
            local(dt.date(2026, 10, 25), 3.25),
            "finished",
        ),
        # Spot without a spot price: on demand.
        ScriptedPod(
            "c",
            "n",
            L4,
            True,
            1,
            dt.datetime(2026, 10, 3, 8, 0, 7, tzinfo=UTC),
            dt.datetime(2026, 10, 3, 9, 13, 58, tzinfo=UTC),
        ),
        # Into November, 4 GPUs.
        ScriptedPod(
            "d",
            "n",
            A100,
            False,
            4,
            dt.datetime(2026, 10, 31, 21, tzinfo=UTC),
            dt.datetime(2026, 11, 1, 3, tzinfo=UTC),
        ),
    ]
    runs = [observe(*manifest(p)) for p in pods]
    assert all(r is not None for r in runs)
    # The DST Pod held its GPUs 2 h 45 min, not the 1 h 45 min its wall clock shows.
    assert hand_amount(pods[1], priced_at)[0] == 2 * (2 * 3600 + 45 * 60)
    spent = spend(
        [r for r in runs if r is not None],
        [GPUPrice.model_validate(p) for p in MONTH_PRICES],
        None,
        month_named(*MONTH, ZONE),
        int(priced_at.timestamp()),
    )
    seconds = sum(hand_amount(p, priced_at)[0] for p in pods)
    amount = sum((hand_amount(p, priced_at)[1] for p in pods), Decimal(0))
    assert spent.gpu_seconds == seconds
    assert spent.amount == amount


def test_the_budget_caps_replicas_off_hours_and_sends_an_idle_model_to_zero() -> None:
    policy = Policy(1, 8, 16, 300.0, None)
    at = budget_policy("chat", BusinessHours(timezone=ZONE, off_hours_max_replicas=1), day_start())
    night, noon = at(policy, 3 * 3600.0), at(policy, 12 * 3600.0)
    # The minimum holds while there is demand; idle, the model goes to zero all the same.
    assert (night.min_replicas, night.max_replicas, night.scale_to_zero_after_seconds) == (
        1,
        1,
        600.0,
    )
    assert (noon.min_replicas, noon.max_replicas, noon.scale_to_zero_after_seconds) == (
        1,
        8,
        600.0,
    )
