"""The autoscaler's side of the model controller: demand in, a replica count out.

The decision is `privatellm.autoscale.decide` (pure); this keeps each model's state
between reconciles, asks the demand collector for the gateways' reports and the
engines' own figures, and counts the decisions. After an operator restart a model's
state starts from the count in its status, so a restart neither scales down early nor
repeats a scale-up.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any, Protocol

from privatellm.api import InferenceDeployment
from privatellm.autoscale import (
    Decision,
    EngineReport,
    GatewayReport,
    Limits,
    State,
    aggregate_demand,
    decide,
    limited,
    policy_for,
    start_state,
)
from privatellm.render.inference import baseline_replicas

from .metrics import DEMAND_REQUESTS, DESIRED_REPLICAS, SCALING_DECISIONS

NO_LIMITS = Limits()
# (namespace, name) of a model.
Key = tuple[str, str]


class DemandSource(Protocol):
    """Where the gateways' reports and the engines' figures come from (controllers/demand.py's
    collector)."""

    def watch(self, namespace: str) -> None: ...

    def reports(self, namespace: str, model: str) -> list[GatewayReport]: ...

    def engines(self, namespace: str, model: str) -> list[EngineReport]: ...


class Autoscaler:
    """Each autoscaled model's state between decisions, and the demand they read."""

    def __init__(self, demand: DemandSource, clock: Callable[[], float] = time.time) -> None:
        self.demand = demand
        self.clock = clock
        self._states: dict[Key, State] = {}

    def decide(
        self, obj: InferenceDeployment, status: Mapping[str, Any], limits: Limits = NO_LIMITS
    ) -> Decision | None:
        """The replica count for a model with spec.autoscaling, or with a fixed count that
        a CostBudget's idle timeout may send to zero; None for the others.

        `limits` are what CostBudgets impose now (a scaleDown threshold, off hours, an
        idle timeout); the decision's message says which acted. A fixed count is the
        policy's minimum and maximum, so only idleness and a wake move it.
        """
        if obj.spec.autoscaling is None and limits.idle_after_seconds is None:
            return None
        namespace, name = obj.metadata.namespace or "", obj.metadata.name
        key = (namespace, name)
        self.demand.watch(namespace)
        demand = aggregate_demand(
            self.demand.reports(namespace, name), self.demand.engines(namespace, name)
        )
        now = self.clock()
        state = self._states.get(key) or start_state(_running(obj, status), now)
        decision = decide(limited(policy_for(obj.spec), limits), state, demand, now)
        if limits:
            why = "; ".join(limits.reasons)
            decision = replace(decision, message=f"{decision.message} ({why})")
        self._states[key] = decision.state
        DEMAND_REQUESTS.labels(namespace, name).set(demand.in_flight + demand.held)
        DESIRED_REPLICAS.labels(namespace, name).set(decision.replicas)
        if decision.changed:
            SCALING_DECISIONS.labels(str(decision.reason)).inc()
        return decision

    def forget(self, key: Key) -> None:
        """A deleted model's state goes with it."""
        self._states.pop(key, None)


def _running(obj: InferenceDeployment, status: Mapping[str, Any]) -> int:
    """The count the autoscaler last asked for, from status; the baseline for a new model."""
    desired = (status.get("autoscaling") or {}).get("desiredReplicas")
    return desired if isinstance(desired, int) and desired >= 0 else baseline_replicas(obj.spec)
