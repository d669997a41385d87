"""Scale from zero: requests held until a replica is ready, and the demand the operator reads.

Real sockets on loopback: the gateway, fake OpenAI upstreams, and the gateway's peer
port. Discovery is a DiscoveredView the tests change as an EndpointSlice watch would.
Waits use small limits from the configuration; a hang guard bounds every test.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from privatellm.gateway.demand import DEMAND_PATH
from privatellm.gateway.discovery import Replica
from privatellm.gateway.listener import start_listener
from privatellm.gateway.quotas import peer_token
from tests.support import raw_http
from tests.support.fake_openai import FakeOpenAI

from .conftest import ALICE_KEY, DiscoveredView, Stack, base_config, gateway_stack, upstream

HASH_KEY = b"h" * 32
# Nothing here should take long; past this a test has hung.
HANG_GUARD_SECONDS = 20


def zero_config(
    max_queue: int = 256, max_wait: float = 60.0, fallback: str | None = None
) -> dict[str, Any]:
    """llama (found through discovery, with hold settings) and small, its possible fallback."""
    config = base_config({"llama": [], "small": []})
    for route in config["models"]:
        route["service"] = route["name"]
    config["models"][0]["hold"] = {"maxQueue": max_queue, "maxWaitSeconds": max_wait}
    if fallback:
        config["models"][0]["fallback"] = fallback
    config["discovery"] = {}
    return config


async def until(condition: Callable[[], bool], what: str) -> None:
    """Wait (by yielding to the loop) until `condition` holds."""
    deadline = time.monotonic() + HANG_GUARD_SECONDS
    while not condition():
        assert time.monotonic() < deadline, f"never: {what}"
        await asyncio.sleep(0.005)


def held(stack: Stack, model: str = "llama") -> int:
    return stack.gateway.demand.model(model).held


@dataclass
class Answer:
    status: int
    body: Any
    headers: dict[str, str]


async def chat(stack: Stack, text: str, model: str = "llama") -> Answer:
    body = {"model": model, "messages": [{"role": "user", "content": text}]}
    headers = {"Authorization": f"Bearer {ALICE_KEY}"}
    async with stack.http.post(
        stack.url + "/v1/chat/completions", json=body, headers=headers
    ) as response:
        return Answer(response.status, await response.json(), dict(response.headers))


class PeerPort:
    """The gateway's peer listener, called with the replicas' token unless told otherwise."""

    def __init__(self, stack: Stack, url: str) -> None:
        self.stack = stack
        self.url = url

    async def __call__(
        self,
        query: str = "",
        path: str = DEMAND_PATH,
        method: str = "GET",
        authorization: str | None = None,
    ) -> Answer:
        if authorization is None:
            authorization = f"Bearer {peer_token(HASH_KEY)}"
        headers = {"Authorization": authorization} if authorization else {}
        target = self.url + path + (f"?{query}" if query else "")
        async with self.stack.http.request(method, target, headers=headers) as response:
            return Answer(response.status, await response.json(), dict(response.headers))


@asynccontextmanager
async def peer_port(stack: Stack) -> AsyncIterator[PeerPort]:
    """The gateway's peer listener on loopback, for as long as the block runs."""
    runner = await start_listener(stack.gateway.peer_app(), stack.gateway, "127.0.0.1", 0)
    try:
        yield PeerPort(stack, f"http://127.0.0.1:{runner.addresses[0][1]}")
    finally:
        await runner.cleanup()


@asynccontextmanager
async def at_zero(
    max_queue: int = 256, max_wait: float = 60.0
) -> AsyncIterator[tuple[Stack, DiscoveredView, FakeOpenAI]]:
    """A gateway whose llama has no ready replica, and the upstream that will be one."""
    async with upstream() as model:
        view = DiscoveredView({"llama": []})
        config = zero_config(max_queue, max_wait)
        async with gateway_stack(config, discovered=view, hash_key=HASH_KEY) as stack:
            yield stack, view, model


