"""Per-subject usage by calendar month: what the CostBudgets divide their spend by.

Every request the gateway allowed and sent to a model adds one request and its
prompt and completion tokens to the counters of (subject, policy, model) in the
month the request started, once for each time zone of the configuration's
`usageTimeZones` (a CostBudget's month begins at its own zone's midnight).

Each replica keeps its tally in `usage.json` in its audit directory, on a volume
of its own, so a restart loses at most the last second. The file carries a random
tally id made with it: for one id the counters only grow, which lets the operator
keep each replica's latest answer per id and add them up, whatever restarts or
rescheduling happened. A file that cannot be read is moved aside and a new tally
(a new id) begins, so nothing unreadable is ever added to what was counted.
The operator reads the tally on the peer port, `GET /usage` (see peers.py).

Beside the requests, the tally counts each model's replica-busy time: per (zone, month,
model), the milliseconds summed over the model's replicas during which each had at least
one request of this gateway in flight. Against the GPU time the model's replicas ran,
it gives the share of it that sat idle. A busy stretch is added up lazily, when a
replica's in-flight count goes 0 to 1 or back, and whenever the tally is read or saved,
into the month of that moment: a long stretch is counted before it ends, and lands in
the months it spans to within one read.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import math
import os
import re
import secrets
import threading
import time
import zoneinfo
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web

from privatellm.durable import fsync_directory, write_atomically

USAGE_PATH = "/usage"
USAGE_FILE = "usage.json"
# A year back and the month running: enough for a budget's month-on-month report.
KEEP_MONTHS = 13
SAVE_INTERVAL_SECONDS = 1.0
FORMAT_VERSION = 1

Key = tuple[str, str, str, str, str]  # (zone, month, subject, policy, model)
BusyKey = tuple[str, str, str]  # (zone, month, model)
Replica = tuple[str, str]  # (model, base URL)

_MONTH = re.compile(r"^[0-9]{4}-(0[1-9]|1[0-2])$")
_TALLY_ID = re.compile(r"^[0-9a-f]{32}$")
_NAMES = ("zone", "month", "subject", "policy", "model")
_COUNTERS = ("requests", "promptTokens", "completionTokens")
_BUSY_NAMES = ("zone", "month", "model")
_BUSY_COUNTER = "replicaMilliseconds"

log = logging.getLogger(__name__)


class CorruptTallyError(ValueError):
    """The usage file is not a tally this gateway wrote."""


def month_in(moment: float, zone: datetime.tzinfo) -> str:
    """The calendar month ("YYYY-MM") of `zone` that `moment` falls in."""
    local = datetime.datetime.fromtimestamp(moment, zone)
    return f"{local.year:04d}-{local.month:02d}"


def _month_number(month: str) -> int:
    return int(month[:4]) * 12 + int(month[5:7]) - 1


def new_tally_id() -> str:
    return secrets.token_hex(16)


class UsageTally:
    """The counters, the zones they are bucketed by, and their file (None: memory only).

    Counted on the event loop; written from a thread, one write at a time, never an
    older state over a newer one.
    """

    def __init__(
        self,
        path: Path | None,
        zones: Iterable[str] = ("UTC",),
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = path
        self._clock = clock
        self._counts: dict[Key, list[int]] = {}
        self._busy: dict[BusyKey, int] = {}
        # Replicas with requests in flight: how many, and the millisecond (of the clock,
        # whole so that the sums telescope and lose nothing) counted up to.
        self._in_flight: dict[Replica, list[int]] = {}
        self._zones: list[tuple[str, datetime.tzinfo]] = []
        self._warned: set[str] = set()
        # Changes made, and the change the file holds (under _write_lock).
        self._version = 0
        self._saved = 0
        self._write_lock = threading.Lock()
        self._failing = False
        self.tally_id = self._load() if path is not None else new_tally_id()
        self.set_zones(zones)

    # --- counting --------------------------------------------------------

    def set_zones(self, names: Iterable[str]) -> None:
        """Bucket from now on by `names`; a zone this runtime cannot load is skipped
        (warned about once). Buckets of zones dropped stay until they age out."""
        self._accrue()  # what was busy so far goes to the zones it was busy under
        zones: list[tuple[str, datetime.tzinfo]] = []
        for name in dict.fromkeys(names):
            try:
                zones.append((name, zoneinfo.ZoneInfo(name)))
            except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError) as error:
                if name not in self._warned:
                    self._warned.add(name)
                    log.warning(
                        "usage tally: time zone %r cannot be loaded, skipped: %s", name, error
                    )
        self._zones = zones

    @property
    def zones(self) -> list[str]:
        return [name for name, _ in self._zones]

    def record(
        self,
        subject: str,
        policy: str,
        model: str,
        when: float,
        prompt_tokens: int = 0,
        completion_tokens: int = 0,
    ) -> None:
        """Count one request and its tokens in `when`'s month of every zone."""
        for name, zone in self._zones:
            month = month_in(when, zone)
            key = (name, month, subject, policy, model)
            counters = self._counts.get(key)
            if counters is None:
                counters = self._counts[key] = [0, 0, 0]
                self._prune(name)
            counters[0] += 1
            counters[1] += max(0, prompt_tokens)
            counters[2] += max(0, completion_tokens)
        self._version += 1

    def _prune(self, zone: str) -> None:
        """Keep the KEEP_MONTHS most recent months of `zone`."""
        _prune(self._counts, zone)

    def replica_busy(self, model: str, url: str) -> None:
        """A request is sent to the replica at `url` of `model` (the model it serves)."""
        replica = (model, url)
        state = self._in_flight.get(replica)
        if state is None:
            self._in_flight[replica] = [1, self._now_ms()]
        else:
            state[0] += 1

    def replica_done(self, model: str, url: str) -> None:
        """The request `replica_busy` announced is over: answered, failed or given up."""
        replica = (model, url)
        state = self._in_flight.get(replica)
        if state is None:
            return
        if state[0] == 1:
            self._accrue_replica(model, state, self._clock())
            del self._in_flight[replica]
        else:
            state[0] -= 1

    def _now_ms(self) -> int:
        return math.floor(self._clock() * 1000)

    def _accrue(self) -> None:
        """Count the busy replicas' time up to now."""
        if not self._in_flight:
            return
        now = self._clock()
        for (model, _url), state in self._in_flight.items():
            self._accrue_replica(model, state, now)

    def _accrue_replica(self, model: str, state: list[int], now: float) -> None:
        """Add the milliseconds since `state`'s mark to `model` in `now`'s month of every
        zone, and mark `now`. A clock set back adds nothing and is counted on from."""
        now_ms = math.floor(now * 1000)
        elapsed, state[1] = now_ms - state[1], now_ms
        if elapsed <= 0:
            return
        for name, zone in self._zones:
            key = (name, month_in(now, zone), model)
            if key in self._busy:
                self._busy[key] += elapsed
            else:
                self._busy[key] = elapsed
                _prune(self._busy, name)
        self._version += 1

    def rows(self) -> list[dict[str, Any]]:
        """The counters, sorted by (zone, month, subject, policy, model)."""
        return [
            {**dict(zip(_NAMES, key, strict=True)), **dict(zip(_COUNTERS, counts, strict=True))}
            for key, counts in sorted(self._counts.items())
        ]

    def busy_rows(self) -> list[dict[str, Any]]:
        """The replica-busy milliseconds up to now, sorted by (zone, month, model)."""
        self._accrue()
        return [
            {**dict(zip(_BUSY_NAMES, key, strict=True)), _BUSY_COUNTER: milliseconds}
            for key, milliseconds in sorted(self._busy.items())
        ]

    def document(self) -> dict[str, Any]:
        """The answer of `GET /usage`."""
        busy = self.busy_rows()
        return {"tally": self.tally_id, "usage": self.rows(), "busy": busy}

    # --- the file --------------------------------------------------------

    @property
    def changed(self) -> bool:
        """Whether the file is behind the counters."""
        return self.path is not None and self._version != self._saved

    def save(self) -> None:
        """Write the tally now when it changed (at shutdown: after `run` was cancelled)."""
        self._accrue()
        if self.changed:
            self._write(*self._snapshot())

    async def run(self, interval: float = SAVE_INTERVAL_SECONDS) -> None:
        """Until cancelled: write the tally at most once per `interval` while it changes."""
        while True:
            await asyncio.sleep(interval)
            self._accrue()
            if self.changed:
                await asyncio.to_thread(self._write, *self._snapshot())

    def _snapshot(self) -> tuple[bytes, int]:
        document = {"version": FORMAT_VERSION, **self.document()}
        return orjson.dumps(document), self._version

    def _write(self, data: bytes, version: int) -> None:
        assert self.path is not None
        with self._write_lock:
            if version <= self._saved:
                return  # a newer state is there already
            try:
                write_atomically(self.path, data)
            except OSError as error:
                # Kept in memory and tried again next interval; logged once per outage.
                if not self._failing:
                    self._failing = True
                    log.error("usage tally: cannot write %s: %s", self.path, error)
                return
            if self._failing:
                self._failing = False
                log.info("usage tally: %s written again", self.path)
            self._saved = version

    def _load(self) -> str:
        """Read the file into the counters; its tally id, or a new one (a new file)."""
        assert self.path is not None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            tally_id, counts, busy = parse_tally(self.path.read_bytes())
        except FileNotFoundError:
            self._version = 1  # the new id goes to disk with the first write
            return new_tally_id()
        except (OSError, CorruptTallyError) as error:
            aside = self._move_aside()
            log.error(
                "usage tally: %s is unreadable (%s); moved to %s, a new tally begins",
                self.path,
                error,
                aside,
            )
            self._version = 1
            return new_tally_id()
        self._counts, self._busy = dict(counts), dict(busy)
        for zone in {key[0] for key in counts}:
            _prune(self._counts, zone)
        for zone in {key[0] for key in busy}:
            _prune(self._busy, zone)
        if len(self._counts) != len(counts) or len(self._busy) != len(busy):
            self._version = 1
        return tally_id

    def _move_aside(self) -> Path | None:
        assert self.path is not None
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(self._clock()))
        aside = self.path.with_name(f"{self.path.name}.corrupt-{stamp}")
        number = 0
        while aside.exists():
            number += 1
            aside = self.path.with_name(f"{self.path.name}.corrupt-{stamp}.{number}")
        try:
            os.replace(self.path, aside)
            fsync_directory(self.path.parent)
        except OSError as error:
            # The next write replaces it: still nothing of it is counted.
            log.error("usage tally: cannot move %s aside: %s", self.path, error)
            return None
        return aside


