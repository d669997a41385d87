"""KEDA ScaledObjects for models that hand their replica count to KEDA."""

from __future__ import annotations

from typing import Any

import pytest

from privatellm.api import InferenceDeployment
from privatellm.render.inference import render_zone_deployment
from privatellm.render.keda import (
    keda_installed,
    keda_problem,
    keda_replicas,
    render_scaled_objects,
    scaled_by_keda,
    zone_bounds,
)
from privatellm.render.meta import owner_reference

ZONES = ["zone-a", "zone-b", "zone-c"]
UID = "00000000-0000-4000-8000-000000000001"


def model(
    scaling: dict[str, Any] | None = None, workload_class: str = "interactive"
) -> InferenceDeployment:
    spec: dict[str, Any] = {
        "model": {"name": "llama-3-8b", "source": {"uri": "pvc://w/llama", "sizeGiB": 16}},
        "zones": ZONES,
        "workloadClass": workload_class,
    }
    if scaling is not None:
        spec["autoscaling"] = {"scaledBy": "keda", **scaling}
    return InferenceDeployment.model_validate(
        {"metadata": {"name": "llama", "namespace": "team-a", "uid": UID}, "spec": spec}
    )


def bounds(obj: InferenceDeployment, serving: list[str]) -> list[tuple[str, int, int, int]]:
    return [
        (b.zone, b.position, b.min_replicas, b.max_replicas) for b in zone_bounds(obj.spec, serving)
    ]


def by_zone(objects: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["labels"]["privatellm.io/zone"]: o["spec"] for o in objects}


def test_keda_is_used_only_while_its_scaled_object_crd_exists() -> None:
    crd = {"metadata": {"name": "scaledobjects.keda.sh"}}
    assert keda_installed(crd)
    assert not keda_installed(None)
    going = {"metadata": {**crd["metadata"], "deletionTimestamp": "2026-11-29T00:00:00Z"}}
    assert not keda_installed(going)


def test_only_a_spec_that_opts_in_is_scaled_by_keda() -> None:
    assert scaled_by_keda(model({}).spec)
    assert not scaled_by_keda(model(None).spec)
    operator = model({}).spec.model_copy(deep=True)
    assert operator.autoscaling is not None
    operator.autoscaling.scaled_by = "operator"
    assert not scaled_by_keda(operator)


def test_without_keda_an_opted_in_model_is_degraded_naming_the_field() -> None:
    problem = keda_problem(model({}).spec, installed=False)
    assert problem is not None
    assert problem.reason == "KEDAUnavailable"
    assert problem.message.startswith("spec.autoscaling.scaledBy: keda needs")
    assert "scaledobjects.keda.sh" in problem.message
    assert keda_problem(model({}).spec, installed=True) is None
    assert keda_problem(model(None).spec, installed=False) is None


@pytest.mark.parametrize(
    ("low", "high", "expected"),
    [
        # min and max split like the operator's spread: the first zones take the rest.
        (1, 4, [("zone-a", 0, 1, 2), ("zone-b", 1, 0, 1), ("zone-c", 2, 0, 1)]),
        (3, 3, [("zone-a", 0, 1, 1), ("zone-b", 1, 1, 1), ("zone-c", 2, 1, 1)]),
        (0, 7, [("zone-a", 0, 0, 3), ("zone-b", 1, 0, 2), ("zone-c", 2, 0, 2)]),
        # A zone whose share of max is 0 gets no ScaledObject.
        (1, 1, [("zone-a", 0, 1, 1)]),
        (0, 2, [("zone-a", 0, 0, 1), ("zone-b", 1, 0, 1)]),
    ],
)
def test_bounds_are_split_over_the_zones_and_their_sums_are_the_models(
    low: int, high: int, expected: list[tuple[str, int, int, int]]
) -> None:
    obj = model({"minReplicas": low, "maxReplicas": high})
    split = bounds(obj, ZONES)
    assert split == expected
    assert sum(b[2] for b in split) == low
    assert sum(b[3] for b in split) == high


def test_only_serving_zones_share_the_bounds() -> None:
    obj = model({"minReplicas": 2, "maxReplicas": 4})
    assert bounds(obj, ["zone-a", "zone-c"]) == [("zone-a", 0, 1, 2), ("zone-c", 1, 1, 2)]
    assert bounds(obj, []) == []
    assert render_scaled_objects(obj, []) == []


def test_a_spec_without_autoscaling_has_no_bounds() -> None:
    with pytest.raises(ValueError, match="autoscaling"):
        zone_bounds(model(None).spec, ZONES)


def test_each_zone_scales_its_own_deployment_between_its_bounds() -> None:
    obj = model({"minReplicas": 1, "maxReplicas": 4, "targetInFlightPerReplica": 8})
    objects = render_scaled_objects(obj, ZONES)
    assert [o["metadata"]["name"] for o in objects] == [
        "llama-zone-a",
        "llama-zone-b",
        "llama-zone-c",
    ]
    first = objects[0]
    assert first["apiVersion"] == "keda.sh/v1alpha1"
    assert first["kind"] == "ScaledObject"
    assert first["metadata"]["namespace"] == "team-a"
    assert first["metadata"]["ownerReferences"] == [owner_reference(obj)]
    assert first["metadata"]["labels"]["privatellm.io/inference-deployment"] == "llama"
    specs = by_zone(objects)
    assert specs["zone-a"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "llama-zone-a",
    }
    assert [(s["minReplicaCount"], s["maxReplicaCount"]) for s in specs.values()] == [
        (1, 2),
        (0, 1),
        (0, 1),
    ]
    assert {s["pollingInterval"] for s in specs.values()} == {10}


