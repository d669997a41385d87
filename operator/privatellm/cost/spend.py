"""What the ledger's runs cost within a month of a budget's time zone.

Money is Decimal throughout and rounded to the cent only when shown: GPU-seconds are
whole, prices are per hour, so an amount is exact until it is rounded once.
"""

from __future__ import annotations

import datetime
from collections import defaultdict
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from decimal import ROUND_HALF_EVEN, Decimal
from zoneinfo import ZoneInfo

from privatellm.api.budget import GPUPrice

from .ledger import Run

SECONDS_PER_HOUR = Decimal(3600)
CENT = Decimal("0.01")


@dataclass(frozen=True)
class Month:
    """A calendar month of one time zone, as epoch seconds [start, end)."""

    year: int
    month: int
    start: int
    end: int

    @property
    def label(self) -> str:
        return f"{self.year:04d}-{self.month:02d}"


def month_of(moment: int, zone: str) -> Month:
    """The month of `zone` that `moment` falls in. Raises ZoneInfoNotFoundError for a zone
    the runtime cannot load."""
    local = datetime.datetime.fromtimestamp(moment, ZoneInfo(zone))
    return month_named(local.year, local.month, zone)


def month_named(year: int, month: int, zone: str) -> Month:
    """The month `year`-`month` of `zone`: from its first local midnight to the next's."""
    tz = ZoneInfo(zone)
    start = datetime.datetime(year, month, 1, tzinfo=tz)
    following = datetime.datetime(year + month // 12, month % 12 + 1, 1, tzinfo=tz)
    return Month(year, month, int(start.timestamp()), int(following.timestamp()))


def gpu_seconds(run: Run, start: int, end: int, now: int) -> int:
    """GPU-seconds of `run` within [start, end), counting an open run up to `now`."""
    stop = run.end if run.end is not None else max(run.seen, now)
    return max(0, min(stop, end) - max(run.start, start)) * run.gpus


def price_per_hour(run: Run, prices: Mapping[str, GPUPrice]) -> Decimal | None:
    """The hourly price of one of the run's GPUs; None when its product has no price.

    Spot GPUs without a spot price are charged on demand: the budget never under-counts.
    """
    price = prices.get(run.gpu_product)
    if price is None:
        return None
    if run.capacity == "spot" and price.spot_per_hour is not None:
        return Decimal(repr(price.spot_per_hour))
    return Decimal(repr(price.on_demand_per_hour))


@dataclass
class Spend:
    """A budget's month: GPU-seconds (priced or not) and money per model, and what could not
    be priced. An open run counts up to now: as far as anyone knows, it still runs."""

    gpu_seconds: int = 0
    amount: Decimal = Decimal(0)
    # What the Pods running now cost for each further hour.
    burn_per_hour: Decimal = Decimal(0)
    by_model: dict[str, Decimal] = field(default_factory=lambda: defaultdict(Decimal))
    seconds_by_model: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    # (GPU product, model) of runs whose product has no price: the amount leaves them out.
    unpriced: set[tuple[str, str]] = field(default_factory=set)

    @property
    def complete(self) -> bool:
        return not self.unpriced


def spend(
    runs: Iterable[Run],
    prices: Iterable[GPUPrice],
    models: Collection[str] | None,
    month: Month,
    now: int,
) -> Spend:
    """What the runs of `models` (None: every model) cost in `month`, up to `now`."""
    by_product = {p.gpu_product: p for p in prices}
    total = Spend()
    for run in runs:
        if models is not None and run.model not in models:
            continue
        seconds = gpu_seconds(run, month.start, month.end, now)
        running = run.end is None and month.start <= now < month.end
        if not seconds and not running:
            continue
        total.gpu_seconds += seconds
        total.seconds_by_model[run.model] += seconds
        price = price_per_hour(run, by_product)
        if price is None:
            total.unpriced.add((run.gpu_product, run.model))
            continue
        amount = price * seconds / SECONDS_PER_HOUR
        total.amount += amount
        total.by_model[run.model] += amount
        if running:
            total.burn_per_hour += price * run.gpus
    return total


def forecast(spent: Spend, month: Month, now: int) -> Decimal:
    """The month's spend if what runs now keeps running to its end."""
    remaining = max(0, month.end - max(now, month.start))
    return spent.amount + spent.burn_per_hour * remaining / SECONDS_PER_HOUR


def cents(amount: Decimal) -> Decimal:
    """An amount rounded to the cent, as shown and reported."""
    return amount.quantize(CENT, rounding=ROUND_HALF_EVEN)
