"""The usage ledger: what each subject and AccessPolicy asked of each model, per month
(chargeback.py shares a model's GPU spend by it).

Pure. Each gateway replica keeps a durable tally (its id changes only when the replica's
volume is lost) and serves it as `GET /usage`: cumulative counters per time zone, month,
subject, policy and model, which never decrease for one tally. The operator keeps every
tally's latest rows of each month in the namespace's ConfigMap of that month,
`usage_configmap(month)`, one data key per tally, so the counters outlive the replica
that counted them. One ConfigMap per month keeps each under the 1 MiB an object may hold
while the gateway keeps 13 months (docs/cost.md).
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

# Followed by "-YYYY-MM": one ConfigMap per namespace and month (usage_configmap).
USAGE_CONFIGMAP_PREFIX = "privatellm-usage-ledger"
# An object may hold 1 MiB: what is left is for the metadata (managedFields included).
MAX_LEDGER_BYTES = 900 * 1024
# A tally id is a data key of the ConfigMap: hex keeps it a valid one.
TALLY_PATTERN = re.compile(r"[0-9a-fA-F]{1,128}")
MONTH_LABEL = re.compile(r"\d{4}-(0[1-9]|1[0-2])")


def usage_configmap(month: str) -> str:
    """The name of a namespace's usage ledger of `month` (YYYY-MM); ValueError otherwise."""
    if not MONTH_LABEL.fullmatch(month):
        raise ValueError(f"month {month!r} is not YYYY-MM")
    return f"{USAGE_CONFIGMAP_PREFIX}-{month}"


@dataclass(frozen=True)
class UsageRow:
    """One subject's use of one model under one AccessPolicy in a month of a time zone."""

    zone: str
    month: str
    subject: str
    policy: str
    model: str
    requests: int
    prompt_tokens: int
    completion_tokens: int

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    @property
    def key(self) -> tuple[str, str, str, str, str]:
        """What the counters are counted by."""
        return (self.zone, self.month, self.subject, self.policy, self.model)


@dataclass(frozen=True)
class BusyRow:
    """How long a model's replicas had requests in flight in a month of a time zone, as
    one gateway replica saw them: the sum over replicas, in milliseconds."""

    zone: str
    month: str
    model: str
    replica_milliseconds: int

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.zone, self.month, self.model)


@dataclass(frozen=True)
class UsageAnswer:
    """One tally's counters, as one replica's `GET /usage` answered them (or as the
    ledger of one month keeps them: that month's rows only)."""

    tally: str
    rows: tuple[UsageRow, ...]
    busy: tuple[BusyRow, ...] = ()

    @property
    def requests(self) -> int:
        return sum(row.requests for row in self.rows)

    @property
    def tokens(self) -> int:
        return sum(row.tokens for row in self.rows)

    @property
    def months(self) -> set[str]:
        return {row.month for row in self.rows} | {row.month for row in self.busy}

    @property
    def busy_milliseconds(self) -> int:
        return sum(row.replica_milliseconds for row in self.busy)

    def of_month(self, month: str) -> UsageAnswer:
        """The rows of `month` (YYYY-MM), in whatever zone it is that month."""
        return UsageAnswer(
            self.tally,
            tuple(row for row in self.rows if row.month == month),
            tuple(row for row in self.busy if row.month == month),
        )


_TEXT_FIELDS = ("zone", "month", "subject", "policy", "model")
# A request the gateway could not attribute to a subject or policy is still counted.
_NAMED_FIELDS = ("zone", "month", "model")
_COUNTERS = {
    "requests": "requests",
    "promptTokens": "prompt_tokens",
    "completionTokens": "completion_tokens",
}
# The stored form of a row: an array, not an object, so that names are not repeated in
# every row (half the bytes); the month is said once per tally.
STORED_COLUMNS = ("zone", "subject", "policy", "model", *_COUNTERS)


def _row(where: str, item: Any) -> UsageRow:
    if not isinstance(item, dict):
        raise ValueError(f"{where} is not an object")
    values: dict[str, Any] = {}
    for name in _TEXT_FIELDS:
        text = item.get(name)
        if not isinstance(text, str):
            raise ValueError(f"{where}.{name} is not a string")
        if not text and name in _NAMED_FIELDS:
            raise ValueError(f"{where}.{name} is empty")
        values[name] = text
    if not MONTH_LABEL.fullmatch(values["month"]):
        raise ValueError(f"{where}.month {values['month']!r} is not YYYY-MM")
    for name, attribute in _COUNTERS.items():
        count = item.get(name)
        # JSON true is a Python int; a counter it is not.
        if isinstance(count, bool) or not isinstance(count, int):
            raise ValueError(f"{where}.{name} is not a whole number")
        if count < 0:
            raise ValueError(f"{where}.{name} is negative ({count})")
        values[attribute] = count
    return UsageRow(**values)


