"""Properties of the autoscaler over generated policies, demand sequences and reports."""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from privatellm.autoscale import (
    Decision,
    Demand,
    EngineReport,
    GatewayReport,
    Policy,
    Reason,
    aggregate_demand,
    decide,
    start_state,
)

# Decisions are pure and fast; the deadline would only make a slow machine fail.
PROPERTY = settings(max_examples=300, deadline=None)


@st.composite
def policies(draw: st.DrawFn) -> Policy:
    maximum = draw(st.integers(0, 40))
    # Scale to zero needs minReplicas 0: draw it often.
    minimum = draw(st.just(0) | st.integers(0, maximum))
    to_zero = None
    if minimum == 0 and maximum > 0:
        to_zero = draw(st.none() | st.floats(0, 7200))
    return Policy(
        min_replicas=minimum,
        max_replicas=maximum,
        target_in_flight_per_replica=draw(st.integers(1, 64)),
        scale_down_window_seconds=draw(st.floats(0, 3600)),
        scale_to_zero_after_seconds=to_zero,
    )


COUNT = st.integers(0, 2000)


@st.composite
def gateway_reports(draw: st.DrawFn) -> GatewayReport:
    in_flight = draw(COUNT)
    return GatewayReport(
        source="gw",
        in_flight=in_flight,
        waiting=draw(st.integers(0, in_flight)),
        held=draw(COUNT),
        arrived=draw(COUNT),
        prompt_tokens_per_second=draw(st.sampled_from([0.0, 1500.0])),
        completion_tokens_per_second=draw(st.sampled_from([0.0, 300.0])),
        wanted=draw(st.booleans()),
    )


ENGINE = st.builds(
    EngineReport,
    source=st.just("vllm"),
    running=st.integers(0, 300),
    waiting=st.integers(0, 300),
    kv_cache_usage=st.floats(0, 1),
)
IDLE = aggregate_demand([GatewayReport("gw", 0, 0, 0, 0, 0.0, 0.0)])
UNKNOWN = aggregate_demand([])
# Mostly well-formed demand; sometimes idle, sometimes without any gateway report.
DEMANDS = st.one_of(
    st.just(IDLE),
    st.just(UNKNOWN),
    st.builds(
        aggregate_demand,
        st.lists(gateway_reports(), min_size=1, max_size=2),
        st.lists(ENGINE, max_size=3),
    ),
)

STEPS = st.floats(0.5, 900)
START = st.floats(0, 1e6)


@dataclass(frozen=True)
class Step:
    at: float
    demand: Demand
    decision: Decision


def replay(
    policy: Policy, replicas: int, start: float, plan: Sequence[tuple[float, Demand]]
) -> list[Step]:
    """Decide on each (seconds after the previous, demand), from `replicas` at `start`."""
    state, now, steps = start_state(replicas, start), start, []
    for gap, demand in plan:
        now += gap
        decision = decide(policy, state, demand, now)
        steps.append(Step(now, demand, decision))
        state = decision.state
    return steps


def directions(counts: Sequence[int]) -> list[int]:
    """+1 for each rise, -1 for each fall, in order."""
    return [1 if b > a else -1 for a, b in itertools.pairwise(counts) if a != b]


def idle(demand: Demand) -> bool:
    return bool(demand.gateways) and not demand.active


@PROPERTY
@given(policies(), st.integers(0, 60), START, st.lists(st.tuples(STEPS, DEMANDS), max_size=40))
def test_the_count_stays_within_the_bounds(
    policy: Policy, replicas: int, start: float, plan: list[tuple[float, Demand]]
) -> None:
    for step in replay(policy, replicas, start, plan):
        n = step.decision.replicas
        assert n == 0 or policy.min_replicas <= n <= policy.max_replicas
        assert n > 0 or policy.min_replicas == 0
        if n == 0 and step.decision.previous > 0:
            assert step.decision.reason in (Reason.SCALED_TO_ZERO, Reason.SCALE_DOWN)
            assert step.decision.reason is Reason.SCALED_TO_ZERO or policy.max_replicas == 0


@PROPERTY
@given(policies(), st.integers(0, 60), START, STEPS, DEMANDS, st.integers(1, 300))
def test_a_steady_signal_moves_the_count_one_way_only(
    policy: Policy, replicas: int, start: float, every: float, demand: Demand, count: int
) -> None:
    steps = replay(policy, replicas, start, [(every, demand)] * count)
    moves = directions([replicas, *(s.decision.replicas for s in steps)])
    assert len(set(moves)) <= 1


@PROPERTY
@given(policies(), st.integers(0, 60), START, st.lists(st.tuples(STEPS, DEMANDS), max_size=40))
def test_scale_down_never_comes_before_the_window(
    policy: Policy, replicas: int, start: float, plan: list[tuple[float, Demand]]
) -> None:
    steps = replay(policy, replicas, start, plan)
    window = policy.scale_down_window_seconds
    since_zero: list[Step] = []
    for step in steps:
        decision = step.decision
        if decision.reason is Reason.SCALE_DOWN and policy.max_replicas >= decision.previous:
            # A full window since the start: nothing was known of the demand before it.
            assert step.at - start >= window
            # Every count asked for within the window (since the model was last at zero)
            # fits the new count.
            for earlier in since_zero:
                if step.at - earlier.at < window:
                    assert min(earlier.decision.desired, policy.max_replicas) <= decision.replicas
        if decision.previous == 0 or decision.replicas == 0:
            since_zero = []
        elif decision.reason is not Reason.DEMAND_UNKNOWN:
            since_zero.append(step)


