"""KEDA ScaledObjects for models with `autoscaling.scaledBy: keda`: KEDA sets their replicas.

KEDA scales one workload per ScaledObject and the operator runs one Deployment per
zone, so each serving zone gets a ScaledObject with its share of the model's bounds.
The shares are split as the operator spreads replicas (the first zones take the
remainder), so the zones together stay within minReplicas and maxReplicas; a zone
whose share of maxReplicas is 0 gets no ScaledObject and no replicas.

Every zone reads the model's whole demand: requests in flight plus requests held at
the namespace's gateways, which KEDA's metrics-api scaler sums over the gateway
replicas (their Prometheus gauges, on the metrics port, found through the peers
Service). A zone aims at targetInFlightPerReplica x (zones with a ScaledObject) per
replica, so the zones together aim at targetInFlightPerReplica. A zone whose lower
bound is 0 becomes active only when the demand needs more replicas than the zones
before it hold: one request wakes one zone, not all of them.

Pure: which zones may serve, and which Deployments exist, are inputs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from privatellm.api import InferenceDeployment, InferenceDeploymentSpec
from privatellm.autoscale import policy_for
from privatellm.gateway.metering import HELD_METRIC, IN_FLIGHT_METRIC

from .gateway import METRICS_PORT, PEERS_SERVICE
from .inference import zone_replica_plan
from .inference_status import Problem
from .meta import crd_installed
from .workload import Manifest, child_metadata, zone_deployment_name

KEDA_API_VERSION = "keda.sh/v1alpha1"
# Its presence is what "KEDA is installed" means to the operator.
SCALED_OBJECT_CRD = "scaledobjects.keda.sh"
# How often KEDA asks whether a zone is needed at all (0 <-> 1 replica); the HPA it
# makes reads the demand on its own period for the counts above that.
POLLING_INTERVAL_SECONDS = 10
# The operator's rule: desired = (in flight + held) / target. The names are the triggers'.
DEMAND_FORMULA = "inFlight + held"


def keda_installed(scaled_object_crd: Manifest | None) -> bool:
    """Whether KEDA can take ScaledObjects, given its CRD as read (None: absent)."""
    return crd_installed(scaled_object_crd)


def scaled_by_keda(spec: InferenceDeploymentSpec) -> bool:
    """Whether the spec hands its replica count to KEDA."""
    return spec.autoscaling is not None and spec.autoscaling.scaled_by == "keda"


def keda_problem(spec: InferenceDeploymentSpec, installed: bool) -> Problem | None:
    """What keeps a spec's KEDA scaling from happening, for the Degraded condition."""
    if not scaled_by_keda(spec) or installed:
        return None
    return Problem(
        "KEDAUnavailable",
        f"spec.autoscaling.scaledBy: keda needs KEDA's CRD {SCALED_OBJECT_CRD}, which is"
        " not installed; the operator scales the model meanwhile",
    )


@dataclass(frozen=True)
class ZoneBounds:
    """One zone's share of the model's replica bounds."""

    zone: str
    # Place among the zones with a ScaledObject, in spec order.
    position: int
    min_replicas: int
    max_replicas: int


def zone_bounds(spec: InferenceDeploymentSpec, serving: Sequence[str]) -> list[ZoneBounds]:
    """The serving zones' shares of minReplicas and maxReplicas; none for a share of max 0."""
    if spec.autoscaling is None:
        raise ValueError("only a spec with autoscaling has bounds")
    if not serving:
        return []
    lows = zone_replica_plan(spec.autoscaling.min_replicas, serving)
    highs = zone_replica_plan(spec.autoscaling.max_replicas, serving)
    # Both splits give the remainder to the first zones, so the zones with a share of
    # max come first, and each zone's share of min is at most its share of max.
    return [
        ZoneBounds(zone, position, lows[zone], highs[zone])
        for position, zone in enumerate(z for z in serving if highs[z] > 0)
    ]


