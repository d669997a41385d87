"""Zone health, failover plans and status conditions of an InferenceDeployment."""

from __future__ import annotations

from typing import Any

from privatellm.api import InferenceDeployment
from privatellm.render.inference_status import (
    ChildFailure,
    NodeView,
    Observed,
    Problem,
    ZoneView,
    compute_status,
    deployment_failed_create,
    healthy_zones,
    job_failed_create,
    job_lacks_pods,
    replica_plan,
)

NOW, LATER = "2026-01-01T00:00:00Z", "2026-01-01T01:00:00Z"
H100 = "NVIDIA-H100-80GB-HBM3"
ZONES = ("zone-a", "zone-b", "zone-c")


def gpu_node(
    name: str,
    zone: str | None,
    *,
    ready: bool = True,
    gpus: int = 8,
    product: str = H100,
    spot: bool = False,
) -> NodeView:
    labels = {"nvidia.com/gpu.product": product}
    if zone:
        labels["topology.kubernetes.io/zone"] = zone
    if spot:
        labels["privatellm.io/capacity-type"] = "spot"
    return NodeView(name, zone, ready, True, labels, gpus)


def cluster(ready_zones: tuple[str, ...] = ZONES) -> list[NodeView]:
    return [gpu_node(f"gpu-{z}", z, ready=z in ready_zones) for z in ZONES]


def model(**spec: Any) -> InferenceDeployment:
    base: dict[str, Any] = {
        "model": {"name": "m", "source": {"uri": "pvc://weights/m", "sizeGiB": 10}},
        "resources": {"gpusPerReplica": 2, "gpuProduct": H100},
        "engine": {"tensorParallelSize": 2},
        "zones": list(ZONES),
        "replicas": 6,
    }
    return InferenceDeployment.model_validate(
        {
            "metadata": {"name": "m", "namespace": "ns", "uid": "u", "generation": 3},
            "spec": {**base, **spec},
        }
    )


WARM = set(ZONES)


def test_node_view_reads_a_node_object() -> None:
    node = {
        "metadata": {"name": "n", "labels": {"topology.kubernetes.io/zone": "zone-a"}},
        "spec": {"unschedulable": True},
        "status": {
            "allocatable": {"nvidia.com/gpu": "8"},
            "conditions": [{"type": "Ready", "status": "True"}],
        },
    }
    view = NodeView.from_node(node)
    assert (view.zone, view.ready, view.schedulable, view.allocatable_gpus) == (
        "zone-a",
        True,
        False,
        8,
    )


def test_replicas_spread_evenly_over_healthy_warm_zones() -> None:
    assert replica_plan(model(), cluster(), WARM) == {"zone-a": 2, "zone-b": 2, "zone-c": 2}


def test_lost_zone_moves_its_replicas_to_the_others() -> None:
    plan = replica_plan(model(), cluster(ready_zones=("zone-b", "zone-c")), WARM)
    assert plan == {"zone-a": 0, "zone-b": 3, "zone-c": 3}


def test_replicas_wait_for_a_warm_cache() -> None:
    assert replica_plan(model(), cluster(), warm={"zone-c"}) == {
        "zone-a": 0,
        "zone-b": 0,
        "zone-c": 6,
    }
    assert replica_plan(model(), cluster(), warm=set()) == dict.fromkeys(ZONES, 0)
    no_cache = model(weightCache={"enabled": False})
    assert replica_plan(no_cache, cluster(), warm=set()) == dict.fromkeys(ZONES, 2)


def test_nodes_that_cannot_host_do_not_make_a_zone_healthy() -> None:
    spec = model().spec
    assert healthy_zones(spec, [gpu_node("small", "zone-a", gpus=1)]) == []
    assert healthy_zones(spec, [gpu_node("other", "zone-a", product="A10")]) == []
    assert healthy_zones(spec, [gpu_node("nozone", None)]) == []
    spot = model(workloadClass="batch", capacityType="spot").spec
    assert healthy_zones(spot, [gpu_node("od", "zone-a")]) == []
    assert healthy_zones(spot, [gpu_node("sp", "zone-a", spot=True)]) == ["zone-a"]


def observed(obj: InferenceDeployment, nodes: list[NodeView], ready: int = 2) -> Observed:
    plan = replica_plan(obj, nodes, WARM)
    zones = {
        z: ZoneView(desired=n, ready=min(n, ready), updated=n, cache_warm=True)
        for z, n in plan.items()
    }
    return Observed(nodes=nodes, zones=zones)


def status_of(obj: InferenceDeployment, nodes: list[NodeView], **kw: Any) -> dict[str, Any]:
    plan = replica_plan(obj, nodes, WARM)
    return compute_status(obj, observed(obj, nodes, **kw), plan, [], {}, NOW)


def conditions(status: dict[str, Any]) -> dict[str, tuple[str, str]]:
    return {c["type"]: (c["status"], c["reason"]) for c in status["conditions"]}


