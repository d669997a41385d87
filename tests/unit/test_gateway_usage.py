"""The usage tally (months per zone, its file, its id), the budget throttle's quotas, and
both as the operator renders them into the gateway's configuration."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import json
import logging
import re
from pathlib import Path

import pytest
import yaml

from privatellm.api.access import Quotas
from privatellm.gateway.config import BudgetThrottle, GatewayConfig
from privatellm.gateway.quotas import limit_of, throttled
from privatellm.gateway.usage import (
    KEEP_MONTHS,
    USAGE_FILE,
    CorruptTallyError,
    UsageTally,
    parse_tally,
)
from privatellm.render.gateway import config_text, render_gateway_config

from .test_render_gateway import INPUTS

UTC = datetime.UTC
# 2026-11-30 23:30 UTC is already December in Amsterdam (UTC+1).
LATE_NOVEMBER = datetime.datetime(2026, 11, 30, 23, 30, tzinfo=UTC).timestamp()
ZONES = ("UTC", "Europe/Amsterdam")


def at(year: int, month: int, day: int = 15) -> float:
    return datetime.datetime(year, month, day, 12, tzinfo=UTC).timestamp()


def row(zone: str, month: str, requests: int, prompt: int, completion: int) -> dict[str, object]:
    return {
        "zone": zone,
        "month": month,
        "subject": "alice",
        "policy": "analysts",
        "model": "llama",
        "requests": requests,
        "promptTokens": prompt,
        "completionTokens": completion,
    }


def test_a_request_lands_in_its_month_of_each_zone() -> None:
    tally = UsageTally(None, ZONES)
    tally.record("alice", "analysts", "llama", LATE_NOVEMBER, 10, 4)
    assert tally.rows() == [
        row("Europe/Amsterdam", "2026-12", 1, 10, 4),
        row("UTC", "2026-11", 1, 10, 4),
    ]


def test_counters_add_up_and_rows_are_sorted() -> None:
    tally = UsageTally(None, ["UTC"])
    tally.record("bob", "analysts", "llama", at(2026, 3), 5, 1)
    tally.record("alice", "analysts", "small", at(2026, 3), 1, 1)
    tally.record("alice", "analysts", "llama", at(2026, 3), 7, 2)
    tally.record("alice", "analysts", "llama", at(2026, 3, 31), 3, 8)
    tally.record("alice", "analysts", "llama", at(2026, 2), 1, 0)
    keys = [(r["month"], r["subject"], r["model"]) for r in tally.rows()]
    assert keys == [
        ("2026-02", "alice", "llama"),
        ("2026-03", "alice", "llama"),
        ("2026-03", "alice", "small"),
        ("2026-03", "bob", "llama"),
    ]
    assert tally.rows()[1] == row("UTC", "2026-03", 2, 10, 10)
    document = tally.document()
    assert re.fullmatch(r"[0-9a-f]{32}", document["tally"])
    assert document["usage"] == tally.rows()
    assert document["busy"] == []


def test_thirteen_months_are_kept_per_zone() -> None:
    tally = UsageTally(None, ZONES)
    tally.record("alice", "analysts", "llama", at(2025, 1))
    for month in range(1, 13):
        tally.record("alice", "analysts", "llama", at(2025, month))
    assert len({r["month"] for r in tally.rows() if r["zone"] == "UTC"}) == 12
    tally.record("alice", "analysts", "llama", at(2026, 1))
    assert tally.rows()[0] == row("Europe/Amsterdam", "2025-01", 2, 0, 0)  # 13: all kept
    tally.record("alice", "analysts", "llama", at(2026, 2))
    for zone in ZONES:
        months = sorted(r["month"] for r in tally.rows() if r["zone"] == zone)
        assert len(months) == KEEP_MONTHS
        assert (months[0], months[-1]) == ("2025-02", "2026-02")
    # A request from before the kept months (a clock set back) is not kept either.
    tally.record("alice", "analysts", "llama", at(2024, 12))
    assert "2024-12" not in {r["month"] for r in tally.rows()}


def test_the_tally_survives_a_restart_and_keeps_counting(tmp_path: Path) -> None:
    path = tmp_path / "audit" / USAGE_FILE
    first = UsageTally(path, ["UTC"])
    first.record("alice", "analysts", "llama", at(2026, 5), 3, 2)
    assert first.changed
    first.save()
    assert not first.changed
    second = UsageTally(path, ["UTC"])
    assert second.tally_id == first.tally_id
    assert second.rows() == [row("UTC", "2026-05", 1, 3, 2)]
    second.record("alice", "analysts", "llama", at(2026, 5), 1, 1)
    second.save()
    on_disk = json.loads(path.read_bytes())
    assert on_disk["tally"] == first.tally_id
    assert on_disk["usage"] == [row("UTC", "2026-05", 2, 4, 3)]


def test_a_new_file_gets_its_id_on_disk_at_the_first_write(tmp_path: Path) -> None:
    tally = UsageTally(tmp_path / USAGE_FILE, ["UTC"])
    assert tally.changed
    tally.save()
    assert json.loads((tmp_path / USAGE_FILE).read_bytes()) == {
        "version": 1,
        "tally": tally.tally_id,
        "usage": [],
        "busy": [],
    }


def test_without_a_file_the_tally_is_kept_in_memory() -> None:
    one, other = UsageTally(None), UsageTally(None)
    one.record("alice", "analysts", "llama", at(2026, 5))
    assert not one.changed
    one.save()  # nothing to write to, and no error
    assert one.tally_id != other.tally_id
    assert one.zones == ["UTC"]


def tally_of(rows: list[dict[str, object]]) -> str:
    return json.dumps({"version": 1, "tally": "a" * 32, "usage": rows})


def busy(zone: str, month: str, milliseconds: object, model: str = "llama") -> dict[str, object]:
    return {"zone": zone, "month": month, "model": model, "replicaMilliseconds": milliseconds}


def busy_of(*rows: dict[str, object]) -> str:
    return json.dumps({"version": 1, "tally": "a" * 32, "usage": [], "busy": list(rows)})


@pytest.mark.parametrize(
    "content",
    [
        b"{not json",
        b"",
        b'{"version": 1, "tally": "abc", "usage": []}',
        b'{"version": 2, "tally": "' + b"a" * 32 + b'", "usage": []}',
        tally_of([row("UTC", "2026-5", 1, 1, 1)]),
        tally_of([row("UTC", "2026-05", -1, 1, 1)]),
        tally_of([row("UTC", "2026-05", True, 1, 1)]),
        tally_of([row("UTC", "2026-05", 1, 1, 1)] * 2),
        tally_of([{"zone": "UTC"}]),
        busy_of({"zone": "UTC"}),
        busy_of(busy("UTC", "2026-5", 1)),
        busy_of(busy("UTC", "2026-05", -1)),
        busy_of(busy("UTC", "2026-05", True)),
        busy_of(busy("UTC", "2026-05", 1.5)),
        busy_of(busy("UTC", "2026-05", 1), busy("UTC", "2026-05", 2)),
        json.dumps({"version": 1, "tally": "a" * 32, "usage": [], "busy": {}}),
    ],
)
def test_a_corrupt_file_is_moved_aside_and_a_new_tally_begins(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, content: str | bytes
) -> None:
    data = content.encode() if isinstance(content, str) else content
    path = tmp_path / USAGE_FILE
    path.write_bytes(data)
    with pytest.raises(CorruptTallyError):
        parse_tally(data)
    stamp = datetime.datetime(2026, 12, 1, 8, 0, 5, tzinfo=UTC).timestamp()
    with caplog.at_level(logging.ERROR, logger="privatellm.gateway.usage"):
        tally = UsageTally(path, ["UTC"], clock=lambda: stamp)
    assert tally.rows() == []
    assert tally.tally_id != "a" * 32
    aside = tmp_path / f"{USAGE_FILE}.corrupt-20261201T080005Z"
    assert aside.read_bytes() == data
    assert not path.exists()
    assert [r.levelno for r in caplog.records] == [logging.ERROR]
    # The new tally starts from nothing and is written over no part of the old one.
    tally.record("alice", "analysts", "llama", at(2026, 12))
    tally.save()
    assert json.loads(path.read_bytes())["usage"] == [row("UTC", "2026-12", 1, 0, 0)]
    # A second corrupt file in the same second does not replace the first one moved aside.
    path.write_bytes(b"garbage")
    UsageTally(path, ["UTC"], clock=lambda: stamp)
    assert aside.read_bytes() == data
    assert (tmp_path / f"{USAGE_FILE}.corrupt-20261201T080005Z.1").read_bytes() == b"garbage"


def test_a_zone_that_cannot_be_loaded_is_skipped_with_one_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="privatellm.gateway.usage"):
        tally = UsageTally(None, ["UTC", "Mars/Olympus_Mons", "UTC"])
        tally.set_zones(["Mars/Olympus_Mons", "Europe/Amsterdam"])
    assert [r.levelno for r in caplog.records] == [logging.WARNING]
    assert "Mars/Olympus_Mons" in caplog.records[0].getMessage()
    assert tally.zones == ["Europe/Amsterdam"]
    tally.record("alice", "analysts", "llama", LATE_NOVEMBER)
    assert [(r["zone"], r["month"]) for r in tally.rows()] == [("Europe/Amsterdam", "2026-12")]


def test_an_older_state_is_never_written_over_a_newer_one(tmp_path: Path) -> None:
    tally = UsageTally(tmp_path / USAGE_FILE, ["UTC"])
    tally.record("alice", "analysts", "llama", at(2026, 5))
    older = tally._snapshot()
    tally.record("alice", "analysts", "llama", at(2026, 5))
    tally.save()
    tally._write(*older)  # a write that was still under way when shutdown saved
    assert json.loads((tmp_path / USAGE_FILE).read_bytes())["usage"][0]["requests"] == 2


def test_the_tally_is_written_in_the_background_while_it_changes(tmp_path: Path) -> None:
    path = tmp_path / USAGE_FILE

    async def scenario() -> None:
        tally = UsageTally(path, ["UTC"])
        task = asyncio.create_task(tally.run(interval=0.01))
        try:
            tally.record("alice", "analysts", "llama", at(2026, 5), 2, 3)
            for _ in range(500):
                if path.exists() and json.loads(path.read_bytes())["usage"]:
                    break
                await asyncio.sleep(0.01)
        finally:
            task.cancel()
        assert json.loads(path.read_bytes())["usage"] == [row("UTC", "2026-05", 1, 2, 3)]

    asyncio.run(scenario())


def test_the_configuration_buckets_by_utc_unless_told_otherwise() -> None:
    assert GatewayConfig(namespace="team-a").usage_time_zones == ["UTC"]
    config = GatewayConfig.model_validate(
        {"namespace": "team-a", "usageTimeZones": ["Europe/Amsterdam"]}
    )
    assert config.usage_time_zones == ["Europe/Amsterdam"]


def throttle(percent: int, rpm: int = 7) -> BudgetThrottle:
    return BudgetThrottle(budget="team", quota_percent=percent, requests_per_minute=rpm)


def test_a_throttle_lowers_each_limit_the_policy_sets() -> None:
    quotas = Quotas(requests_per_minute=40, tokens_per_minute=1000, tokens_per_day=99_999)
    assert throttled(quotas, throttle(25)) == Quotas(
        requests_per_minute=10, tokens_per_minute=250, tokens_per_day=24_999
    )
    assert throttled(quotas, throttle(100)) == quotas
    # Never to 0, which would refuse every request.
    assert throttled(Quotas(requests_per_minute=3, tokens_per_day=1), throttle(10)) == Quotas(
        requests_per_minute=1, tokens_per_day=1
    )


def test_a_throttle_gives_a_request_rate_to_a_policy_without_one() -> None:
    assert throttled(Quotas(), throttle(50, rpm=7)) == Quotas(requests_per_minute=7)
    assert throttled(Quotas(tokens_per_minute=100), throttle(50, rpm=7)) == Quotas(
        requests_per_minute=7, tokens_per_minute=50
    )


def test_the_throttle_is_validated() -> None:
    with pytest.raises(ValueError, match=r"quota_?[pP]ercent"):
        BudgetThrottle(budget="team", quota_percent=0, requests_per_minute=1)
    with pytest.raises(ValueError, match=r"quota_?[pP]ercent"):
        BudgetThrottle(budget="team", quota_percent=101, requests_per_minute=1)
    with pytest.raises(ValueError, match=r"requests_?[pP]er_?[mM]inute"):
        BudgetThrottle(budget="team", quota_percent=50, requests_per_minute=0)
    parsed = BudgetThrottle.model_validate(
        {
            "budget": "team",
            "quotaPercent": 50,
            "requestsPerMinute": 5,
            "priorityGroups": ["oncall"],
            "priorityPolicies": ["vip"],
        }
    )
    assert (parsed.priority_groups, parsed.priority_policies) == (["oncall"], ["vip"])


def test_the_limit_a_refusal_names() -> None:
    assert limit_of("rate_limited:requests_per_minute") == "requests_per_minute"
    assert limit_of("quota_exceeded:tokens_per_day") == "tokens_per_day"


def test_the_operator_renders_throttles_and_zones_into_the_configuration() -> None:
    assert render_gateway_config(INPUTS).usage_time_zones == ["UTC"]
    inputs = dataclasses.replace(
        INPUTS,
        budget_throttles={"big": throttle(50)},
        usage_time_zones=("UTC", "Europe/Amsterdam", "UTC"),
    )
    config = render_gateway_config(inputs)
    assert [(m.name, m.budget_throttle) for m in config.models] == [
        ("big", throttle(50)),
        ("small", None),
    ]
    assert config.usage_time_zones == ["Europe/Amsterdam", "UTC"]
    # What the gateway reads back from the Secret is what was rendered.
    assert GatewayConfig.model_validate(yaml.safe_load(config_text(config))) == config


class Clock:
    """A clock the test moves by hand."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def tick(self, seconds: float) -> None:
        self.now += seconds