def keda_replicas(
    obj: InferenceDeployment, serving: Sequence[str], existing: Mapping[str, int]
) -> tuple[dict[str, int | None], dict[str, int]]:
    """Per zone, the replicas to apply and those that run, for a model KEDA scales.

    `existing` holds the replicas of each zone whose Deployment exists. Where KEDA
    scales a zone whose Deployment exists, the operator applies no count (None) and
    the zone runs what KEDA set; a Deployment still to be created starts at the zone's
    lower bound; zones without a ScaledObject get none.
    """
    bounds = {b.zone: b for b in zone_bounds(obj.spec, serving)}
    applied: dict[str, int | None] = {}
    running: dict[str, int] = {}
    for zone in obj.spec.zones:
        if zone not in bounds:
            applied[zone] = running[zone] = 0
        elif zone in existing:
            applied[zone], running[zone] = None, existing[zone]
        else:
            applied[zone] = running[zone] = bounds[zone].min_replicas
    return applied, running


def _demand_trigger(obj: InferenceDeployment, name: str, metric: str, target: int) -> Manifest:
    """A metrics-api trigger reading `metric` for the model, summed over the gateway replicas."""
    namespace = obj.metadata.namespace or ""
    return {
        "type": "metrics-api",
        "name": name,
        "metadata": {
            # KEDA looks the Service's endpoints up and asks each gateway replica
            # (aggregateFromKubeServiceEndpoints needs KEDA 2.19 or later).
            "url": f"http://{PEERS_SERVICE}.{namespace}.svc:{METRICS_PORT}/metrics",
            "aggregateFromKubeServiceEndpoints": "true",
            "aggregationType": "sum",
            "format": "prometheus",
            # The gateway labels its figures with the model's route: its object name.
            "valueLocation": f'{metric}{{model="{obj.metadata.name}"}}',
            "targetValue": str(target),
        },
    }


def render_scaled_object(obj: InferenceDeployment, bounds: ZoneBounds, zones: int) -> Manifest:
    """The ScaledObject of one zone's Deployment; `zones` is how many zones have one."""
    scaling = obj.spec.autoscaling
    if scaling is None:
        raise ValueError("only a spec with autoscaling has a ScaledObject")
    policy = policy_for(obj.spec)
    per_replica = scaling.target_in_flight_per_replica
    target = per_replica * zones
    window = round(policy.scale_down_window_seconds)
    modifiers: dict[str, str] = {"formula": DEMAND_FORMULA, "target": str(target)}
    spec: Manifest = {
        "scaleTargetRef": {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "name": zone_deployment_name(obj, bounds.zone),
        },
        "pollingInterval": POLLING_INTERVAL_SECONDS,
        "minReplicaCount": bounds.min_replicas,
        "maxReplicaCount": bounds.max_replicas,
    }
    if bounds.min_replicas == 0:
        # Active (at least one replica) only when the zones before this one are not
        # enough; the first zone of a model with minReplicas 0 wakes at the first request.
        modifiers["activationTarget"] = str(per_replica * bounds.position)
        to_zero = policy.scale_to_zero_after_seconds
        # Leaving the first zone empty takes the model to zero; any other zone
        # emptying is an ordinary scale-down.
        idle = to_zero if bounds.position == 0 and to_zero is not None else window
        spec["cooldownPeriod"] = round(idle)
    spec["advanced"] = {
        "horizontalPodAutoscalerConfig": {
            "behavior": {"scaleDown": {"stabilizationWindowSeconds": window}}
        },
        "scalingModifiers": modifiers,
    }
    spec["triggers"] = [
        _demand_trigger(obj, "inFlight", IN_FLIGHT_METRIC, target),
        _demand_trigger(obj, "held", HELD_METRIC, target),
    ]
    name = zone_deployment_name(obj, bounds.zone)
    return {
        "apiVersion": KEDA_API_VERSION,
        "kind": "ScaledObject",
        "metadata": child_metadata(obj, name, bounds.zone),
        "spec": spec,
    }


def render_scaled_objects(obj: InferenceDeployment, serving: Sequence[str]) -> list[Manifest]:
    """A ScaledObject for each serving zone with a share of maxReplicas, in spec order."""
    bounds = zone_bounds(obj.spec, serving)
    return [render_scaled_object(obj, b, len(bounds)) for b in bounds]
