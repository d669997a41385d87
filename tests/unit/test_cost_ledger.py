"""The GPU ledger and what its runs cost: Pods observed, runs merged, months of a time
zone, prices on demand and on spot, exact to the cent."""

from __future__ import annotations

import datetime
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfoNotFoundError

import pytest

from privatellm.api.budget import GPUPrice
from privatellm.controllers.ledger import worth_writing
from privatellm.cost.ledger import (
    ARCHIVE_PART_BYTES,
    Capacity,
    Run,
    archivable,
    archive_name,
    archive_parts,
    dump,
    fill_parts,
    load,
    merge,
    observe,
    parts_for,
    timestamp,
)
from privatellm.cost.spend import cents, forecast, gpu_seconds, month_named, month_of, spend

H100 = "NVIDIA-H100-80GB-HBM3"
L4 = "NVIDIA-L4"
PRICES = [
    GPUPrice.model_validate({"gpuProduct": H100, "onDemandPerHour": 4.10, "spotPerHour": 1.64}),
    GPUPrice.model_validate({"gpuProduct": L4, "onDemandPerHour": 0.81}),
]


def at(text: str) -> int:
    moment = timestamp(text)
    assert moment is not None
    return moment


def pod(
    name: str = "llama-zone-a-1",
    *,
    model: str = "llama",
    gpus: int = 2,
    started: str | None = "2026-12-01T10:00:00Z",
    deleted: str | None = None,
    finished: list[str | None] | None = None,
    component: str = "inference-server",
) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "name": name,
        "uid": f"uid-{name}",
        "labels": {
            "app.kubernetes.io/component": component,
            "privatellm.io/inference-deployment": model,
        },
    }
    if deleted:
        meta["deletionTimestamp"] = deleted
    status: dict[str, Any] = {"startTime": started} if started else {}
    if finished is not None:
        status["containerStatuses"] = [
            {"state": {"terminated": {"finishedAt": f}} if f else {"running": {}}} for f in finished
        ]
    container = {"name": "vllm", "resources": {"limits": {"nvidia.com/gpu": str(gpus)}}}
    return {"metadata": meta, "spec": {"containers": [container]}, "status": status}


SPOT_NODE = {"nvidia.com/gpu.product": H100, "privatellm.io/capacity-type": "spot"}
ON_DEMAND_NODE = {"nvidia.com/gpu.product": H100}


def test_a_started_serving_pod_with_gpus_is_a_run_on_its_nodes_product_and_capacity() -> None:
    run = observe(pod(), SPOT_NODE)
    assert run == Run(
        uid="uid-llama-zone-a-1",
        pod="llama-zone-a-1",
        model="llama",
        gpu_product=H100,
        capacity="spot",
        gpus=2,
        start=at("2026-12-01T10:00:00Z"),
        end=None,
        seen=at("2026-12-01T10:00:00Z"),
    )
    assert observe(pod(), ON_DEMAND_NODE).capacity == "on-demand"  # type: ignore[union-attr]
    assert observe(pod(), None).gpu_product == ""  # type: ignore[union-attr]


def test_pods_that_hold_no_gpu_or_have_not_started_or_do_not_serve_are_not_runs() -> None:
    assert observe(pod(gpus=0), ON_DEMAND_NODE) is None
    assert observe(pod(started=None), ON_DEMAND_NODE) is None
    assert observe(pod(component="weight-prestage"), ON_DEMAND_NODE) is None


def test_a_run_ends_when_every_container_finished_else_when_deletion_was_asked() -> None:
    done = pod(finished=["2026-12-01T11:00:00Z", "2026-12-01T11:00:05Z"])
    assert observe(done, ON_DEMAND_NODE).end == at("2026-12-01T11:00:05Z")  # type: ignore[union-attr]
    going = pod(deleted="2026-12-01T12:00:00Z", finished=["2026-12-01T11:00:00Z", None])
    assert observe(going, ON_DEMAND_NODE).end == at("2026-12-01T12:00:00Z")  # type: ignore[union-attr]


