"""InferenceDeployment controller: read -> render -> apply -> status.

The decisions live in `privatellm.render`; this module gathers what the cluster shows,
applies what the renderers say, prunes what they no longer say, and writes status and
Events only when something changed.
"""

from __future__ import annotations

import datetime
import logging
import os
from collections.abc import Collection, Hashable, Mapping, Sequence
from typing import Any

from pydantic import ValidationError

from privatellm.api import InferenceDeployment
from privatellm.keys.transit import VaultClient, VaultError
from privatellm.kube.client import KINDS, LOOKUP, ApiError, Kube, Obj, namespace_and_name
from privatellm.render.budget_actions import action_signature, budget_spec, model_limits
from privatellm.render.conditions import find_condition, merge_conditions, validation_messages
from privatellm.render.inference import (
    render_children,
    spec_errors,
)
from privatellm.render.inference_status import (
    ChildFailure,
    NodeView,
    Observed,
    Problem,
    ZoneView,
    compute_status,
    deployment_failed_create,
    endpoint,
    invalid_spec_conditions,
    job_failed_create,
    job_lacks_pods,
    replica_plan,
    serving_zones,
)
from privatellm.render.keda import (
    keda_problem,
    keda_replicas,
    render_scaled_objects,
    scaled_by_keda,
)
from privatellm.render.meta import INFERENCE_DEPLOYMENT_LABEL, MANAGED_BY, MANAGED_BY_LABEL
from privatellm.render.network import Resolution
from privatellm.render.weights import weight_source_endpoint
from privatellm.render.workload import (
    prestage_job_name,
    tls_secret_name,
    zone_deployment_name,
)

from .autoscaling import Autoscaler
from .builder import (
    Context,
    Controller,
    For,
    Key,
    Labels,
    Owns,
    Watches,
    WatchEvent,
    always,
    every_key,
    never,
    owner_label,
)
from .events import ReportedError, event_for, now
from .keda import hand_over_replicas, keda_present
from .keys import ensure_tenant_keys, release_tenant_keys
from .network import (
    NetworkSettings,
    fqdn_rules_enforced,
    network_settings_from_env,
    resolve_endpoint,
)
from .tls import ensure_server_certificate

log = logging.getLogger(__name__)

INFERENCE = KINDS["InferenceDeployment"]
COST_BUDGET = KINDS["CostBudget"]
# The per-zone children: listed once per reconcile (their state feeds the status, and
# these are the only children whose names change with the spec, so the only ones to
# prune). The other children have one fixed name each and are read one by one.
ZONAL_KINDS = ("Deployment", "Job", "PersistentVolumeClaim")
# KEDA's per-zone objects, listed with them where KEDA is installed.
SCALED_OBJECT = "ScaledObject"
# Held while the object's Vault access may still need narrowing or revoking.
KEY_FINALIZER = "privatellm.io/transit-key"
LiveChildren = dict[tuple[str, str], Obj]
# The API server is busy or unreachable: nothing is wrong with the child, so the
# reconcile fails as it is and is retried, without a Degraded condition.
TRANSIENT_STATUSES = frozenset({429, 503, 504})
JOB_FAILED_CREATE = "involvedObject.kind=Job,reason=FailedCreate"


def _child_selector(name: str) -> str:
    return f"{INFERENCE_DEPLOYMENT_LABEL}={name},{MANAGED_BY_LABEL}={MANAGED_BY}"


def _owned_by(obj: Obj, uid: str) -> bool:
    refs = obj["metadata"].get("ownerReferences") or []
    return any(ref.get("uid") == uid for ref in refs)


