"""From what the cluster shows to what an InferenceDeployment should do and report.

Pure decisions of the InferenceDeployment controller: which zones can run the model,
how many replicas each zone gets (moving a lost zone's replicas to the others), and
the status with its Ready, Progressing and Degraded conditions. The controller only
gathers the observations and writes the results.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from privatellm.api import InferenceDeployment, InferenceDeploymentSpec
from privatellm.autoscale import Decision, Reason

from .conditions import ConditionState, merge_conditions
from .engine import SERVING_PORT
from .inference import (
    baseline_replicas,
    zone_replica_plan,
)
from .meta import CAPACITY_TYPE_LABEL, GPU_PRODUCT_LABEL, GPU_RESOURCE, SPOT, ZONE_LABEL
from .weights import (
    estimated_restore_seconds,
)
from .workload import (
    service_name,
)


@dataclass(frozen=True)
class NodeView:
    """What the controller needs to know of one node."""

    name: str
    zone: str | None
    ready: bool
    schedulable: bool
    labels: Mapping[str, str]
    allocatable_gpus: int

    @classmethod
    def from_node(cls, node: Mapping[str, Any]) -> NodeView:
        """Read a Node object as the API server returns it."""
        meta, spec, status = node["metadata"], node.get("spec", {}), node.get("status", {})
        labels = meta.get("labels") or {}
        ready = any(
            c.get("type") == "Ready" and c.get("status") == "True"
            for c in status.get("conditions") or []
        )
        gpus = str((status.get("allocatable") or {}).get(GPU_RESOURCE, "0"))
        return cls(
            name=meta["name"],
            zone=labels.get(ZONE_LABEL),
            ready=ready,
            schedulable=not spec.get("unschedulable", False),
            labels=labels,
            allocatable_gpus=int(gpus) if gpus.isdigit() else 0,
        )


@dataclass(frozen=True)
class ZoneView:
    """What the controller sees of one zone's workload."""

    desired: int = 0
    ready: int = 0
    updated: int = 0
    cache_warm: bool = False


@dataclass(frozen=True)
class ChildFailure:
    """A child the API server refused, or whose Pods its controller could not create."""

    kind: str
    name: str
    # The API server's or the child controller's own words.
    message: str

    def __str__(self) -> str:
        return f"{self.kind}/{self.name}: {self.message}"


@dataclass(frozen=True)
class Observed:
    """Everything the status is computed from."""

    nodes: Sequence[NodeView]
    zones: Mapping[str, ZoneView] = field(default_factory=dict)
    # None: no fallback declared; "": declared but missing; else its endpoint
    fallback_endpoint: str | None = None
    # Children whose apply the API server refused in this reconcile, in apply order.
    refused: Sequence[ChildFailure] = ()
    # Children whose Pods cannot be created (the ReplicaSet's or Job's FailedCreate).
    failed_creates: Sequence[ChildFailure] = ()
    # Why CostBudgets hold a model without autoscaling below spec.replicas (off hours).
    budget_ceiling: str = ""


FAILED_CREATE = "FailedCreate"


def deployment_failed_create(deployment: Mapping[str, Any]) -> str | None:
    """Why a Deployment's ReplicaSet cannot create Pods, as its ReplicaFailure condition says."""
    for condition in (deployment.get("status") or {}).get("conditions") or []:
        if condition.get("type") == "ReplicaFailure" and condition.get("status") == "True":
            return str(condition.get("message") or condition.get("reason") or FAILED_CREATE)
    return None


def job_lacks_pods(job: Mapping[str, Any]) -> bool:
    """Whether a Job has no Pod and is not finished: then only an Event may say why."""
    status = job.get("status") or {}
    finished = any(
        c.get("type") in ("Complete", "Failed") and c.get("status") == "True"
        for c in status.get("conditions") or []
    )
    return not (finished or status.get("active") or status.get("succeeded"))


