"""Replicas of one gateway count a subject's quota together, over real HTTP on loopback."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import aiohttp
from aiohttp import web

from privatellm.api.access import Quotas
from privatellm.devcluster.cluster import free_port
from privatellm.gateway.config import GatewayConfig, QuotaSharing
from privatellm.gateway.quotas import (
    COUNTS_PATH,
    QuotaPeers,
    QuotaTracker,
    counts_app,
    peer_token,
)

from .conftest import Stack, base_config, gateway_stack, upstream

HASH_KEY = b"n" * 32
NOW = 1_000_020.0  # the same minute for every replica
MINUTE = int(NOW // 60)
ALICE = "alice/APIKey//alice"  # quota_key of alice's API key under policy "alice"


@asynccontextmanager
async def replicas(upstream_url: str, count: int, **sharing: Any) -> AsyncIterator[list[Stack]]:
    """`count` gateways, each with a peer listener, each told the others' listeners."""
    ports = [free_port() for _ in range(count)]
    async with AsyncExitStack() as stack:
        stacks = []
        for index in range(count):
            config = base_config({"llama": [upstream_url]}, quotas={"requestsPerMinute": 3})
            others = [f"http://127.0.0.1:{p}" for i, p in enumerate(ports) if i != index]
            config["quotaSharing"] = {"peers": others, "intervalSeconds": 60, **sharing}
            replica = await stack.enter_async_context(
                gateway_stack(config, hash_key=HASH_KEY, clock=lambda: NOW)
            )
            runner = web.AppRunner(replica.gateway.peer_app(), access_log=None)
            await runner.setup()
            stack.push_async_callback(runner.cleanup)
            await web.TCPSite(runner, "127.0.0.1", ports[index]).start()
            stacks.append(replica)
        yield stacks


async def sync(replica: Stack) -> None:
    assert replica.gateway.quota_peers is not None
    await replica.gateway.quota_peers.sync_once(replica.http)


def test_replicas_hold_a_subject_to_one_limit_together() -> None:
    async def scenario() -> None:
        async with upstream() as model, replicas(model.url, 2) as (a, b):
            assert [(await a.chat("hi"))[0] for _ in range(2)] == [200, 200]
            await sync(b)
            assert [(await b.chat("hi"))[0] for _ in range(2)] == [200, 429]
            assert b.events[-1].reason == "rate_limited:requests_per_minute"
            await sync(a)
            assert (await a.chat("hi"))[0] == 429
            # Without sharing, each replica would have allowed three.
            assert len(model.requests) == 3

    asyncio.run(scenario())


def test_replicas_ask_each_other_on_their_own() -> None:
    async def scenario() -> None:
        async with upstream() as model, replicas(model.url, 3, intervalSeconds=0.05) as stacks:
            a, b, c = stacks
            assert (await a.chat("hi"))[0] == 200
            assert (await b.chat("hi"))[0] == 200
            deadline = time.monotonic() + 10
            while c.gateway.quotas.count((ALICE, "req", MINUTE)) < 2:
                assert time.monotonic() < deadline, "c never learnt what a and b counted"
                await asyncio.sleep(0.02)
            assert [(await c.chat("hi"))[0] for _ in range(2)] == [200, 429]

    asyncio.run(scenario())


def test_counts_are_served_only_to_holders_of_the_replicas_token() -> None:
    async def scenario() -> None:
        async with upstream() as model, replicas(model.url, 1) as (a,):
            assert (await a.chat("hi"))[0] == 200
            port = free_port()
            runner = web.AppRunner(a.gateway.peer_app(), access_log=None)
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", port).start()
            url = f"http://127.0.0.1:{port}{COUNTS_PATH}"
            try:
                async with aiohttp.ClientSession() as http:
                    for token in (None, "Bearer guess", f"Bearer {peer_token(b'x' * 32)}"):
                        headers = {"Authorization": token} if token else {}
                        async with http.get(url, headers=headers) as response:
                            assert response.status == 401
                            assert "counts" not in await response.json()
                    headers = {"Authorization": f"Bearer {peer_token(HASH_KEY)}"}
                    async with http.get(url, headers=headers) as response:
                        assert response.status == 200
                        assert (await response.json())["counts"] == [[ALICE, "req", MINUTE, 1]]
            finally:
                await runner.cleanup()

    asyncio.run(scenario())


def test_a_replica_that_stops_answering_is_forgotten() -> None:
    async def scenario() -> None:
        port = free_port()
        other = QuotaTracker()
        for _ in range(5):
            other.check(ALICE, Quotas(requests_per_minute=100), NOW)
        runner = web.AppRunner(counts_app(other, peer_token(HASH_KEY)), access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        now = [0.0]
        mine = QuotaTracker()
        settings = QuotaSharing(peers=[f"http://127.0.0.1:{port}"], interval_seconds=1)
        peers = QuotaPeers(settings, mine, peer_token(HASH_KEY), None, None, lambda: now[0])
        async with aiohttp.ClientSession() as http:
            await peers.sync_once(http)
            assert mine.count((ALICE, "req", MINUTE)) == 5
            await runner.cleanup()
            now[0] = 3.0  # unanswered, but not for long: its counts still hold
            await peers.sync_once(http)
            assert mine.count((ALICE, "req", MINUTE)) == 5
            now[0] = 10.0
            await peers.sync_once(http)
            assert mine.count((ALICE, "req", MINUTE)) == 0

    asyncio.run(scenario())


def test_a_reload_turns_quota_sharing_on_and_off() -> None:
    async def scenario() -> None:
        config = base_config({"llama": []}, quotas={"requestsPerMinute": 3})
        async with upstream() as model:
            config["models"][0]["endpoints"] = [model.url]
            async with (
                replicas(model.url, 1) as (a,),
                gateway_stack(config, hash_key=HASH_KEY, clock=lambda: NOW) as b,
            ):
                for _ in range(2):
                    assert (await a.chat("hi"))[0] == 200
                port = free_port()
                runner = web.AppRunner(a.gateway.peer_app(), access_log=None)
                await runner.setup()
                await web.TCPSite(runner, "127.0.0.1", port).start()
                try:
                    assert b.gateway.quota_peers is None
                    sharing = {"peers": [f"http://127.0.0.1:{port}"], "intervalSeconds": 60}
                    b.gateway.reload(
                        GatewayConfig.model_validate({**config, "quotaSharing": sharing})
                    )
                    assert b.gateway.quota_peers is not None
                    await sync(b)
                    assert [(await b.chat("hi"))[0] for _ in range(2)] == [200, 429]
                    b.gateway.reload(GatewayConfig.model_validate(config))
                    assert b.gateway.quota_peers is None
                    assert (await b.chat("hi"))[0] == 200  # its own count alone: 2 of 3
                finally:
                    await runner.cleanup()

    asyncio.run(scenario())


def test_a_reload_turns_discovery_on() -> None:
    async def scenario() -> None:
        config = base_config({"llama": ["http://127.0.0.1:9"]})
        async with gateway_stack(config) as stack:
            assert stack.gateway.discovered is None
            # An API server that is not there: the watch keeps trying in the background.
            discovery = {"apiServer": "http://127.0.0.1:9", "tokenFile": "/nonexistent"}
            stack.gateway.reload(GatewayConfig.model_validate({**config, "discovery": discovery}))
            assert stack.gateway.discovered is not None
            assert (await stack.chat("hi"))[0] == 503  # still serving, from the static list

    asyncio.run(scenario())
