"""What each controller declares: which events queue which keys, and which urgently;
and that the runtime gives every declared controller its queue, without kopf running."""

from __future__ import annotations

import asyncio
import importlib
import pkgutil
from collections.abc import Mapping
from typing import Any, cast

import pytest
from prometheus_client import REGISTRY

import privatellm.controllers
from privatellm.controllers import gateway, inference
from privatellm.controllers.builder import (
    Context,
    Controller,
    Declaration,
    For,
    Key,
    KnownKeys,
    Owns,
    WatchEvent,
)
from privatellm.controllers.runtime import CONTROLLERS, ControllerLoop, Runtime
from privatellm.kube.client import KINDS
from privatellm.render.meta import INFERENCE_DEPLOYMENT_LABEL, MANAGED_BY, MANAGED_BY_LABEL

NS = "team"
CHILD = {INFERENCE_DEPLOYMENT_LABEL: "chat", MANAGED_BY_LABEL: MANAGED_BY}


def body(
    kind: str,
    name: str,
    generation: int = 1,
    uid: str = "uid-1",
    labels: Mapping[str, str] | None = None,
    namespace: str = NS,
    **rest: Any,
) -> dict[str, Any]:
    meta = {"namespace": namespace, "name": name, "generation": generation, "uid": uid}
    return {"kind": kind, "metadata": {**meta, "labels": dict(labels or {})}, **rest}


def event(type_: str | None, obj: Mapping[str, Any], new_generation: bool = False) -> WatchEvent:
    return WatchEvent(type_, obj, new_generation)


def known(*keys: Key) -> KnownKeys:
    found = KnownKeys()
    for key in keys:
        found.observe(event("ADDED", body("InferenceDeployment", key[1], namespace=key[0])), key)
    return found


def owns(controller: Controller, kind: str) -> Owns:
    return next(o for o in controller.owns if o.kind.kind == kind)


def test_a_model_is_queued_by_its_own_key_urgently_on_a_new_generation() -> None:
    model = body("InferenceDeployment", "chat")
    declared = inference.CONTROLLER.for_
    assert declared.requests(event("ADDED", model, True), known()) == [((NS, "chat"), True)]
    assert declared.requests(event("MODIFIED", model), known()) == [((NS, "chat"), False)]


def test_a_deleted_deployment_or_job_brings_its_model_back_at_once() -> None:
    chat = known((NS, "chat"))
    for kind in ("Deployment", "Job"):
        declared = owns(inference.CONTROLLER, kind)
        child = body(kind, "chat-zone-a", labels=CHILD)
        assert declared.requests(event("MODIFIED", child), chat) == [((NS, "chat"), False)]
        assert declared.requests(event("DELETED", child, True), chat) == [((NS, "chat"), True)]


def test_pods_only_ask_for_a_look() -> None:
    pod = body("Pod", "chat-zone-a-x1", labels={INFERENCE_DEPLOYMENT_LABEL: "chat"})
    declared = owns(inference.CONTROLLER, "Pod")
    assert declared.requests(event("DELETED", pod, True), known((NS, "chat"))) == [
        ((NS, "chat"), False)
    ]


def test_children_of_a_model_that_is_gone_queue_nothing() -> None:
    child = body("Deployment", "chat-zone-a", labels=CHILD)
    declared = owns(inference.CONTROLLER, "Deployment")
    assert declared.requests(event("DELETED", child, True), known((NS, "other"))) == []


def test_a_node_concerns_every_model() -> None:
    nodes, _ = inference.CONTROLLER.watches
    node = body("Node", "gpu-a-1", namespace="")
    every = known((NS, "a"), ("other", "b"))
    assert nodes.requests(event("MODIFIED", node), every) == [
        (("other", "b"), False),
        ((NS, "a"), False),
    ]