def job_failed_create(job: Mapping[str, Any], events: Sequence[Mapping[str, Any]]) -> str | None:
    """The Job controller's latest FailedCreate message for this very Job, while it lacks Pods.

    Events of an earlier Job of the same name carry another uid and do not count.
    """
    if not job_lacks_pods(job):
        return None
    uid = job["metadata"].get("uid")
    mine = [
        e
        for e in events
        if e.get("reason") == FAILED_CREATE and (e.get("involvedObject") or {}).get("uid") == uid
    ]
    if not mine:
        return None
    latest = max(mine, key=_event_time)
    return str(latest.get("message") or FAILED_CREATE)


def _event_time(event: Mapping[str, Any]) -> str:
    stamp = event.get("lastTimestamp") or event.get("eventTime")
    return str(stamp or event.get("metadata", {}).get("creationTimestamp") or "")


def can_host(spec: InferenceDeploymentSpec, node: NodeView) -> bool:
    """Whether a replica of `spec` could run on `node` now."""
    if not (node.ready and node.schedulable and node.zone):
        return False
    if spec.capacity_type == "spot" and node.labels.get(CAPACITY_TYPE_LABEL) != SPOT:
        return False
    if spec.resources.accelerator == "cpu":
        return True
    product = spec.resources.gpu_product
    if product and node.labels.get(GPU_PRODUCT_LABEL) != product:
        return False
    return node.allocatable_gpus >= spec.resources.gpus_per_replica


def healthy_zones(spec: InferenceDeploymentSpec, nodes: Sequence[NodeView]) -> list[str]:
    """The spec's zones that have at least one node able to host a replica, in spec order."""
    able = {n.zone for n in nodes if can_host(spec, n)}
    return [zone for zone in spec.zones if zone in able]


def serving_zones(
    obj: InferenceDeployment, nodes: Sequence[NodeView], warm: Collection[str]
) -> list[str]:
    """Zones that may run replicas: able to host one and, with the cache on, warm.

    A replica never starts on a cold cache: it would download the weights instead of
    loading them, which is what the pre-staging Job is there to avoid.
    """
    hostable = healthy_zones(obj.spec, nodes)
    if not obj.spec.weight_cache.enabled:
        return hostable
    return [zone for zone in hostable if zone in warm]


def replica_plan(
    obj: InferenceDeployment,
    nodes: Sequence[NodeView],
    warm: Collection[str],
    total: int | None = None,
) -> dict[str, int]:
    """Replicas per zone: `total` (the autoscaler's count; by default the baseline) spread
    over the serving zones; none while there are none."""
    spec = obj.spec
    serving = serving_zones(obj, nodes, warm)
    if not serving:
        return dict.fromkeys(spec.zones, 0)
    count = baseline_replicas(spec) if total is None else total
    return zone_replica_plan(count, spec.zones, serving)


def autoscaling_status(
    decision: Decision, previous: Mapping[str, Any] | None, now: str
) -> dict[str, Any]:
    """The status of the autoscaler's decision; its last scale time kept until the count moves."""
    last = (previous or {}).get("lastScaleTime")
    status: dict[str, Any] = {
        "desiredReplicas": decision.replicas,
        "reason": str(decision.reason),
        "signal": str(decision.signal),
        "value": decision.value,
        "message": decision.message,
    }
    if decision.changed or (previous or {}).get("desiredReplicas") != decision.replicas:
        last = now
    if last:
        status["lastScaleTime"] = last
    return status


def autoscaling_problems(decision: Decision | None) -> list[Problem]:
    """What the autoscaler cannot do, for the Degraded condition."""
    if decision is None or decision.reason != Reason.DEMAND_UNKNOWN:
        return []
    return [Problem("DemandUnknown", f"spec.autoscaling: {decision.message}")]


def _requirement(spec: InferenceDeploymentSpec) -> str:
    """What a node must offer, in words, for the messages that say none does."""
    if spec.resources.accelerator == "cpu":
        needs = "a CPU node"
    else:
        needs = f"{spec.resources.gpus_per_replica} free {GPU_RESOURCE}"
        if spec.resources.gpu_product:
            needs += f" of product {spec.resources.gpu_product}"
    if spec.capacity_type == "spot":
        needs += f" on spot capacity ({CAPACITY_TYPE_LABEL}={SPOT})"
    return needs


