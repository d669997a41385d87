"""kopf wiring: watch events feed a work queue; a few workers reconcile one object at a time.

Only kopf's event-watching handlers are used. They keep no state on the objects (no
progress annotations, no finalizers), so a restarted operator re-reads the world and,
when nothing changed, writes nothing. The reconcile is level-triggered: watch events
on the custom resources, their Deployments, Jobs and Pods, and on node readiness queue
it; a periodic resync queues every object again.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import kopf
import prometheus_client

from privatellm.api import GROUP, VERSION
from privatellm.audit import AuditLog, Signer
from privatellm.audit.records import policy_change_record
from privatellm.keys.transit import VaultClient, vault_client_from_env
from privatellm.kube.client import Kube, new_api_client
from privatellm.render.audit import render_operator_audit_public_key
from privatellm.render.inference_status import NodeView
from privatellm.render.meta import INFERENCE_DEPLOYMENT_LABEL, MANAGED_BY, MANAGED_BY_LABEL

from . import gateway, inference
from .metrics import QUEUE_DEPTH, RECONCILE_SECONDS, RECONCILES

log = logging.getLogger(__name__)

Key = tuple[str, str]
KIND = "InferenceDeployment"
RETRY_DELAYS = (1.0, 2.0, 5.0, 10.0, 30.0)


class WorkQueue:
    """Deduplicating queue: a key is queued at most once and never handled twice at a time."""

    def __init__(self) -> None:
        self._queue: asyncio.Queue[Key] = asyncio.Queue()
        self._queued: set[Key] = set()
        self._processing: set[Key] = set()
        self._dirty: set[Key] = set()

    def add(self, key: Key) -> None:
        if key in self._processing:
            self._dirty.add(key)
        elif key not in self._queued:
            self._queued.add(key)
            self._queue.put_nowait(key)

    async def get(self) -> Key:
        key = await self._queue.get()
        self._queued.discard(key)
        self._processing.add(key)
        return key

    def done(self, key: Key) -> None:
        self._processing.discard(key)
        if key in self._dirty:
            self._dirty.discard(key)
            self.add(key)

    def depth(self) -> int:
        return len(self._queued)


@dataclass
class Runtime:
    """What the handlers share, kept in kopf's memo."""

    kube: Kube
    # None when the operator runs without Vault: keys are then not provisioned.
    vault: VaultClient | None
    workers: int
    resync_seconds: float
    queue: WorkQueue = field(default_factory=WorkQueue)
    # Namespaces whose gateway needs a look, keyed (namespace, "").
    gateway_queue: WorkQueue = field(default_factory=WorkQueue)
    known: set[Key] = field(default_factory=set)
    failures: dict[Key, int] = field(default_factory=dict)
    node_signatures: dict[str, Hashable] = field(default_factory=dict)
    # kopf's in-memory index of the nodes, kept current by the watch: no reconcile lists
    # the nodes from the API server.
    node_index: Mapping[str, Iterable[NodeView]] | None = None
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    # The operator's own audit log of control actions, when it has one.
    audit: AuditLog | None = None
    # (uid, generation) of each AccessPolicy last recorded, so resyncs add nothing.
    recorded_policies: dict[Key, tuple[str, int]] = field(default_factory=dict)

    def nodes(self) -> list[NodeView]:
        if self.node_index is None:
            return []
        return [view for views in self.node_index.values() for view in views]

    def request_all(self) -> None:
        for key in sorted(self.known):
            self.queue.add(key)
        for namespace in sorted({namespace for namespace, _ in self.known}):
            self.gateway_queue.add((namespace, ""))


def _runtime(memo: Any) -> Runtime:
    runtime: Runtime = memo.runtime
    return runtime


def _reconcile_model(runtime: Runtime, key: Key) -> None:
    inference.reconcile(runtime.kube, runtime.vault, runtime.nodes(), *key)


def _reconcile_gateway(runtime: Runtime, key: Key) -> None:
    vault_addr = runtime.vault.addr if runtime.vault is not None else None
    binding = os.environ.get(gateway.TOKEN_REVIEW_BINDING_ENV)
    shipping = gateway.audit_shipping_from_env(os.environ)
    gateway.reconcile_gateway(runtime.kube, key[0], vault_addr, binding, shipping)


async def _worker(
    runtime: Runtime, queue: WorkQueue, kind: str, reconcile: Callable[[Runtime, Key], None]
) -> None:
    loop = asyncio.get_running_loop()
    while True:
        key = await queue.get()
        QUEUE_DEPTH.set(runtime.queue.depth() + runtime.gateway_queue.depth())
        started = time.perf_counter()
        try:
            await asyncio.to_thread(reconcile, runtime, key)
            runtime.failures.pop(key, None)
            RECONCILES.labels(kind, "ok").inc()
        except Exception:
            RECONCILES.labels(kind, "error").inc()
            attempt = runtime.failures.get(key, 0)
            runtime.failures[key] = attempt + 1
            delay = RETRY_DELAYS[min(attempt, len(RETRY_DELAYS) - 1)]
            log.exception("reconciling %s %s/%s failed; retrying in %ss", kind, *key, delay)
            loop.call_later(delay, queue.add, key)
        finally:
            RECONCILE_SECONDS.labels(kind).observe(time.perf_counter() - started)
            queue.done(key)


async def _resync(runtime: Runtime) -> None:
    while True:
        await asyncio.sleep(runtime.resync_seconds)
        runtime.request_all()


