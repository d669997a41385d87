"""Which replica serves a request: round-robin over healthy ones, then the fallback model.

Health is passive: a replica that refused a connection or failed with a 5xx is
skipped for a cool-down, so one dead replica costs one retry, not one per
request. When every replica of a model is cooling down, its fallback model's
replicas come next, and the cooling ones are still tried last rather than
failing a request that might succeed.

A route with a `service` takes its replicas from discovery (the Service's ready
endpoints), those in the gateway's own zone first; an empty list means no replica
is ready and the fallback model serves. Its static `endpoints` (the Service's
address) are used only until discovery has listed the namespace once.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from .config import ModelRoute
from .discovery import Replica, ReplicaSource

COOL_DOWN_SECONDS = 5.0


@dataclass(frozen=True, slots=True)
class Target:
    """One attempt: a replica of a model."""

    route: ModelRoute
    url: str


class Router:
    """Orders the replicas to try for a model; shared by every request."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._down_until: dict[str, float] = {}
        self._turn = itertools.count()

    def mark_failed(self, url: str) -> None:
        self._down_until[url] = self._clock() + COOL_DOWN_SECONDS

    def mark_ok(self, url: str) -> None:
        self._down_until.pop(url, None)

    def healthy(self, url: str) -> bool:
        until = self._down_until.get(url)
        return until is None or until <= self._clock()

    def targets(
        self,
        route: ModelRoute,
        routes: Mapping[str, ModelRoute],
        discovered: ReplicaSource | None = None,
        zone: str | None = None,
    ) -> list[Target]:
        """Replicas to try, in order: healthy primary, healthy fallback, then the rest.

        `discovered` gives the ready replicas of routes with a Service; `zone` is
        the gateway's own, whose replicas go first.
        """
        chain = [route]
        fallback = routes.get(route.fallback) if route.fallback else None
        if fallback is not None and fallback is not route:
            chain.append(fallback)
        turn = next(self._turn)
        healthy: list[Target] = []
        cooling: list[Target] = []
        for model in chain:
            for url in replica_order(route_replicas(model, discovered), zone, turn):
                (healthy if self.healthy(url) else cooling).append(Target(model, url))
        return healthy + cooling


def route_replicas(route: ModelRoute, discovered: ReplicaSource | None) -> Sequence[Replica]:
    """The route's replicas: discovered when discovery knows its Service, else static."""
    if route.service and discovered is not None:
        ready = discovered.ready(route.service)
        if ready is not None:
            return ready
    return [Replica(url) for url in route.endpoints]


def replica_order(replicas: Sequence[Replica], zone: str | None, turn: int) -> list[str]:
    """URLs in the order to try: the own zone's, then the others', each group rotated by turn."""
    local = [r.url for r in replicas if zone is not None and r.zone == zone]
    remote = [r.url for r in replicas if zone is None or r.zone != zone]
    return _rotated(local, turn) + _rotated(remote, turn)


def _rotated(urls: list[str], turn: int) -> list[str]:
    if not urls:
        return []
    start = turn % len(urls)
    return urls[start:] + urls[:start]
