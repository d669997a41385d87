"""The replica count of one model from its demand: pure, with the time passed in.

The rules, in the order `decide` applies them (constants below, the policy's figures in
policy.py):

- No usable gateway report: the count holds; the missing report counts as demand, since
  idleness must be seen, not assumed.
- At zero: a held or arriving request, or a gateway saying the model is wanted, asks
  for one replica at once, however many requests there are; the decisions after it
  size to the load.
- Load: requests in flight (those waiting for an answer are part of them) + held,
  summed over the gateways; when the engines' own running + waiting, plus held, is
  higher, as when a gateway's report is missing, that counts instead.
  desired = ceil(load / targetInFlightPerReplica).
- KV-cache pressure: the engines' kv_cache_usage summed is how many replicas' worth of
  KV cache the running requests fill; desired is raised to the fewest replicas that
  keep its mean below 0.9 (floor(sum / 0.9) + 1). So when the reporting replicas are
  above 90% on average, one more than they are is desired (more when many are
  full); long prompts that fill the caches with few requests keep their replicas; and
  replicas still starting, which do not report yet, do not make it ask again.
- Bounds: desired is held within [max(minReplicas, 1), maxReplicas] while replicas run;
  only the idle rule goes to zero.
- To zero: with a scale-to-zero period (minReplicas 0, or a CostBudget's idleTimeout
  above a minimum), after that long without any demand (nothing in flight, held,
  wanted, arriving, running, no tokens flowing). The period is the spec's own promise,
  so it does not also wait for the window. At zero, a model with such a period stays
  there until it is wanted, whatever its minimum.
- Up: at once to desired, but at most doubling or 4 more (whichever is more) per
  decision, so that one wrong but plausible report costs at most that for a window.
- Down: only to the highest count desired within the scale-down window. Each desired
  count stands until the next decision, so after a gap in the reports a full window of
  new reports must agree before replicas go.
- After a restart: `start_state` puts the running count in the window and the last
  demand at the restart, so neither scale-down nor scale to zero comes before a full
  window or idle period.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass

from .demand import Demand
from .policy import Policy

KV_CACHE_PRESSURE = 0.9
MIN_SCALE_UP_STEP = 4


class Reason(enum.StrEnum):
    """Why the count is what it is, for the status and Events."""

    SCALE_UP = "ScaleUp"
    SCALE_DOWN = "ScaleDown"
    STABILIZING = "Stabilizing"
    SCALED_TO_ZERO = "ScaledToZero"
    WAKE_FROM_ZERO = "WakeFromZero"
    AT_MAXIMUM = "AtMaximum"
    AT_MINIMUM = "AtMinimum"
    STEADY = "Steady"
    DEMAND_UNKNOWN = "DemandUnknown"


class Signal(enum.StrEnum):
    """Which figure decided; `Decision.value` is that figure."""

    # Requests in flight and held at the gateways.
    REQUESTS = "requests"
    # Requests running and waiting in the engines, plus those held.
    ENGINE_REQUESTS = "engineRequests"
    # The engines' mean KV-cache usage (0 to 1).
    KV_CACHE_USAGE = "kvCacheUsage"
    HELD = "held"
    # Gateways that saw a request while the model had no ready replica.
    WANTED = "wanted"
    ARRIVED = "arrived"
    # Seconds since demand was last seen.
    IDLE_SECONDS = "idleSeconds"
    # The highest count desired within the scale-down window.
    WINDOW_MAXIMUM = "windowMaximum"
    MIN_REPLICAS = "minReplicas"
    MAX_REPLICAS = "maxReplicas"
    # Reports refused by the checks of demand.py.
    REFUSED_REPORTS = "refusedReports"


@dataclass(frozen=True)
class State:
    """What one decision hands to the next; the caller keeps it and passes it back."""

    # The count last decided.
    replicas: int
    # When demand was last seen.
    last_active: float
    # (until, count): counts desired, each with the time the next decision replaced it
    # (the newest: its own decision's time, as it still stands). Only those that can
    # still be the window's highest are kept: oldest first, the counts decreasing.
    window: tuple[tuple[float, int], ...]


def start_state(replicas: int, now: float) -> State:
    """The state of a model first seen now, or after a restart: `replicas` running.

    Nothing is known of the demand before now, so the running count stands for a full
    window and demand counts as seen now.
    """
    return State(replicas=replicas, last_active=now, window=((now, replicas),))


@dataclass(frozen=True)
class Decision:
    """The count to run and why."""

    replicas: int
    # The count before this decision.
    previous: int
    reason: Reason
    signal: Signal
    value: float
    # The count the demand alone asks for, before bounds, step and window.
    desired: int
    # One line for an Event or a condition.
    message: str
    state: State

    @property
    def changed(self) -> bool:
        return self.replicas != self.previous


def decide(policy: Policy, state: State, demand: Demand, now: float) -> Decision:
    """The replica count for `demand` at `now`, given what earlier decisions left in `state`."""
    if not demand.gateways:
        return _unknown(policy, state, demand, now)
    last_active = now if demand.active else state.last_active
    if state.replicas == 0:
        return _from_zero(policy, demand, now, last_active)
    return _running(policy, state, demand, now, last_active)


def _unknown(policy: Policy, state: State, demand: Demand, now: float) -> Decision:
    current = state.replicas
    # A model that went to zero when idle stays there until it is wanted.
    idle_at_zero = current == 0 and policy.scale_to_zero_after_seconds is not None
    bounded = min(max(current, 0 if idle_at_zero else policy.min_replicas), policy.max_replicas)
    if bounded != current:
        # The spec's bounds apply whatever is known of the demand.
        up = bounded > current
        signal = Signal.MIN_REPLICAS if up else Signal.MAX_REPLICAS
        return Decision(
            bounded,
            current,
            Reason.SCALE_UP if up else Reason.SCALE_DOWN,
            signal,
            bounded,
            bounded,
            f"{current} -> {bounded} replicas: {signal}",
            State(bounded, now, ((now, bounded),)),
        )
    refused = len(demand.refused)
    return Decision(
        current,
        current,
        Reason.DEMAND_UNKNOWN,
        Signal.REFUSED_REPORTS,
        refused,
        current,
        f"holding {current} replicas: no usable demand report ({refused} refused)",
        # The window is left as it is: its last count stands through the gap.
        State(current, now, state.window),
    )


def _from_zero(policy: Policy, demand: Demand, now: float, last_active: float) -> Decision:
    load, _ = _load(demand)
    desired = _desired(policy, load)
    wanted = demand.held or demand.wanted or demand.arrived
    if demand.held:
        signal, value = Signal.HELD, float(demand.held)
    elif demand.wanted:
        signal, value = Signal.WANTED, 1.0
    elif demand.arrived:
        signal, value = Signal.ARRIVED, float(demand.arrived)
    else:
        signal, value = Signal.REQUESTS, float(load)
    if policy.min_replicas > 0 and policy.scale_to_zero_after_seconds is None:
        replicas, reason = policy.min_replicas, Reason.SCALE_UP
        signal, value = Signal.MIN_REPLICAS, float(policy.min_replicas)
        message = f"0 -> {replicas} replicas: minReplicas"
    elif wanted and policy.max_replicas > 0:
        replicas, reason = 1, Reason.WAKE_FROM_ZERO
        desired = max(desired, 1)
        message = f"0 -> 1 replica: {_describe(signal, value)}"
    elif wanted:
        replicas, reason = 0, Reason.AT_MAXIMUM
        message = f"at maxReplicas 0: {_describe(signal, value)}"
    else:
        replicas, reason = 0, Reason.SCALED_TO_ZERO
        signal, value = Signal.IDLE_SECONDS, now - last_active
        message = f"at 0 replicas: {_describe(signal, value)}"
    return Decision(
        replicas,
        0,
        reason,
        signal,
        value,
        desired,
        message,
        State(replicas, last_active, ((now, replicas),)),
    )


def _running(
    policy: Policy, state: State, demand: Demand, now: float, last_active: float
) -> Decision:
    current = state.replicas
    load, signal = _load(demand)
    value = float(load)
    desired = _desired(policy, load)
    if demand.kv_cache_usage is not None:
        # The same KV cache in use, spread over n replicas, fills each to sum / n.
        kv_replicas = math.floor(demand.kv_cache_usage * demand.engines / KV_CACHE_PRESSURE) + 1
        if kv_replicas > desired:
            desired, signal, value = kv_replicas, Signal.KV_CACHE_USAGE, demand.kv_cache_usage

    idle = now - last_active
    after = policy.scale_to_zero_after_seconds
    if after is not None and not demand.active and idle >= after:
        return Decision(
            0,
            current,
            Reason.SCALED_TO_ZERO,
            Signal.IDLE_SECONDS,
            idle,
            desired,
            f"{current} -> 0 replicas: {_describe(Signal.IDLE_SECONDS, idle)}",
            State(0, last_active, ((now, 0),)),
        )

    floor = min(max(policy.min_replicas, 1), policy.max_replicas)
    recommendation = min(max(desired, floor), policy.max_replicas)
    window = _record(state.window, now, recommendation, policy.scale_down_window_seconds)
    asks = f"{_describe(signal, value)} ask for {desired}"

    if recommendation > current:
        step = max(current, MIN_SCALE_UP_STEP)
        replicas = max(min(recommendation, current + step), floor)
        if desired < floor:
            signal, value, asks = Signal.MIN_REPLICAS, float(floor), "minReplicas"
        elif desired > policy.max_replicas:
            asks += f", capped at maxReplicas {policy.max_replicas}"
        if replicas < recommendation:
            asks += f", at most {step} more per decision"
        reason = Reason.SCALE_UP
        message = f"{current} -> {replicas} replicas: {asks}"
    elif recommendation < current:
        highest = window[0][1]
        replicas = min(current, highest, policy.max_replicas)
        if policy.max_replicas < min(current, highest):
            signal, value = Signal.MAX_REPLICAS, float(policy.max_replicas)
            reason, message = Reason.SCALE_DOWN, f"{current} -> {replicas} replicas: maxReplicas"
        else:
            window_text = f"{highest} within the last {policy.scale_down_window_seconds:.0f} s"
            signal, value = Signal.WINDOW_MAXIMUM, float(highest)
            if replicas < current:
                reason = Reason.SCALE_DOWN
                message = f"{current} -> {replicas} replicas: {asks}, at most {window_text}"
            else:
                reason = Reason.STABILIZING
                message = f"holding {current} replicas: {asks}, {window_text}"
    else:
        replicas = current
        if desired > policy.max_replicas:
            reason, message = Reason.AT_MAXIMUM, f"at maxReplicas {current}: {asks}"
        elif desired < floor:
            reason, message = Reason.AT_MINIMUM, f"at the minimum {current}: {asks}"
        else:
            reason, message = Reason.STEADY, f"steady at {current} replicas: {asks}"
    return Decision(
        replicas,
        current,
        reason,
        signal,
        value,
        desired,
        message,
        State(replicas, last_active, window),
    )


def _load(demand: Demand) -> tuple[int, Signal]:
    """The requests the replicas must carry, and which count said so."""
    gateway = demand.in_flight + demand.held
    engine = demand.engine_requests + demand.held
    if demand.engines and engine > gateway:
        return engine, Signal.ENGINE_REQUESTS
    return gateway, Signal.REQUESTS


def _desired(policy: Policy, load: int) -> int:
    return math.ceil(load / policy.target_in_flight_per_replica)


def _record(
    window: tuple[tuple[float, int], ...], now: float, count: int, span: float
) -> tuple[tuple[float, int], ...]:
    """The window with `count` desired at `now`, keeping only what can still be highest."""
    # The count desired last stood until now.
    stood = [*window[:-1], (now, window[-1][1])]
    # A count that stood only before the window's start is out; one no higher than this
    # one would leave the window before this one does.
    kept = [(until, n) for until, n in stood if until > now - span and n > count]
    return (*kept, (now, count))


_DESCRIPTIONS = {
    Signal.REQUESTS: "{:.0f} requests in flight or held",
    Signal.ENGINE_REQUESTS: "{:.0f} requests in the engines or held",
    Signal.KV_CACHE_USAGE: "KV cache {:.0%} full",
    Signal.HELD: "{:.0f} requests held",
    Signal.WANTED: "a gateway saw a request at zero",
    Signal.ARRIVED: "{:.0f} requests arrived",
    Signal.IDLE_SECONDS: "no demand for {:.0f} s",
}


def _describe(signal: Signal, value: float) -> str:
    return _DESCRIPTIONS[signal].format(value)
