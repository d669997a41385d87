"""How long sealed segments are kept: per data class; in a segment the longest period present wins.

A segment is the unit of deletion (its records are chained), so a short period
for one class only takes effect in segments that hold nothing kept longer.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

DAY = 86_400.0


@dataclass(frozen=True)
class Retention:
    """Days to keep records, by data class; records without a class get `default_days`."""

    default_days: float = 365.0
    by_class: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.default_days <= 0 or any(days <= 0 for days in self.by_class.values()):
            raise ValueError("retention periods must be positive")

    def days_for(self, data_classes: Iterable[str], *, unclassified: bool) -> float:
        """The period for a segment with these classes (and records of none if `unclassified`)."""
        periods = [self.by_class.get(c, self.default_days) for c in data_classes]
        if unclassified or not periods:
            periods.append(self.default_days)
        return max(periods)

    def retain_until(
        self, max_time: float, data_classes: Iterable[str], *, unclassified: bool
    ) -> float:
        return max_time + self.days_for(data_classes, unclassified=unclassified) * DAY

    @classmethod
    def parse(cls, specs: Iterable[str], default_days: float = 365.0) -> Retention:
        """From `class=days` strings, as given on the command line."""
        by_class: dict[str, float] = {}
        for spec in specs:
            name, sep, days = spec.partition("=")
            if not sep or not name:
                raise ValueError(f"retention {spec!r} is not CLASS=DAYS")
            try:
                by_class[name] = float(days)
            except ValueError:
                raise ValueError(f"retention {spec!r}: {days!r} is not a number of days") from None
        return cls(default_days, by_class)