REPLICA_A, REPLICA_B = "http://10.0.0.1:8000", "http://10.0.0.2:8000"


def test_overlapping_requests_to_one_replica_count_its_busy_time_once() -> None:
    clock = Clock(at(2026, 5))
    tally = UsageTally(None, ["UTC"], clock)
    tally.replica_busy("llama", REPLICA_A)
    clock.tick(2)
    tally.replica_busy("llama", REPLICA_A)
    clock.tick(1)
    assert tally.busy_rows() == [busy("UTC", "2026-05", 3000)]  # read while both run
    clock.tick(2)
    tally.replica_done("llama", REPLICA_A)
    clock.tick(4)
    tally.replica_done("llama", REPLICA_A)
    # Busy for the 9 s from the first request sent to the last one done, not 9 + 3.
    assert tally.busy_rows() == [busy("UTC", "2026-05", 9000)]


def test_replicas_busy_at_the_same_time_each_count_for_their_model() -> None:
    clock = Clock(at(2026, 5))
    tally = UsageTally(None, ["UTC"], clock)
    tally.replica_busy("llama", REPLICA_A)
    tally.replica_busy("llama", REPLICA_B)
    tally.replica_busy("small", REPLICA_B)  # another model's replica at the same address
    clock.tick(1.5)
    tally.replica_done("llama", REPLICA_A)
    tally.replica_done("llama", REPLICA_B)
    clock.tick(1)
    tally.replica_done("small", REPLICA_B)
    assert tally.busy_rows() == [
        busy("UTC", "2026-05", 3000),
        busy("UTC", "2026-05", 2500, model="small"),
    ]


