"""Business hours: whether a moment is inside a budget's working week, and until when.

Pure. Hours are wall-clock times in the schedule's zone, so a working day starts at
08:00 local on both sides of a daylight-saving change. Raises ZoneInfoNotFoundError
for a zone this runtime cannot load, as cost/spend.py does.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from zoneinfo import ZoneInfo

from privatellm.api.budget import BusinessHours

WEEKDAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")


@dataclass(frozen=True)
class Period:
    """Inside business hours or not, from a moment until `until` (local time)."""

    inside: bool
    until: dt.datetime


def _clock(text: str) -> dt.time:
    hours, minutes = text.split(":")
    return dt.time(int(hours), int(minutes))


def period_at(hours: BusinessHours, moment: float) -> Period:
    """The period `moment` (seconds since the epoch) falls in, and when it ends."""
    local = dt.datetime.fromtimestamp(moment, ZoneInfo(hours.timezone))
    start, end = _clock(hours.start), _clock(hours.end)
    working = WEEKDAYS[local.weekday()] in hours.days
    if working and start <= local.time() < end:
        return Period(True, local.replace(hour=end.hour, minute=end.minute, second=0))
    day = local.date()
    if not working or local.time() >= end:
        day += dt.timedelta(days=1)
    while WEEKDAYS[day.weekday()] not in hours.days:
        day += dt.timedelta(days=1)
    opening = dt.datetime.combine(day, start, tzinfo=local.tzinfo)
    return Period(False, opening)


def off_hours(hours: BusinessHours, moment: float) -> bool:
    """Whether `moment` is outside business hours."""
    return not period_at(hours, moment).inside
