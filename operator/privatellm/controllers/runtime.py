"""kopf wiring: watch events feed a work queue; a few workers reconcile one object at a time.

Only kopf's event-watching handlers are used. They keep no state on the objects (no
progress annotations, no finalizers), so a restarted operator re-reads the world and,
when nothing changed, writes nothing. The reconcile is level-triggered: watch events
on the custom resources, their Deployments, Jobs and Pods, and on node readiness queue
it; a periodic resync queues every object again. A failed reconcile is retried with
exponential backoff, which only a new generation of the object or a deleted child cuts
short.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import time
from collections import deque
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
from privatellm.kube.client import ApiError, Kube, new_api_client
from privatellm.render.audit import render_operator_audit_public_key
from privatellm.render.inference_status import NodeView
from privatellm.render.meta import INFERENCE_DEPLOYMENT_LABEL, MANAGED_BY, MANAGED_BY_LABEL

from . import gateway, inference
from .events import ReportedError
from .metrics import QUEUE_DEPTH, RECONCILE_SECONDS, RECONCILES

log = logging.getLogger(__name__)

Key = tuple[str, str]
KIND = "InferenceDeployment"


@dataclass(frozen=True)
class Backoff:
    """How long a failing key waits: `base` doubling per failure up to `cap`, +-`jitter`."""

    base: float = 1.0
    cap: float = 300.0
    jitter: float = 0.1

    def delay(self, failures: int, draw: float) -> float:
        """The wait after the `failures`-th failure in a row; `draw` is uniform in [0, 1)."""
        # The exponent is bounded so that a key failing for days does not overflow a float.
        exponential = self.base * 2.0 ** min(failures - 1, 64)
        return min(self.cap, exponential) * (1 + self.jitter * (2 * draw - 1))


class WorkQueue:
    """Deduplicating queue with per-key retry backoff, like client-go's rate-limited queue.

    A key is queued at most once and never handed out twice at a time. A key whose
    reconcile failed waits out its backoff before it is handed out again. Ordinary
    requests (resyncs, node and status events) do not cut that wait short: the reconcile
    is level-triggered, so the retry catches up on everything they would have. An urgent
    request (the spec changed, a child was deleted) ends it. Success forgets the failures.
    """

    def __init__(
        self,
        backoff: Backoff | None = None,
        clock: Callable[[], float] = time.monotonic,
        draw: Callable[[], float] = random.random,
    ) -> None:
        self._backoff = backoff or Backoff()
        self._clock = clock
        self._draw = draw
        self._ready: deque[Key] = deque()
        self._queued: set[Key] = set()  # the keys in _ready
        self._processing: set[Key] = set()
        # Requested while being processed, and whether urgently.
        self._dirty: dict[Key, bool] = {}
        # Keys backing off, with the clock reading at which each is due again.
        self._due: dict[Key, float] = {}
        self._failures: dict[Key, int] = {}
        self._wakeup = asyncio.Event()

    def add(self, key: Key, urgent: bool = False) -> None:
        """Ask for `key` to be reconciled; during its backoff only an urgent request counts."""
        if key in self._processing:
            self._dirty[key] = self._dirty.get(key, False) or urgent
        elif key in self._due:
            if urgent:
                del self._due[key]
                self._push(key)
        elif key not in self._queued:
            self._push(key)

    async def get(self) -> Key:
        """The next key to reconcile, once one is queued or its backoff is over."""
        while True:
            self._release_due()
            if self._ready:
                key = self._ready.popleft()
                self._queued.discard(key)
                self._processing.add(key)
                return key
            self._wakeup.clear()
            timeout = min(self._due.values()) - self._clock() if self._due else None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), timeout)

    def done(self, key: Key) -> None:
        """`key` was reconciled: forget its failures; run it again if asked meanwhile."""
        self._processing.discard(key)
        self._failures.pop(key, None)
        if self._dirty.pop(key, None) is not None:
            self._push(key)

    def retry_later(self, key: Key) -> float:
        """`key` failed: back it off and return the delay (0 when urgently asked meanwhile)."""
        self._processing.discard(key)
        failures = self._failures.get(key, 0) + 1
        self._failures[key] = failures
        if self._dirty.pop(key, False):
            self._push(key)
            return 0.0
        delay = self._backoff.delay(failures, self._draw())
        self._due[key] = self._clock() + delay
        self._wakeup.set()  # a waiting get() recomputes when to wake
        return delay

    def depth(self) -> int:
        """Keys ready to be handed out now."""
        self._release_due()
        return len(self._ready)

    def _push(self, key: Key) -> None:
        self._ready.append(key)
        self._queued.add(key)
        self._wakeup.set()

    def _release_due(self) -> None:
        now = self._clock()
        for _, key in sorted((due, k) for k, due in self._due.items() if due <= now):
            del self._due[key]
            self._push(key)


class FailureLog:
    """Logs a key's failure when it starts or changes, and its recovery; a retry that
    fails the same way is logged at DEBUG only. Refusals reported by the API server or
    already in the object's status carry no traceback; other errors do."""

    def __init__(self) -> None:
        self._last: dict[tuple[str, Key], str] = {}

    def failed(self, kind: str, key: Key, error: Exception, delay: float) -> None:
        text = str(error)
        repeated = self._last.get((kind, key)) == text
        self._last[(kind, key)] = text
        args = (kind, _key_text(key), text, delay)
        if repeated:
            log.debug("%s %s still failing: %s; retrying in %.1fs", *args)
        elif isinstance(error, ApiError | ReportedError):
            log.warning("%s %s failed: %s; retrying in %.1fs", *args)
        else:
            log.error("%s %s failed: %s; retrying in %.1fs", *args, exc_info=error)

    def succeeded(self, kind: str, key: Key) -> None:
        if self._last.pop((kind, key), None) is not None:
            log.info("%s %s reconciled again", kind, _key_text(key))


