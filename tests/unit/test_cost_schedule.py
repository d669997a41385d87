"""Business hours: inside or outside, and until when, in the schedule's own zone."""

from __future__ import annotations

import datetime as dt

import pytest

from privatellm.api.budget import BusinessHours
from privatellm.autoscale import Limits, Policy, limited
from privatellm.cost.schedule import off_hours, period_at


def at(text: str) -> float:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


AMSTERDAM = BusinessHours(timezone="Europe/Amsterdam")


@pytest.mark.parametrize(
    ("moment", "inside", "until"),
    [
        ("2026-12-07T06:59:59Z", False, "2026-12-07 08:00 CET"),  # Monday 07:59 local
        ("2026-12-07T07:00:00Z", True, "2026-12-07 18:00 CET"),
        ("2026-12-07T16:59:59Z", True, "2026-12-07 18:00 CET"),
        ("2026-12-07T17:00:00Z", False, "2026-12-08 08:00 CET"),  # end is exclusive
        ("2026-12-04T17:30:00Z", False, "2026-12-07 08:00 CET"),  # Friday evening
        ("2026-12-05T12:00:00Z", False, "2026-12-07 08:00 CET"),  # Saturday
        # Summer time: 08:00 local is 06:00 UTC.
        ("2026-07-06T06:00:00Z", True, "2026-07-06 18:00 CEST"),
        # The Monday after summer time ends opens at 08:00 CET, an hour later in UTC.
        ("2026-10-24T10:00:00Z", False, "2026-10-26 08:00 CET"),
    ],
)
def test_a_moment_is_inside_or_outside_by_the_local_clock(
    moment: str, inside: bool, until: str
) -> None:
    period = period_at(AMSTERDAM, at(moment))
    assert (period.inside, period.until.strftime("%Y-%m-%d %H:%M %Z")) == (inside, until)
    assert off_hours(AMSTERDAM, at(moment)) is not inside


def test_the_working_days_are_the_schedule_s_own() -> None:
    weekend = BusinessHours(days=["Sat", "Sun"], start="10:00", end="16:00")
    assert period_at(weekend, at("2026-12-05T11:00:00Z")).inside  # Saturday
    monday = period_at(weekend, at("2026-12-07T11:00:00Z"))
    assert not monday.inside and monday.until.isoformat() == "2026-12-12T10:00:00+00:00"


POLICY = Policy(2, 8, 16, 300.0, None)


def test_limits_only_lower_the_bounds_and_shorten_the_idle_period() -> None:
    assert limited(POLICY, Limits()) == POLICY
    assert limited(POLICY, Limits(to_minimum=True)).max_replicas == 2
    to_zero = Policy(0, 8, 16, 300.0, 1800.0)
    assert limited(to_zero, Limits(to_minimum=True)).max_replicas == 1, "down, not off"
    off = limited(POLICY, Limits(ceiling=0))
    assert (off.min_replicas, off.max_replicas) == (0, 0)
    assert limited(POLICY, Limits(ceiling=20)) == POLICY, "a ceiling never raises"
    idle = limited(POLICY, Limits(idle_after_seconds=600.0))
    assert (idle.min_replicas, idle.scale_to_zero_after_seconds) == (2, 600.0), "floor kept"
    sooner = limited(to_zero, Limits(idle_after_seconds=3600.0))
    assert sooner.scale_to_zero_after_seconds == 1800.0, "the spec's shorter period stands"