def test_all_ready_is_ready_and_not_degraded() -> None:
    status = status_of(model(), cluster())
    assert conditions(status) == {
        "Ready": ("True", "ReplicasReady"),
        "Progressing": ("False", "Complete"),
        "Degraded": ("False", "AsExpected"),
    }
    assert status["observedGeneration"] == 3
    assert status["endpoint"] == "https://m.ns.svc:8000"
    assert [z["readyReplicas"] for z in status["zones"]] == [2, 2, 2]
    assert status["estimatedRestoreSeconds"] == 21  # 10 GiB at 500 MiB/s


def test_zone_loss_is_degraded_naming_the_zone_and_where_replicas_went() -> None:
    status = status_of(model(), cluster(ready_zones=("zone-b", "zone-c")), ready=3)
    degraded = next(c for c in status["conditions"] if c["type"] == "Degraded")
    assert (degraded["status"], degraded["reason"]) == ("True", "ZoneUnavailable")
    assert "spec.zones[0]: zone 'zone-a'" in degraded["message"]
    assert "replicas moved to zone-b, zone-c" in degraded["message"]
    assert conditions(status)["Ready"] == ("True", "ReplicasReady")


def test_unknown_gpu_product_is_degraded_naming_the_field() -> None:
    obj = model(resources={"gpusPerReplica": 2, "gpuProduct": "NVIDIA-B300"})
    status = status_of(obj, cluster())
    degraded = next(c for c in status["conditions"] if c["type"] == "Degraded")
    assert degraded["reason"] == "UnknownGPUProduct"
    assert degraded["message"].startswith("spec.resources.gpuProduct:")
    assert conditions(status)["Ready"] == ("False", "NoServingZone")


def test_missing_fallback_is_degraded() -> None:
    obj = model(fallback={"model": "small"})
    nodes = cluster()
    plan = replica_plan(obj, nodes, WARM)
    base = observed(obj, nodes)
    missing = Observed(nodes=nodes, zones=base.zones, fallback_endpoint="")
    status = compute_status(obj, missing, plan, [], {}, NOW)
    assert conditions(status)["Degraded"] == ("True", "FallbackNotFound")
    found = Observed(nodes=nodes, zones=base.zones, fallback_endpoint="https://small.ns.svc:8000")
    status = compute_status(obj, found, plan, [], {}, NOW)
    assert status["fallbackEndpoint"] == "https://small.ns.svc:8000"
    assert conditions(status)["Degraded"] == ("False", "AsExpected")


def test_invalid_spec_is_degraded_with_every_message() -> None:
    obj = model()
    errors = ["spec.engine.extraArgs[0]: --foo is not a vLLM flag", "spec.zones[1]: bad"]
    status = compute_status(obj, Observed(nodes=cluster()), {}, errors, {}, NOW)
    degraded = next(c for c in status["conditions"] if c["type"] == "Degraded")
    assert degraded["reason"] == "InvalidSpec"
    assert degraded["message"] == "; ".join(errors)
    assert status["replicas"] == 0


def test_same_world_later_gives_the_same_status() -> None:
    obj, nodes = model(), cluster()
    first = status_of(obj, nodes)
    plan = replica_plan(obj, nodes, WARM)
    again = compute_status(obj, observed(obj, nodes), plan, [], first, LATER)
    assert again == first


def test_rollout_in_progress_is_progressing() -> None:
    obj, nodes = model(), cluster()
    plan = replica_plan(obj, nodes, WARM)
    rolling = {z: ZoneView(desired=2, ready=1, updated=1, cache_warm=True) for z in ZONES}
    status = compute_status(obj, Observed(nodes=nodes, zones=rolling), plan, [], {}, NOW)
    assert conditions(status)["Progressing"] == ("True", "RollingOut")
    assert conditions(status)["Ready"] == ("False", "ReplicasNotReady")


REFUSED = ChildFailure(
    "Deployment",
    "m-zone-a",
    'Deployment.apps "m-zone-a" is invalid: spec.template.spec.containers[0].resources.'
    'requests[cpu]: Invalid value: "1..5": quantities must match the regular expression',
)
NO_PRIORITY = ChildFailure(
    "Deployment",
    "m-zone-b",
    'pods "m-zone-b-7c9d" is forbidden: no PriorityClass with name missing was found',
)


def condition(status: dict[str, Any], type_: str) -> dict[str, Any]:
    return next(c for c in status["conditions"] if c["type"] == type_)


def test_a_refused_apply_is_degraded_naming_the_child_and_the_api_message() -> None:
    obj, nodes = model(), cluster()
    plan = replica_plan(obj, nodes, WARM)
    seen = Observed(nodes=nodes, zones=observed(obj, nodes).zones, refused=[REFUSED])
    status = compute_status(obj, seen, plan, [], {}, NOW)
    degraded = condition(status, "Degraded")
    assert (degraded["status"], degraded["reason"]) == ("True", "ApplyFailed")
    assert degraded["message"] == f"Deployment/m-zone-a: {REFUSED.message}"
    progressing = condition(status, "Progressing")
    assert (progressing["status"], progressing["reason"]) == ("False", "ApplyFailed")
    assert "Deployment/m-zone-a" in progressing["message"]
    assert status["observedGeneration"] == 3


