"""Each model's demand as this gateway replica sees it, for the operator's autoscaler.

The gateway is the only way to a model, so it knows what the model is asked to do:
requests being served, requests sent and not yet answered, requests held while the
model scales from zero, and recent rates of requests and tokens. The operator reads
these from every gateway replica's peer port (`GET /demand`) and adds them up. A
long poll (`since` and `wait`) answers at once when a model becomes *wanted*: a
request asked for it while it had no ready replica. However many requests do that,
the model becomes wanted once, so its scale-from-zero is one signal.

A model stops being wanted when its Service has a ready replica again. See
docs/autoscaling.md for the endpoint's shape.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import secrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

from aiohttp import web

from .errors import GatewayError

DEMAND_PATH = "/demand"
# Rates are over this window: long enough to smooth bursts, short enough to follow a
# change within a minute.
RATE_WINDOW_SECONDS = 60
# A long poll waits at most this long; the operator asks again.
MAX_WAIT_SECONDS = 30.0


class RateWindow:
    """Amounts counted in one-second buckets over the last `seconds`: a rate that forgets.

    Pure: the caller passes the time. A bucket is reused once its second has left the
    window, so the state is `seconds` integers whatever the traffic.
    """

    def __init__(self, seconds: int = RATE_WINDOW_SECONDS) -> None:
        self.seconds = seconds
        self._second = [-1] * seconds
        self._amount = [0] * seconds

    def add(self, now: float, amount: int = 1) -> None:
        second = math.floor(now)
        slot = second % self.seconds
        if self._second[slot] != second:
            self._second[slot], self._amount[slot] = second, 0
        self._amount[slot] += amount

    def total(self, now: float) -> int:
        """What was added in the window that ends at `now` (its second included)."""
        second = math.floor(now)
        oldest = second - self.seconds
        return sum(
            amount
            for at, amount in zip(self._second, self._amount, strict=True)
            if oldest < at <= second
        )

    def rate(self, now: float) -> float:
        """The window's total per second."""
        return self.total(now) / self.seconds


@dataclass
class ModelDemand:
    """One model's figures; the gateway changes the counts as requests pass."""

    # Being served: from the first attempt at a replica to the last byte of the answer.
    in_flight: int = 0
    # Sent to a replica, no answer (response headers) yet: the model's queue.
    waiting: int = 0
    # Held while the model has no ready replica.
    held: int = 0
    wanted_since: float | None = None
    last_request: float | None = None
    requests_total: int = 0
    prompt_tokens_total: int = 0
    completion_tokens_total: int = 0
    requests: RateWindow = field(default_factory=RateWindow)
    prompt_tokens: RateWindow = field(default_factory=RateWindow)
    completion_tokens: RateWindow = field(default_factory=RateWindow)

    def figures(self, now: float) -> dict[str, Any]:
        """The model's entry in the demand document."""
        return {
            "inFlight": self.in_flight,
            "waiting": self.waiting,
            "held": self.held,
            "wanted": self.wanted_since is not None,
            "wantedSince": self.wanted_since,
            "lastRequest": self.last_request,
            "requestsPerSecond": self.requests.rate(now),
            "promptTokensPerSecond": self.prompt_tokens.rate(now),
            "completionTokensPerSecond": self.completion_tokens.rate(now),
            "requestsTotal": self.requests_total,
            "promptTokensTotal": self.prompt_tokens_total,
            "completionTokensTotal": self.completion_tokens_total,
        }


