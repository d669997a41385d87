"""What an InferenceDeployment's spec asks of the autoscaler, as plain numbers."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from privatellm.api import InferenceDeploymentSpec
from privatellm.api.base import duration_seconds
from privatellm.api.inference import AutoscalingSpec

# How long a lower demand must last before replicas go: the highest count asked for in
# this window stands (as the HPA's scale-down stabilisation). Batch work comes in jobs
# with pauses between their parts, and a replica it gives up costs a weight restore to
# get back, so batch waits longer than interactive traffic.
SCALE_DOWN_WINDOW_SECONDS = {"interactive": 300.0, "batch": 1800.0}
# Idle time before going to zero when minReplicas is 0 and scaleToZeroAfter is unset.
# Batch callers tolerate the wake-up (about a minute for a restore and engine start)
# and idle for long stretches between jobs; an interactive user should rarely meet it.
DEFAULT_SCALE_TO_ZERO_AFTER = {"interactive": "30m", "batch": "15m"}


@dataclass(frozen=True)
class Policy:
    """The bounds and timings one model is scaled by."""

    # Fewest replicas; 0 allows scale to zero.
    min_replicas: int
    # Most replicas; no demand report can ask for more.
    max_replicas: int
    # Requests in flight or held that one replica is meant to carry.
    target_in_flight_per_replica: int
    # Seconds a lower demand must last before replicas are removed.
    scale_down_window_seconds: float
    # Seconds without any demand before going to zero; None: never to zero. With
    # min_replicas above 0 (a CostBudget's idleTimeout), the minimum holds while there is
    # demand and an idle model still goes to zero.
    scale_to_zero_after_seconds: float | None

    def __post_init__(self) -> None:
        if not 0 <= self.min_replicas <= self.max_replicas:
            raise ValueError("replica bounds need 0 <= min_replicas <= max_replicas")
        if self.target_in_flight_per_replica < 1:
            raise ValueError("target_in_flight_per_replica must be at least 1")
        if self.scale_down_window_seconds < 0:
            raise ValueError("scale_down_window_seconds must not be negative")
        if self.scale_to_zero_after_seconds is not None and self.scale_to_zero_after_seconds < 0:
            raise ValueError("scale_to_zero_after_seconds must not be negative")


def policy_for(spec: InferenceDeploymentSpec) -> Policy:
    """The policy of a spec: its autoscaling bounds, or `replicas` fixed when it has none."""
    window = SCALE_DOWN_WINDOW_SECONDS[spec.workload_class]
    scaling = spec.autoscaling
    if scaling is None:
        # Without autoscaling the count is fixed; the target still says how far demand
        # exceeds it, for the status.
        return Policy(
            min_replicas=spec.replicas,
            max_replicas=spec.replicas,
            target_in_flight_per_replica=AutoscalingSpec().target_in_flight_per_replica,
            scale_down_window_seconds=window,
            scale_to_zero_after_seconds=None,
        )
    to_zero = None
    if scaling.min_replicas == 0:
        after = scaling.scale_to_zero_after or DEFAULT_SCALE_TO_ZERO_AFTER[spec.workload_class]
        to_zero = duration_seconds(after)
    return Policy(
        min_replicas=scaling.min_replicas,
        max_replicas=scaling.max_replicas,
        target_in_flight_per_replica=scaling.target_in_flight_per_replica,
        scale_down_window_seconds=window,
        scale_to_zero_after_seconds=to_zero,
    )


@dataclass(frozen=True)
class Limits:
    """What CostBudgets impose on a model's policy for now (render/budget.py reads them
    from the budgets' status); the strictest of several budgets."""

    # A scaleDown (or block) threshold: the ceiling drops to the minimum, or to one
    # replica for a model that scales to zero (scaled down, not switched off).
    to_minimum: bool = False
    # Outside business hours: at most this many replicas; None: no ceiling.
    ceiling: int | None = None
    # idleTimeout: to zero after this many seconds without demand, whatever minReplicas.
    idle_after_seconds: float | None = None
    # Why, for the autoscaler's message: "CostBudget 'team': off hours", ...
    reasons: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return self.to_minimum or self.ceiling is not None or self.idle_after_seconds is not None


def limited(policy: Policy, limits: Limits) -> Policy:
    """`policy` within `limits`: each only lowers a bound or shortens the idle period."""
    highest = policy.max_replicas
    if limits.to_minimum:
        highest = min(highest, max(policy.min_replicas, 1))
    if limits.ceiling is not None:
        highest = min(highest, limits.ceiling)
    to_zero = policy.scale_to_zero_after_seconds
    if limits.idle_after_seconds is not None:
        to_zero = min(limits.idle_after_seconds, to_zero if to_zero is not None else math.inf)
    return replace(
        policy,
        min_replicas=min(policy.min_replicas, highest),
        max_replicas=highest,
        scale_to_zero_after_seconds=to_zero,
    )