@dataclass(frozen=True)
class Problem:
    """Something only the operator can judge: a reason and a message naming the field."""

    reason: str
    message: str


def _placement_problems(spec: InferenceDeploymentSpec, nodes: Sequence[NodeView]) -> list[Problem]:
    """Why some zones cannot host the model."""
    product = spec.resources.gpu_product
    if (
        spec.resources.accelerator == "gpu"
        and product
        and not any(n.labels.get(GPU_PRODUCT_LABEL) == product for n in nodes)
    ):
        message = f"spec.resources.gpuProduct: no node in the cluster has GPU product {product!r}"
        return [Problem("UnknownGPUProduct", message)]
    healthy = set(healthy_zones(spec, nodes))
    known = {n.zone for n in nodes}
    problems = []
    for i, zone in enumerate(spec.zones):
        if zone in healthy:
            continue
        if zone not in known:
            what = "has no nodes"
        else:
            what = f"has no ready node with {_requirement(spec)}"
        problems.append(Problem("ZoneUnavailable", f"spec.zones[{i}]: zone {zone!r} {what}"))
    return problems


def endpoint(obj: InferenceDeployment) -> str:
    """In-cluster URL of the model's Service."""
    return f"https://{service_name(obj)}.{obj.metadata.namespace}.svc:{SERVING_PORT}"


def _child_problems(observed: Observed) -> list[Problem]:
    """Refused applies, then Pods that cannot be created, each naming its child."""
    return [
        *(Problem("ApplyFailed", str(failure)) for failure in observed.refused),
        *(Problem(FAILED_CREATE, str(failure)) for failure in observed.failed_creates),
    ]


def invalid_spec_conditions(invalid: Sequence[str]) -> list[ConditionState]:
    """Not Ready and Degraded with every reason the spec is refused; nothing rendered."""
    message = "; ".join(invalid)
    return [
        ConditionState("Ready", "False", "InvalidSpec", message),
        ConditionState("Progressing", "False", "InvalidSpec", "nothing was rendered"),
        ConditionState("Degraded", "True", "InvalidSpec", message),
    ]


def _conditions(
    obj: InferenceDeployment,
    observed: Observed,
    plan: Mapping[str, int],
    invalid: Sequence[str],
    reported: Sequence[Problem],
    scaling: Decision | None,
) -> list[ConditionState]:
    if invalid:
        return invalid_spec_conditions(invalid)
    desired = sum(plan.values())
    ready = sum(observed.zones.get(z, ZoneView()).ready for z in obj.spec.zones)
    rolling = [
        zone
        for zone in obj.spec.zones
        if (view := observed.zones.get(zone, ZoneView())).updated < plan.get(zone, 0)
        or view.ready < plan.get(zone, 0)
        or view.desired != plan.get(zone, 0)
    ]
    # What the API server or a child's controller refuses comes first: until it is fixed
    # the cluster does not run the spec at all, whatever the nodes could host.
    problems = [
        *_child_problems(observed),
        *_placement_problems(obj.spec, observed.nodes),
        *reported,
        *autoscaling_problems(scaling),
    ]
    if observed.fallback_endpoint == "" and obj.spec.fallback:
        missing = f"InferenceDeployment {obj.spec.fallback.model!r} not found"
        problems.append(Problem("FallbackNotFound", f"spec.fallback.model: {missing}"))

    cold = [
        zone
        for zone in obj.spec.zones
        if obj.spec.weight_cache.enabled and not observed.zones.get(zone, ZoneView()).cache_warm
    ]
    if desired == 0 and observed.budget_ceiling:
        ready_state = ConditionState("Ready", "True", "ScaledToZero", observed.budget_ceiling)
    elif desired == 0 and baseline_replicas(obj.spec) > 0:
        waiting = f"weight cache warming in {', '.join(cold)}" if cold else "no zone can host"
        ready_state = ConditionState("Ready", "False", "NoServingZone", waiting)
    elif desired == 0:
        idle = scaling.message if scaling else "no replicas requested"
        ready_state = ConditionState("Ready", "True", "ScaledToZero", idle)
    elif ready >= desired:
        ready_state = ConditionState(
            "Ready", "True", "ReplicasReady", f"{ready}/{desired} replicas ready"
        )
    else:
        ready_state = ConditionState(
            "Ready", "False", "ReplicasNotReady", f"{ready}/{desired} replicas ready"
        )
    if observed.refused:
        refused = ", ".join(f"{f.kind}/{f.name}" for f in observed.refused)
        progressing = ConditionState(
            "Progressing", "False", "ApplyFailed", f"the API server refused {refused}"
        )
    elif cold:
        progressing = ConditionState(
            "Progressing", "True", "WarmingCache", f"pre-staging weights in {', '.join(cold)}"
        )
    elif rolling:
        progressing = ConditionState(
            "Progressing", "True", "RollingOut", f"waiting for zones {', '.join(rolling)}"
        )
    else:
        progressing = ConditionState(
            "Progressing", "False", "Complete", "every zone is at its plan"
        )
    if problems:
        message = "; ".join(p.message for p in problems) + _moved_message(obj, plan)
        degraded = ConditionState("Degraded", "True", problems[0].reason, message)
    else:
        degraded = ConditionState("Degraded", "False", "AsExpected", "")
    return [ready_state, progressing, degraded]