def test_requests_at_zero_are_held_then_answered_in_arrival_order() -> None:
    async def scenario() -> None:
        async with asyncio.timeout(HANG_GUARD_SECONDS), at_zero() as (stack, view, model):
            requests = []
            for number in range(5):
                requests.append(asyncio.create_task(chat(stack, f"request {number}")))
                await until(lambda n=number: held(stack) == n + 1, f"{number + 1} held")
            assert not any(task.done() for task in requests)
            assert model.requests == []

            view.set("llama", [Replica(model.url)])
            answers = await asyncio.gather(*requests)

            assert [a.status for a in answers] == [200] * 5
            sent = [r.json()["messages"][0]["content"] for r in model.requests]
            assert sent == [f"request {n}" for n in range(5)]
            assert held(stack) == 0
            assert len(stack.events) == 5
            assert all(e.status == 200 and e.held_ms and e.held_ms > 0 for e in stack.events)
            demand = stack.gateway.demand
            assert not demand.wanted("llama"), "a ready replica ends the wanted state"
            assert demand.seq == 1

            # With a replica ready, nothing is held.
            assert (await chat(stack, "again")).status == 200
            assert stack.events[-1].held_ms is None

            # Back at zero, the next request starts another scale from zero: one more wake.
            view.set("llama", [])
            later = asyncio.create_task(chat(stack, "later"))
            await until(lambda: held(stack) == 1, "held again")
            assert demand.wanted("llama") and demand.seq == 2
            view.set("llama", [Replica(model.url)])
            assert (await later).status == 200

    asyncio.run(scenario())


def test_fifty_requests_at_zero_wake_the_operator_once() -> None:
    async def scenario() -> None:
        async with (
            asyncio.timeout(HANG_GUARD_SECONDS),
            at_zero() as (stack, view, model),
            peer_port(stack) as peer,
        ):
            first = await peer()
            assert first.status == 200 and first.body["seq"] == 0
            assert first.body["models"]["llama"]["wanted"] is False
            instance = first.body["instance"]
            poll = asyncio.create_task(peer(f"since=0&instance={instance}&wait=30"))
            requests = [asyncio.create_task(chat(stack, f"r{n}")) for n in range(50)]

            woken = await poll
            assert woken.status == 200
            assert woken.body["seq"] == 1
            llama = woken.body["models"]["llama"]
            assert llama["wanted"] is True and llama["held"] >= 1
            assert woken.body["models"]["small"]["wanted"] is False

            await until(lambda: held(stack) == 50, "all 50 held")
            # The other 49 are not news: the next poll waits out its time.
            again = await peer(f"since=1&instance={instance}&wait=0.2")
            assert again.body["seq"] == 1
            assert again.body["models"]["llama"]["held"] == 50

            view.set("llama", [Replica(model.url)])
            answers = await asyncio.gather(*requests)
            assert [a.status for a in answers] == [200] * 50
            after = await peer()
            assert after.body["seq"] == 1
            assert after.body["models"]["llama"]["wanted"] is False
            assert after.body["models"]["llama"]["held"] == 0

    asyncio.run(scenario())


def test_a_full_hold_queue_answers_503_with_retry_after() -> None:
    async def scenario() -> None:
        async with asyncio.timeout(HANG_GUARD_SECONDS), at_zero(max_queue=2) as (stack, view, m):
            waiting = [asyncio.create_task(chat(stack, f"r{n}")) for n in range(2)]
            await until(lambda: held(stack) == 2, "two held")

            refused = await chat(stack, "one too many")
            assert refused.status == 503
            assert refused.body["error"]["code"] == "hold_queue_full"
            assert refused.body["error"]["type"] == "service_unavailable"
            assert 1 <= int(refused.headers["Retry-After"]) <= 60
            [event] = stack.events
            assert (event.status, event.reason, event.held_ms) == (503, "hold_queue_full", None)

            view.set("llama", [Replica(m.url)])
            assert [a.status for a in await asyncio.gather(*waiting)] == [200, 200]
            assert len(stack.events) == 3

    asyncio.run(scenario())