def _key_text(key: Key) -> str:
    """namespace/name; a gateway's key is its namespace alone."""
    return "/".join(part for part in key if part)


class Generations:
    """The metadata.generation of each custom resource last seen in a watch event."""

    def __init__(self) -> None:
        self._seen: dict[tuple[str, str, str], int] = {}

    def changed(self, type_: str | None, body: Mapping[str, Any]) -> bool:
        """Whether this event brings a generation not seen before, or the object's deletion.

        Only such a change ends a backoff early: status writes, the operator's own
        among them, leave the generation as it is.
        """
        meta = body["metadata"]
        key = (str(body.get("kind")), str(meta.get("namespace") or ""), str(meta["name"]))
        if type_ == "DELETED":
            self._seen.pop(key, None)
            return True
        generation = int(meta.get("generation") or 0)
        changed = self._seen.get(key) != generation
        self._seen[key] = generation
        return changed


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
    failure_log: FailureLog = field(default_factory=FailureLog)
    generations: Generations = field(default_factory=Generations)
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
    while True:
        key = await queue.get()
        QUEUE_DEPTH.set(runtime.queue.depth() + runtime.gateway_queue.depth())
        started = time.perf_counter()
        try:
            await asyncio.to_thread(reconcile, runtime, key)
        except Exception as error:
            RECONCILES.labels(kind, "error").inc()
            runtime.failure_log.failed(kind, key, error, queue.retry_later(key))
        else:
            RECONCILES.labels(kind, "ok").inc()
            runtime.failure_log.succeeded(kind, key)
            queue.done(key)
        finally:
            RECONCILE_SECONDS.labels(kind).observe(time.perf_counter() - started)


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
    type: str, body: kopf.Body, namespace: str | None, name: str, memo: Any, **kwargs: Any
) -> None:
    runtime = _runtime(memo)
    # kopf passes each index to every handler as a keyword named after its function.
    runtime.node_index = kwargs["node_views"]
    key = (namespace or "", name)
    changed = runtime.generations.changed(type, body)
    runtime.gateway_queue.add((key[0], ""), urgent=changed)
    if type == "DELETED":
        runtime.known.discard(key)
        return
    runtime.known.add(key)
    runtime.queue.add(key, urgent=changed)


@kopf.on.event(GROUP, VERSION, "accesspolicies")
async def access_policy_event(
    type: str | None, body: kopf.Body, namespace: str | None, name: str, memo: Any, **_: Any
) -> None:
    """A policy change re-renders the namespace's gateway configuration, and is recorded."""
    runtime = _runtime(memo)
    runtime.gateway_queue.add((namespace or "", ""), urgent=runtime.generations.changed(type, body))
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
async def data_connector_event(
    type: str | None, body: kopf.Body, namespace: str | None, memo: Any, **_: Any
) -> None:
    """What a connector's items carry and where they may go is in the gateway's configuration."""
    runtime = _runtime(memo)
    runtime.gateway_queue.add((namespace or "", ""), urgent=runtime.generations.changed(type, body))


CHILD_LABELS: dict[str, Any] = {
    MANAGED_BY_LABEL: MANAGED_BY,
    INFERENCE_DEPLOYMENT_LABEL: kopf.PRESENT,
}


@kopf.on.event("apps", "v1", "deployments", labels=CHILD_LABELS)
@kopf.on.event("batch", "v1", "jobs", labels=CHILD_LABELS)
async def child_event(
    type: str | None, namespace: str | None, labels: Mapping[str, str], memo: Any, **_: Any
) -> None:
    """A deleted child is re-created at once, backoff or not; a changed one is only looked at."""
    runtime = _runtime(memo)
    key = (namespace or "", labels[INFERENCE_DEPLOYMENT_LABEL])
    if key in runtime.known:
        runtime.queue.add(key, urgent=type == "DELETED")


@kopf.on.event("", "v1", "pods", labels={INFERENCE_DEPLOYMENT_LABEL: kopf.PRESENT})
async def pod_event(namespace: str | None, labels: Mapping[str, str], memo: Any, **_: Any) -> None:
    """Replicas coming and going change the status; the Deployments replace them."""
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
