"""CostBudget time zones: the shape the API server checks first fits every IANA name.

The API server then loads the zone from its own tz database (a CEL rule; see
privatellm.api.budget). Here Python's tz database stands for the IANA list: the shape must
refuse no real name, and must refuse the look-alikes whose meaning depends on the host.
tests/integration/test_crd_validation.py has the API server judge names against zoneinfo.
"""

from __future__ import annotations

import re
import zoneinfo

import pytest

from privatellm.api.budget import IANA_ZONE_NAME

# Files a tz directory holds that are not zone names: the host's own zone and rule files.
HOST_FILES = {"localtime"}


def test_every_iana_zone_has_the_shape() -> None:
    names = zoneinfo.available_timezones() - HOST_FILES
    assert "Europe/Amsterdam" in names, "the tests need the IANA tz database (tzdata)"
    assert [n for n in sorted(names) if not re.fullmatch(IANA_ZONE_NAME, n)] == []


@pytest.mark.parametrize(
    "name",
    ["localtime", "posixrules", "posix/Europe/Amsterdam", "right/UTC", "+01:00", "Europe/", ""],
)
def test_host_files_and_offsets_do_not_have_the_shape(name: str) -> None:
    assert not re.fullmatch(IANA_ZONE_NAME, name)