def test_pods_that_cannot_be_created_are_degraded_with_the_controllers_message() -> None:
    obj, nodes = model(), cluster()
    plan = replica_plan(obj, nodes, WARM)
    waiting = {z: ZoneView(desired=2, ready=0, updated=2, cache_warm=True) for z in ZONES}
    seen = Observed(nodes=nodes, zones=waiting, failed_creates=[NO_PRIORITY])
    status = compute_status(obj, seen, plan, [], {}, NOW)
    degraded = condition(status, "Degraded")
    assert (degraded["status"], degraded["reason"]) == ("True", "FailedCreate")
    assert degraded["message"] == f"Deployment/m-zone-b: {NO_PRIORITY.message}"
    assert conditions(status)["Progressing"] == ("True", "RollingOut")


def test_a_refused_apply_wins_over_pods_and_placement_and_every_problem_is_said() -> None:
    obj = model()
    nodes = cluster(ready_zones=("zone-b", "zone-c"))
    plan = replica_plan(obj, nodes, WARM)
    seen = Observed(nodes=nodes, refused=[REFUSED], failed_creates=[NO_PRIORITY])
    status = compute_status(obj, seen, plan, [], {}, NOW, [Problem("VaultUnavailable", "vault")])
    degraded = condition(status, "Degraded")
    assert degraded["reason"] == "ApplyFailed"
    parts = degraded["message"].split("; ")
    assert parts[0].startswith("Deployment/m-zone-a: ")
    assert parts[1].startswith("Deployment/m-zone-b: ")
    assert parts[2].startswith("spec.zones[0]: ")
    assert parts[3] == "vault"


def test_a_refusal_that_persists_changes_nothing_in_status() -> None:
    obj, nodes = model(), cluster()
    plan = replica_plan(obj, nodes, WARM)
    seen = Observed(nodes=nodes, refused=[REFUSED])
    first = compute_status(obj, seen, plan, [], {}, NOW)
    assert compute_status(obj, seen, plan, [], first, LATER) == first


def test_a_fixed_refusal_clears_degraded() -> None:
    obj, nodes = model(), cluster()
    plan = replica_plan(obj, nodes, WARM)
    failing = compute_status(obj, Observed(nodes=nodes, refused=[REFUSED]), plan, [], {}, NOW)
    fixed = compute_status(obj, observed(obj, nodes), plan, [], failing, LATER)
    assert conditions(fixed)["Degraded"] == ("False", "AsExpected")
    assert condition(fixed, "Degraded")["lastTransitionTime"] == LATER


def test_a_deployment_tells_why_its_pods_cannot_be_created() -> None:
    failing = {
        "status": {
            "conditions": [
                {"type": "Progressing", "status": "True", "reason": "NewReplicaSetCreated"},
                {
                    "type": "ReplicaFailure",
                    "status": "True",
                    "reason": "FailedCreate",
                    "message": NO_PRIORITY.message,
                },
            ]
        }
    }
    assert deployment_failed_create(failing) == NO_PRIORITY.message
    assert deployment_failed_create({"status": {"conditions": []}}) is None
    assert deployment_failed_create({}) is None


def job(uid: str = "job-uid", **status: Any) -> dict[str, Any]:
    return {"metadata": {"name": "m-prestage-zone-a", "uid": uid}, "status": status}


def failed_create_event(uid: str, message: str, at: str) -> dict[str, Any]:
    return {
        "reason": "FailedCreate",
        "type": "Warning",
        "involvedObject": {"kind": "Job", "name": "m-prestage-zone-a", "uid": uid},
        "message": message,
        "lastTimestamp": at,
    }


def test_a_job_without_pods_tells_why_from_its_latest_event() -> None:
    events = [
        failed_create_event("job-uid", "Error creating: exceeded quota: old", NOW),
        failed_create_event("job-uid", "Error creating: exceeded quota: new", LATER),
        failed_create_event("earlier-job", "Error creating: something else", LATER),
    ]
    assert job_lacks_pods(job())
    assert job_failed_create(job(), events) == "Error creating: exceeded quota: new"
    assert job_failed_create(job(uid="other"), events) is None


def test_a_job_with_pods_or_finished_has_no_failed_create() -> None:
    events = [failed_create_event("job-uid", "Error creating: exceeded quota", NOW)]
    done = job(succeeded=1, conditions=[{"type": "Complete", "status": "True"}])
    for found in (job(active=1), done):
        assert not job_lacks_pods(found)
        assert job_failed_create(found, events) is None