def test_merge_adds_keeps_first_facts_ends_once_and_closes_vanished_runs_at_last_sight() -> None:
    first = observe(pod(), ON_DEMAND_NODE)
    assert first is not None
    now = at("2026-12-01T10:30:00Z")
    ledger = merge({}, [first], now)
    assert ledger[first.uid].seen == now
    # Seen again on another node's labels: the facts first written stay.
    moved = observe(pod(), SPOT_NODE)
    assert moved is not None
    later = at("2026-12-01T10:31:00Z")
    ledger = merge(ledger, [moved], later)
    assert (ledger[first.uid].capacity, ledger[first.uid].seen) == ("on-demand", later)
    # Gone while nobody looked: charged up to the last sight, not to now.
    closed = merge(ledger, [], at("2026-12-01T15:00:00Z"))
    assert (closed[first.uid].end, closed[first.uid].seen) == (later, later)
    # An ended run never changes again.
    assert merge(closed, [moved], at("2026-12-02T00:00:00Z")) == closed
    ended = observe(pod(deleted="2026-12-01T10:45:00Z"), ON_DEMAND_NODE)
    assert merge(ledger, [ended], later)[first.uid].end == at("2026-12-01T10:45:00Z")  # type: ignore[list-item]


def test_the_ledger_round_trips_through_configmap_data() -> None:
    run = observe(pod(), SPOT_NODE)
    assert run is not None
    data = dump({run.uid: run})
    assert list(data) == [run.uid] and all(isinstance(v, str) for v in data.values())
    assert load(data) == {run.uid: run}
    assert load(None) == {}


def test_months_follow_the_budgets_time_zone() -> None:
    december = month_named(2026, 12, "Europe/Amsterdam")
    assert december.start == at("2026-11-30T23:00:00Z")
    assert december.end == at("2026-12-31T23:00:00Z")
    assert month_named(2026, 12, "UTC").end == at("2027-01-01T00:00:00Z")
    # 23:30 UTC on the last day is already January in Amsterdam.
    assert month_of(at("2026-12-31T23:30:00Z"), "Europe/Amsterdam").label == "2027-01"
    assert month_of(at("2026-12-31T23:30:00Z"), "UTC").label == "2026-12"
    with pytest.raises(ZoneInfoNotFoundError):
        month_of(at("2026-12-01T00:00:00Z"), "Mars/Olympus_Mons")


def run(
    uid: str,
    start: str,
    end: str | None,
    *,
    model: str = "llama",
    product: str = H100,
    capacity: Capacity = "on-demand",
    gpus: int = 1,
    seen: str | None = None,
) -> Run:
    ended = at(end) if end else None
    return Run(
        uid,
        uid,
        model,
        product,
        capacity,
        gpus,
        at(start),
        ended,
        ended if ended is not None else at(seen or start),
    )


def test_seconds_are_clipped_to_the_window_and_an_open_run_counts_to_now() -> None:
    crossing = run("a", "2026-11-30T22:00:00Z", "2026-12-01T02:00:00Z", gpus=2)
    december = month_named(2026, 12, "UTC")
    assert gpu_seconds(crossing, december.start, december.end, 0) == 2 * 2 * 3600
    open_run = run("b", "2026-12-01T00:00:00Z", None)
    assert gpu_seconds(open_run, december.start, december.end, at("2026-12-01T00:10:00Z")) == 600


def test_spend_prices_on_demand_and_spot_exactly_and_names_what_it_cannot_price() -> None:
    december = month_named(2026, 12, "UTC")
    now = at("2026-12-10T00:00:00Z")
    runs = [
        # 3 h x 2 GPUs on demand at 4.10: 24.60
        run("a", "2026-12-01T00:00:00Z", "2026-12-01T03:00:00Z", gpus=2),
        # 90 min x 1 spot GPU at 1.64: 2.46
        run("b", "2026-12-02T00:00:00Z", "2026-12-02T01:30:00Z", capacity="spot"),
        # 1 s on an L4 at 0.81/h: 0.000225
        run("c", "2026-12-03T00:00:00Z", "2026-12-03T00:00:01Z", model="small", product=L4),
        # A product without a price: left out, and said.
        run("d", "2026-12-04T00:00:00Z", "2026-12-04T05:00:00Z", product="NVIDIA-B200"),
        # November: not this month.
        run("e", "2026-11-01T00:00:00Z", "2026-11-02T00:00:00Z"),
    ]
    spent = spend(runs, PRICES, None, december, now)
    assert spent.amount == Decimal("24.60") + Decimal("2.46") + Decimal("0.000225")
    assert cents(spent.amount) == Decimal("27.06")
    assert spent.gpu_seconds == 3 * 2 * 3600 + 90 * 60 + 1 + 5 * 3600, "unpriced time too"
    assert spent.unpriced == {("NVIDIA-B200", "llama")} and not spent.complete
    assert dict(spent.by_model) == {"llama": Decimal("27.06"), "small": Decimal("0.000225")}
    only_small = spend(runs, PRICES, {"small"}, december, now)
    assert only_small.amount == Decimal("0.000225") and only_small.complete