def test_a_request_held_past_its_wait_gets_503_with_retry_after() -> None:
    async def scenario() -> None:
        async with asyncio.timeout(HANG_GUARD_SECONDS), at_zero(max_wait=0.2) as (stack, _, m):
            refused = await chat(stack, "hello")
            assert refused.status == 503
            assert refused.body["error"]["code"] == "model_scaling_from_zero_timeout"
            assert refused.headers["Retry-After"] == "1"
            [event] = stack.events
            assert (event.status, event.reason) == (503, "model_scaling_from_zero_timeout")
            assert event.held_ms is not None and event.held_ms > 0
            assert held(stack) == 0
            gauge = stack.gateway.metering.held.labels("llama")._value.get()
            assert gauge == 0
            assert stack.gateway.demand.wanted("llama"), "still at zero, so still wanted"
            assert m.requests == []

    asyncio.run(scenario())


def test_a_client_that_leaves_a_held_request_frees_its_place() -> None:
    async def scenario() -> None:
        async with asyncio.timeout(HANG_GUARD_SECONDS), at_zero(max_queue=1) as (stack, view, m):
            leaving = asyncio.create_task(chat(stack, "never mind"))
            await until(lambda: held(stack) == 1, "held")
            leaving.cancel()
            await until(lambda: held(stack) == 0 and len(stack.events) == 1, "place freed")
            [event] = stack.events
            assert (event.status, event.reason) == (499, "client_disconnected")
            assert event.held_ms is not None and event.held_ms > 0

            staying = asyncio.create_task(chat(stack, "still here"))
            await until(lambda: held(stack) == 1, "the freed place taken")
            view.set("llama", [Replica(m.url)])
            assert (await staying).status == 200
            assert [r.json()["messages"][0]["content"] for r in m.requests] == ["still here"]
            assert len(stack.events) == 2

    asyncio.run(scenario())


def test_stopping_the_gateway_answers_held_requests_at_once() -> None:
    async def scenario() -> None:
        # Without the stop, these would wait five minutes and the drain a minute.
        async with asyncio.timeout(HANG_GUARD_SECONDS), at_zero(max_wait=300) as (stack, _, m):
            waiting = [asyncio.create_task(chat(stack, f"r{n}")) for n in range(3)]
            await until(lambda: held(stack) == 3, "three held")

            await stack.stop()
            answers = await asyncio.gather(*waiting)
            for answer in answers:
                assert answer.status == 503
                assert answer.body["error"]["code"] == "gateway_stopping"
                assert answer.headers["Retry-After"] == "1"
            assert [e.reason for e in stack.events] == ["gateway_stopping"] * 3
            assert all(e.held_ms is not None for e in stack.events)
            assert m.requests == []

    asyncio.run(scenario())


def test_a_fallback_with_a_replica_answers_at_once_and_the_model_is_still_wanted() -> None:
    async def scenario() -> None:
        async with asyncio.timeout(HANG_GUARD_SECONDS), upstream(reply="from small") as small:
            view = DiscoveredView({"llama": [], "small": [Replica(small.url)]})
            config = zero_config(fallback="small")
            async with gateway_stack(config, discovered=view, hash_key=HASH_KEY) as stack:
                answer = await chat(stack, "hi")
                assert answer.status == 200
                assert answer.body["choices"][0]["message"]["content"] == "from small"
                [event] = stack.events
                assert event.served_by == "small" and event.held_ms is None
                demand = stack.gateway.demand
                assert demand.wanted("llama") and demand.seq == 1
                assert not demand.wanted("small")

                view.set("llama", [Replica(small.url)])
                await until(lambda: not demand.wanted("llama"), "llama ready, no longer wanted")

    asyncio.run(scenario())


def test_held_requests_go_to_the_fallback_when_it_gets_a_replica_first() -> None:
    async def scenario() -> None:
        async with asyncio.timeout(HANG_GUARD_SECONDS), upstream(reply="from small") as small:
            view = DiscoveredView({"llama": [], "small": []})
            config = zero_config(fallback="small")
            async with gateway_stack(config, discovered=view, hash_key=HASH_KEY) as stack:
                waiting = asyncio.create_task(chat(stack, "hi"))
                await until(lambda: held(stack) == 1, "held")
                view.set("small", [Replica(small.url)])
                answer = await waiting
                assert answer.status == 200
                assert stack.events[0].served_by == "small"
                assert stack.gateway.demand.wanted("llama"), "llama itself is still at zero"

    asyncio.run(scenario())


