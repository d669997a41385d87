"""The autoscaler's rules, one example each: policy from the spec, demand checks, decisions."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import pytest

from privatellm.api import InferenceDeploymentSpec
from privatellm.autoscale import (
    Decision,
    Demand,
    EngineReport,
    GatewayReport,
    Policy,
    Reason,
    Signal,
    State,
    aggregate_demand,
    decide,
    duration_seconds,
    gateway_report_problem,
    policy_for,
    start_state,
)


def spec(**fields: Any) -> InferenceDeploymentSpec:
    return InferenceDeploymentSpec.model_validate(
        {
            "model": {"name": "m", "source": {"uri": "pvc://weights/m", "sizeGiB": 16}},
            "zones": ["zone-a", "zone-b"],
            **fields,
        }
    )


def policy(
    minimum: int = 1,
    maximum: int = 10,
    target: int = 10,
    window: float = 300.0,
    to_zero: float | None = None,
) -> Policy:
    return Policy(minimum, maximum, target, window, to_zero)


def load(
    in_flight: int = 0,
    waiting: int = 0,
    held: int = 0,
    arrived: int = 0,
    tokens: float = 0.0,
    engines: Sequence[tuple[int, int, float]] = (),
    wanted: bool = False,
) -> Demand:
    """The demand of one gateway report, and of engines given as (running, waiting, kv)."""
    return aggregate_demand(
        [GatewayReport("gw-0", in_flight, waiting, held, arrived, 0.0, tokens, wanted)],
        [EngineReport(f"vllm-{i}", *figures) for i, figures in enumerate(engines)],
    )


IDLE = load()
NO_REPORT = aggregate_demand([])


def run(
    p: Policy, state: State, demands: Sequence[Demand], start: float, every: float = 15.0
) -> list[Decision]:
    """Decide on each demand in turn, `every` seconds apart from `start`."""
    decisions = []
    for i, demand in enumerate(demands):
        decision = decide(p, state, demand, start + i * every)
        decisions.append(decision)
        state = decision.state
    return decisions


# --- the policy a spec asks for -------------------------------------------------------


def test_without_autoscaling_the_replicas_are_fixed() -> None:
    p = policy_for(spec(replicas=4))
    assert (p.min_replicas, p.max_replicas, p.scale_to_zero_after_seconds) == (4, 4, None)
    decision = decide(p, start_state(4, 0.0), load(in_flight=500), 15.0)
    assert (decision.replicas, decision.reason, decision.desired) == (4, Reason.AT_MAXIMUM, 32)


def test_autoscaling_bounds_and_windows_come_from_the_spec_and_the_workload_class() -> None:
    interactive = policy_for(spec(autoscaling={"minReplicas": 2, "maxReplicas": 8}))
    assert interactive == Policy(2, 8, 16, 300.0, None)
    batch = policy_for(
        spec(workloadClass="batch", autoscaling={"targetInFlightPerReplica": 4, "maxReplicas": 5})
    )
    assert batch == Policy(1, 5, 4, 1800.0, None)


@pytest.mark.parametrize(
    ("fields", "seconds"),
    [
        ({"autoscaling": {"minReplicas": 0}}, 1800.0),
        ({"workloadClass": "batch", "autoscaling": {"minReplicas": 0}}, 900.0),
        ({"autoscaling": {"minReplicas": 0, "scaleToZeroAfter": "1h30m"}}, 5400.0),
    ],
)
def test_scale_to_zero_follows_min_replicas_zero_with_a_default_per_class(
    fields: dict[str, Any], seconds: float
) -> None:
    assert policy_for(spec(**fields)).scale_to_zero_after_seconds == seconds


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30m", 1800.0), ("1h30m", 5400.0), ("1.5s", 1.5), ("250ms", 0.25), ("0s", 0.0)],
)
def test_durations_read_the_api_grammar(text: str, seconds: float) -> None:
    assert duration_seconds(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "10d", "5m junk", "m", "-5m", "1.m"])
def test_text_outside_the_duration_grammar_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="not a duration"):
        duration_seconds(text)


def test_a_policy_with_impossible_bounds_is_refused() -> None:
    with pytest.raises(ValueError, match="min_replicas <= max_replicas"):
        policy(minimum=3, maximum=2)
    with pytest.raises(ValueError, match="must not be negative"):
        policy(minimum=0, to_zero=-1.0)


# --- demand reports -------------------------------------------------------------------


def test_demand_sums_every_gateway_and_engine() -> None:
    demand = aggregate_demand(
        [
            GatewayReport("gw-0", 3, 1, 0, 5, 100.0, 40.0),
            GatewayReport("gw-1", 4, 0, 2, 7, 50.0, 10.0, wanted=True),
        ],
        [EngineReport("vllm-0", 4, 1, 0.5), EngineReport("vllm-1", 3, 0, 0.7)],
    )
    assert (demand.gateways, demand.in_flight, demand.held, demand.wanted) == (2, 7, 2, True)
    assert (demand.arrived, demand.prompt_tokens_per_second) == (12, 150.0)
    assert demand.completion_tokens_per_second == 50.0
    assert (demand.engines, demand.engine_requests) == (2, 8)
    assert demand.kv_cache_usage == pytest.approx(0.6)
    assert demand.refused == ()


@pytest.mark.parametrize(
    ("figures", "problem"),
    [
        ({"in_flight": math.nan}, "inFlight is not a finite number"),
        ({"waiting": math.inf}, "waiting is not a finite number"),
        ({"held": -1}, "held is not a finite number >= 0"),
        ({"in_flight": 1e9}, "inFlight is beyond any real reporter"),
        ({"arrived": 2.5}, "arrived is not a whole number"),
        ({"in_flight": "12"}, "inFlight is not a number"),
        ({"prompt_tokens_per_second": 1e12}, "promptTokensPerSecond is beyond"),
        ({"waiting": 2}, "waiting exceeds inFlight, of which it is a part"),
        ({"wanted": "yes"}, "wanted is not true or false"),
    ],
)
def test_a_malformed_or_absurd_gateway_report_is_refused(
    figures: dict[str, Any], problem: str
) -> None:
    report = GatewayReport(**{**GatewayReport("gw-1", 1, 0, 0, 0, 0.0, 0.0).__dict__, **figures})
    assert problem in (gateway_report_problem(report) or "")
    demand = aggregate_demand([GatewayReport("gw-0", 5, 0, 0, 1, 0.0, 0.0), report])
    assert demand.gateways == 1
    assert demand.in_flight == 5
    assert len(demand.refused) == 1
    assert demand.refused[0].startswith("gw-1: ")


@pytest.mark.parametrize(
    "figures", [(1, 0, 1.5), (1, 0, -0.1), (1, 0, math.nan), (-3, 0, 0.5), (1, 1e9, 0.5)]
)
def test_a_malformed_engine_report_is_refused(figures: tuple[float, float, float]) -> None:
    demand = aggregate_demand(
        [GatewayReport("gw-0", 1, 0, 0, 0, 0.0, 0.0)], [EngineReport("vllm-0", *figures)]
    )
    assert (demand.engines, demand.kv_cache_usage) == (0, None)
    assert demand.refused[0].startswith("vllm-0: ")


def test_an_absurd_report_cannot_push_past_max_replicas() -> None:
    p = policy(maximum=6)
    absurd = aggregate_demand([GatewayReport("gw-0", 1e9, 1e9, 1e9, 1e9, 1e15, 1e15)])
    decision = decide(p, start_state(2, 0.0), absurd, 15.0)
    assert (decision.replicas, decision.reason) == (2, Reason.DEMAND_UNKNOWN)
    assert decision.signal is Signal.REFUSED_REPORTS
    largest = aggregate_demand([GatewayReport("gw-0", 1e6, 1e6, 1e6, 1e6, 1e8, 1e8)])
    decisions = run(p, start_state(2, 0.0), [largest] * 5, 15.0)
    assert max(d.replicas for d in decisions) == 6
    assert decisions[-1].reason is Reason.AT_MAXIMUM


# --- scaling up -----------------------------------------------------------------------


def test_scale_up_goes_to_the_desired_count_at_once() -> None:
    demand = load(in_flight=41, waiting=30, held=2)
    decision = decide(policy(), start_state(1, 0.0), demand, 15.0)
    assert (decision.replicas, decision.reason, decision.desired) == (5, Reason.SCALE_UP, 5)
    # Waiting requests are part of those in flight, not added to them.
    assert (decision.signal, decision.value) == (Signal.REQUESTS, 43.0)
    assert decision.changed
    assert decision.message == "1 -> 5 replicas: 43 requests in flight or held ask for 5"


def test_a_scale_up_at_most_doubles_or_adds_four() -> None:
    p = policy(maximum=100)
    decisions = run(p, start_state(2, 0.0), [load(in_flight=1000)] * 5, 15.0)
    assert [d.replicas for d in decisions] == [6, 12, 24, 48, 96]
    assert "at most 4 more per decision" in decisions[0].message


def test_demand_beyond_max_replicas_stops_at_the_maximum() -> None:
    decisions = run(policy(maximum=4), start_state(1, 0.0), [load(in_flight=200)] * 2, 15.0)
    assert [(d.replicas, d.reason) for d in decisions] == [
        (4, Reason.SCALE_UP),
        (4, Reason.AT_MAXIMUM),
    ]
    assert "capped at maxReplicas 4" in decisions[0].message


def test_the_engines_count_when_they_see_more_than_the_gateways_report() -> None:
    demand = load(in_flight=10, waiting=2, held=3, engines=[(20, 10, 0.5), (15, 5, 0.5)])
    decision = decide(policy(), start_state(2, 0.0), demand, 15.0)
    assert (decision.replicas, decision.signal, decision.value) == (
        6,
        Signal.ENGINE_REQUESTS,
        53.0,
    )


def test_kv_cache_pressure_asks_one_more_replica_than_the_full_ones() -> None:
    full = [(5, 0, 0.95)] * 3
    decision = decide(policy(), start_state(3, 0.0), load(in_flight=15, engines=full), 15.0)
    assert (decision.replicas, decision.signal) == (4, Signal.KV_CACHE_USAGE)
    assert decision.value == pytest.approx(0.95)
    # The fourth replica is still starting and does not report: no fifth is asked for.
    again = decide(policy(), decision.state, load(in_flight=15, engines=full), 30.0)
    assert (again.replicas, again.reason) == (4, Reason.STEADY)


def test_caches_filled_by_few_long_requests_keep_their_replicas() -> None:
    long_prompts = [(2, 0, 0.8)] * 4
    decisions = run(
        policy(), start_state(4, 0.0), [load(in_flight=8, engines=long_prompts)] * 40, 15.0
    )
    assert {d.replicas for d in decisions} == {4}
    assert decisions[-1].signal is Signal.KV_CACHE_USAGE


# --- scaling down ---------------------------------------------------------------------


def test_scale_down_waits_for_the_window_and_takes_its_highest_count() -> None:
    p = policy(window=300.0)
    state = decide(p, start_state(4, 0.0), load(in_flight=80), 0.0).state
    assert state.replicas == 8
    state = decide(p, state, load(in_flight=50), 100.0).state
    quiet = [decide(p, state, load(in_flight=10), t) for t in (200.0, 300.0, 399.0)]
    assert [(d.replicas, d.reason) for d in quiet] == [(8, Reason.STABILIZING)] * 3
    assert quiet[0].signal is Signal.WINDOW_MAXIMUM
    state = decide(p, state, load(in_flight=10), 200.0).state
    # 8 was asked for until t=100, 5 until t=200: 5 is the highest in (100, 400].
    down = decide(p, state, load(in_flight=10), 400.0)
    assert (down.replicas, down.reason, down.value) == (5, Reason.SCALE_DOWN, 5.0)
    assert decide(p, down.state, load(in_flight=10), 499.0).replicas == 5
    last = decide(p, down.state, load(in_flight=10), 500.0)
    assert (last.replicas, last.reason) == (1, Reason.SCALE_DOWN)


def test_after_a_restart_nothing_goes_before_a_full_window() -> None:
    p = policy(minimum=0, window=300.0, to_zero=60.0)
    decisions = run(p, start_state(6, 1000.0), [load(in_flight=1)] * 30, 1000.0, every=15.0)
    first_down = next(d for d in decisions if d.replicas < 6)
    assert first_down.state.window[-1][0] >= 1300.0
    assert first_down.replicas == 1


def test_a_gap_in_the_reports_keeps_the_count_until_a_full_window_of_reports() -> None:
    p = policy(window=300.0)
    state = decide(p, start_state(6, 0.0), load(in_flight=60), 0.0).state
    unknown = decide(p, state, NO_REPORT, 15.0)
    assert (unknown.replicas, unknown.reason) == (6, Reason.DEMAND_UNKNOWN)
    assert "no usable demand report (0 refused)" in unknown.message
    # The reports come back after ten minutes, low: 6 stands until the first of them.
    state = unknown.state
    for t in (600.0, 615.0, 885.0):
        decision = decide(p, state, load(in_flight=5), t)
        assert (decision.replicas, decision.reason) == (6, Reason.STABILIZING)
        state = decision.state
    assert decide(p, state, load(in_flight=5), 900.0).replicas == 1


def test_lowering_max_replicas_takes_effect_at_once() -> None:
    state = decide(policy(maximum=10), start_state(1, 0.0), load(in_flight=90), 0.0).state
    decision = decide(policy(maximum=4), state, load(in_flight=90), 15.0)
    assert (decision.replicas, decision.reason, decision.signal) == (
        4,
        Reason.SCALE_DOWN,
        Signal.MAX_REPLICAS,
    )


def test_raising_min_replicas_takes_effect_at_once() -> None:
    decision = decide(policy(minimum=5), start_state(1, 0.0), load(in_flight=1), 15.0)
    assert (decision.replicas, decision.reason, decision.signal) == (
        5,
        Reason.SCALE_UP,
        Signal.MIN_REPLICAS,
    )


def test_low_demand_at_the_minimum_says_so() -> None:
    decision = decide(policy(minimum=2), start_state(2, 0.0), load(in_flight=1), 15.0)
    assert (decision.replicas, decision.reason, decision.desired) == (2, Reason.AT_MINIMUM, 1)


# --- to zero and back -----------------------------------------------------------------


def test_scale_to_zero_comes_after_the_idle_period_and_not_before() -> None:
    p = policy(minimum=0, window=60.0, to_zero=1800.0)
    state = decide(p, start_state(2, 0.0), load(in_flight=3), 0.0).state
    decisions = run(p, state, [IDLE] * 121, 15.0)
    to_zero = [d for d in decisions if d.replicas == 0]
    assert to_zero[0].reason is Reason.SCALED_TO_ZERO
    assert to_zero[0].value == 1800.0
    assert to_zero[0].state.window == ((1800.0, 0),)
    assert all(d.replicas >= 1 for d in decisions if d.state.window[-1][0] < 1800.0)
    assert to_zero[-1].reason is Reason.SCALED_TO_ZERO


@pytest.mark.parametrize(
    "activity",
    [
        load(arrived=1),
        load(tokens=5.0),
        load(engines=[(1, 0, 0.1)]),
        load(wanted=True),
        NO_REPORT,
    ],
)
def test_any_activity_or_an_unknown_demand_restarts_the_idle_period(activity: Demand) -> None:
    p = policy(minimum=0, window=60.0, to_zero=600.0)
    state = decide(p, start_state(1, 0.0), IDLE, 0.0).state
    state = decide(p, state, activity, 590.0).state
    assert decide(p, state, IDLE, 1100.0).replicas == 1
    assert decide(p, state, IDLE, 1190.0).replicas == 0


def test_an_idle_period_above_a_minimum_keeps_the_minimum_until_idle_then_zero() -> None:
    # A CostBudget's idleTimeout on a model with minReplicas 2.
    p = policy(minimum=2, window=60.0, to_zero=600.0)
    state = decide(p, start_state(2, 0.0), load(in_flight=1), 0.0).state
    decisions = run(p, state, [IDLE] * 45, 15.0)
    assert {d.replicas for d in decisions if d.state.window[-1][0] < 600.0} == {2}
    assert decisions[-1].replicas == 0 and decisions[-1].reason is Reason.SCALED_TO_ZERO
    at_zero = decisions[-1].state
    assert decide(p, at_zero, IDLE, 900.0).replicas == 0, "not back to the minimum unasked"
    assert decide(p, at_zero, NO_REPORT, 900.0).replicas == 0
    woken = decide(p, at_zero, load(wanted=True), 900.0)
    assert (woken.replicas, woken.reason) == (1, Reason.WAKE_FROM_ZERO)
    assert decide(p, woken.state, load(in_flight=1), 915.0).replicas == 2, "then the minimum"


def test_min_replicas_one_never_goes_to_zero() -> None:
    decisions = run(policy(minimum=1), start_state(3, 0.0), [IDLE] * 2000, 0.0, every=60.0)
    assert min(d.replicas for d in decisions) == 1


@pytest.mark.parametrize(
    ("demand", "signal", "value", "then"),
    [
        (load(held=250), Signal.HELD, 250.0, 5),
        (load(wanted=True), Signal.WANTED, 1.0, 1),
        (load(arrived=3), Signal.ARRIVED, 3.0, 1),
    ],
)
def test_a_held_arriving_or_wanted_request_wakes_one_replica_at_once(
    demand: Demand, signal: Signal, value: float, then: int
) -> None:
    p = policy(minimum=0, to_zero=600.0)
    decision = decide(p, start_state(0, 0.0), demand, 1.0)
    assert (decision.replicas, decision.reason) == (1, Reason.WAKE_FROM_ZERO)
    assert (decision.signal, decision.value) == (signal, value)
    # The next decision sizes to the load: 250 held ask for 25, 4 more at most per step.
    assert decide(p, decision.state, demand, 16.0).replicas == then


def test_at_zero_an_idle_or_unknown_demand_stays_at_zero() -> None:
    p = policy(minimum=0, to_zero=600.0)
    idle = decide(p, start_state(0, 0.0), IDLE, 100.0)
    assert (idle.replicas, idle.reason, idle.signal) == (
        0,
        Reason.SCALED_TO_ZERO,
        Signal.IDLE_SECONDS,
    )
    unknown = decide(p, idle.state, NO_REPORT, 115.0)
    assert (unknown.replicas, unknown.reason) == (0, Reason.DEMAND_UNKNOWN)


def test_fixed_zero_replicas_stay_at_zero_whatever_the_demand() -> None:
    p = policy_for(spec(replicas=0))
    decision = decide(p, start_state(0, 0.0), load(held=10), 15.0)
    assert (decision.replicas, decision.reason) == (0, Reason.AT_MAXIMUM)