def test_every_zone_reads_the_models_demand_summed_over_the_gateway_replicas() -> None:
    obj = model({"minReplicas": 1, "maxReplicas": 4, "targetInFlightPerReplica": 8})
    spec = by_zone(render_scaled_objects(obj, ZONES))["zone-b"]
    url = "http://privatellm-gateway-peers.team-a.svc:9090/metrics"
    assert spec["triggers"] == [
        {
            "type": "metrics-api",
            "name": "inFlight",
            "metadata": {
                "url": url,
                "aggregateFromKubeServiceEndpoints": "true",
                "aggregationType": "sum",
                "format": "prometheus",
                "valueLocation": 'privatellm_gateway_in_flight{model="llama"}',
                "targetValue": "24",
            },
        },
        {
            "type": "metrics-api",
            "name": "held",
            "metadata": {
                "url": url,
                "aggregateFromKubeServiceEndpoints": "true",
                "aggregationType": "sum",
                "format": "prometheus",
                "valueLocation": 'privatellm_gateway_held{model="llama"}',
                "targetValue": "24",
            },
        },
    ]
    # Three zones aiming at 24 each make 8 per replica for the model as a whole.
    assert spec["advanced"]["scalingModifiers"]["formula"] == "inFlight + held"
    assert spec["advanced"]["scalingModifiers"]["target"] == "24"


def test_a_zone_that_may_be_empty_wakes_only_when_the_zones_before_it_are_not_enough() -> None:
    obj = model({"minReplicas": 1, "maxReplicas": 4, "targetInFlightPerReplica": 8})
    specs = by_zone(render_scaled_objects(obj, ZONES))
    modifiers = {zone: s["advanced"]["scalingModifiers"] for zone, s in specs.items()}
    # zone-a always runs one replica: KEDA never activates or empties it.
    assert "activationTarget" not in modifiers["zone-a"]
    assert "cooldownPeriod" not in specs["zone-a"]
    assert modifiers["zone-b"]["activationTarget"] == "8"
    assert modifiers["zone-c"]["activationTarget"] == "16"
    # Emptying them is an ordinary scale-down: the interactive window.
    assert specs["zone-b"]["cooldownPeriod"] == specs["zone-c"]["cooldownPeriod"] == 300


def test_the_first_zone_of_a_model_at_zero_wakes_at_the_first_request() -> None:
    obj = model({"minReplicas": 0, "maxReplicas": 3, "scaleToZeroAfter": "10m"})
    specs = by_zone(render_scaled_objects(obj, ZONES))
    assert specs["zone-a"]["minReplicaCount"] == 0
    assert specs["zone-a"]["advanced"]["scalingModifiers"]["activationTarget"] == "0"
    # Emptying the first zone is going to zero: after scaleToZeroAfter.
    assert specs["zone-a"]["cooldownPeriod"] == 600
    assert specs["zone-b"]["cooldownPeriod"] == 300


def test_batch_waits_longer_before_it_scales_down_and_goes_to_zero_sooner() -> None:
    interactive = by_zone(render_scaled_objects(model({"minReplicas": 0}), ZONES))
    batch = by_zone(render_scaled_objects(model({"minReplicas": 0}, "batch"), ZONES))

    def window(spec: dict[str, Any]) -> int:
        behavior = spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
        seconds: int = behavior["scaleDown"]["stabilizationWindowSeconds"]
        return seconds

    assert window(interactive["zone-a"]) == 300
    assert window(batch["zone-a"]) == 1800
    # The defaults of scaleToZeroAfter: 30m, and 15m for batch.
    assert interactive["zone-a"]["cooldownPeriod"] == 1800
    assert batch["zone-a"]["cooldownPeriod"] == 900
    assert batch["zone-b"]["cooldownPeriod"] == 1800


def test_rendering_is_deterministic() -> None:
    obj = model({"minReplicas": 0, "maxReplicas": 5})
    assert render_scaled_objects(obj, ZONES) == render_scaled_objects(obj, ZONES)


def test_keda_sets_the_count_of_the_deployments_it_scales() -> None:
    obj = model({"minReplicas": 1, "maxReplicas": 2})
    # zone-a and zone-b have a ScaledObject; zone-c's share of max is 0.
    applied, running = keda_replicas(obj, ZONES, {"zone-a": 3, "zone-c": 2})
    assert applied == {"zone-a": None, "zone-b": 0, "zone-c": 0}
    assert running == {"zone-a": 3, "zone-b": 0, "zone-c": 0}


def test_a_deployment_keda_will_scale_starts_at_its_zones_lower_bound() -> None:
    obj = model({"minReplicas": 2, "maxReplicas": 6})
    applied, running = keda_replicas(obj, ZONES, {})
    assert applied == running == {"zone-a": 1, "zone-b": 1, "zone-c": 0}
    # Where no zone may serve, none runs anything.
    assert keda_replicas(obj, [], {"zone-a": 1}) == (dict.fromkeys(ZONES, 0),) * 2


def test_a_deployment_left_to_keda_carries_no_count() -> None:
    obj = model({})
    assert "replicas" not in render_zone_deployment(obj, "zone-a", None)["spec"]
    assert render_zone_deployment(obj, "zone-a", 2)["spec"]["replicas"] == 2
