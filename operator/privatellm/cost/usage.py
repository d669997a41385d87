"""The usage ledger: what each subject and AccessPolicy asked of each model, per month, and
the chargeback that shares a model's GPU spend among them.

Pure. Each gateway replica keeps a durable tally (its id changes only when the replica's
volume is lost) and serves it as `GET /usage`: cumulative counters per time zone, month,
subject, policy and model, which never decrease for one tally. The operator keeps every
tally's latest answer in the ConfigMap USAGE_CONFIGMAP of the namespace, one data key
per tally, so the counters outlive the replica that counted them (docs/cost.md).
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Literal, NamedTuple

from .spend import cents

# One per namespace: the latest `GET /usage` answer of every tally its gateways kept.
USAGE_CONFIGMAP = "privatellm-usage-ledger"
# A tally id is a data key of the ConfigMap: hex keeps it a valid one.
TALLY_PATTERN = re.compile(r"[0-9a-fA-F]{1,128}")
MONTH_LABEL = re.compile(r"\d{4}-(0[1-9]|1[0-2])")
# A model's spend that no request used, so that the shares add up to the spend.
UNUSED = "(unused)"
# A share of requests counted without a subject (or policy).
UNNAMED = "(unnamed)"
Grouping = Literal["subject", "policy"]
TOKENS_PER_MILLION = Decimal(1_000_000)


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
class UsageAnswer:
    """One tally's counters, as one replica's `GET /usage` answered them."""

    tally: str
    rows: tuple[UsageRow, ...]

    @property
    def requests(self) -> int:
        return sum(row.requests for row in self.rows)

    @property
    def tokens(self) -> int:
        return sum(row.tokens for row in self.rows)


_TEXT_FIELDS = ("zone", "month", "subject", "policy", "model")
# A request the gateway could not attribute to a subject or policy is still counted.
_NAMED_FIELDS = ("zone", "month", "model")
_COUNTERS = {
    "requests": "requests",
    "promptTokens": "prompt_tokens",
    "completionTokens": "completion_tokens",
}


def _row(index: int, item: Any) -> UsageRow:
    where = f"usage[{index}]"
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


def parse_answer(body: Any) -> UsageAnswer:
    """One `GET /usage` answer; ValueError naming what is wrong when it is not one.

    Every counter is a whole number >= 0 and each (zone, month, subject, policy, model)
    appears once: an answer that breaks either is refused whole, never half-counted.
    """
    if not isinstance(body, dict):
        raise ValueError("the answer is not a JSON object")
    tally = body.get("tally")
    if not isinstance(tally, str) or not TALLY_PATTERN.fullmatch(tally):
        raise ValueError(f"tally {tally!r} is not a hex id")
    items = body.get("usage")
    if not isinstance(items, list):
        raise ValueError("usage is not a list")
    rows = tuple(_row(index, item) for index, item in enumerate(items))
    seen: set[tuple[str, ...]] = set()
    for row in rows:
        if row.key in seen:
            raise ValueError(f"usage counts {row.key} more than once")
        seen.add(row.key)
    return UsageAnswer(tally, rows)


def dump_answer(answer: UsageAnswer) -> str:
    """The answer as compact JSON in the shape the gateway serves, rows in a stable order."""
    usage = [
        {
            "zone": row.zone,
            "month": row.month,
            "subject": row.subject,
            "policy": row.policy,
            "model": row.model,
            "requests": row.requests,
            "promptTokens": row.prompt_tokens,
            "completionTokens": row.completion_tokens,
        }
        for row in sorted(answer.rows, key=lambda r: r.key)
    ]
    return json.dumps({"tally": answer.tally, "usage": usage}, separators=(",", ":"))


def _newer(answer: UsageAnswer, stored: str) -> bool:
    """Whether `answer` counts more than the stored copy of its tally.

    A tally's counters never decrease, so the copy with more requests (then more tokens)
    is the later one; a stored copy that does not parse is replaced by any answer, which
    holds the tally's whole history anyway.
    """
    try:
        known = parse_answer(json.loads(stored))
    except ValueError:
        return True
    return (answer.requests, answer.tokens) > (known.requests, known.tokens)


def merge(stored: Mapping[str, str] | None, answers: Iterable[UsageAnswer]) -> dict[str, str]:
    """The ledger's data after taking in `answers`: for each tally, the copy that counts more.

    A stale answer (a replica read before another's write landed) never replaces a newer
    copy, a new tally is added, and a tally nobody answers for (its replica is gone, or
    did not answer this time) keeps its last copy: what it counted still counts.
    """
    merged = dict(stored or {})
    for answer in answers:
        known = merged.get(answer.tally)
        if known is None or _newer(answer, known):
            merged[answer.tally] = dump_answer(answer)
    return dict(sorted(merged.items()))


def load(data: Mapping[str, str] | None) -> list[UsageRow]:
    """The usage of every tally in the ledger's data, summed per (zone, month, subject,
    policy, model). ValueError when an entry is not an answer or not under its own tally."""
    totals: dict[tuple[str, str, str, str, str], list[int]] = defaultdict(lambda: [0, 0, 0])
    for tally, text in sorted((data or {}).items()):
        try:
            answer = parse_answer(json.loads(text))
        except ValueError as error:
            raise ValueError(f"tally {tally}: {error}") from None
        if answer.tally != tally:
            raise ValueError(f"tally {tally} holds the answer of tally {answer.tally}")
        for row in answer.rows:
            counts = totals[row.key]
            counts[0] += row.requests
            counts[1] += row.prompt_tokens
            counts[2] += row.completion_tokens
    return [UsageRow(*key, *counts) for key, counts in sorted(totals.items())]


def month_usage(
    rows: Iterable[UsageRow], zone: str, month: str, models: Collection[str] | None
) -> list[UsageRow]:
    """The rows of `month` (YYYY-MM) counted in `zone`, for `models` (None: every model)."""
    return [
        row
        for row in rows
        if row.zone == zone and row.month == month and (models is None or row.model in models)
    ]


@dataclass(frozen=True)
class Share:
    """Who a model's spend is charged to, with the use it is charged for and the amount to
    the cent: a subject or an AccessPolicy (`name`), or nobody (`name` None: the spend of
    a model no request used)."""

    model: str
    name: str | None
    requests: int
    prompt_tokens: int
    completion_tokens: int
    amount: Decimal

    @property
    def label(self) -> str:
        return UNUSED if self.name is None else self.name or UNNAMED


def _largest_remainder(total_cents: int, weights: Mapping[str, int]) -> dict[str, int]:
    """`total_cents` split in proportion to `weights` (their sum > 0), in whole cents that
    add up to it: each gets its floor, and the cents left go one each to the largest
    remainders (the first name on a tie)."""
    whole = sum(weights.values())
    floors = {name: total_cents * w // whole for name, w in weights.items()}
    left = total_cents - sum(floors.values())
    by_remainder = sorted(weights, key=lambda name: (-(total_cents * weights[name] % whole), name))
    for name in by_remainder[:left]:
        floors[name] += 1
    return floors


def _amount(whole_cents: int) -> Decimal:
    return Decimal(whole_cents).scaleb(-2)


def chargeback(
    cost_by_model: Mapping[str, Decimal], rows: Iterable[UsageRow], by: Grouping
) -> list[Share]:
    """Each model's spend shared among the subjects (or AccessPolicies) that used it.

    The rule: a model's spend, rounded to the cent, is split in proportion to each
    subject's tokens (prompt + completion) on that model; when none of its requests has a
    token count, in proportion to requests. Each share is rounded down to the cent and
    the cents left over go one each to the largest remainders (on a tie, to the first
    name), so the shares of a model add up exactly to its rounded spend. A model with
    spend and no request is one share of nobody (shown as UNUSED), so nothing is lost; a
    model with neither has no share. Use of a model absent from `cost_by_model` shares
    nothing (amounts of 0). Shares come by model, then name.
    """
    used: dict[str, dict[str, tuple[int, int, int]]] = defaultdict(dict)
    for row in rows:
        name = row.subject if by == "subject" else row.policy
        asked, prompt, completion = used[row.model].get(name, (0, 0, 0))
        used[row.model][name] = (
            asked + row.requests,
            prompt + row.prompt_tokens,
            completion + row.completion_tokens,
        )
    shares = []
    for model in sorted(set(cost_by_model) | set(used)):
        total_cents = int(cents(cost_by_model.get(model, Decimal(0))).scaleb(2))
        counted = {name: counts for name, counts in used[model].items() if any(counts)}
        tokens = {name: prompt + completion for name, (_, prompt, completion) in counted.items()}
        weights = tokens if any(tokens.values()) else {n: c[0] for n, c in counted.items()}
        if not any(weights.values()):
            if total_cents:
                shares.append(Share(model, None, 0, 0, 0, _amount(total_cents)))
            continue
        split = _largest_remainder(total_cents, weights)
        for name, counts in sorted(counted.items()):
            shares.append(Share(model, name, *counts, _amount(split[name])))
    return shares


class UsageFigures(NamedTuple):
    """A month's use against its spend."""

    active_users: int
    # To the cent; None when nobody was active / no token was counted.
    cost_per_active_user: Decimal | None
    cost_per_million_tokens: Decimal | None
    tokens: int


def usage_figures(rows: Iterable[UsageRow], spent: Decimal) -> UsageFigures:
    """Active users (distinct subjects with a request), tokens, and the spend per active
    user and per million tokens, each rounded once to the cent; None instead of a division
    by zero."""
    listed = list(rows)
    active = len({row.subject for row in listed if row.requests})
    tokens = sum(row.tokens for row in listed)
    per_user = cents(spent / active) if active else None
    per_million = cents(spent * TOKENS_PER_MILLION / tokens) if tokens else None
    return UsageFigures(active, per_user, per_million, tokens)