def test_the_gateway_is_keyed_by_namespace_and_cut_short_by_new_generations() -> None:
    declared: list[Declaration] = [gateway.CONTROLLER.for_, *gateway.CONTROLLER.watches]
    kinds = [d.kind.kind for d in declared]
    assert kinds == ["InferenceDeployment", "AccessPolicy", "DataConnector", "CostBudget"]
    for declaration in declared[:3]:
        obj = body(declaration.kind.kind, "x")
        assert declaration.requests(event("MODIFIED", obj), known()) == [((NS, ""), False)]
        assert declaration.requests(event("DELETED", obj, True), known()) == [((NS, ""), True)]


def budget(action: str | None, models: list[str], generation: int = 1) -> dict[str, Any]:
    status: dict[str, Any] = {"observedGeneration": 1, "models": models}
    if action:
        status["activeAction"] = action
    return body("CostBudget", "b", generation, status=status)


def test_a_budget_reaching_or_leaving_an_action_queues_its_gateway_and_models_at_once() -> None:
    gateway_watch = gateway.CONTROLLER.watches[-1]
    _, model_watch = inference.CONTROLLER.watches
    assert gateway_watch.signature is not None and model_watch.signature is not None
    spending, blocked = budget(None, ["llama"]), budget("block", ["llama"])
    # Spend moving below every threshold leaves what they act on as it was.
    assert gateway_watch.signature(spending) == gateway_watch.signature(budget(None, ["llama"]))
    assert gateway_watch.signature(spending) != gateway_watch.signature(blocked)
    # Figures of an older spec act on nothing.
    assert gateway_watch.signature(budget("block", ["llama"], 2)) == gateway_watch.signature(
        spending
    )
    assert gateway_watch.requests(event("MODIFIED", blocked), known()) == [((NS, ""), True)]
    assert model_watch.requests(event("MODIFIED", blocked), known()) == [((NS, "llama"), True)]


def test_a_namespace_is_known_to_the_gateway_until_its_last_model_goes() -> None:
    keys = KnownKeys()
    for name in ("a", "b"):
        keys.observe(event("ADDED", body("InferenceDeployment", name)), (NS, ""))
    keys.observe(event("MODIFIED", body("InferenceDeployment", "a")), (NS, ""))
    assert list(keys) == [(NS, "")]
    keys.observe(event("DELETED", body("InferenceDeployment", "a")), (NS, ""))
    assert (NS, "") in keys
    keys.observe(event("DELETED", body("InferenceDeployment", "b")), (NS, ""))
    assert list(keys) == []


# The runtime, fed events as kopf would hand them to each matching handler.


def loop(runtime: Runtime, name: str) -> ControllerLoop:
    return next(each for each in runtime.loops if each.controller.name == name)


def started(audit: object = None) -> Runtime:
    """A runtime as the operator's startup leaves it, without workers or a cluster."""
    runtime = Runtime(CONTROLLERS)
    runtime.context = Context(cast(Any, None), None, cast(Any, audit), {})
    return runtime


def deliver(runtime: Runtime, type_: str | None, obj: Mapping[str, Any]) -> None:
    """Call every handler whose kind and label selector match, as kopf does."""
    labels = obj["metadata"].get("labels") or {}
    for watch in runtime.watches:
        declaration = watch.declaration
        if declaration.kind.kind != obj["kind"]:
            continue
        if all(k in labels and v in (None, labels[k]) for k, v in declaration.labels.items()):
            asyncio.run(runtime.handle(watch, type_, obj))


def drain(queue_loop: ControllerLoop) -> list[Key]:
    """The keys ready now, each marked reconciled."""
    keys = []
    while queue_loop.queue.depth():
        key = asyncio.run(queue_loop.queue.get())
        queue_loop.queue.done(key)
        keys.append(key)
    return keys


def test_a_model_event_reaches_the_model_and_the_gateway_controller() -> None:
    runtime = Runtime(CONTROLLERS)
    deliver(runtime, None, body("InferenceDeployment", "chat"))
    assert REGISTRY.get_sample_value("privatellm_work_queue_depth", {"kind": "Gateway"}) == 1
    assert drain(loop(runtime, "InferenceDeployment")) == [(NS, "chat")]
    assert drain(loop(runtime, "Gateway")) == [(NS, "")]