def _prune(buckets: dict[Any, Any], zone: str) -> None:
    """Keep the KEEP_MONTHS most recent months of `zone` in `buckets` (keyed (zone, month, ...))."""
    months = {key[1] for key in buckets if key[0] == zone}
    if not months:
        return
    oldest = _month_number(max(months)) - (KEEP_MONTHS - 1)
    for key in [k for k in buckets if k[0] == zone and _month_number(k[1]) < oldest]:
        del buckets[key]


def parse_tally(data: bytes) -> tuple[str, dict[Key, list[int]], dict[BusyKey, int]]:
    """The tally id, counters and replica-busy milliseconds a usage file holds (none busy
    in a file from before they were counted); CorruptTallyError when it is not one."""
    try:
        document = orjson.loads(data)
    except orjson.JSONDecodeError as error:
        raise CorruptTallyError(f"not JSON: {error}") from None
    if not isinstance(document, dict) or document.get("version") != FORMAT_VERSION:
        raise CorruptTallyError("not a usage tally of a known version")
    tally_id, rows = document.get("tally"), document.get("usage")
    if not isinstance(tally_id, str) or not _TALLY_ID.match(tally_id):
        raise CorruptTallyError("no valid tally id")
    if not isinstance(rows, list):
        raise CorruptTallyError("no usage list")
    counts: dict[Key, list[int]] = {}
    for row in rows:
        if not isinstance(row, dict) or set(row) != {*_NAMES, *_COUNTERS}:
            raise CorruptTallyError(f"a malformed row: {row!r:.200}")
        names = [row[name] for name in _NAMES]
        values = [row[counter] for counter in _COUNTERS]
        if not all(isinstance(n, str) for n in names) or not _MONTH.match(row["month"]):
            raise CorruptTallyError(f"a malformed row: {row!r:.200}")
        if not all(type(v) is int and v >= 0 for v in values):
            raise CorruptTallyError(f"a row with invalid counters: {row!r:.200}")
        key: Key = (names[0], names[1], names[2], names[3], names[4])
        if key in counts:
            raise CorruptTallyError(f"a row twice: {row!r:.200}")
        counts[key] = values
    return tally_id, counts, _parse_busy(document.get("busy", []))