def _busy_row(where: str, item: Any) -> BusyRow:
    if not isinstance(item, dict):
        raise ValueError(f"{where} is not an object")
    texts = {name: item.get(name) for name in ("zone", "month", "model")}
    for name, text in texts.items():
        if not isinstance(text, str) or not text:
            raise ValueError(f"{where}.{name} is not a non-empty string")
    if not MONTH_LABEL.fullmatch(str(texts["month"])):
        raise ValueError(f"{where}.month {texts['month']!r} is not YYYY-MM")
    count = item.get("replicaMilliseconds")
    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
        raise ValueError(f"{where}.replicaMilliseconds is not a whole number >= 0")
    return BusyRow(str(texts["zone"]), str(texts["month"]), str(texts["model"]), count)


def _busy(items: Any, where: str) -> tuple[BusyRow, ...]:
    """The busy rows of an answer or entry; absent in one from before they were counted."""
    if items is None:
        return ()
    if not isinstance(items, list):
        raise ValueError(f"{where} is not a list")
    rows = tuple(_busy_row(f"{where}[{i}]", item) for i, item in enumerate(items))
    if len({row.key for row in rows}) != len(rows):
        raise ValueError(f"{where} counts a (zone, month, model) more than once")
    return rows


def _each_once(rows: tuple[UsageRow, ...], where: str) -> None:
    seen: set[tuple[str, ...]] = set()
    for row in rows:
        if row.key in seen:
            raise ValueError(f"{where} counts {row.key} more than once")
        seen.add(row.key)


def _tally(body: Mapping[str, Any]) -> str:
    tally = body.get("tally")
    if not isinstance(tally, str) or not TALLY_PATTERN.fullmatch(tally):
        raise ValueError(f"tally {tally!r} is not a hex id")
    return tally


def parse_answer(body: Any) -> UsageAnswer:
    """One `GET /usage` answer; ValueError naming what is wrong when it is not one.

    Every counter is a whole number >= 0 and each (zone, month, subject, policy, model)
    appears once: an answer that breaks either is refused whole, never half-counted.
    """
    if not isinstance(body, dict):
        raise ValueError("the answer is not a JSON object")
    tally = _tally(body)
    items = body.get("usage")
    if not isinstance(items, list):
        raise ValueError("usage is not a list")
    rows = tuple(_row(f"usage[{index}]", item) for index, item in enumerate(items))
    _each_once(rows, "usage")
    return UsageAnswer(tally, rows, _busy(body.get("busy"), "busy"))


def answer_months(answers: Iterable[UsageAnswer]) -> list[str]:
    """The months (YYYY-MM) that `answers` count anything in, in order."""
    return sorted({month for answer in answers for month in answer.months})


def dump_entry(answer: UsageAnswer, month: str) -> str:
    """A tally's rows of `month` as a data value of the month's ledger: compact JSON,
    `{"tally", "month", "rows"}`, each row an array in STORED_COLUMNS order, rows in a
    stable order. ValueError for a row of another month."""
    if answer.months - {month}:
        raise ValueError(f"tally {answer.tally} has rows outside {month}")
    rows = [
        [
            row.zone,
            row.subject,
            row.policy,
            row.model,
            row.requests,
            row.prompt_tokens,
            row.completion_tokens,
        ]
        for row in sorted(answer.rows, key=lambda r: r.key)
    ]
    entry: dict[str, Any] = {"tally": answer.tally, "month": month, "rows": rows}
    if answer.busy:
        busy = sorted(answer.busy, key=lambda r: r.key)
        entry["busy"] = [[r.zone, r.model, r.replica_milliseconds] for r in busy]
    return json.dumps(entry, separators=(",", ":"), ensure_ascii=False)


def parse_entry(text: str) -> tuple[str, UsageAnswer]:
    """The month and the rows of a data value `dump_entry` wrote; ValueError naming what
    is wrong when it is not one."""
    body = json.loads(text)
    if not isinstance(body, dict):
        raise ValueError("the entry is not a JSON object")
    tally = _tally(body)
    month = body.get("month")
    if not isinstance(month, str) or not MONTH_LABEL.fullmatch(month):
        raise ValueError(f"month {month!r} is not YYYY-MM")
    items = body.get("rows")
    if not isinstance(items, list):
        raise ValueError("rows is not a list")
    rows = []
    for index, item in enumerate(items):
        where = f"rows[{index}]"
        if not isinstance(item, list) or len(item) != len(STORED_COLUMNS):
            raise ValueError(f"{where} is not an array of {len(STORED_COLUMNS)}")
        rows.append(_row(where, {"month": month, **dict(zip(STORED_COLUMNS, item, strict=True))}))
    _each_once(tuple(rows), "rows")
    busy = body.get("busy")
    if isinstance(busy, list):
        columns = ("zone", "model", "replicaMilliseconds")
        if not all(isinstance(item, list) and len(item) == len(columns) for item in busy):
            raise ValueError("busy is not a list of arrays of 3")
        busy = [{"month": month, **dict(zip(columns, item, strict=True))} for item in busy]
    return month, UsageAnswer(tally, tuple(rows), _busy(busy, "busy"))