def test_the_forecast_adds_what_runs_now_for_the_rest_of_the_month() -> None:
    december = month_named(2026, 12, "UTC")
    now = at("2026-12-31T00:00:00Z")  # one day left
    running = run("a", "2026-12-30T00:00:00Z", None, gpus=2, seen="2026-12-31T00:00:00Z")
    spent = spend([running], PRICES, None, december, now)
    # 24 h so far and 24 h to come, each x 2 GPUs x 4.10
    assert spent.amount == Decimal("196.80")
    assert spent.burn_per_hour == Decimal("8.20")
    assert forecast(spent, december, now) == Decimal("393.60")
    assert forecast(spent, december, december.end + 5) == spent.amount
    assert datetime.datetime.fromtimestamp(december.end, datetime.UTC).month == 1


def test_the_ledger_is_written_for_news_not_for_every_sighting() -> None:
    first = run("a", "2026-12-01T00:00:00Z", None, seen="2026-12-01T00:00:00Z")
    stored = {first.uid: first}
    assert worth_writing({}, stored)
    soon = merge(stored, [first], at("2026-12-01T00:00:59Z"))
    assert not worth_writing(stored, soon), "a sighting a few seconds later is no news"
    later = merge(stored, [first], at("2026-12-01T00:01:00Z"))
    assert worth_writing(stored, later)
    assert worth_writing(stored, merge(stored, [], at("2026-12-01T00:00:10Z"))), "an end is"


def test_a_run_is_selected_by_its_models_labels_as_first_seen() -> None:
    labelled = observe(pod(), ON_DEMAND_NODE, {"team": "support", "tier": "gold"})
    assert labelled is not None
    assert labelled.selected_by({"team": "support"}) and labelled.selected_by({})
    assert not labelled.selected_by({"team": "finance"})
    assert load(dump({labelled.uid: labelled}))[labelled.uid].model_labels == {
        "team": "support",
        "tier": "gold",
    }


def test_runs_that_ended_two_days_ago_are_archived_by_the_utc_month_they_ended_in() -> None:
    ledger = {
        r.uid: r
        for r in (
            run("open", "2026-11-20T00:00:00Z", None),
            run("recent", "2026-12-01T00:00:00Z", "2026-12-04T23:00:00Z"),
            run("december", "2026-11-30T20:00:00Z", "2026-12-01T02:00:00Z"),
            run("november", "2026-11-01T00:00:00Z", "2026-11-30T23:00:00Z"),
        )
    }
    months = archivable(ledger, at("2026-12-06T12:00:00Z"))
    assert {month: sorted(runs) for month, runs in months.items()} == {
        "2026-12": ["december"],
        "2026-11": ["november"],
    }


def test_archive_parts_fill_up_and_a_run_archived_before_is_not_added_twice() -> None:
    runs = {
        f"{n:05d}": run(f"{n:05d}", "2026-11-01T00:00:00Z", "2026-11-02T00:00:00Z")
        for n in range(8000)
    }
    last = {"00000": runs["00000"]}
    written = fill_parts(["2026-10.1", "2026-11.1"], "2026-11", last, runs)
    assert [part for part, _ in written] == ["2026-11.1", "2026-11.2", "2026-11.3"]
    # About 211 bytes a run: 3,727 fill a part.
    sizes = [sum(len(k) + len(v) for k, v in dump(content).items()) for _, content in written]
    assert all(ARCHIVE_PART_BYTES - 300 < size <= ARCHIVE_PART_BYTES for size in sizes[:2]), sizes
    placed = [uid for _, content in written for uid in content]
    assert sorted(placed) == sorted(runs), "each run once, none lost"
    assert fill_parts([], "2026-12", {}, {"x": runs["00001"]}) == [
        ("2026-12.1", {"x": runs["00001"]})
    ]


def test_a_month_reads_the_parts_of_the_utc_month_before_it_and_after() -> None:
    parts = ["2026-11.1", "2026-11.2", "2026-12.1", "2027-01.1", "2026-10.1"]
    assert parts_for(parts, "2026-12") == ["2026-11.1", "2026-11.2", "2026-12.1", "2027-01.1"]
    assert parts_for(parts, "2027-01") == ["2026-12.1", "2027-01.1"], "December of the year before"
    assert archive_parts("2026-11.1,2026-12.1") == ["2026-11.1", "2026-12.1"]
    assert (
        archive_parts(None) == [] and archive_name("2026-11.2") == "privatellm-gpu-ledger-2026-11.2"
    )
