"""kopf wiring: each controller's watch events feed its own work queue; its workers
reconcile one key at a time.

Every controller declares what it watches (`builder.py`); this module turns the
declarations into kopf event handlers and gives each controller a queue, workers,
metrics and retries. Only kopf's event-watching handlers are used. They keep no state
on the objects (no progress annotations, no finalizers), so a restarted operator
re-reads the world and, when nothing changed, writes nothing. The reconcile is
level-triggered: watch events queue keys, and a periodic resync queues every known key
of every controller again. A failed reconcile is retried with exponential backoff,
which only an urgent event (a new generation of the object, a deleted child) cuts
short.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import ssl
import time
from collections import deque
from collections.abc import Awaitable, Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kopf
import prometheus_client

from privatellm.audit import AuditLog, Signer
from privatellm.keys.transit import KubernetesAuthVaultClient, VaultClient, vault_client_from_env
from privatellm.kube.client import ApiError, Kube, new_api_client
from privatellm.render.audit import render_operator_audit_public_key
from privatellm.render.inference_status import NodeView

from . import budget, connector, gateway, inference, ledger
from .autoscaling import Autoscaler
from .builder import Context, Controller, Declaration, For, Key, KnownKeys, Watches, WatchEvent
from .demand import DemandCollector, access_from_secrets, replicas_from_slices
from .engines import ClientCertificates, EngineScraper, engine_replicas, namespace_ca
from .events import ReportedError
from .metrics import QUEUE_DEPTH, RECONCILE_SECONDS, RECONCILES
from .usage import UsageCollector

log = logging.getLogger(__name__)

# Set by the chart to the namespace the operator's Pod runs in.
OPERATOR_NAMESPACE_ENV = "POD_NAMESPACE"
# Every controller of the operator. Adding one is a module that declares it, and a line here.
CONTROLLERS: list[Controller] = [
    inference.CONTROLLER,
    gateway.CONTROLLER,
    connector.CONTROLLER,
    budget.CONTROLLER,
    ledger.CONTROLLER,
]


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
    """The version (uid and metadata.generation) of each object last seen in a watch event."""

    def __init__(self) -> None:
        self._seen: dict[tuple[str, str, str], tuple[str, int]] = {}

    def changed(self, type_: str | None, body: Mapping[str, Any]) -> bool:
        """Whether this event brings a version not seen before, or the object's deletion.

        Only such a change ends a backoff early: status writes, the operator's own
        among them, leave the generation as it is. A new uid is a new object, even
        when its deletion and re-creation under the same name were not seen.
        """
        meta = body["metadata"]
        key = (str(body.get("kind")), str(meta.get("namespace") or ""), str(meta["name"]))
        if type_ == "DELETED":
            self._seen.pop(key, None)
            return True
        version = (str(meta.get("uid") or ""), int(meta.get("generation") or 0))
        changed = self._seen.get(key) != version
        self._seen[key] = version
        return changed


# Stands for "no signature recorded", which no signature a declaration makes can equal.
_GONE = object()
# kopf passes each index to every handler as a keyword named after its id.
NODE_INDEX = "node_views"


class ControllerLoop:
    """One controller's queue and the keys of its objects that exist."""

    def __init__(self, controller: Controller) -> None:
        self.controller = controller
        self.queue = WorkQueue()
        self.known = KnownKeys()

    def request(self, key: Key, urgent: bool = False) -> None:
        self.queue.add(key, urgent)
        self.report_depth()

    def report_depth(self) -> None:
        QUEUE_DEPTH.labels(self.controller.name).set(self.queue.depth())


class Watch:
    """One declaration of one controller, with what its events are compared against."""

    def __init__(self, loop: ControllerLoop, declaration: Declaration) -> None:
        self.loop = loop
        self.declaration = declaration
        # kopf's handler id: named in its logs when the handler fails.
        self.id = f"{loop.controller.name}/{type(declaration).__name__}/{declaration.kind.plural}"
        self._generations = Generations()
        self._signatures: dict[tuple[str, str], Hashable] = {}

    def receive(self, type_: str | None, body: Mapping[str, Any]) -> WatchEvent | None:
        """Queue the keys the event maps to; the event, or None when this watch ignores it."""
        event = WatchEvent(type_, body, self._generations.changed(type_, body))
        declaration = self.declaration
        if isinstance(declaration, Watches) and not self._signature_changed(event, declaration):
            return None
        if isinstance(declaration, For):
            self.loop.known.observe(event, declaration.key(event))
        for key, urgent in declaration.requests(event, self.loop.known):
            self.loop.request(key, urgent)
        return event

    def _signature_changed(self, event: WatchEvent, declaration: Watches) -> bool:
        if declaration.signature is None:
            return True
        ref = (event.namespace, event.name)
        if event.type == "DELETED":
            return self._signatures.pop(ref, _GONE) is not _GONE
        signature = declaration.signature(event.body)
        if self._signatures.get(ref, _GONE) == signature:
            return False
        self._signatures[ref] = signature
        return True


