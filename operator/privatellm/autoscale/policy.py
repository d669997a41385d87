"""What an InferenceDeployment's spec asks of the autoscaler, as plain numbers."""

from __future__ import annotations

from dataclasses import dataclass

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
    # Seconds without any demand before going to zero; None: never to zero.
    scale_to_zero_after_seconds: float | None

    def __post_init__(self) -> None:
        if not 0 <= self.min_replicas <= self.max_replicas:
            raise ValueError("replica bounds need 0 <= min_replicas <= max_replicas")
        if self.target_in_flight_per_replica < 1:
            raise ValueError("target_in_flight_per_replica must be at least 1")
        if self.scale_down_window_seconds < 0:
            raise ValueError("scale_down_window_seconds must not be negative")
        if self.scale_to_zero_after_seconds is not None and (
            self.min_replicas > 0 or self.scale_to_zero_after_seconds < 0
        ):
            raise ValueError("scale_to_zero_after_seconds needs min_replicas 0 and >= 0")


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