def test_an_idle_replica_counts_nothing_and_reads_count_a_busy_one_before_it_ends() -> None:
    clock = Clock(at(2026, 5))
    tally = UsageTally(None, ["UTC"], clock)
    assert tally.busy_rows() == []
    tally.replica_busy("llama", REPLICA_A)
    clock.tick(2)
    tally.replica_done("llama", REPLICA_A)
    clock.tick(3600)  # idle: nothing in flight
    assert tally.document()["busy"] == [busy("UTC", "2026-05", 2000)]
    tally.replica_busy("llama", REPLICA_A)
    clock.tick(5)
    assert tally.document()["busy"] == [busy("UTC", "2026-05", 7000)]
    clock.tick(1)
    assert tally.document()["busy"] == [busy("UTC", "2026-05", 8000)]
    tally.replica_done("llama", REPLICA_A)
    tally.replica_done("llama", REPLICA_A)  # one too many: ignored
    clock.tick(60)
    assert tally.busy_rows() == [busy("UTC", "2026-05", 8000)]


def test_fractions_of_a_millisecond_are_not_lost_between_reads() -> None:
    clock = Clock(at(2026, 5))
    tally = UsageTally(None, ["UTC"], clock)
    tally.replica_busy("llama", REPLICA_A)
    for _ in range(11):
        clock.tick(0.00035)
        tally.busy_rows()  # each read is less than a millisecond after the last
    tally.replica_done("llama", REPLICA_A)
    assert tally.busy_rows() == [busy("UTC", "2026-05", 3)]