@PROPERTY
@given(
    policies(),
    START,
    STEPS,
    st.integers(0, 2000),
    st.integers(0, 5000),
    st.integers(1, 60),
    st.integers(1, 200),
)
def test_a_burst_causes_one_run_of_scale_ups_then_only_scale_downs(
    policy: Policy, start: float, every: float, base: int, burst: int, lasting: int, after: int
) -> None:
    before = aggregate_demand([GatewayReport("gw", base, 0, 0, 1, 0.0, 0.0)])
    peak = aggregate_demand([GatewayReport("gw", base + burst, 0, 0, 1, 0.0, 0.0)])
    # The count the base load settles at: scaling up needs no time to pass.
    settled = decide(policy, start_state(0, start), before, start)
    for _ in range(20):
        settled = decide(policy, settled.state, before, start)
    plan = [(every, before)] * 5 + [(every, peak)] * lasting + [(every, before)] * after
    steps = replay(policy, settled.replicas, start, plan)
    moves = directions([settled.replicas, *(s.decision.replicas for s in steps)])
    assert moves == sorted(moves, reverse=True)


@PROPERTY
@given(policies(), st.integers(0, 60), START, st.lists(st.tuples(STEPS, DEMANDS), max_size=40))
def test_scale_to_zero_comes_only_after_the_idle_period(
    policy: Policy, replicas: int, start: float, plan: list[tuple[float, Demand]]
) -> None:
    steps = replay(policy, replicas, start, plan)
    for i, step in enumerate(steps):
        if step.decision.reason is not Reason.SCALED_TO_ZERO or step.decision.previous == 0:
            continue
        after = policy.scale_to_zero_after_seconds
        assert after is not None
        assert step.at - start >= after
        assert idle(step.demand)
        assert all(idle(s.demand) for s in steps[:i] if step.at - s.at < after)


@PROPERTY
@given(policies(), START, st.integers(1, 2000), st.sampled_from(["held", "wanted", "arrived"]))
def test_a_held_arriving_or_wanted_request_wakes_the_model_at_once(
    policy: Policy, start: float, count: int, how: str
) -> None:
    held, arrived = (count if how == "held" else 0), (count if how == "arrived" else 0)
    report = GatewayReport("gw", 0, 0, held, arrived, 0.0, 0.0, wanted=how == "wanted")
    asking = aggregate_demand([report])
    decision = decide(policy, start_state(0, start), asking, start + 1)
    expected = policy.min_replicas or min(1, policy.max_replicas)
    assert decision.replicas == expected
    if policy.min_replicas == 0 and policy.max_replicas > 0:
        assert decision.reason is Reason.WAKE_FROM_ZERO


@PROPERTY
@given(
    policies(),
    st.integers(1, 60),
    st.lists(st.tuples(STEPS, DEMANDS), max_size=20),
)
def test_a_scale_up_at_most_doubles_or_adds_four_unless_min_replicas_says_more(
    policy: Policy, replicas: int, plan: list[tuple[float, Demand]]
) -> None:
    for step in replay(policy, replicas, 0.0, plan):
        d = step.decision
        if d.reason is Reason.SCALE_UP and d.previous > 0:
            assert d.replicas <= max(d.previous + max(d.previous, 4), policy.min_replicas)


NUMBER = (
    st.floats(allow_nan=True, allow_infinity=True)
    | st.integers(-(10**12), 10**12)
    | st.sampled_from([1e9, -1.0, math.nan, math.inf, 0.5])
)


@PROPERTY
@given(
    policies(),
    st.integers(0, 60),
    st.lists(st.tuples(*[NUMBER] * 6, st.booleans() | NUMBER), max_size=4),
    st.lists(st.tuples(*[NUMBER] * 3), max_size=4),
)
def test_no_report_however_wrong_pushes_the_count_past_max_replicas(
    policy: Policy,
    replicas: int,
    gateways: list[tuple[Any, ...]],
    engines: list[tuple[float, ...]],
) -> None:
    demand = aggregate_demand(
        [GatewayReport("gw", *g) for g in gateways], [EngineReport("vllm", *e) for e in engines]
    )
    figures = [demand.in_flight, demand.held, demand.arrived]
    assert all(isinstance(f, int) and f >= 0 for f in figures)
    assert demand.kv_cache_usage is None or 0 <= demand.kv_cache_usage <= 1
    assert len(demand.refused) + demand.gateways + demand.engines == len(gateways) + len(engines)
    state = start_state(replicas, 0.0)
    for now in (15.0, 30.0, 45.0):
        decision = decide(policy, state, demand, now)
        assert decision.replicas <= policy.max_replicas
        state = decision.state
