"""The spend report: GPU-hours and amounts of each CostBudget's models in a month.

Pure: budgets, the models' labels and the namespaces' ledgers in, rows and their table,
JSON or CSV out (`privatellm cost report` reads the cluster and prints them). The spend is
what the namespace's GPU ledger recorded, priced with the budget's `spec.gpuPrices`,
within a calendar month of the budget's own time zone. A budget covers the runs its
selector picked when they ran, so a model deleted since still counts.

Amounts are exact until they are rounded once, to the cent. A run on a GPU product the
budget has no price for is never shown as costing nothing: its row says the spend is
incomplete and names the product, and the amount is what the priced runs cost.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any
from zoneinfo import ZoneInfoNotFoundError

from privatellm.api import CostBudget

from .ledger import Run
from .spend import (
    SECONDS_PER_HOUR,
    Month,
    cents,
    month_named,
    month_of,
    spend,
)

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


def format_table(rows: Sequence[ReportRow]) -> str:
    cells = [_table_cells(row) for row in rows]
    widths = [max([len(c), *(len(r[i]) for r in cells)]) for i, c in enumerate(TABLE_COLUMNS)]

    def line(values: Sequence[str]) -> str:
        parts = [
            value.rjust(width) if column in RIGHT_ALIGNED else value.ljust(width)
            for value, width, column in zip(values, widths, TABLE_COLUMNS, strict=True)
        ]
        return "  ".join(parts).rstrip()

    return "\n".join([line(TABLE_COLUMNS), *(line(r) for r in cells)])


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