def reconcile(
    kube: Kube,
    vault: VaultClient | None,
    nodes: Sequence[NodeView],
    namespace: str,
    name: str,
    autoscaler: Autoscaler | None = None,
    operator_namespace: str | None = None,
    network_settings: NetworkSettings | None = None,
) -> None:
    """Bring one InferenceDeployment's children and status in line with its spec.

    `nodes` is the operator's current view of the cluster's nodes; `vault`, when the
    operator has one, holds the namespace's keys; `autoscaler`, when it has one, sets
    the replica count of models with spec.autoscaling from their demand, which the
    operator's Pods in `operator_namespace` read from the models' servers. Where KEDA is
    installed, a model with autoscaling.scaledBy keda gets a ScaledObject per zone instead,
    and its Deployments' counts are left to KEDA. `network_settings` (the platform's) say
    how its Pods reach an s3:// weight store given by host name.
    """
    raw = kube.get(INFERENCE, namespace, name)
    if raw is None:
        if autoscaler is not None:
            autoscaler.forget((namespace, name))
        return
    finalizers: list[str] = raw["metadata"].get("finalizers") or []
    if raw["metadata"].get("deletionTimestamp"):
        # Children carry owner references: the garbage collector removes them. Only the
        # Vault side, outside the cluster, needs the operator before the object goes.
        if KEY_FINALIZER in finalizers:
            _release_keys(kube, vault, raw, finalizers)
        return
    if namespace_terminating(kube, namespace):
        return  # re-creating what the namespace controller removes would only fight it
    previous = raw.get("status") or {}
    try:
        obj = InferenceDeployment.model_validate(raw)
    except ValidationError as error:
        # Stored before a stricter schema: say why at once; nothing is rendered.
        _report_unreadable(kube, raw, previous, validation_messages(error))
        return
    keda = keda_present(kube)
    # Where KEDA can scale the model its HPAs set the count, and the operator's
    # autoscaler leaves it alone; where it cannot, the operator scales it meanwhile.
    by_keda = keda and scaled_by_keda(obj.spec)
    if by_keda and autoscaler is not None:
        autoscaler.forget((namespace, name))
    # The CostBudgets covering the model: a scaleDown threshold, off hours and an idle
    # timeout bound the count; a spot price moves batch work to spot.
    budgets = kube.list(COST_BUDGET, namespace)
    limits = model_limits(budgets, name)
    spec, held = budget_spec(obj.spec, name, budgets, limits)
    obj = obj.model_copy(update={"spec": spec})
    scaling = None
    if autoscaler and not by_keda:
        scaling = autoscaler.decide(obj, previous, limits)
    live = _zonal_children(kube, obj, keda)
    zones = _observe_zones(obj, live)
    warm = {z for z, view in zones.items() if view.cache_warm}
    scaled_objects: list[Obj] = []
    replicas: dict[str, int | None]
    if by_keda:
        serving = serving_zones(obj, nodes, warm)
        existing = {
            zone: zones[zone].desired
            for zone in obj.spec.zones
            if ("Deployment", zone_deployment_name(obj, zone)) in live
        }
        replicas, plan = keda_replicas(obj, serving, existing)
        scaled_objects = render_scaled_objects(obj, serving)
    else:
        plan = replica_plan(obj, nodes, warm, scaling.replicas if scaling else None)
        replicas = dict(plan)
    invalid: Sequence[str] = spec_errors(obj)
    problems: list[Problem] = []
    if unavailable := keda_problem(obj.spec, keda):
        problems.append(unavailable)
    encryption_key = None
    if vault is not None and not invalid:
        try:
            models = [
                InferenceDeployment.model_validate(m) for m in kube.list(INFERENCE, namespace)
            ]
            encryption_key = ensure_tenant_keys(vault, obj, models)
            if KEY_FINALIZER not in finalizers:
                kube.set_finalizers(
                    INFERENCE,
                    namespace,
                    name,
                    [*finalizers, KEY_FINALIZER],
                    raw["metadata"]["resourceVersion"],
                )
        except VaultError as error:
            message = f"spec.encryption: cannot provision the Transit key: {error}"
            problems.append(Problem("VaultUnavailable", message))
    source_egress = None
    if not invalid and (store := weight_source_endpoint(obj.spec)) is not None:
        settings = network_settings or NetworkSettings()
        source_egress = resolve_endpoint(kube, store, settings, fqdn_rules_enforced(kube))
        if source_egress.problem:
            message = f"spec.model.source.s3Endpoint: {source_egress.problem}"
            problems.append(Problem("WeightSourceNotExpressible", message))
    refused = (
        []
        if invalid
        else _apply_children(
            kube, obj, replicas, live, operator_namespace, scaled_objects, source_egress
        )
    )
    observed = Observed(
        nodes=nodes,
        zones=zones,
        fallback_endpoint=_fallback_endpoint(kube, obj),
        refused=refused,
        failed_creates=_failed_creates(kube, obj, live),
        budget_ceiling=held,
    )
    status = compute_status(
        obj, observed, plan, invalid, previous, now(), problems, encryption_key, scaling
    )
    if status != {k: previous.get(k) for k in status} or set(previous) - set(status):
        removed = {key: None for key in previous if key not in status}
        kube.patch_status(INFERENCE, namespace, name, {**removed, **status})
        _record_transitions(kube, raw, previous, status)
    if scaling is not None and scaling.changed:
        kube.post_event(event_for(raw, "Normal", str(scaling.reason), scaling.message))
    if refused:
        # Reported in status; raising makes the runtime retry with backoff.
        raise ReportedError("; ".join(map(str, refused)))


