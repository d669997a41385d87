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
"""

from __future__ import annotations

import asyncio
import datetime
import logging
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

_MONTH = re.compile(r"^[0-9]{4}-(0[1-9]|1[0-2])$")
_TALLY_ID = re.compile(r"^[0-9a-f]{32}$")
_NAMES = ("zone", "month", "subject", "policy", "model")
_COUNTERS = ("requests", "promptTokens", "completionTokens")

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
        months = {key[1] for key in self._counts if key[0] == zone}
        oldest = _month_number(max(months)) - (KEEP_MONTHS - 1)
        for key in [k for k in self._counts if k[0] == zone and _month_number(k[1]) < oldest]:
            del self._counts[key]

    def rows(self) -> list[dict[str, Any]]:
        """The counters, sorted by (zone, month, subject, policy, model)."""
        return [
            {**dict(zip(_NAMES, key, strict=True)), **dict(zip(_COUNTERS, counts, strict=True))}
            for key, counts in sorted(self._counts.items())
        ]

    def document(self) -> dict[str, Any]:
        """The answer of `GET /usage`."""
        return {"tally": self.tally_id, "usage": self.rows()}

    # --- the file --------------------------------------------------------

    @property
    def changed(self) -> bool:
        """Whether the file is behind the counters."""
        return self.path is not None and self._version != self._saved

    def save(self) -> None:
        """Write the tally now when it changed (at shutdown: after `run` was cancelled)."""
        if self.changed:
            self._write(*self._snapshot())

    async def run(self, interval: float = SAVE_INTERVAL_SECONDS) -> None:
        """Until cancelled: write the tally at most once per `interval` while it changes."""
        while True:
            await asyncio.sleep(interval)
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
            tally_id, counts = parse_tally(self.path.read_bytes())
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
        self._counts = counts
        for zone in {key[0] for key in counts}:
            self._prune(zone)
        if len(self._counts) != len(counts):
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


def parse_tally(data: bytes) -> tuple[str, dict[Key, list[int]]]:
    """The tally id and counters a usage file holds; CorruptTallyError when it is not one."""
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
    return tally_id, counts


def usage_handler(tally: UsageTally) -> Callable[[web.Request], Awaitable[web.Response]]:
    """`GET /usage` (behind the peer port's token check): the tally id and its counters."""

    async def usage(_request: web.Request) -> web.Response:
        return web.Response(body=orjson.dumps(tally.document()), content_type="application/json")

    return usage
