"""The spend report: GPU-hours and amounts of each CostBudget's models in a month.

Pure: budgets, the models' labels and the namespaces' ledgers in, rows and their table,
JSON or CSV out (`privatellm cost report` reads the cluster and prints them). The spend is
what the namespace's GPU ledger recorded, priced with the budget's `spec.gpuPrices`,
within a calendar month of the budget's own time zone. A budget covers the runs its
selector picked when they ran, so a model deleted since still counts.

Amounts are exact until they are rounded once, to the cent. A run on a GPU product the
budget has no price for is never shown as costing nothing: its row says the spend is
incomplete and names the product, and the amount is what the priced runs cost.

By subject or by AccessPolicy, each model's row is shared out by the namespace's usage
ledger of the budget's month (cost/chargeback.py): the shares of a model add up to its
row exactly.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections import defaultdict
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any
from zoneinfo import ZoneInfoNotFoundError

from privatellm.api import CostBudget

from .chargeback import UNNAMED, UNUSED, Grouping, chargeback
from .ledger import Run
from .spend import (
    SECONDS_PER_HOUR,
    Month,
    cents,
    month_named,
    month_of,
    spend,
)
from .usage import UsageRow, month_usage, usage_configmap

FORMATS = ("table", "json", "csv")
# Months whose bounds every time zone can express as epoch seconds.
FIRST_YEAR, LAST_YEAR = 1970, 9998
MONTH_PATTERN = re.compile(r"(\d{4})-(\d{2})")
HUNDREDTH = Decimal("0.01")
TENTH = Decimal("0.1")
# The ledger records "" when the node has no nvidia.com/gpu.product label.
UNLABELLED_PRODUCT = "(node without nvidia.com/gpu.product)"
FIELDS = (
    "namespace",
    "budget",
    "row",
    "model",
    "month",
    "timezone",
    "gpu_hours",
    "amount",
    "currency",
    "limit",
    "percent",
    "complete",
    "unpriced",
    "measured",
    "note",
)
NOT_MEASURED = "not measured: the namespace has no GPU ledger (ConfigMap privatellm-gpu-ledger)"


class ReportError(ValueError):
    """The report cannot be made as asked (an unknown time zone, a malformed month)."""


@dataclass(frozen=True)
class ReportRow:
    """One model of a budget (`model` set) or the budget's total (`model` None).

    `amount` is what the priced runs cost, to the cent; None when nothing was measured
    or when every run of the row ran on a GPU product without a price. `unpriced` names
    the products without a price: with any, the amount leaves their runs out.
    """

    namespace: str
    budget: str
    model: str | None
    month: str
    timezone: str
    currency: str
    # GPU-seconds of every run, priced or not, within the month; None when not measured.
    gpu_seconds: int | None
    amount: Decimal | None
    unpriced: tuple[str, ...] = ()
    # Totals only: the monthly limit to the cent, and the exact amount as a percentage
    # of the limit to a tenth (a lower bound when incomplete).
    limit: Decimal | None = None
    percent: Decimal | None = None
    # A model whose runs the ledger holds but whose InferenceDeployment is gone.
    deleted: bool = False

    @property
    def total(self) -> bool:
        return self.model is None

    @property
    def measured(self) -> bool:
        return self.gpu_seconds is not None

    @property
    def complete(self) -> bool:
        return self.measured and not self.unpriced

    @property
    def gpu_hours(self) -> Decimal | None:
        if self.gpu_seconds is None:
            return None
        return (Decimal(self.gpu_seconds) / SECONDS_PER_HOUR).quantize(
            HUNDREDTH, rounding=ROUND_HALF_EVEN
        )

    @property
    def note(self) -> str:
        if not self.measured:
            return NOT_MEASURED
        notes = []
        if self.unpriced:
            notes.append(
                "incomplete: no price for "
                + ", ".join(self.unpriced)
                + " (the amount leaves those runs out)"
            )
        if self.deleted:
            notes.append("InferenceDeployment deleted; runs from the ledger")
        return "; ".join(notes)


def parse_month(text: str) -> tuple[int, int]:
    """(year, month) of a YYYY-MM month; ReportError for anything else."""
    match = MONTH_PATTERN.fullmatch(text)
    if match is None:
        raise ReportError(f"month {text!r} is not YYYY-MM, e.g. 2026-03")
    year, month = int(match[1]), int(match[2])
    if not 1 <= month <= 12:
        raise ReportError(f"month {text!r} has no month {month:02d}; use 01 to 12")
    if not FIRST_YEAR <= year <= LAST_YEAR:
        raise ReportError(f"month {text!r} is outside {FIRST_YEAR}-01 to {LAST_YEAR}-12")
    return year, month


def _month(budget: CostBudget, wanted: tuple[int, int] | None, now: int) -> Month:
    zone = budget.spec.time_zone
    try:
        return month_named(*wanted, zone) if wanted else month_of(now, zone)
    except (ZoneInfoNotFoundError, ValueError) as error:
        raise ReportError(
            f"CostBudget {budget.metadata.namespace}/{budget.metadata.name}: "
            f"time zone {zone!r} cannot be loaded here ({error})"
        ) from None


def usage_months(
    budgets: Iterable[CostBudget], month_label: str | None, now: int
) -> list[tuple[str, str]]:
    """The (namespace, month) pairs whose usage ledgers the report by subject or policy
    shares out by: each budget's month, read as `cost_report` reads it. Raises
    ReportError as `cost_report` does."""
    wanted = parse_month(month_label) if month_label is not None else None
    return sorted({(b.metadata.namespace or "", _month(b, wanted, now).label) for b in budgets})


def usage_not_measured(month: str) -> str:
    """The note of a model whose month has no usage ledger."""
    return f"no usage ledger (ConfigMap {usage_configmap(month)}): not shared out"


def _product(product: str) -> str:
    return product or UNLABELLED_PRODUCT


def _budget_rows(
    budget: CostBudget,
    deployments: Mapping[str, Mapping[str, str]],
    runs: Mapping[str, Run] | None,
    wanted: tuple[int, int] | None,
    now: int,
) -> list[ReportRow]:
    spec = budget.spec
    month = _month(budget, wanted, now)
    limit = Decimal(repr(spec.monthly_limit))

    def row(
        model: str | None,
        seconds: int | None,
        exact: Decimal | None,
        unpriced: tuple[str, ...] = (),
        deleted: bool = False,
    ) -> ReportRow:
        total = model is None
        percent: Decimal | None = None
        if total and exact is not None:
            percent = (exact * 100 / limit).quantize(TENTH, rounding=ROUND_HALF_EVEN)
        return ReportRow(
            namespace=budget.metadata.namespace or "",
            budget=budget.metadata.name,
            model=model,
            month=month.label,
            timezone=spec.time_zone,
            currency=spec.currency,
            gpu_seconds=seconds,
            amount=None if exact is None else cents(exact),
            unpriced=unpriced,
            limit=cents(limit) if total else None,
            percent=percent,
            deleted=deleted,
        )

    selected = {name for name, labels in deployments.items() if spec.selector.matches(labels)}
    if runs is None:
        return [*(row(m, None, None) for m in sorted(selected)), row(None, None, None)]
    # As the operator counts: the runs the selector picked by their model's labels when
    # they ran, so a model deleted since still counts.
    picked = [r for r in runs.values() if r.selected_by(spec.selector.match_labels)]
    spent = spend(picked, spec.gpu_prices, None, month, now)
    seconds = spent.seconds_by_model
    unpriced: dict[str, set[str]] = defaultdict(set)
    for product, model in spent.unpriced:
        unpriced[model].add(_product(product))
    shown = set(selected) | {m for m, s in seconds.items() if s} | set(unpriced)
    shown |= set(spent.by_model)
    rows = []
    for model in sorted(shown):
        priced = spent.by_model.get(model)
        missing = tuple(sorted(unpriced.get(model, ())))
        # Nothing priced and something unpriced: no amount, never a 0.
        amount = None if priced is None and missing else (priced or Decimal(0))
        rows.append(row(model, seconds.get(model, 0), amount, missing, model not in deployments))
    every_missing = tuple(sorted({p for products in unpriced.values() for p in products}))
    nothing_priced = not spent.by_model and bool(every_missing)
    total = None if nothing_priced else spent.amount
    rows.append(row(None, sum(seconds.values()), total, every_missing))
    return rows


def cost_report(
    budgets: Iterable[CostBudget],
    models_labels: Mapping[str, Mapping[str, Mapping[str, str]]],
    ledger_runs: Mapping[str, Mapping[str, Run]],
    month_label: str | None,
    now: int,
) -> list[ReportRow]:
    """The rows of the report: for each budget, one per model it selects, then its total.

    `models_labels` maps each namespace to its InferenceDeployments' names and labels;
    `ledger_runs` each namespace to its ledger (`ledger.load`), a namespace without a
    ledger being absent. `month_label` (YYYY-MM) is read in each budget's time zone;
    None means the month of that zone that `now` falls in. A model selected by several
    budgets appears under each. Raises ReportError for a malformed month or a time zone
    that cannot be loaded.
    """
    wanted = parse_month(month_label) if month_label is not None else None
    rows: list[ReportRow] = []
    ordered = sorted(budgets, key=lambda b: (b.metadata.namespace or "", b.metadata.name))
    for budget in ordered:
        namespace = budget.metadata.namespace or ""
        rows += _budget_rows(
            budget,
            models_labels.get(namespace, {}),
            ledger_runs.get(namespace),
            wanted,
            now,
        )
    return rows


def _text(value: Decimal | None) -> str | None:
    return None if value is None else str(value)


def row_record(row: ReportRow) -> dict[str, Any]:
    """One row as JSON: exact amounts as strings, null where there is nothing to show."""
    return {
        "namespace": row.namespace,
        "budget": row.budget,
        "row": "total" if row.total else "model",
        "model": row.model,
        "month": row.month,
        "timezone": row.timezone,
        "gpu_hours": _text(row.gpu_hours),
        "amount": _text(row.amount),
        "currency": row.currency,
        "limit": _text(row.limit),
        "percent": _text(row.percent),
        "complete": row.complete,
        "unpriced": list(row.unpriced),
        "measured": row.measured,
        "note": row.note,
    }


def _cell(row: ReportRow, value: Decimal | None, suffix: str = "") -> str:
    if not row.measured:
        return "-"
    if value is None:
        return "unpriced"
    # An incomplete amount is what the priced runs cost: at least this much.
    return f"{'' if row.complete else '>='}{value}{suffix}"


TABLE_COLUMNS = (
    "NAMESPACE",
    "BUDGET",
    "MODEL",
    "MONTH",
    "GPU-HOURS",
    "AMOUNT",
    "CURRENCY",
    "LIMIT",
    "PERCENT",
    "NOTE",
)
RIGHT_ALIGNED = {"GPU-HOURS", "AMOUNT", "LIMIT", "PERCENT"}


def _table_cells(row: ReportRow) -> list[str]:
    hours = "-" if row.gpu_hours is None else str(row.gpu_hours)
    limit = "" if row.limit is None else str(row.limit)
    percent = _cell(row, row.percent, "%") if row.total else ""
    return [
        row.namespace,
        row.budget,
        "(total)" if row.model is None else row.model,
        row.month,
        hours,
        _cell(row, row.amount),
        row.currency,
        limit,
        percent,
        row.note,
    ]


def _table(
    columns: Sequence[str], cells: Sequence[Sequence[str]], right_aligned: Collection[str]
) -> str:
    widths = [max([len(c), *(len(r[i]) for r in cells)]) for i, c in enumerate(columns)]

    def line(values: Sequence[str]) -> str:
        parts = [
            value.rjust(width) if column in right_aligned else value.ljust(width)
            for value, width, column in zip(values, widths, columns, strict=True)
        ]
        return "  ".join(parts).rstrip()

    return "\n".join([line(columns), *(line(r) for r in cells)])


def format_table(rows: Sequence[ReportRow]) -> str:
    return _table(TABLE_COLUMNS, [_table_cells(row) for row in rows], RIGHT_ALIGNED)


def format_csv(rows: Sequence[ReportRow]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(FIELDS)
    for row in rows:
        record = row_record(row)
        record["unpriced"] = ";".join(row.unpriced)
        record["complete"] = str(row.complete).lower()
        record["measured"] = str(row.measured).lower()
        writer.writerow("" if record[f] is None else record[f] for f in FIELDS)
    return out.getvalue().rstrip("\n")


def format_report(rows: Sequence[ReportRow], output: str) -> str:
    if output == "json":
        return json.dumps([row_record(row) for row in rows], indent=2)
    if output == "csv":
        return format_csv(rows)
    return format_table(rows)


@dataclass(frozen=True)
class ShareRow:
    """A line of the report by subject or by AccessPolicy: a model's share charged to one
    subject or policy (`name`), or to nobody (`unused`); a model's total (`name` None),
    which its shares add up to exactly; or the budget's total (`model` None).

    `amount` is to the cent; None where the model's row has none (nothing measured, or
    nothing priced). Requests and tokens are None when the namespace has no usage ledger
    of the month.
    """

    model_row: ReportRow
    name: str | None = None
    unused: bool = False
    requests: int | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    amount: Decimal | None = None

    @property
    def kind(self) -> str:
        """share, unused, model or total."""
        if self.model_row.total:
            return "total"
        if self.unused:
            return "unused"
        return "model" if self.name is None else "share"

    @property
    def note(self) -> str:
        model = self.model_row
        if self.kind in ("share", "unused"):
            # The model's own row says why; a share says what its amount is.
            partial = self.amount is not None and not model.complete
            return "incomplete: a share of what the priced runs cost" if partial else ""
        notes = [model.note]
        if self.kind == "model" and self.requests is None:
            notes.append(usage_not_measured(model.month))
        return "; ".join(n for n in notes if n)


def _shared_rows(
    rows: Sequence[ReportRow], usage: list[UsageRow] | None, by: Grouping
) -> list[ShareRow]:
    """One budget's rows by model (its total last), each model's shares before it."""
    *models, total = rows
    if usage is None:
        bare = [ShareRow(row, amount=row.amount) for row in models]
        return [*bare, ShareRow(total, amount=total.amount)]
    cost = {r.model: r.amount or Decimal(0) for r in models if r.model}
    used = month_usage(usage, total.timezone, total.month, set(cost))
    shares = chargeback(cost, used, by)
    out: list[ShareRow] = []
    for row in models:
        mine = [s for s in shares if s.model == row.model]
        for share in mine:
            # No amount for the model, none for its shares: never a 0.
            amount = None if row.amount is None else share.amount
            out.append(
                ShareRow(
                    row,
                    share.name,
                    share.name is None,
                    share.requests,
                    share.prompt_tokens,
                    share.completion_tokens,
                    amount,
                )
            )
        out.append(
            ShareRow(
                row,
                requests=sum(s.requests for s in mine),
                prompt_tokens=sum(s.prompt_tokens for s in mine),
                completion_tokens=sum(s.completion_tokens for s in mine),
                amount=row.amount,
            )
        )
    counted = [s for s in out if s.kind == "model"]
    out.append(
        ShareRow(
            total,
            requests=sum(s.requests or 0 for s in counted),
            prompt_tokens=sum(s.prompt_tokens or 0 for s in counted),
            completion_tokens=sum(s.completion_tokens or 0 for s in counted),
            amount=total.amount,
        )
    )
    return out


def usage_report(
    budgets: Iterable[CostBudget],
    models_labels: Mapping[str, Mapping[str, Mapping[str, str]]],
    ledger_runs: Mapping[str, Mapping[str, Run]],
    usage_rows: Mapping[tuple[str, str], list[UsageRow]],
    by: Grouping,
    month_label: str | None,
    now: int,
) -> list[ShareRow]:
    """The report by subject or AccessPolicy: each budget's models priced as `cost_report`
    does, each model's amount shared out by `chargeback` over the usage its gateways
    counted in the budget's time zone and month (`usage_rows` by namespace and month,
    `usage.load` of that month's ledger, absent when there is none; `usage_months` says
    which are needed), then the model's total and the budget's. Raises ReportError as
    `cost_report` does."""
    rows = cost_report(budgets, models_labels, ledger_runs, month_label, now)
    out: list[ShareRow] = []
    start = 0
    for end, row in enumerate(rows, 1):
        if row.total:
            used = usage_rows.get((row.namespace, row.month))
            out += _shared_rows(rows[start:end], used, by)
            start = end
    return out


def _count(value: int | None) -> str:
    return "-" if value is None else str(value)


def share_record(row: ShareRow, by: Grouping) -> dict[str, Any]:
    """One row as JSON, keyed like `row_record`, with the subject or policy and the use."""
    model = row.model_row
    return {
        "namespace": model.namespace,
        "budget": model.budget,
        "row": by if row.kind == "share" else row.kind,
        "model": model.model,
        by: UNUSED if row.unused else row.name,
        "month": model.month,
        "timezone": model.timezone,
        "requests": row.requests,
        "prompt_tokens": row.prompt_tokens,
        "completion_tokens": row.completion_tokens,
        "amount": _text(row.amount),
        "currency": model.currency,
        "complete": model.complete,
        "unpriced": list(model.unpriced),
        "measured": model.measured,
        "note": row.note,
    }


def share_fields(by: Grouping) -> tuple[str, ...]:
    """The keys of `share_record`, in order: the CSV header."""
    return (
        "namespace",
        "budget",
        "row",
        "model",
        by,
        "month",
        "timezone",
        "requests",
        "prompt_tokens",
        "completion_tokens",
        "amount",
        "currency",
        "complete",
        "unpriced",
        "measured",
        "note",
    )


def _share_cells(row: ShareRow) -> list[str]:
    model = row.model_row
    name = {"total": "", "model": "(total)", "unused": UNUSED}.get(row.kind, row.name or UNNAMED)
    return [
        model.namespace,
        model.budget,
        "(total)" if model.model is None else model.model,
        name,
        model.month,
        _count(row.requests),
        _count(row.prompt_tokens),
        _count(row.completion_tokens),
        _cell(model, row.amount),
        model.currency,
        row.note,
    ]


def _columns(by: Grouping) -> tuple[str, ...]:
    return (
        "NAMESPACE",
        "BUDGET",
        "MODEL",
        by.upper(),
        "MONTH",
        "REQUESTS",
        "PROMPT-TOKENS",
        "COMPLETION-TOKENS",
        "AMOUNT",
        "CURRENCY",
        "NOTE",
    )


SHARE_RIGHT_ALIGNED = {"REQUESTS", "PROMPT-TOKENS", "COMPLETION-TOKENS", "AMOUNT"}


def format_shares(rows: Sequence[ShareRow], by: Grouping, output: str) -> str:
    """The report by subject or policy as a table, JSON or CSV."""
    if output == "json":
        return json.dumps([share_record(row, by) for row in rows], indent=2)
    if output == "csv":
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        fields = share_fields(by)
        writer.writerow(fields)
        for row in rows:
            record = share_record(row, by)
            record["unpriced"] = ";".join(record["unpriced"])
            record["complete"] = str(record["complete"]).lower()
            record["measured"] = str(record["measured"]).lower()
            writer.writerow("" if record[f] is None else record[f] for f in fields)
        return out.getvalue().rstrip("\n")
    columns = _columns(by)
    return _table(columns, [_share_cells(row) for row in rows], SHARE_RIGHT_ALIGNED)
