"""The gateway's demand figures, hold queues and replica-change signal, without sockets."""

from __future__ import annotations

import asyncio

import pytest

from privatellm.gateway.config import DiscoverySettings, HoldSettings
from privatellm.gateway.demand import (
    MAX_WAIT_SECONDS,
    Demand,
    DemandQuery,
    RateWindow,
    parse_demand_query,
)
from privatellm.gateway.discovery import EndpointWatcher, ReplicaChanges
from privatellm.gateway.errors import GatewayError
from privatellm.gateway.holding import HoldQueues, retry_after

from .test_gateway_discovery import endpoint, endpoint_slice


def test_a_rate_window_counts_the_last_seconds_only() -> None:
    window = RateWindow(seconds=10)
    window.add(100.2)
    window.add(100.9, 2)
    window.add(105.0, 4)
    assert window.total(105.5) == 7
    assert window.rate(105.5) == 0.7
    # 100.x leaves the window once 110 begins; 105 stays until 115.
    assert window.total(109.99) == 7
    assert window.total(110.0) == 4
    assert window.total(115.0) == 0


def test_a_rate_window_reuses_a_bucket_whose_second_has_passed() -> None:
    window = RateWindow(seconds=10)
    window.add(3.0, 5)
    window.add(13.0, 1)  # same bucket, ten seconds later: the old amount is gone
    assert window.total(13.5) == 1
    assert window.total(2.0) == 0, "a time before the bucket's second sees nothing of it"


def test_a_model_becomes_wanted_once_until_it_is_satisfied() -> None:
    now = [50.0]
    demand = Demand(lambda: now[0])
    assert demand.want("llama") is True
    now[0] = 60.0
    assert [demand.want("llama") for _ in range(49)] == [False] * 49
    assert demand.seq == 1
    assert demand.document(["llama"])["models"]["llama"]["wantedSince"] == 50.0
    demand.satisfied("llama")
    assert not demand.wanted("llama")
    assert demand.want("llama") is True and demand.seq == 2


def test_the_demand_document_lists_configured_models_with_rates_and_totals() -> None:
    now = [1000.0]
    demand = Demand(lambda: now[0])
    demand.request("llama")
    demand.request("llama")
    demand.tokens("llama", 30, 90)
    document = demand.document(["small", "llama"])
    assert list(document["models"]) == ["llama", "small"]
    llama = document["models"]["llama"]
    assert llama["requestsTotal"] == 2 and llama["lastRequest"] == 1000.0
    assert llama["requestsPerSecond"] == 2 / document["windowSeconds"]
    assert llama["promptTokensPerSecond"] == 30 / document["windowSeconds"]
    assert llama["completionTokensTotal"] == 90
    assert document["models"]["small"]["lastRequest"] is None
    assert (document["seq"], document["instance"]) == (0, demand.instance)


def test_a_long_poll_waits_only_while_nothing_changed() -> None:
    async def scenario() -> None:
        demand = Demand(lambda: 0.0)
        poll = asyncio.create_task(demand.wait_change(0, demand.instance, 30))
        await asyncio.sleep(0)
        assert not poll.done()
        demand.want("llama")
        await asyncio.wait_for(poll, 5)
        # These return without waiting (30 s would trip wait_for).
        await asyncio.wait_for(demand.wait_change(0, None, 30), 5)
        await asyncio.wait_for(demand.wait_change(1, "someone-else", 30), 5)
        demand.stop()
        await asyncio.wait_for(demand.wait_change(1, None, 30), 5)

    asyncio.run(scenario())


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("", DemandQuery()),
        ("since=3", DemandQuery(since=3)),
        ("since=3&wait=2.5", DemandQuery(since=3, wait=2.5)),
        ("since=0&wait=3600", DemandQuery(since=0, wait=MAX_WAIT_SECONDS)),
        ("since=4&instance=ab12&wait=0", DemandQuery(since=4, instance="ab12", wait=0)),
    ],
)
def test_demand_queries_are_read(query: str, expected: DemandQuery) -> None:
    assert parse_demand_query(query) == expected


@pytest.mark.parametrize(
    ("query", "param"),
    [
        ("since=x", "since"),
        ("since=%D9%A3", "since"),  # an Arabic-Indic digit is a digit, not a sequence number
        ("since=1&wait=-0.5", "wait"),
        ("since=1&wait=1e400", "wait"),
        ("wait=1", "wait"),
        ("since=1&since=1", "since"),
        ("instance=" + "a" * 65, "instance"),
        ("limit=3", "limit"),
        ("since", None),
        ("&", None),
    ],
)
def test_malformed_demand_queries_name_the_parameter(query: str, param: str | None) -> None:
    with pytest.raises(GatewayError) as raised:
        parse_demand_query(query)
    assert (raised.value.status, raised.value.code, raised.value.param) == (
        400,
        "invalid_query",
        param,
    )