def _report_unreadable(kube: Kube, raw: Obj, previous: Obj, invalid: list[str]) -> None:
    generation = raw["metadata"].get("generation")
    conditions = merge_conditions(
        previous.get("conditions") or [], invalid_spec_conditions(invalid), generation, now()
    )
    status = {"observedGeneration": generation, "conditions": conditions}
    if any(previous.get(k) != v for k, v in status.items()):
        kube.patch_status(INFERENCE, *namespace_and_name(raw), status)
        _record_transitions(kube, raw, previous, status)


def _apply_children(
    kube: Kube,
    obj: InferenceDeployment,
    replicas: dict[str, int | None],
    live: LiveChildren,
    operator_namespace: str | None,
    scaled_objects: Sequence[Obj],
    source_egress: Resolution | None,
) -> list[ChildFailure]:
    """Apply every rendered child and `scaled_objects`; the ones the API server refused,
    with its message.

    One refused child does not stop the others. Nothing is pruned then: the children a
    changed spec no longer renders may be all that still serves.
    """
    refused = []
    try:
        tls_revision = ensure_server_certificate(kube, obj, datetime.datetime.now(datetime.UTC))
    except ApiError as error:
        if error.status in TRANSIENT_STATUSES:
            raise
        # Pods would mount a Secret that is not there: render nothing until it is.
        return [ChildFailure("Secret", tls_secret_name(obj), error.message)]
    children = [
        *render_children(obj, replicas, tls_revision, operator_namespace, source_egress),
        *scaled_objects,
    ]
    for child in children:
        key = (child["kind"], child["metadata"]["name"])
        # The zonal children were listed already; the others are read by name.
        known = live.get(key) if child["kind"] in (*ZONAL_KINDS, SCALED_OBJECT) else LOOKUP
        deployment = live.get(key) if child["kind"] == "Deployment" else None
        try:
            if deployment is not None and "replicas" not in child["spec"]:
                hand_over_replicas(kube, deployment)
            kube.apply(child, known)
        except ApiError as error:
            if error.status in TRANSIENT_STATUSES:
                raise
            refused.append(ChildFailure(*key, error.message))
    if not refused:
        _prune(kube, obj, children, live)
    return refused


def _failed_creates(kube: Kube, obj: InferenceDeployment, live: LiveChildren) -> list[ChildFailure]:
    """Deployments and Jobs whose Pods their controllers cannot create, and why.

    A Deployment carries the reason in a condition; a Job only in Events, which are
    listed only when one of its Jobs has no Pod.
    """
    found = [
        ChildFailure(kind, name, message)
        for (kind, name), item in live.items()
        if kind == "Deployment" and (message := deployment_failed_create(item))
    ]
    jobs = [item for (kind, _), item in live.items() if kind == "Job" and job_lacks_pods(item)]
    if jobs:
        events = kube.list_events(obj.metadata.namespace or "", JOB_FAILED_CREATE)
        found += [
            ChildFailure("Job", job["metadata"]["name"], message)
            for job in jobs
            if (message := job_failed_create(job, events))
        ]
    return found


def _release_keys(kube: Kube, vault: VaultClient | None, raw: Obj, finalizers: list[str]) -> None:
    """Narrow or revoke the gateway's Vault access as the spec says, then let the object go."""
    obj = InferenceDeployment.model_validate(raw)
    namespace, name = obj.metadata.namespace or "", obj.metadata.name
    if vault is None:
        # Retain needs nothing; a Revoke cannot be carried out without Vault, so say so.
        outcome = "no Vault configured: the gateway's access to the key was left as it is"
    else:
        others = [
            InferenceDeployment.model_validate(m)
            for m in kube.list(INFERENCE, namespace)
            if m["metadata"]["name"] != name and not m["metadata"].get("deletionTimestamp")
        ]
        outcome = release_tenant_keys(vault, obj, others)
    kube.post_event(event_for(raw, "Normal", "TransitKeyReleased", outcome))
    remaining = [f for f in finalizers if f != KEY_FINALIZER]
    kube.set_finalizers(INFERENCE, namespace, name, remaining, raw["metadata"]["resourceVersion"])


def namespace_terminating(kube: Kube, namespace: str) -> bool:
    """Whether the namespace is gone or going: nothing should be created in it then."""
    found = kube.get(KINDS["Namespace"], None, namespace)
    return found is None or (found.get("status") or {}).get("phase") == "Terminating"


def _zonal_children(kube: Kube, obj: InferenceDeployment, keda: bool) -> LiveChildren:
    """The per-zone children as they are now, by (kind, name): three list requests, and a
    fourth for the ScaledObjects where KEDA is installed (so that they are pruned too)."""
    namespace, selector = obj.metadata.namespace, _child_selector(obj.metadata.name)
    kinds = (*ZONAL_KINDS, SCALED_OBJECT) if keda else ZONAL_KINDS
    return {
        (kind, item["metadata"]["name"]): item
        for kind in kinds
        for item in kube.list(KINDS[kind], namespace, selector)
    }


