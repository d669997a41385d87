"""What a controller declares, as controller-runtime's builder does with For, Owns and Watches.

A controller module ends with one `Controller`: its own kind (`For`), the children its
reconcile writes (`Owns`), the other kinds its reconcile reads (`Watches`), and the
reconcile itself. Each declaration says how a watch event becomes keys and which events
are urgent (end a key's backoff at once). The runtime (`runtime.py`) gives every
controller its own queue, workers, metrics and retries; nothing here talks to kopf.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Awaitable, Callable, Collection, Hashable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from privatellm.audit import AuditLog
from privatellm.keys.transit import VaultClient
from privatellm.kube.client import Kind, Kube
from privatellm.render.inference_status import NodeView

from .autoscaling import Autoscaler

# (namespace, name); a controller keyed by namespace uses (namespace, "").
Key = tuple[str, str]
# Which objects of a kind: a label and its value, or None when any value will do.
Labels = Mapping[str, str | None]


@dataclass(frozen=True)
class WatchEvent:
    """One watch event, as a controller's declarations see it."""

    # ADDED, MODIFIED or DELETED; None for an object listed when the watch starts.
    type: str | None
    body: Mapping[str, Any]
    # A new object, a new metadata.generation (its spec changed, its deletion began),
    # or its deletion: what status writes, the operator's own among them, never bring.
    new_generation: bool

    @property
    def namespace(self) -> str:
        return str(self.body["metadata"].get("namespace") or "")

    @property
    def name(self) -> str:
        return str(self.body["metadata"]["name"])

    @property
    def labels(self) -> Mapping[str, str]:
        labels: Mapping[str, str] = self.body["metadata"].get("labels") or {}
        return labels


class KnownKeys(Collection[Key]):
    """The keys of a controller's objects that exist: the ones a resync queues again.

    Several objects may share a key (a namespace's gateway serves all its models); the
    key is known until the last of them is deleted.
    """

    def __init__(self) -> None:
        self._key_of: dict[tuple[str, str], Key] = {}
        self._objects: Counter[Key] = Counter()

    def observe(self, event: WatchEvent, key: Key) -> None:
        """The object of `event` exists with `key`; after a DELETED event, it is gone."""
        ref = (event.namespace, event.name)
        previous = self._key_of.pop(ref, None)
        if previous is not None:
            self._objects[previous] -= 1
            if not self._objects[previous]:
                del self._objects[previous]
        if event.type != "DELETED":
            self._key_of[ref] = key
            self._objects[key] += 1

    def __contains__(self, key: object) -> bool:
        return key in self._objects

    def __iter__(self) -> Iterator[Key]:
        return iter(sorted(self._objects))

    def __len__(self) -> int:
        return len(self._objects)


@dataclass(frozen=True)
class Context:
    """What reconciles and watch hooks work with; the runtime makes one at startup."""

    kube: Kube
    # None when the operator runs without Vault: keys are then not provisioned.
    vault: VaultClient | None
    # The operator's own audit log of control actions, when it has one.
    audit: AuditLog | None
    # kopf's in-memory index of the nodes, kept current by its watch: no reconcile lists
    # the nodes from the API server.
    node_index: Mapping[str, Iterable[NodeView]]
    # Sets the replica count of models with spec.autoscaling; None: their baseline.
    autoscaler: Autoscaler | None = None
    # The operator's own namespace (POD_NAMESPACE, set by the chart); None outside a
    # cluster. NetworkPolicies admit its Pods to what the autoscaler reads.
    operator_namespace: str | None = None

    def nodes(self) -> list[NodeView]:
        return [view for views in self.node_index.values() for view in views]


Urgency = Callable[[WatchEvent], bool]
Hook = Callable[[Context, WatchEvent], Awaitable[None]]


def never(event: WatchEvent) -> bool:
    """No event of this watch ends a backoff: the retry catches up on it anyway."""
    return False