def test_without_hold_settings_a_model_at_zero_answers_503_at_once_and_is_wanted() -> None:
    async def scenario() -> None:
        async with asyncio.timeout(HANG_GUARD_SECONDS):
            config = zero_config()
            del config["models"][0]["hold"]
            view = DiscoveredView({"llama": []})
            async with gateway_stack(config, discovered=view, hash_key=HASH_KEY) as stack:
                answer = await chat(stack, "hi")
                assert answer.status == 503
                assert answer.body["error"]["code"] == "no_ready_replica"
                assert stack.events[0].held_ms is None
                assert stack.gateway.demand.wanted("llama")

    asyncio.run(scenario())


def test_the_demand_endpoint_refuses_calls_without_the_peer_token() -> None:
    async def scenario() -> None:
        async with (
            asyncio.timeout(HANG_GUARD_SECONDS),
            at_zero() as (stack, _, _m),
            peer_port(stack) as peer,
        ):
            other = peer_token(b"x" * 32)
            for authorization, code in (
                (None, "missing_credentials"),
                ("Bearer guess", "invalid_peer_token"),
                (f"Bearer {other}", "invalid_peer_token"),
                (f"Basic {peer_token(HASH_KEY)}", "invalid_peer_token"),
            ):
                refused = await peer(authorization=authorization or "")
                assert refused.status == 401, authorization
                assert refused.body["error"]["code"] == code
                assert "models" not in refused.body
            events = stack.events
            assert [(e.status, e.path) for e in events] == [(401, DEMAND_PATH)] * 4
            assert [e.reason for e in events] == [
                "missing_credentials",
                *["invalid_peer_token"] * 3,
            ]
            assert (await peer()).status == 200
            assert len(stack.events) == 4, "answers to the operator are not client requests"

    asyncio.run(scenario())


def test_malformed_demand_queries_get_400_naming_the_parameter() -> None:
    async def scenario() -> None:
        async with (
            asyncio.timeout(HANG_GUARD_SECONDS),
            at_zero() as (stack, _, _m),
            peer_port(stack) as peer,
        ):
            cases = {
                "since=abc": "since",
                "since=-1": "since",
                "since=1.5": "since",
                "since=": "since",
                "since=0&wait=soon": "wait",
                "since=0&wait=-1": "wait",
                "since=0&wait=nan": "wait",
                "since=0&wait=inf": "wait",
                "wait=5": "wait",
                "since=0&since=1": "since",
                "since=0&instance=not%20one": "instance",
                "sinse=0": "sinse",
                "since": None,
                "%ff=1": "\ufffd",
            }
            for query, param in cases.items():
                refused = await peer(query)
                assert refused.status == 400, query
                assert refused.body["error"]["code"] == "invalid_query", query
                assert refused.body["error"]["param"] == param, query
            assert [e.status for e in stack.events] == [400] * len(cases)

            wrong_method = await peer(method="POST")
            assert (wrong_method.status, wrong_method.body["error"]["code"]) == (
                405,
                "method_not_allowed",
            )
            unknown = await peer(path="/nothing-here")
            assert (unknown.status, unknown.body["error"]["code"]) == (404, "unknown_path")
            authorization = ("Authorization", f"Bearer {peer_token(HASH_KEY)}")
            for method, target in (("OPTIONS", "*"), ("CONNECT", "gateway:8444")):
                raw = await raw_http.exchange(
                    peer.url, raw_http.request(method, target, [authorization])
                )
                assert raw is not None and raw.status == 404, target
                assert raw.error()["code"] == "unknown_path"

    asyncio.run(scenario())