class Demand:
    """Every model's demand, and a sequence number that moves when a model becomes wanted.

    `seq` counts, from 0 at the process's start, the times a model became wanted;
    `instance` names the process, so a caller can tell a restarted replica's
    sequence from the one it knew.
    """

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self.instance = secrets.token_hex(8)
        self.seq = 0
        self._models: dict[str, ModelDemand] = {}
        self._changed = asyncio.Event()
        self._stopped = False

    def model(self, name: str) -> ModelDemand:
        """The figures of `name`, made on first use."""
        found = self._models.get(name)
        if found is None:
            found = self._models[name] = ModelDemand()
        return found

    def request(self, name: str) -> None:
        """A request for `name` was admitted (allowed, to be served or held)."""
        now = self.clock()
        demand = self.model(name)
        demand.last_request = now
        demand.requests_total += 1
        demand.requests.add(now)

    def tokens(self, name: str, prompt: int, completion: int) -> None:
        """A request for `name` used these tokens."""
        now = self.clock()
        demand = self.model(name)
        demand.prompt_tokens_total += prompt
        demand.completion_tokens_total += completion
        demand.prompt_tokens.add(now, prompt)
        demand.completion_tokens.add(now, completion)

    def want(self, name: str) -> bool:
        """A request asked for `name` while it had no ready replica; True when that made it
        wanted (and woke the long polls), False when it was wanted already."""
        demand = self.model(name)
        if demand.wanted_since is not None:
            return False
        demand.wanted_since = self.clock()
        self.seq += 1
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()
        return True

    def wanted(self, name: str) -> bool:
        demand = self._models.get(name)
        return demand is not None and demand.wanted_since is not None

    def satisfied(self, name: str) -> None:
        """`name` has a ready replica: it is no longer wanted."""
        demand = self._models.get(name)
        if demand is not None:
            demand.wanted_since = None

    def stop(self) -> None:
        """The process is stopping: long polls answer now, and new ones do not wait."""
        self._stopped = True
        self._changed.set()

    async def wait_change(self, since: int, instance: str | None, seconds: float) -> None:
        """Return when `seq` is not `since` (at once if it already is not), or after `seconds`."""
        if self.seq != since or (instance is not None and instance != self.instance):
            return
        if self._stopped or seconds <= 0:
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._changed.wait()

    def document(self, models: Iterable[str]) -> dict[str, Any]:
        """What `GET /demand` answers: the figures of `models` (those configured now)."""
        now = self.clock()
        return {
            "instance": self.instance,
            "seq": self.seq,
            "time": now,
            "windowSeconds": RATE_WINDOW_SECONDS,
            "models": {name: self.model(name).figures(now) for name in sorted(models)},
        }


@dataclass(frozen=True)
class DemandQuery:
    """A `GET /demand` call's parameters."""

    since: int | None = None
    instance: str | None = None
    wait: float = 0.0


def parse_demand_query(query_string: str) -> DemandQuery:
    """The parameters of a `GET /demand` call; GatewayError 400 naming the one that is wrong."""
    try:
        pairs = parse_qsl(query_string, keep_blank_values=True, strict_parsing=bool(query_string))
    except ValueError:
        raise _invalid(None, "the query string is malformed") from None
    given: dict[str, str] = {}
    for name, value in pairs:
        if name not in ("since", "instance", "wait"):
            raise _invalid(name, f"unknown parameter {name!r}: use since, instance and wait")
        if name in given:
            raise _invalid(name, f"{name} is given twice")
        given[name] = value
    since = instance = None
    wait = 0.0
    if "since" in given:
        if not given["since"].isascii() or not given["since"].isdigit():
            raise _invalid("since", "since must be a sequence number from an earlier answer")
        since = int(given["since"])
    if "instance" in given:
        instance = given["instance"]
        if not (1 <= len(instance) <= 64 and instance.isascii() and instance.isalnum()):
            raise _invalid("instance", "instance must be the instance of an earlier answer")
    if "wait" in given:
        try:
            wait = float(given["wait"])
        except ValueError:
            raise _invalid("wait", "wait must be a number of seconds") from None
        if not 0 <= wait < math.inf:
            raise _invalid("wait", "wait must be a number of seconds, 0 or more")
        if since is None:
            raise _invalid("wait", "wait needs since: the seq of the answer you have")
    return DemandQuery(since, instance, min(wait, MAX_WAIT_SECONDS))


def _invalid(param: str | None, message: str) -> GatewayError:
    return GatewayError(400, "invalid_query", message, param)


def demand_handler(
    demand: Demand, models: Callable[[], Iterable[str]]
) -> Callable[[web.Request], Any]:
    """The `GET /demand` handler (authenticated by the peer listener around it)."""

    async def serve(request: web.Request) -> web.Response:
        query = parse_demand_query(request.query_string)
        if query.since is not None:
            await demand.wait_change(query.since, query.instance, query.wait)
        return web.json_response(demand.document(models()))

    return serve