def _prune(kube: Kube, obj: InferenceDeployment, children: list[Obj], live: LiveChildren) -> None:
    """Delete per-zone children this object owns that the renderers no longer produce."""
    wanted = {(c["kind"], c["metadata"]["name"]) for c in children}
    uid = obj.metadata.uid or ""
    for (kind, name), item in live.items():
        if (kind, name) not in wanted and _owned_by(item, uid):
            log.info("pruning %s %s/%s", kind, obj.metadata.namespace, name)
            kube.delete(KINDS[kind], obj.metadata.namespace, name)


def _observe_zones(obj: InferenceDeployment, live: LiveChildren) -> dict[str, ZoneView]:
    views = {}
    for zone in obj.spec.zones:
        deployment = live.get(("Deployment", zone_deployment_name(obj, zone))) or {}
        spec, status = deployment.get("spec") or {}, deployment.get("status") or {}
        job = live.get(("Job", prestage_job_name(obj, zone))) or {}
        job_status = job.get("status") or {}
        views[zone] = ZoneView(
            desired=int(spec.get("replicas", 0)),
            ready=int(status.get("readyReplicas", 0)),
            updated=int(status.get("updatedReplicas", 0)),
            cache_warm=bool(job_status.get("succeeded")),
        )
    return views


def _fallback_endpoint(kube: Kube, obj: InferenceDeployment) -> str | None:
    """The fallback's endpoint; "" when it is declared but does not exist."""
    if obj.spec.fallback is None:
        return None
    fallback = kube.get(INFERENCE, obj.metadata.namespace, obj.spec.fallback.model)
    if fallback is None:
        return ""
    return endpoint(InferenceDeployment.model_validate(fallback))


def _record_transitions(
    kube: Kube, raw: Obj, previous: dict[str, Any], status: dict[str, Any]
) -> None:
    """An Event for each condition that changed status or reason."""
    for condition in status["conditions"]:
        before = find_condition(previous.get("conditions") or [], condition["type"])
        bad = (condition["type"], condition["status"]) in (("Degraded", "True"), ("Ready", "False"))
        if before is None and not bad:
            continue  # a new object that is fine says nothing
        if before and (before["status"], before["reason"]) == (
            condition["status"],
            condition["reason"],
        ):
            continue
        if condition["type"] == "Progressing":
            continue  # every rollout would say so; Ready and Degraded tell the story
        kube.post_event(
            event_for(
                raw,
                "Warning" if bad else "Normal",
                condition["reason"],
                f"{condition['type']}={condition['status']}: {condition['message']}",
            )
        )


def node_signature(node: Mapping[str, Any]) -> Hashable:
    """What of a node the replica plan reads: a change to anything else re-plans nothing."""
    view = NodeView.from_node(node)
    labels = tuple(sorted(view.labels.items()))
    return (view.zone, view.ready, view.schedulable, view.allocatable_gpus, labels)


def budget_models(event: WatchEvent, known: Collection[Key]) -> list[Key]:
    """The models a CostBudget covers, as its status lists them."""
    models = (event.body.get("status") or {}).get("models") or []
    return [(event.namespace, model) for model in models]


def _reconcile(context: Context, key: Key) -> None:
    reconcile(
        context.kube,
        context.vault,
        context.nodes(),
        *key,
        context.autoscaler,
        context.operator_namespace,
        network_settings_from_env(os.environ),
    )


CHILD_LABELS: Labels = {MANAGED_BY_LABEL: MANAGED_BY, INFERENCE_DEPLOYMENT_LABEL: None}
_owner = owner_label(INFERENCE_DEPLOYMENT_LABEL)

CONTROLLER = Controller(
    name="InferenceDeployment",
    for_=For(INFERENCE),
    owns=(
        Owns(KINDS["Deployment"], _owner, CHILD_LABELS),
        Owns(KINDS["Job"], _owner, CHILD_LABELS),
        # Replicas coming and going change the status; the Deployments replace them.
        Owns(KINDS["Pod"], _owner, {INFERENCE_DEPLOYMENT_LABEL: None}, urgent=never),
    ),
    # Every model is planned again when a node's ability to host replicas changes.
    watches=(
        Watches(KINDS["Node"], every_key, signature=node_signature),
        # A scaleDown threshold reached or lifted moves the autoscaler's ceiling at once.
        Watches(COST_BUDGET, budget_models, urgent=always, signature=action_signature),
    ),
    reconcile=_reconcile,
    follows_demand=True,
)