def _parse_busy(rows: Any) -> dict[BusyKey, int]:
    if not isinstance(rows, list):
        raise CorruptTallyError("the busy section is not a list")
    busy: dict[BusyKey, int] = {}
    for row in rows:
        if not isinstance(row, dict) or set(row) != {*_BUSY_NAMES, _BUSY_COUNTER}:
            raise CorruptTallyError(f"a malformed busy row: {row!r:.200}")
        zone, month, model = (row[name] for name in _BUSY_NAMES)
        milliseconds = row[_BUSY_COUNTER]
        if not all(isinstance(n, str) for n in (zone, month, model)) or not _MONTH.match(month):
            raise CorruptTallyError(f"a malformed busy row: {row!r:.200}")
        if type(milliseconds) is not int or milliseconds < 0:
            raise CorruptTallyError(f"a busy row with an invalid counter: {row!r:.200}")
        if (zone, month, model) in busy:
            raise CorruptTallyError(f"a busy row twice: {row!r:.200}")
        busy[(zone, month, model)] = milliseconds
    return busy


def usage_handler(tally: UsageTally) -> Callable[[web.Request], Awaitable[web.Response]]:
    """`GET /usage` (behind the peer port's token check): the tally id and its counters."""

    async def usage(_request: web.Request) -> web.Response:
        return web.Response(body=orjson.dumps(tally.document()), content_type="application/json")

    return usage