@kopf.on.startup()
async def start(settings: kopf.OperatorSettings, memo: Any, **_: Any) -> None:
    # The operator records its own Events on transitions; kopf's would be noise.
    settings.posting.enabled = False
    settings.watching.server_timeout = 300
    options: Mapping[str, Any] = memo.get("options", {})
    runtime = Runtime(
        kube=Kube(new_api_client()),
        vault=_vault_from_env(),
        workers=int(options.get("workers", 4)),
        resync_seconds=float(options.get("resync_seconds", 60)),
    )
    if options.get("audit_dir"):
        signer = Signer.from_file(Path(options["audit_signing_key"]))
        runtime.audit = AuditLog(Path(options["audit_dir"]), signer)
        # Published next to the operator, so auditors can verify its log.
        if namespace := os.environ.get("POD_NAMESPACE"):
            public_key = render_operator_audit_public_key(namespace, signer.public_pem().decode())
            await asyncio.to_thread(runtime.kube.apply, public_key)
    memo.runtime = runtime
    if options.get("metrics_port"):
        prometheus_client.start_http_server(int(options["metrics_port"]))
    runtime.tasks = [
        asyncio.create_task(_worker(runtime, runtime.queue, KIND, _reconcile_model))
        for _ in range(runtime.workers)
    ]
    # One gateway worker: a namespace's gateway is small, and changes to it are rare.
    runtime.tasks.append(
        asyncio.create_task(_worker(runtime, runtime.gateway_queue, "Gateway", _reconcile_gateway))
    )
    runtime.tasks.append(asyncio.create_task(_resync(runtime)))


def _vault_from_env() -> VaultClient | None:
    vault = vault_client_from_env()
    if vault is None:
        log.warning("no Vault configured (BAO_ADDR/VAULT_ADDR): Transit keys are not provisioned")
    return vault


@kopf.on.cleanup()
async def stop(memo: Any, **_: Any) -> None:
    runtime = _runtime(memo)
    for task in runtime.tasks:
        task.cancel()
    if runtime.audit is not None:
        runtime.audit.close()


@kopf.index("", "v1", "nodes")
async def node_views(name: str, body: kopf.Body, **_: Any) -> dict[str, NodeView]:
    """What reconciles need of each node; kopf fills every index before any handler runs."""
    return {name: NodeView.from_node(body)}


@kopf.on.event(GROUP, VERSION, "inferencedeployments")
async def inference_deployment_event(
    type: str, namespace: str | None, name: str, memo: Any, **kwargs: Any
) -> None:
    runtime = _runtime(memo)
    # kopf passes each index to every handler as a keyword named after its function.
    runtime.node_index = kwargs["node_views"]
    key = (namespace or "", name)
    runtime.gateway_queue.add((key[0], ""))
    if type == "DELETED":
        runtime.known.discard(key)
        return
    runtime.known.add(key)
    runtime.queue.add(key)


@kopf.on.event(GROUP, VERSION, "accesspolicies")
async def access_policy_event(
    type: str | None, body: kopf.Body, namespace: str | None, name: str, memo: Any, **_: Any
) -> None:
    """A policy change re-renders the namespace's gateway configuration, and is recorded."""
    runtime = _runtime(memo)
    runtime.gateway_queue.add((namespace or "", ""))
    if runtime.audit is None:
        return
    key = (namespace or "", name)
    version = (str(body.metadata.uid), int(body.metadata.get("generation") or 0))
    if type != "DELETED" and runtime.recorded_policies.get(key) == version:
        return
    runtime.recorded_policies[key] = version
    record = policy_change_record(type, dict(body))
    # Durable before the handler returns: kopf then moves on to the next event.
    await runtime.audit.append_durable(record)


@kopf.on.event(GROUP, VERSION, "dataconnectors")
async def data_connector_event(namespace: str | None, memo: Any, **_: Any) -> None:
    """What a connector's items carry and where they may go is in the gateway's configuration."""
    _runtime(memo).gateway_queue.add((namespace or "", ""))


CHILD_LABELS: dict[str, Any] = {
    MANAGED_BY_LABEL: MANAGED_BY,
    INFERENCE_DEPLOYMENT_LABEL: kopf.PRESENT,
}


@kopf.on.event("apps", "v1", "deployments", labels=CHILD_LABELS)
@kopf.on.event("batch", "v1", "jobs", labels=CHILD_LABELS)
@kopf.on.event("", "v1", "pods", labels={INFERENCE_DEPLOYMENT_LABEL: kopf.PRESENT})
async def child_event(
    namespace: str | None, labels: Mapping[str, str], memo: Any, **_: Any
) -> None:
    runtime = _runtime(memo)
    key = (namespace or "", labels[INFERENCE_DEPLOYMENT_LABEL])
    if key in runtime.known:
        runtime.queue.add(key)


@kopf.on.event("", "v1", "nodes")
async def node_event(type: str, body: kopf.Body, name: str, memo: Any, **_: Any) -> None:
    """Re-plan every model when a node's ability to host replicas changes."""
    runtime = _runtime(memo)
    if type == "DELETED":
        signature: Hashable = None
    else:
        view = NodeView.from_node(body)
        signature = (
            view.zone,
            view.ready,
            view.schedulable,
            view.allocatable_gpus,
            tuple(sorted(view.labels.items())),
        )
    if runtime.node_signatures.get(name, ...) == signature:
        return
    runtime.node_signatures[name] = signature
    runtime.request_all()