def test_retry_after_is_whole_seconds_and_at_least_one() -> None:
    assert retry_after(0.01) == {"Retry-After": "1"}
    assert retry_after(-5) == {"Retry-After": "1"}
    assert retry_after(152.2) == {"Retry-After": "153"}


def test_held_requests_go_on_oldest_first_and_a_full_queue_says_when_to_retry() -> None:
    async def scenario() -> None:
        holds = HoldQueues()
        settings = HoldSettings(max_queue=3, max_wait_seconds=40)
        places = [holds.enter("llama", settings) for _ in range(3)]
        order: list[int] = []

        async def wait(number: int) -> None:
            await holds.wait(places[number], None)
            order.append(number)

        waiting = [asyncio.create_task(wait(n)) for n in (2, 0, 1)]
        await asyncio.sleep(0)
        with pytest.raises(GatewayError) as full:
            holds.enter("llama", settings)
        assert full.value.code == "hold_queue_full"
        assert full.value.headers == {"Retry-After": "40"}
        assert holds.held("llama") == 3 and holds.held("small") == 0

        assert holds.release("llama") == 3
        await asyncio.gather(*waiting)
        assert order == [0, 1, 2], "released in the order they arrived, not the order they waited"
        assert holds.held("llama") == 0

    asyncio.run(scenario())


def test_a_stopped_hold_queue_refuses_held_and_later_requests() -> None:
    async def scenario() -> None:
        holds = HoldQueues()
        settings = HoldSettings(max_wait_seconds=300)
        place = holds.enter("llama", settings)
        waiting = asyncio.create_task(holds.wait(place, None))
        await asyncio.sleep(0)
        holds.stop(lambda: GatewayError(503, "gateway_stopping", "stopping"))
        with pytest.raises(GatewayError) as stopped:
            await asyncio.wait_for(waiting, 5)
        assert stopped.value.code == "gateway_stopping"
        with pytest.raises(GatewayError):
            holds.enter("llama", settings)
        assert holds.held("llama") == 0

    asyncio.run(scenario())


def test_a_held_request_whose_client_left_frees_its_place() -> None:
    async def scenario() -> None:
        holds = HoldQueues()
        place = holds.enter("llama", HoldSettings(max_queue=1, max_wait_seconds=300))
        gone: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        waiting = asyncio.create_task(holds.wait(place, gone))
        await asyncio.sleep(0)
        gone.set_result(None)
        with pytest.raises(GatewayError) as left:
            await asyncio.wait_for(waiting, 5)
        assert (left.value.status, left.value.code) == (499, "client_disconnected")
        assert holds.held("llama") == 0
        holds.enter("llama", HoldSettings(max_queue=1, max_wait_seconds=300))

    asyncio.run(scenario())


def test_replica_changes_wake_only_the_waiters_of_a_changed_service() -> None:
    async def scenario() -> None:
        changes = ReplicaChanges()
        llama = asyncio.create_task(changes.wait(["llama", "small"]))
        other = asyncio.create_task(changes.wait(["other"]))
        await asyncio.sleep(0)
        changes.notify(["small"])
        await asyncio.wait_for(llama, 5)
        assert not other.done()
        changes.notify_all()
        await asyncio.wait_for(other, 5)

    asyncio.run(scenario())


def test_the_endpoint_watcher_tells_which_services_changed() -> None:
    async def scenario() -> None:
        watcher = EndpointWatcher(DiscoverySettings(api_server="https://api.invalid"), "team")
        watcher.replace([endpoint_slice("llama-a", "llama", [])])
        llama = asyncio.create_task(watcher.changes.wait(["llama"]))
        small = asyncio.create_task(watcher.changes.wait(["small"]))
        await asyncio.sleep(0)
        ready = endpoint_slice("llama-a", "llama", [endpoint("10.0.0.1")], version="2")
        watcher.apply_event({"type": "MODIFIED", "object": ready})
        await asyncio.wait_for(llama, 5)
        assert not small.done()
        # The same view again is no change.
        again = asyncio.create_task(watcher.changes.wait(["llama"]))
        await asyncio.sleep(0)
        watcher.apply_event({"type": "MODIFIED", "object": {**ready}})
        await asyncio.sleep(0)
        assert not again.done()
        watcher.replace([])  # a fresh list: everyone looks again
        await asyncio.wait_for(asyncio.gather(small, again), 5)

    asyncio.run(scenario())
