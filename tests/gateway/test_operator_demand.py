"""The operator's demand collector against a real gateway's peer listener on loopback."""

from __future__ import annotations

import asyncio

from privatellm.autoscale import aggregate_demand
from privatellm.controllers.demand import DemandCollector, PeerAccess
from privatellm.gateway.discovery import Replica
from privatellm.gateway.quotas import peer_token

from .test_gateway_holding import HANG_GUARD_SECONDS, HASH_KEY, at_zero, chat, peer_port, until


def test_a_request_at_zero_wakes_the_operator_at_once_and_once() -> None:
    async def scenario() -> None:
        async with (
            asyncio.timeout(HANG_GUARD_SECONDS),
            at_zero() as (stack, view, model),
            peer_port(stack) as peer,
        ):
            changes: list[tuple[str, bool]] = []
            collector = DemandCollector(
                lambda ns, wake: changes.append((ns, wake)),
                lambda _ns: [peer.url],
                lambda _ns: PeerAccess(peer_token(HASH_KEY), False),
            )
            running = asyncio.create_task(collector.run())
            await asyncio.sleep(0)
            collector.watch("team-a")
            await until(lambda: bool(changes), "the first answer")
            assert changes == [("team-a", False)]
            idle = aggregate_demand(collector.reports("team-a", "llama"))
            assert (idle.gateways, idle.held, idle.wanted) == (1, 0, False)

            held = [asyncio.create_task(chat(stack, f"request {n}")) for n in range(20)]
            await until(lambda: ("team-a", True) in changes, "a wake")
            await until(lambda: stack.gateway.demand.model("llama").held == 20, "all held")
            assert changes.count(("team-a", True)) == 1
            waking = aggregate_demand(collector.reports("team-a", "llama"))
            assert waking.wanted and waking.gateways == 1

            view.set("llama", [Replica(model.url)])
            assert [a.status for a in await asyncio.gather(*held)] == [200] * 20
            running.cancel()

    asyncio.run(scenario())


def test_a_gateway_that_refuses_the_token_reports_nothing() -> None:
    async def scenario() -> None:
        async with (
            asyncio.timeout(HANG_GUARD_SECONDS),
            at_zero() as (stack, _view, _model),
            peer_port(stack) as peer,
        ):
            collector = DemandCollector(
                lambda _ns, _wake: None,
                lambda _ns: [peer.url],
                lambda _ns: PeerAccess(peer_token(b"x" * 32), False),
            )
            running = asyncio.create_task(collector.run())
            await asyncio.sleep(0)
            collector.watch("team-a")
            await until(lambda: bool(stack.events), "the refusal audited")
            assert stack.events[-1].reason == "invalid_peer_token"
            assert collector.reports("team-a", "llama") == []
            running.cancel()

    asyncio.run(scenario())
