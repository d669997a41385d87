"""Chargeback: a model's GPU spend shared out among who used it; and the month's use
against its spend (per active user, per million tokens, the idle GPU share).

Pure. The use comes from the usage ledger (usage.py), the spend from the GPU ledger
(spend.py).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Literal, NamedTuple

from .spend import Spend, cents
from .usage import UsageRow

# A model's spend that no request used, so that the shares add up to the spend.
UNUSED = "(unused)"
# A share of requests counted without a subject (or policy).
UNNAMED = "(unnamed)"
Grouping = Literal["subject", "policy"]
TOKENS_PER_MILLION = Decimal(1_000_000)


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
    requests: int = 0


def usage_figures(rows: Iterable[UsageRow], spent: Decimal) -> UsageFigures:
    """Active users (distinct subjects with a request), tokens, and the spend per active
    user and per million tokens, each rounded once to the cent; None instead of a division
    by zero."""
    listed = list(rows)
    active = len({row.subject for row in listed if row.requests})
    tokens = sum(row.tokens for row in listed)
    per_user = cents(spent / active) if active else None
    per_million = cents(spent * TOKENS_PER_MILLION / tokens) if tokens else None
    requests = sum(row.requests for row in listed)
    return UsageFigures(active, per_user, per_million, tokens, requests)


def idle_gpu_share(
    spent: Spend, busy: Mapping[str, int], gpus: Mapping[str, int]
) -> Decimal | None:
    """The share of the month's GPU time in which a replica had no request in flight:
    1 - busy GPU time / GPU time, where a model's busy GPU time is its replica-busy time
    (by model, milliseconds) times the GPUs of one of its replicas (`gpus`, by model).
    The busy time is summed over gateway replicas, so this is a lower bound of the idle
    share; never below 0. None without GPU time."""
    total = spent.gpu_seconds * 1000
    if not total:
        return None
    used = sum(ms * gpus.get(model, 0) for model, ms in busy.items())
    return max(Decimal(0), 1 - Decimal(used) / total).quantize(Decimal("0.001"))