def _moved_message(obj: InferenceDeployment, plan: Mapping[str, int]) -> str:
    empty = [z for z in obj.spec.zones if plan.get(z, 0) == 0]
    serving = [z for z in obj.spec.zones if plan.get(z, 0) > 0]
    if not empty or not serving or baseline_replicas(obj.spec) == 0:
        return ""
    return f"; replicas moved to {', '.join(serving)}"


def compute_status(
    obj: InferenceDeployment,
    observed: Observed,
    plan: Mapping[str, int],
    invalid: Sequence[str],
    previous: Mapping[str, Any],
    now: str,
    problems: Sequence[Problem] = (),
    encryption_key: tuple[str, int] | None = None,
    scaling: Decision | None = None,
) -> dict[str, Any]:
    """The status to store; equal to `previous` when nothing changed, whatever `now` is.

    `problems` are what the controller found beyond the observations (Vault unreachable,
    say); `encryption_key` is the Transit key protecting the model's data and its version;
    `scaling` the autoscaler's decision, for a model with spec.autoscaling.
    """
    zones = [
        {
            "zone": zone,
            "replicas": plan.get(zone, 0),
            "readyReplicas": observed.zones.get(zone, ZoneView()).ready,
            "cacheWarm": observed.zones.get(zone, ZoneView()).cache_warm,
        }
        for zone in obj.spec.zones
    ]
    status: dict[str, Any] = {
        "observedGeneration": obj.metadata.generation,
        "conditions": merge_conditions(
            previous.get("conditions") or [],
            _conditions(obj, observed, plan, invalid, problems, scaling),
            obj.metadata.generation,
            now,
        ),
        "replicas": sum(plan.values()) if not invalid else 0,
        "readyReplicas": sum(z["readyReplicas"] for z in zones),
        "zones": zones,
        "endpoint": endpoint(obj),
        "estimatedRestoreSeconds": estimated_restore_seconds(obj.spec),
    }
    if observed.fallback_endpoint:
        status["fallbackEndpoint"] = observed.fallback_endpoint
    if encryption_key:
        status["encryptionKey"] = {"name": encryption_key[0], "version": encryption_key[1]}
    if scaling is not None:
        status["autoscaling"] = autoscaling_status(scaling, previous.get("autoscaling"), now)
        if spread := _spread_note(obj):
            status["autoscaling"]["message"] += spread
    return status


def _spread_note(obj: InferenceDeployment) -> str:
    """What a maxReplicas below the zone count means for the spread, in words."""
    scaling, zones = obj.spec.autoscaling, obj.spec.zones
    if scaling is None or scaling.max_replicas >= len(zones):
        return ""
    return (
        f"; maxReplicas {scaling.max_replicas} is below the {len(zones)} zones: replicas go"
        " to the first zones of spec.zones that can serve, and the others stand by for"
        " failover"
    )