def test_a_clock_set_back_adds_nothing() -> None:
    clock = Clock(at(2026, 5))
    tally = UsageTally(None, ["UTC"], clock)
    tally.replica_busy("llama", REPLICA_A)
    clock.tick(-10)
    assert tally.busy_rows() == []
    clock.tick(1)
    tally.replica_done("llama", REPLICA_A)
    assert tally.busy_rows() == [busy("UTC", "2026-05", 1000)]


def test_a_busy_stretch_across_a_month_is_split_where_it_was_read() -> None:
    clock = Clock(datetime.datetime(2026, 11, 30, 23, 59, tzinfo=UTC).timestamp())
    tally = UsageTally(None, ZONES, clock)
    tally.replica_busy("llama", REPLICA_A)
    clock.tick(40)
    tally.busy_rows()  # 23:59:40 UTC: November's
    clock.tick(50)
    tally.replica_busy("llama", REPLICA_B)  # 00:00:30: B was idle, A goes on
    clock.tick(30)
    tally.replica_done("llama", REPLICA_A)  # 00:01:00: A's last 80 s are December's
    tally.replica_done("llama", REPLICA_B)
    assert tally.busy_rows() == [
        # In Amsterdam it was December all along.
        busy("Europe/Amsterdam", "2026-12", 150_000),
        busy("UTC", "2026-11", 40_000),
        busy("UTC", "2026-12", 110_000),
    ]