def _newer(answer: UsageAnswer, month: str, stored: str) -> bool:
    """Whether `answer` (rows of `month`) counts more than the stored copy of its tally.

    A tally's counters never decrease, so neither does their sum over one month: the copy
    with more requests (then more tokens) is the later one. A stored copy that does not
    parse, or is not of this tally and month, is replaced by any answer, which holds the
    tally's whole month anyway.
    """
    try:
        known_month, known = parse_entry(stored)
    except ValueError:
        return True
    if (known_month, known.tally) != (month, answer.tally):
        return True
    later = (answer.requests, answer.tokens, answer.busy_milliseconds)
    return later > (known.requests, known.tokens, known.busy_milliseconds)


def merge(
    month: str, stored: Mapping[str, str] | None, answers: Iterable[UsageAnswer]
) -> dict[str, str]:
    """The data of the ledger of `month` after taking in the rows of that month of
    `answers`: for each tally, the copy that counts more.

    A stale answer (a replica read before another's write landed) never replaces a newer
    copy, a new tally is added, and a tally nobody answers for (its replica is gone, or
    did not answer this time) keeps its last copy: what it counted still counts. An
    answer with nothing in `month` changes nothing, so each month is merged on its own.
    """
    merged = dict(stored or {})
    for answer in answers:
        mine = answer.of_month(month)
        if not mine.rows and not mine.busy:
            continue
        known = merged.get(answer.tally)
        if known is None or _newer(mine, month, known):
            merged[answer.tally] = dump_entry(mine, month)
    return dict(sorted(merged.items()))


def ledger_bytes(data: Mapping[str, str]) -> int:
    """What a ledger's data weighs towards the 1 MiB of a ConfigMap: its keys and values,
    in UTF-8."""
    return sum(len(key.encode()) + len(value.encode()) for key, value in data.items())


def tallies(data: Mapping[str, str] | None) -> list[UsageAnswer]:
    """The tallies of a ledger's data, each checked once. ValueError when an entry is not
    one or not under its own tally."""
    found = []
    for tally, text in sorted((data or {}).items()):
        try:
            _, answer = parse_entry(text)
        except ValueError as error:
            raise ValueError(f"tally {tally}: {error}") from None
        if answer.tally != tally:
            raise ValueError(f"tally {tally} holds the rows of tally {answer.tally}")
        found.append(answer)
    return found


def usage_rows(answers: Iterable[UsageAnswer]) -> list[UsageRow]:
    """The usage of `answers`, summed per (zone, month, subject, policy, model)."""
    totals: dict[tuple[str, str, str, str, str], list[int]] = defaultdict(lambda: [0, 0, 0])
    for answer in answers:
        for row in answer.rows:
            counts = totals[row.key]
            counts[0] += row.requests
            counts[1] += row.prompt_tokens
            counts[2] += row.completion_tokens
    return [UsageRow(*key, *counts) for key, counts in sorted(totals.items())]


def busy_totals(answers: Iterable[UsageAnswer]) -> dict[tuple[str, str, str], int]:
    """Replica-busy milliseconds of `answers`, summed per (zone, month, model). Summed over
    gateway replicas, so a replica two gateways kept busy at once counts twice: an upper
    bound of its busy time."""
    totals: dict[tuple[str, str, str], int] = defaultdict(int)
    for answer in answers:
        for row in answer.busy:
            totals[row.key] += row.replica_milliseconds
    return dict(totals)


def load(data: Mapping[str, str] | None) -> list[UsageRow]:
    """The usage of every tally in a ledger's data (see `tallies`, `usage_rows`)."""
    return usage_rows(tallies(data))


def load_busy(data: Mapping[str, str] | None) -> dict[tuple[str, str, str], int]:
    """The replica-busy time of every tally in a ledger's data (see `busy_totals`)."""
    return busy_totals(tallies(data))


def month_usage(
    rows: Iterable[UsageRow], zone: str, month: str, models: Collection[str] | None
) -> list[UsageRow]:
    """The rows of `month` (YYYY-MM) counted in `zone`, for `models` (None: every model)."""
    return [
        row
        for row in rows
        if row.zone == zone and row.month == month and (models is None or row.model in models)
    ]


def month_busy(
    busy: Mapping[tuple[str, str, str], int], zone: str, month: str, models: Collection[str]
) -> dict[str, int]:
    """Replica-busy milliseconds of `models` in `month` (YYYY-MM) of `zone`, by model."""
    return {m: ms for (z, mo, m), ms in busy.items() if (z, mo) == (zone, month) and m in models}
