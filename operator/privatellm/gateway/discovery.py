"""The ready replicas of each model's Service, from the namespace's EndpointSlices.

The gateway lists and then watches `discovery.k8s.io/v1` EndpointSlices in its
own namespace, as its own ServiceAccount (a Role grants it get/list/watch there).
A Service's replicas are its ready endpoints, addressed directly, so the router
can prefer a zone, skip a dead Pod, and tell "no ready replica" (go to the
fallback model) from "the Service is slow".

The watch resumes from the last resourceVersion it saw, lists again when the API
server says that version is gone (410), and backs off on any other error. It never
raises: while the API server is unreachable the last view stays in force.
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import quote

import aiohttp

from .config import DiscoverySettings

SERVICE_NAME_LABEL = "kubernetes.io/service-name"
# The model Services' port is named "https"; 8000 is vLLM's port when it is not.
REPLICA_PORT_NAME = "https"
DEFAULT_REPLICA_PORT = 8000
# The API server ends a watch after this long; the gateway then resumes it.
WATCH_SECONDS = 290
FIRST_RETRY_SECONDS = 0.5
MAX_RETRY_SECONDS = 30.0
# One watch event is one EndpointSlice (up to 100 endpoints): far below this.
MAX_EVENT_BYTES = 4 * 1024 * 1024

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True, order=True)
class Replica:
    """A ready endpoint of a Service: its base URL and the zone it runs in."""

    url: str
    zone: str | None = None


ServiceReplicas = dict[str, tuple[Replica, ...]]


class ReplicaChanges:
    """Wakes whoever waits for the ready replicas of a Service to change.

    Requests held for a model at zero wait here, through one waiter per model, for
    its Service (or its fallback's) to get a ready replica.
    """

    def __init__(self) -> None:
        self._waiting: dict[str, set[asyncio.Future[None]]] = {}

    async def wait(self, services: Iterable[str]) -> None:
        """Return at the next change of the ready replicas of any of `services`."""
        future = asyncio.get_running_loop().create_future()
        names = set(services)
        for service in names:
            self._waiting.setdefault(service, set()).add(future)
        try:
            await future
        finally:
            for service in names:
                waiters = self._waiting.get(service)
                if waiters is not None:
                    waiters.discard(future)
                    if not waiters:
                        del self._waiting[service]

    def notify(self, services: Iterable[str]) -> None:
        """The ready replicas of `services` changed."""
        for service in services:
            for future in self._waiting.pop(service, ()):
                if not future.done():
                    future.set_result(None)

    def notify_all(self) -> None:
        """Anything may have changed (a fresh list, a new configuration): every waiter looks."""
        self.notify(list(self._waiting))


class ReplicaSource(Protocol):
    """Where the router learns a Service's ready replicas, and when they change."""

    @property
    def changes(self) -> ReplicaChanges:
        """Notified whenever a Service's ready replicas change."""
        ...

    def ready(self, service: str) -> Sequence[Replica] | None:
        """The Service's ready replicas; None while nothing is known yet."""
        ...


def replica_url(address: str, port: int) -> str:
    """`https://address:port`, with an IPv6 address in brackets."""
    host = f"[{address}]" if ":" in address else address
    return f"https://{host}:{port}"


def _replica_port(endpoint_slice: Mapping[str, Any]) -> int:
    for port in endpoint_slice.get("ports") or ():
        if port.get("name") == REPLICA_PORT_NAME and isinstance(port.get("port"), int):
            return int(port["port"])
    return DEFAULT_REPLICA_PORT


def _is_ready(endpoint: Mapping[str, Any]) -> bool:
    conditions = endpoint.get("conditions") or {}
    # The API documents an absent `ready` as ready; a terminating endpoint takes
    # no new requests even when it still reports ready (publishNotReadyAddresses).
    return conditions.get("ready") is not False and conditions.get("terminating") is not True


def ready_replicas(slices: Iterable[Mapping[str, Any]]) -> ServiceReplicas:
    """Per Service, its ready endpoints over all its slices, deduplicated and sorted.

    A Service whose slices hold no ready endpoint maps to an empty tuple; a Service
    without any slice is absent. Both mean it has no ready replica.
    """
    found: dict[str, set[Replica]] = {}
    for endpoint_slice in slices:
        labels = (endpoint_slice.get("metadata") or {}).get("labels") or {}
        service = labels.get(SERVICE_NAME_LABEL)
        if not service:
            continue
        replicas = found.setdefault(service, set())
        port = _replica_port(endpoint_slice)
        for endpoint in endpoint_slice.get("endpoints") or ():
            if not _is_ready(endpoint):
                continue
            zone = endpoint.get("zone")
            # Every address of an endpoint is the same Pod: one is enough.
            addresses = endpoint.get("addresses") or ()
            if addresses:
                replicas.add(Replica(replica_url(addresses[0], port), zone))
    return {service: tuple(sorted(replicas)) for service, replicas in found.items()}


def retry_delay(failures: int) -> float:
    """Seconds to wait after `failures` consecutive failures: doubling, capped."""
    return min(MAX_RETRY_SECONDS, FIRST_RETRY_SECONDS * 2.0 ** max(0, failures - 1))


class DiscoveryError(Exception):
    """The API server refused a list or watch, or ended a watch with an error."""


class ResourceVersionGoneError(Exception):
    """The API server no longer has the resourceVersion the watch would resume from."""


class EndpointWatcher:
    """Keeps the ready replicas of every Service of one namespace, from a watch."""

    def __init__(self, settings: DiscoverySettings, namespace: str) -> None:
        self._settings = settings
        base = settings.api_server.rstrip("/")
        segment = quote(namespace, safe="")
        self._url = f"{base}/apis/discovery.k8s.io/v1/namespaces/{segment}/endpointslices"
        self._slices: dict[str, Mapping[str, Any]] = {}
        self._view: ServiceReplicas = {}
        self._resource_version = ""
        self._synced = asyncio.Event()
        self._changes = ReplicaChanges()

    @property
    def changes(self) -> ReplicaChanges:
        return self._changes

    @property
    def synced(self) -> bool:
        """True once the slices were listed; the view is then used even when it is stale."""
        return self._synced.is_set()

    async def wait_synced(self) -> None:
        await self._synced.wait()

    def ready(self, service: str) -> Sequence[Replica] | None:
        if not self.synced:
            return None
        return self._view.get(service, ())

    def replace(self, slices: Iterable[Mapping[str, Any]]) -> None:
        """Take a full list of slices as the new state (what a list returns)."""
        self._slices = {s["metadata"]["name"]: s for s in slices}
        self._view = ready_replicas(self._slices.values())
        self._synced.set()
        self._changes.notify_all()

    def apply_event(self, event: Mapping[str, Any]) -> None:
        """Apply one watch event; ResourceVersionGoneError when the watch must start over."""
        kind, obj = event.get("type"), event.get("object") or {}
        if kind == "ERROR":
            if obj.get("code") == 410:
                raise ResourceVersionGoneError(obj.get("message", "resourceVersion gone"))
            raise DiscoveryError(f"watch error: {obj.get('message', obj)}")
        version = (obj.get("metadata") or {}).get("resourceVersion")
        if version:
            self._resource_version = version
        name = (obj.get("metadata") or {}).get("name")
        if kind in ("ADDED", "MODIFIED") and name:
            self._slices[name] = obj
        elif kind == "DELETED" and name:
            self._slices.pop(name, None)
        else:
            return
        before, after = self._view, ready_replicas(self._slices.values())
        self._view = after
        changed = [s for s in before.keys() | after.keys() if before.get(s) != after.get(s)]
        self._changes.notify(changed)

    async def run(self) -> None:
        """List, then watch, until cancelled; errors are logged and retried, never raised."""
        failures = 0
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=5, sock_read=WATCH_SECONDS + 30)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            while True:
                try:
                    if not self._resource_version:
                        await self._list(session)
                    await self._watch(session)
                    failures = 0
                except ResourceVersionGoneError:
                    # Events were missed: only a fresh list tells what is there now.
                    log.info("EndpointSlice watch expired; listing again")
                    self._resource_version = ""
                    failures = 0
                except asyncio.CancelledError:
                    raise
                except Exception as error:
                    failures += 1
                    delay = retry_delay(failures)
                    log.warning("EndpointSlice watch failed (%s); retrying in %.1fs", error, delay)
                    await asyncio.sleep(delay)

    def _ssl(self) -> ssl.SSLContext | bool:
        # Read at each connection too: a CA file that is missing now may appear later.
        ca_file = self._settings.ca_file
        return ssl.create_default_context(cafile=ca_file) if ca_file else True

    def _headers(self) -> dict[str, str]:
        # Read at each connection: the kubelet rotates the token.
        token = Path(self._settings.token_file).read_text().strip()
        return {"Authorization": f"Bearer {token}", "Accept": "application/json"}

    async def _list(self, session: aiohttp.ClientSession) -> None:
        items: list[Mapping[str, Any]] = []
        page = version = ""
        while True:
            params = {"labelSelector": SERVICE_NAME_LABEL, "limit": "500"}
            if page:
                params["continue"] = page
            async with session.get(
                self._url, params=params, headers=self._headers(), ssl=self._ssl()
            ) as response:
                if response.status == 410:
                    # The continue token expired mid-list: start the list over.
                    raise ResourceVersionGoneError("list continuation expired")
                if response.status != 200:
                    raise DiscoveryError(f"listing EndpointSlices: HTTP {response.status}")
                body = await response.json()
            items.extend(body.get("items") or ())
            metadata = body.get("metadata") or {}
            # Every page of one list is the same snapshot, at the same resourceVersion.
            version = metadata.get("resourceVersion") or ""
            page = metadata.get("continue") or ""
            if not page:
                break
        self.replace(items)
        self._resource_version = version

    async def _watch(self, session: aiohttp.ClientSession) -> None:
        params = {
            "labelSelector": SERVICE_NAME_LABEL,
            "watch": "true",
            "allowWatchBookmarks": "true",
            "resourceVersion": self._resource_version,
            "timeoutSeconds": str(WATCH_SECONDS),
        }
        async with session.get(
            self._url, params=params, headers=self._headers(), ssl=self._ssl()
        ) as response:
            if response.status == 410:
                raise ResourceVersionGoneError("watch resourceVersion gone")
            if response.status != 200:
                raise DiscoveryError(f"watching EndpointSlices: HTTP {response.status}")
            buffer = b""
            async for chunk in response.content.iter_any():
                buffer += chunk
                if len(buffer) > MAX_EVENT_BYTES:
                    raise DiscoveryError("watch event too large")
                *lines, buffer = buffer.split(b"\n")
                for line in lines:
                    if line.strip():
                        self.apply_event(json.loads(line))