def test_a_long_poll_answers_at_once_for_another_sequence_or_instance() -> None:
    async def scenario() -> None:
        # Either poll waiting its 30 s would trip the guard.
        async with (
            asyncio.timeout(HANG_GUARD_SECONDS),
            at_zero() as (stack, _, _m),
            peer_port(stack) as peer,
        ):
            ahead = await peer("since=7&wait=30")
            assert ahead.body["seq"] == 0
            restarted = await peer("since=0&instance=0123456789abcdef&wait=30")
            assert restarted.body["seq"] == 0
            assert restarted.body["instance"] != "0123456789abcdef"

    asyncio.run(scenario())


def test_stopping_the_peer_port_ends_its_long_polls() -> None:
    async def scenario() -> None:
        async with asyncio.timeout(HANG_GUARD_SECONDS), at_zero() as (stack, _, _m):
            runner = await start_listener(stack.gateway.peer_app(), stack.gateway, "127.0.0.1", 0)
            url = f"http://127.0.0.1:{runner.addresses[0][1]}{DEMAND_PATH}?since=0&wait=30"
            headers = {"Authorization": f"Bearer {peer_token(HASH_KEY)}"}

            async def poll() -> tuple[int, Any]:
                async with stack.http.get(url, headers=headers) as response:
                    return response.status, await response.json()

            polling = asyncio.create_task(poll())
            assert runner.server is not None
            await until(lambda: runner.server.requests_count == 1, "the poll arrived")
            await runner.cleanup()
            status, body = await polling
            assert status == 200 and body["seq"] == 0

    asyncio.run(scenario())


@asynccontextmanager
async def gated_upstream() -> AsyncIterator[tuple[FakeOpenAI, asyncio.Event]]:
    """A fake model that answers only once the gate opens."""
    gate = asyncio.Event()
    fake = FakeOpenAI(model="fake-model")
    app = fake.app()

    @web.middleware
    async def hold_back(request: web.Request, handler: Any) -> web.StreamResponse:
        await gate.wait()
        return await handler(request)

    app.middlewares.append(hold_back)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    fake.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    try:
        yield fake, gate
    finally:
        gate.set()
        await runner.cleanup()


def test_demand_counts_requests_in_flight_and_tokens_per_second() -> None:
    async def scenario() -> None:
        now = [1_000_000.0]
        async with asyncio.timeout(HANG_GUARD_SECONDS), gated_upstream() as (model, gate):
            config = base_config({"llama": [model.url], "small": []})
            async with (
                gateway_stack(config, hash_key=HASH_KEY, clock=lambda: now[0]) as stack,
                peer_port(stack) as peer,
            ):
                requests = [asyncio.create_task(chat(stack, "one two three")) for _ in range(2)]
                figures = stack.gateway.demand.model("llama")
                await until(lambda: figures.waiting == 2, "two sent to the model")
                busy = (await peer()).body["models"]["llama"]
                assert (busy["inFlight"], busy["waiting"], busy["held"]) == (2, 2, 0)
                assert busy["requestsTotal"] == 2 and busy["lastRequest"] == now[0]

                gate.set()
                answers = await asyncio.gather(*requests)
                assert [a.status for a in answers] == [200, 200]
                idle = (await peer()).body
                llama = idle["models"]["llama"]
                assert (llama["inFlight"], llama["waiting"]) == (0, 0)
                prompt = sum(e.prompt_tokens for e in stack.events)
                completion = sum(e.completion_tokens for e in stack.events)
                assert prompt > 0 and completion > 0
                assert llama["promptTokensTotal"] == prompt
                assert llama["completionTokensTotal"] == completion
                window = idle["windowSeconds"]
                assert llama["requestsPerSecond"] == 2 / window
                assert llama["promptTokensPerSecond"] == prompt / window
                assert llama["completionTokensPerSecond"] == completion / window
                assert idle["models"]["small"]["requestsTotal"] == 0

                now[0] += window
                later = (await peer()).body["models"]["llama"]
                assert later["requestsPerSecond"] == 0
                assert later["requestsTotal"] == 2, "totals are counters: they never forget"

    asyncio.run(scenario())
