"""Which replica serves a request: round-robin over healthy ones, then the fallback model.

Health is passive: a replica that refused a connection or failed with a 5xx is
skipped for a cool-down, so one dead replica costs one retry, not one per
request. When every replica of a model is cooling down, its fallback model's
replicas come next, and the cooling ones are still tried last rather than
failing a request that might succeed.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from .config import ModelRoute

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

    def targets(self, route: ModelRoute, routes: Mapping[str, ModelRoute]) -> list[Target]:
        """Replicas to try, in order: healthy primary, healthy fallback, then the rest."""
        chain = [route]
        fallback = routes.get(route.fallback) if route.fallback else None
        if fallback is not None and fallback is not route:
            chain.append(fallback)
        turn = next(self._turn)
        healthy: list[Target] = []
        cooling: list[Target] = []
        for model in chain:
            urls = model.endpoints
            if not urls:
                continue
            start = turn % len(urls)
            for url in urls[start:] + urls[:start]:
                (healthy if self.healthy(url) else cooling).append(Target(model, url))
        return healthy + cooling
