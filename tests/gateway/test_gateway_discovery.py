"""Routing over discovered replicas: local upstreams stand in for a Service's ready Pods.

The gateway is given the view an EndpointWatcher would build, with the URLs of
fake upstreams on loopback; the watch itself is tested against a real API server
in tests/integration/test_gateway_discovery.py.
"""

from __future__ import annotations

import asyncio
from typing import Any

from privatellm.gateway.discovery import Replica
from tests.gateway.conftest import DiscoveredView, base_config, gateway_stack, upstream


def discovered_config(
    static: dict[str, list[str]], fallback: str | None = None, zone: str | None = None
) -> dict[str, Any]:
    """Models whose replicas come from discovery (their Service is named like them)."""
    config = base_config(static)
    for route in config["models"]:
        route["service"] = route["name"]
    if fallback:
        config["models"][0]["fallback"] = fallback
    config["discovery"] = {"zone": zone} if zone else {}
    return config


def test_requests_take_the_discovered_replicas_in_turn() -> None:
    async def scenario() -> None:
        async with upstream() as first, upstream() as second, upstream() as service:
            view = DiscoveredView({"llama": [Replica(first.url), Replica(second.url)]})
            config = discovered_config({"llama": [service.url]})
            async with gateway_stack(config, discovered=view) as stack:
                statuses = [(await stack.chat("hi"))[0] for _ in range(4)]
        assert statuses == [200] * 4
        assert (len(first.requests), len(second.requests)) == (2, 2)
        assert service.requests == [], "the Service address is not used once discovery listed"

    asyncio.run(scenario())


def test_a_dead_replica_is_skipped() -> None:
    async def scenario() -> None:
        async with upstream(fail="close") as dead, upstream() as alive:
            view = DiscoveredView({"llama": [Replica(dead.url), Replica(alive.url)]})
            async with gateway_stack(discovered_config({"llama": []}), discovered=view) as stack:
                statuses = [(await stack.chat("hi"))[0] for _ in range(6)]
                retries = stack.gateway.metering.upstream_retries.labels("llama")._value.get()
        assert statuses == [200] * 6
        assert len(alive.requests) == 6
        # Cooling down after its first failure, the dead replica is not tried again.
        assert len(dead.requests) == 1 and retries == 1

    asyncio.run(scenario())


def test_no_ready_replica_moves_to_the_fallback_model_then_answers_503() -> None:
    async def scenario() -> None:
        async with upstream() as service, upstream(reply="from the fallback") as small:
            view = DiscoveredView({"llama": [], "small": [Replica(small.url)]})
            config = discovered_config(
                {"llama": [service.url], "small": [small.url]}, fallback="small"
            )
            async with gateway_stack(config, discovered=view) as stack:
                status, body = await stack.chat("hi")
                assert status == 200, body
                assert body["choices"][0]["message"]["content"] == "from the fallback"
                assert stack.events[-1].served_by == "small"

                view.services = {}
                status, body = await stack.chat("hi")
                assert status == 503 and body["error"]["code"] == "no_ready_replica"
        assert service.requests == [], "no ready replica is not a reason to try the Service"

    asyncio.run(scenario())


def test_the_service_address_serves_until_discovery_has_listed() -> None:
    async def scenario() -> None:
        async with upstream() as service:
            view = DiscoveredView()
            config = discovered_config({"llama": [service.url]})
            async with gateway_stack(config, discovered=view) as stack:
                status, _ = await stack.chat("hi")
        assert status == 200 and len(service.requests) == 1

    asyncio.run(scenario())


def test_replicas_in_the_gateways_zone_come_first_and_other_zones_take_over() -> None:
    async def scenario() -> None:
        async with upstream() as far, upstream() as near, upstream() as also_far:
            view = DiscoveredView(
                {
                    "llama": [
                        Replica(far.url, "zone-a"),
                        Replica(near.url, "zone-b"),
                        Replica(also_far.url, "zone-c"),
                    ]
                }
            )
            config = discovered_config({"llama": []}, zone="zone-b")
            async with gateway_stack(config, discovered=view) as stack:
                statuses = [(await stack.chat("hi"))[0] for _ in range(4)]
                assert statuses == [200] * 4
                assert len(near.requests) == 4
                assert far.requests == [] and also_far.requests == []

                near.fail = "500"
                statuses = [(await stack.chat("hi"))[0] for _ in range(4)]
        assert statuses == [200] * 4
        assert len(far.requests) + len(also_far.requests) == 4
        assert far.requests and also_far.requests, "the other zones share the load"

    asyncio.run(scenario())