def always(event: WatchEvent) -> bool:
    """Every event ends a backoff: for a watch whose signature lets only what acts through."""
    return True


def on_deletion(event: WatchEvent) -> bool:
    """A deleted child is re-created at once; a changed one is only looked at."""
    return event.type == "DELETED"


def on_new_generation(event: WatchEvent) -> bool:
    """A change that may fix the failure: a new spec, a new object, a deletion."""
    return event.new_generation


def object_key(event: WatchEvent) -> Key:
    """The object's own namespace and name."""
    return (event.namespace, event.name)


def namespace_key(event: WatchEvent) -> Key:
    """The object's namespace, for a controller keyed by namespace."""
    return (event.namespace, "")


def namespace_keys(event: WatchEvent, known: Collection[Key]) -> list[Key]:
    """`namespace_key` as a `Watches` mapper."""
    return [namespace_key(event)]


def every_key(event: WatchEvent, known: Collection[Key]) -> Collection[Key]:
    """Every known key: for a change that may concern any of them."""
    return known


def owner_label(label: str) -> Callable[[WatchEvent], Key]:
    """The owner named by the child's `label`, in the child's namespace."""

    def owner(event: WatchEvent) -> Key:
        return (event.namespace, event.labels[label])

    return owner


Request = tuple[Key, bool]


@dataclass(frozen=True)
class For:
    """The controller's own kind: every event queues the object's key, urgently when it
    brings a new generation. A key is known while an object with that key exists."""

    kind: Kind
    key: Callable[[WatchEvent], Key] = object_key
    labels: Labels = field(default_factory=dict)

    def requests(self, event: WatchEvent, known: Collection[Key]) -> list[Request]:
        return [(self.key(event), on_new_generation(event))]


@dataclass(frozen=True)
class Owns:
    """Children the reconcile writes: an event queues the owner's key while it is known,
    so the children of a deleted owner, going away with it, queue nothing."""

    kind: Kind
    owner: Callable[[WatchEvent], Key]
    labels: Labels = field(default_factory=dict)
    urgent: Urgency = on_deletion

    def requests(self, event: WatchEvent, known: Collection[Key]) -> list[Request]:
        key = self.owner(event)
        return [(key, self.urgent(event))] if key in known else []


@dataclass(frozen=True)
class Watches:
    """Another kind the reconcile reads: an event queues the keys `keys` maps it to."""

    kind: Kind
    keys: Callable[[WatchEvent, Collection[Key]], Iterable[Key]]
    labels: Labels = field(default_factory=dict)
    urgent: Urgency = never
    # What of an object the reconcile reads; events that leave it as it was queue nothing.
    signature: Callable[[Mapping[str, Any]], Hashable] | None = None
    # Runs in the watch handler once the keys are queued; kopf awaits it before it
    # hands over the next event, so what the hook writes is written in event order.
    hook: Hook | None = None

    def requests(self, event: WatchEvent, known: Collection[Key]) -> list[Request]:
        urgent = self.urgent(event)
        return [(key, urgent) for key in self.keys(event, known)]


Declaration = For | Owns | Watches


@dataclass(frozen=True)
class Controller:
    """One control loop: what it watches, and its reconcile of one key."""

    # In logs, and the `kind` label of the reconcile and queue metrics.
    name: str
    for_: For
    # Runs in a thread; raising retries the key with backoff (see runtime.WorkQueue).
    reconcile: Callable[[Context, Key], None]
    owns: tuple[Owns, ...] = ()
    watches: tuple[Watches, ...] = ()
    # Keys reconciled at the same time; None: as many as `privatellm operator --workers`.
    workers: int | None = None
    # Its keys are queued when a namespace's gateways report new demand (urgently when a
    # model at zero was asked for): the autoscaler decides in its reconcile.
    follows_demand: bool = False

    def declarations(self) -> list[Declaration]:
        return [self.for_, *self.owns, *self.watches]