def test_a_resync_queues_every_known_key_of_every_controller() -> None:
    runtime = started()
    for name in ("a", "b"):
        deliver(runtime, "ADDED", body("InferenceDeployment", name))
    deliver(runtime, "ADDED", body("AccessPolicy", "p", namespace="policies-only"))
    deliver(runtime, "DELETED", body("InferenceDeployment", "b"))
    for each in runtime.loops:
        drain(each)
    runtime.request_all()
    assert drain(loop(runtime, "InferenceDeployment")) == [(NS, "a")]
    assert drain(loop(runtime, "Gateway")) == [(NS, "")]


def node(ready: str, heartbeat: str = "12:00:00") -> dict[str, Any]:
    conditions = [{"type": "Ready", "status": ready, "lastHeartbeatTime": heartbeat}]
    status = {"conditions": conditions, "allocatable": {"nvidia.com/gpu": "8"}}
    return body("Node", "gpu-a-1", namespace="", status=status)


def test_only_a_node_change_the_plan_reads_requeues_the_models() -> None:
    runtime = Runtime(CONTROLLERS)
    models, gateways = loop(runtime, "InferenceDeployment"), loop(runtime, "Gateway")
    deliver(runtime, "ADDED", body("InferenceDeployment", "chat"))
    drain(models), drain(gateways)
    deliver(runtime, None, node("True"))
    assert drain(models) == [(NS, "chat")]
    deliver(runtime, "MODIFIED", node("True", heartbeat="12:00:40"))
    assert drain(models) == [], "a heartbeat changes nothing the plan reads"
    deliver(runtime, "MODIFIED", node("False"))
    assert drain(models) == [(NS, "chat")]
    deliver(runtime, "DELETED", node("False"))
    assert drain(models) == [(NS, "chat")]
    assert drain(gateways) == [], "the gateway does not read nodes"


class RecordingAudit:
    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []

    async def append_durable(self, record: dict[str, Any]) -> int:
        self.records.append(record)
        return len(self.records)


def test_each_access_policy_version_is_recorded_once() -> None:
    audit = RecordingAudit()
    runtime = started(audit)
    policy = body("AccessPolicy", "team")
    for type_, version in [
        (None, policy),
        ("MODIFIED", {**policy, "status": {"observedGeneration": 1}}),  # its status
        ("MODIFIED", body("AccessPolicy", "team", generation=2)),
        ("MODIFIED", body("AccessPolicy", "team", generation=1, uid="uid-2")),  # re-created
        ("DELETED", body("AccessPolicy", "team", generation=1, uid="uid-2")),
    ]:
        deliver(runtime, type_, version)
    recorded = [
        (r["action"], r["details"]["uid"], r["details"]["generation"]) for r in audit.records
    ]
    assert recorded == [
        ("policy.change", "uid-1", 1),
        ("policy.change", "uid-1", 2),
        ("policy.change", "uid-2", 1),
        ("policy.delete", "uid-2", 1),
    ]


def test_every_controller_module_is_registered() -> None:
    declared = []
    for module in pkgutil.iter_modules(privatellm.controllers.__path__):
        imported = importlib.import_module(f"privatellm.controllers.{module.name}")
        if isinstance(getattr(imported, "CONTROLLER", None), Controller):
            declared.append(imported.CONTROLLER)
    assert declared
    assert sorted(c.name for c in declared) == sorted(c.name for c in CONTROLLERS)
    Runtime(CONTROLLERS).registry()  # kopf accepts every declaration


def test_a_controller_declared_twice_is_refused() -> None:
    with pytest.raises(ValueError, match="declared more than once: Gateway"):
        Runtime([gateway.CONTROLLER, gateway.CONTROLLER])


def test_two_watches_of_one_kind_in_one_controller_need_telling_apart() -> None:
    twice = Controller(
        "Twice",
        For(KINDS["InferenceDeployment"]),
        inference.CONTROLLER.reconcile,
        owns=(owns(inference.CONTROLLER, "Job"), owns(inference.CONTROLLER, "Job")),
    )
    with pytest.raises(ValueError, match="Twice/Owns/jobs"):
        Runtime([twice])