async def node_views(name: str, body: kopf.Body, **_: Any) -> dict[str, NodeView]:
    """What reconciles need of each node; kopf fills every index before any handler runs."""
    return {name: NodeView.from_node(body)}


class Runtime:
    """Every controller's queue, workers and watches; `registry()` hands them to kopf."""

    def __init__(self, controllers: Sequence[Controller]) -> None:
        self.loops = [ControllerLoop(controller) for controller in controllers]
        self.watches = [
            Watch(loop, declaration)
            for loop in self.loops
            for declaration in loop.controller.declarations()
        ]
        names = [loop.controller.name for loop in self.loops] + [w.id for w in self.watches]
        if duplicates := sorted({name for name in names if names.count(name) > 1}):
            raise ValueError(f"declared more than once: {', '.join(duplicates)}")
        self.failure_log = FailureLog()
        self.context: Context | None = None
        self.tasks: list[asyncio.Task[None]] = []

    def registry(self) -> kopf.OperatorRegistry:
        """kopf's handlers: login, startup, cleanup, the node index and one per declared watch.

        Each watch has a handler of its own, so kopf calls every controller's handler
        for an event on a kind that several controllers watch.
        """
        registry = kopf.OperatorRegistry()
        # kopf's default registry falls back to this login; a registry of one's own must
        # name it. kopf then connects as the reconciles' client does (in-cluster, else
        # KUBECONFIG).
        kopf.on.login(id="login", registry=registry)(kopf.login_via_client)
        kopf.on.startup(id="start", registry=registry)(self.start)
        kopf.on.cleanup(id="stop", registry=registry)(self.stop)
        kopf.index("", "v1", "nodes", id=NODE_INDEX, registry=registry)(node_views)
        for watch in self.watches:
            kind, declared = watch.declaration.kind, watch.declaration.labels
            group, _, version = kind.api_version.rpartition("/")
            labels = {k: kopf.PRESENT if v is None else v for k, v in declared.items()}
            kopf.on.event(
                group,
                version,
                kind.plural,
                id=watch.id,
                labels=labels or None,
                registry=registry,
            )(self._handler(watch))
        return registry

    def _handler(self, watch: Watch) -> Callable[..., Awaitable[None]]:
        async def on_event(type: str | None, body: kopf.Body, **_: Any) -> None:
            await self.handle(watch, type, body)

        return on_event

    async def handle(self, watch: Watch, type_: str | None, body: Mapping[str, Any]) -> None:
        """One watch event for one declaration: queue its keys, then run its hook."""
        event = watch.receive(type_, body)
        declaration = watch.declaration
        if event is not None and isinstance(declaration, Watches) and declaration.hook:
            await declaration.hook(self._context(), event)

    def _context(self) -> Context:
        if self.context is None:
            raise RuntimeError("the operator has not started")  # kopf runs startup first
        return self.context

    def demand_changed(self, namespace: str, wake: bool) -> None:
        """A gateway of `namespace` reported: its models' autoscalers look again."""
        for loop in self.loops:
            if loop.controller.follows_demand:
                for key in loop.known:
                    if key[0] == namespace:
                        loop.request(key, urgent=wake)

    def budget_namespaces(self) -> set[str]:
        """The namespaces with a CostBudget: those whose gateways' usage is collected."""
        loops = [loop for loop in self.loops if loop.controller is budget.CONTROLLER]
        return {key[0] for loop in loops for key in loop.known}

    def request_all(self) -> None:
        for loop in self.loops:
            for key in loop.known:
                loop.request(key)

    async def start(self, settings: kopf.OperatorSettings, memo: Any, **kwargs: Any) -> None:
        # The operator records its own Events on transitions; kopf's would be noise.
        settings.posting.enabled = False
        settings.watching.server_timeout = 300
        options: Mapping[str, Any] = memo.get("options", {})
        kube = Kube(new_api_client())
        vault = _vault_from_env(os.environ)
        operator_namespace = os.environ.get(OPERATOR_NAMESPACE_ENV) or None
        audit = None
        if options.get("audit_dir"):
            signer = Signer.from_file(Path(options["audit_signing_key"]))
            audit = AuditLog(Path(options["audit_dir"]), signer)
            # Published next to the operator, so auditors can verify its log.
            if operator_namespace:
                public_key = render_operator_audit_public_key(
                    operator_namespace, signer.public_pem().decode()
                )
                await asyncio.to_thread(kube.apply, public_key)
        # kopf fills the index in place for the operator's life; no reconcile runs before
        # a watch event, and none before the index holds every node.
        engines = EngineScraper(
            lambda namespace, model: engine_replicas(kube, namespace, model),
            ClientCertificates(lambda namespace: namespace_ca(kube, namespace)).access,
        )
        collector = DemandCollector(
            self.demand_changed,
            lambda namespace: replicas_from_slices(kube, namespace),
            lambda namespace: access_from_secrets(kube, namespace),
            engines=engines,
        )
        self.tasks.append(asyncio.create_task(collector.run()))
        usage = UsageCollector(
            kube,
            self.budget_namespaces,
            lambda namespace: replicas_from_slices(kube, namespace),
            lambda namespace: access_from_secrets(kube, namespace),
        )
        self.tasks.append(asyncio.create_task(usage.run()))
        self.context = Context(
            kube,
            vault,
            audit,
            kwargs[NODE_INDEX],
            Autoscaler(collector),
            operator_namespace,
        )
        if options.get("metrics_port"):
            prometheus_client.start_http_server(int(options["metrics_port"]))
        workers = int(options.get("workers", 4))
        for loop in self.loops:
            loop.report_depth()
            for _ in range(loop.controller.workers or workers):
                self.tasks.append(asyncio.create_task(self._work(loop)))
        resync_seconds = float(options.get("resync_seconds", 60))
        self.tasks.append(asyncio.create_task(self._resync(resync_seconds)))

    async def stop(self, **_: Any) -> None:
        for task in self.tasks:
            task.cancel()
        if self.context is not None and self.context.audit is not None:
            self.context.audit.close()

    async def _work(self, loop: ControllerLoop) -> None:
        context, queue, name = self._context(), loop.queue, loop.controller.name
        while True:
            key = await queue.get()
            loop.report_depth()
            started = time.perf_counter()
            try:
                await asyncio.to_thread(loop.controller.reconcile, context, key)
            except Exception as error:
                RECONCILES.labels(name, "error").inc()
                self.failure_log.failed(name, key, error, queue.retry_later(key))
            else:
                RECONCILES.labels(name, "ok").inc()
                self.failure_log.succeeded(name, key)
                queue.done(key)
            finally:
                RECONCILE_SECONDS.labels(name).observe(time.perf_counter() - started)

    async def _resync(self, seconds: float) -> None:
        while True:
            await asyncio.sleep(seconds)
            self.request_all()


