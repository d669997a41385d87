"""Per-subject quotas, counted together by every replica of a namespace's gateway.

Each replica counts what it admitted in fixed minute and day windows, and asks
the other replicas for their own counts once per `intervalSeconds`. A request is
refused when the replica's count plus the others' last known counts reach the
limit, so a subject gets the policy's limit from the gateway as a whole, not
from each replica. The others' counts are at most one interval old: together the
replicas can admit a little more than the limit, by what the others admitted in
that interval.

Replicas find each other through the EndpointSlices of the gateway's peer Service
(or a static list), and talk over TLS on a port of their own, which is not the API
door: these calls are not client requests and are not audited. A replica proves
it is one with a token derived from the namespace's hash key, which only the
gateway's configuration Secret (and the operator, which writes it) holds. The
same port serves the operator each model's demand (see peers.py and demand.py).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any

import aiohttp
import orjson
from aiohttp import web

from privatellm.api.access import Quotas

from .config import BudgetThrottle, QuotaSharing
from .discovery import ReplicaSource
from .peers import peer_app

COUNTS_PATH = "/quota-counts"
# A replica that did not answer for this many intervals no longer counts.
STALE_INTERVALS = 5

log = logging.getLogger(__name__)

Window = tuple[str, str, int]  # (subject key, "req" | "tok" | "day", window number)


class QuotaTracker:
    """Per-subject request rate and token quotas, in fixed windows.

    Fixed minute and day windows keep the state to two counters per subject and
    make "how much is left" easy to explain; a burst at a window edge can reach
    twice the per-minute rate, which is acceptable for cost control.
    """

    def __init__(self) -> None:
        self._windows: dict[Window, int] = {}
        self._latest: dict[str, int] = {}
        # The other replicas' own counts, by replica.
        self._others: dict[str, dict[Window, int]] = {}

    def check(self, key: str, quotas: Quotas, now: float) -> str | None:
        """The reason a new request would exceed a quota, or None; counts the request."""
        minute, day = int(now // 60), int(now // 86400)
        limits = (
            (quotas.requests_per_minute, "req", minute, "rate_limited:requests_per_minute"),
            (quotas.tokens_per_minute, "tok", minute, "quota_exceeded:tokens_per_minute"),
            (quotas.tokens_per_day, "day", day, "quota_exceeded:tokens_per_day"),
        )
        for limit, kind, window, reason in limits:
            if limit is not None and self.count((key, kind, window)) >= limit:
                return reason
        if quotas.requests_per_minute is not None:
            self._add(key, "req", minute, 1)
        return None

    def record_tokens(self, key: str, quotas: Quotas, tokens: int, now: float) -> None:
        """Charge a finished request's tokens to the subject."""
        if quotas.tokens_per_minute is not None:
            self._add(key, "tok", int(now // 60), tokens)
        if quotas.tokens_per_day is not None:
            self._add(key, "day", int(now // 86400), tokens)

    def own_counts(self) -> list[tuple[str, str, int, int]]:
        """What this replica counted in its open windows: (key, kind, window, count)."""
        return [(key, kind, window, count) for (key, kind, window), count in self._windows.items()]

    def set_others(self, replica: str, counts: Iterable[Sequence[Any]]) -> None:
        """Replace what `replica` counted with its latest answer."""
        self._others[replica] = {
            (str(key), str(kind), int(window)): int(count) for key, kind, window, count in counts
        }

    def keep_others(self, replicas: Iterable[str]) -> None:
        """Forget the counts of every replica not in `replicas`."""
        keep = set(replicas)
        for gone in [r for r in self._others if r not in keep]:
            del self._others[gone]

    def count(self, window: Window) -> int:
        """What this replica and the others counted in `window`."""
        count = self._windows.get(window, 0)
        for counts in self._others.values():
            count += counts.get(window, 0)
        return count

    def _add(self, key: str, kind: str, window: int, amount: int) -> None:
        if window > self._latest.get(kind, -1):
            # A new window opened: forget every older window of the same kind.
            self._latest[kind] = window
            for slot in [s for s in self._windows if s[1] == kind and s[2] < window]:
                del self._windows[slot]
        slot = (key, kind, window)
        self._windows[slot] = self._windows.get(slot, 0) + amount


def throttled(quotas: Quotas, throttle: BudgetThrottle) -> Quotas:
    """The quotas a non-priority subject keeps while a CostBudget throttles the model.

    Each limit the policy sets drops to `quotaPercent` of itself (never below 1, which
    would refuse everything); a policy without a request rate gets the throttle's, so
    that a throttle also slows subjects the policy left unlimited.
    """

    def lowered(limit: int | None) -> int | None:
        return None if limit is None else max(1, limit * throttle.quota_percent // 100)

    return quotas.model_copy(
        update={
            "requests_per_minute": lowered(quotas.requests_per_minute)
            or throttle.requests_per_minute,
            "tokens_per_minute": lowered(quotas.tokens_per_minute),
            "tokens_per_day": lowered(quotas.tokens_per_day),
        }
    )


def limit_of(reason: str) -> str:
    """The limit a refusal of `check` names: "requests_per_minute" for
    "rate_limited:requests_per_minute"."""
    return reason.partition(":")[2] or reason


def peer_token(hash_key: bytes) -> str:
    """The token replicas show each other: derived from the hash key they all hold."""
    return hmac.new(hash_key, b"privatellm quota peers", hashlib.sha256).hexdigest()


def counts_handler(tracker: QuotaTracker) -> Callable[[web.Request], Awaitable[web.Response]]:
    """`GET /quota-counts`: this replica's own counts (behind the peer port's token check)."""

    async def counts(_request: web.Request) -> web.Response:
        return web.Response(
            body=orjson.dumps({"counts": tracker.own_counts()}),
            content_type="application/json",
        )

    return counts


def counts_app(tracker: QuotaTracker, token: str) -> web.Application:
    """A peer listener serving only this replica's own counts, to holders of the token."""
    return peer_app(token, {COUNTS_PATH: counts_handler(tracker)})


class QuotaPeers:
    """Fetches the other replicas' counts once per interval into the tracker."""

    def __init__(
        self,
        settings: QuotaSharing,
        tracker: QuotaTracker,
        token: str,
        discovered: ReplicaSource | None,
        own_url: str | None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.tracker = tracker
        self._headers = {"Authorization": f"Bearer {token}"}
        self.discovered = discovered
        self._own_url = own_url
        self._clock = clock
        self._answered: dict[str, float] = {}
        self._failing: set[str] = set()

    def replicas(self) -> list[str]:
        """Base URLs of the other replicas."""
        if self.settings.service is None or self.discovered is None:
            return list(self.settings.peers)
        ready = self.discovered.ready(self.settings.service) or ()
        return sorted({replica.url for replica in ready} - {self._own_url})

    async def run(self, session: aiohttp.ClientSession) -> None:
        """Until cancelled: fetch every other replica's counts, then wait an interval."""
        while True:
            await self.sync_once(session)
            await asyncio.sleep(self.settings.interval_seconds)

    async def sync_once(self, session: aiohttp.ClientSession) -> None:
        replicas = self.replicas()
        await asyncio.gather(*(self._fetch(session, url) for url in replicas))
        now = self._clock()
        fresh = now - STALE_INTERVALS * self.settings.interval_seconds
        self.tracker.keep_others(url for url in replicas if self._answered.get(url, -1) >= fresh)

    async def _fetch(self, session: aiohttp.ClientSession, url: str) -> None:
        timeout = aiohttp.ClientTimeout(total=self.settings.interval_seconds)
        options: dict[str, Any] = {"headers": self._headers, "timeout": timeout}
        if self.settings.server_name and url.startswith("https:"):
            options["server_hostname"] = self.settings.server_name
        try:
            async with session.get(url + COUNTS_PATH, **options) as response:
                if response.status != 200:
                    self._failed(url, f"answered {response.status}")
                    return
                counts = orjson.loads(await response.read())["counts"]
                self.tracker.set_others(url, counts)
        except (aiohttp.ClientError, TimeoutError, ValueError, KeyError, TypeError) as error:
            self._failed(url, str(error) or type(error).__name__)
            return
        self._answered[url] = self._clock()
        if url in self._failing:
            self._failing.discard(url)
            log.info("quota peer %s answers again", url)

    def _failed(self, url: str, why: str) -> None:
        # Once per outage, not once per interval.
        if url not in self._failing:
            self._failing.add(url)
            log.warning("quota peer %s: %s", url, why)