def test_thirteen_months_of_busy_time_are_kept_per_zone() -> None:
    clock = Clock(at(2025, 1))
    tally = UsageTally(None, ["UTC"], clock)
    for month in [*range(1, 13), 13, 14]:
        clock.now = at(2025 + (month - 1) // 12, (month - 1) % 12 + 1)
        tally.replica_busy("llama", REPLICA_A)
        clock.tick(1)
        tally.replica_done("llama", REPLICA_A)
    months = [r["month"] for r in tally.busy_rows()]
    assert len(months) == KEEP_MONTHS
    assert (months[0], months[-1]) == ("2025-02", "2026-02")


def test_busy_time_survives_a_restart_and_a_file_without_it_loads(tmp_path: Path) -> None:
    path = tmp_path / USAGE_FILE
    clock = Clock(at(2026, 5))
    first = UsageTally(path, ["UTC"], clock)
    first.record("alice", "analysts", "llama", clock(), 3, 2)
    first.replica_busy("llama", REPLICA_A)
    clock.tick(2)
    first.save()  # still busy: what it was busy for so far is in the file
    assert json.loads(path.read_bytes())["busy"] == [busy("UTC", "2026-05", 2000)]
    clock.tick(1)
    first.replica_done("llama", REPLICA_A)
    assert first.changed
    first.save()
    second = UsageTally(path, ["UTC"], clock)
    assert second.tally_id == first.tally_id
    assert second.document() == first.document()
    assert second.busy_rows() == [busy("UTC", "2026-05", 3000)]
    second.replica_busy("llama", REPLICA_B)
    clock.tick(1)
    second.replica_done("llama", REPLICA_B)
    second.save()
    assert json.loads(path.read_bytes())["busy"] == [busy("UTC", "2026-05", 4000)]

    # A file written before busy time was counted: the same tally, from no busy time.
    path.write_text(tally_of([row("UTC", "2026-05", 1, 3, 2)]))
    older = UsageTally(path, ["UTC"], clock)
    assert (older.tally_id, older.rows(), older.busy_rows()) == (
        "a" * 32,
        [row("UTC", "2026-05", 1, 3, 2)],
        [],
    )
    assert not older.changed
    older.replica_busy("llama", REPLICA_A)
    clock.tick(1)
    older.replica_done("llama", REPLICA_A)
    older.save()
    on_disk = json.loads(path.read_bytes())
    assert on_disk["tally"] == "a" * 32
    assert on_disk["busy"] == [busy("UTC", "2026-05", 1000)]