def operator_vault(environ: Mapping[str, str]) -> VaultClient | None:
    """The operator's Vault client (`vault_client_from_env`), logging in at the chart's
    Kubernetes-auth mount and trusting only the chart's CA for Vault when one is named."""
    vault = vault_client_from_env(environ)
    if not isinstance(vault, KubernetesAuthVaultClient):
        # A static token is for development, against a Vault the system's CAs trust.
        return vault
    ca_file = environ.get(gateway.VAULT_CA_FILE_ENV)
    return KubernetesAuthVaultClient(
        vault.addr,
        vault.role,
        vault.jwt_file,
        mount=environ.get(gateway.VAULT_AUTH_MOUNT_ENV) or vault.mount,
        ssl_context=ssl.create_default_context(cafile=ca_file) if ca_file else None,
    )


def check_settings(environ: Mapping[str, str]) -> None:
    """Raise ValueError (or OSError for an unreadable CA) when a setting in `environ` is wrong."""
    gateway.gateway_settings_from_env(environ)
    operator_vault(environ)


def _vault_from_env(environ: Mapping[str, str]) -> VaultClient | None:
    vault = operator_vault(environ)
    if vault is None:
        log.warning("no Vault configured (BAO_ADDR/VAULT_ADDR): Transit keys are not provisioned")
    return vault


def operator_registry() -> kopf.OperatorRegistry:
    """The handlers `privatellm operator` runs kopf with."""
    return Runtime(CONTROLLERS).registry()
