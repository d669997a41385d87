"""Pure autoscaling decisions: demand -> replicas, windows, scale from and to zero.

`aggregate_demand` checks and sums what the gateways and engines report for a model
(`read_engine_metrics` reads an engine's report from vLLM's metrics page);
`policy_for` reads the bounds and timings from its spec; `decide` turns both into a
replica count with a reason, given the `State` the previous decision returned (or
`start_state` for a model first seen, or after a restart). No I/O, no clock: the
caller passes the time in, keeps the state and applies the count.
"""

from privatellm.api.base import duration_seconds

from .decision import Decision, Reason, Signal, State, decide, start_state
from .demand import (
    Demand,
    EngineReport,
    GatewayReport,
    aggregate_demand,
    engine_report_problem,
    gateway_report_problem,
)
from .engine_metrics import MetricsError, read_engine_metrics
from .policy import Limits, Policy, limited, policy_for

__all__ = [
    "Decision",
    "Demand",
    "EngineReport",
    "GatewayReport",
    "Limits",
    "MetricsError",
    "Policy",
    "Reason",
    "Signal",
    "State",
    "aggregate_demand",
    "decide",
    "duration_seconds",
    "engine_report_problem",
    "gateway_report_problem",
    "limited",
    "policy_for",
    "read_engine_metrics",
    "start_state",
]
