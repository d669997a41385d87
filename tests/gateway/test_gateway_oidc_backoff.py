"""Retrying an OIDC provider that is away: the backoff between fetches of its keys.

A local provider on loopback serves discovery and a key set and counts requests; it can
fail on demand or not listen at all. Time is an injected clock that the tests move: the
schedule of attempts is read from the provider's counters, nothing sleeps.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import jwt
import pytest
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import rsa

from privatellm.devcluster.cluster import free_port
from privatellm.gateway.auth import Authenticator, AuthError, OIDCConfig
from privatellm.gateway.jwks import (
    REFRESH_INTERVAL,
    RETRY_INITIAL,
    JWKSCache,
    JWKSUnavailableError,
    retry_delay,
)

AUDIENCE = "privatellm-gateway"
KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
KID = "key-1"
START = 1_700_000_000.0
BOTH = ("discovery", "jwks")


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> float:
        return self.now


@dataclass
class Provider:
    """Discovery and a key set on a fixed loopback port; the steps in `failing` answer 503."""

    port: int = field(default_factory=free_port)
    failing: set[str] = field(default_factory=set)
    # Send each document a few bytes at a time, as a slow network or a proxy would.
    trickle: bool = False
    hits: Counter[str] = field(default_factory=Counter)
    _runner: web.AppRunner | None = None

    @property
    def issuer(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/.well-known/openid-configuration", self._discovery)
        app.router.add_get("/jwks", self._jwks)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @property
    def attempts(self) -> int:
        """Fetches that reached the provider, until one got keys: each began with discovery."""
        return self.hits["discovery"]

    @property
    def requests(self) -> int:
        """Every request that reached the provider."""
        return sum(self.hits.values())

    async def _discovery(self, request: web.Request) -> web.StreamResponse:
        self.hits["discovery"] += 1
        if "discovery" in self.failing:
            return web.Response(status=503)
        return await self._answer(
            request, {"issuer": self.issuer, "jwks_uri": f"{self.issuer}/jwks"}
        )

    async def _jwks(self, request: web.Request) -> web.StreamResponse:
        self.hits["jwks"] += 1
        if "jwks" in self.failing:
            return web.Response(status=503)
        public = jwt.get_algorithm_by_name("RS256").to_jwk(KEY.public_key(), as_dict=True)
        return await self._answer(request, {"keys": [{**public, "kid": KID, "use": "sig"}]})

    async def _answer(self, request: web.Request, document: dict[str, Any]) -> web.StreamResponse:
        if not self.trickle:
            return web.json_response(document)
        body = json.dumps(document).encode()
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        for start in range(0, len(body), 16):
            await response.write(body[start : start + 16])
            await asyncio.sleep(0.001)
        await response.write_eof()
        return response


@asynccontextmanager
async def running(provider: Provider) -> AsyncIterator[aiohttp.ClientSession]:
    await provider.start()
    try:
        async with aiohttp.ClientSession() as session:
            yield session
    finally:
        await provider.stop()


def cache(session: aiohttp.ClientSession, provider: Provider, clock: Clock) -> JWKSCache:
    return JWKSCache(session, issuer=provider.issuer, jwks_uri=None, ssl_context=False, clock=clock)


async def has_key(keys: JWKSCache, kid: str = KID) -> bool:
    """Whether the cache hands out the key (False: the provider's keys are unavailable)."""
    try:
        return await keys.signing_key(kid, "RS256") is not None
    except JWKSUnavailableError:
        return False


def run(scenario: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(scenario())


def test_the_delay_doubles_from_one_second_up_to_the_refresh_interval() -> None:
    delays = [retry_delay(failures) for failures in range(8)]
    assert RETRY_INITIAL == 1.0 and REFRESH_INTERVAL == 10.0
    assert delays == [10.0, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0, 10.0]


def test_any_count_of_failures_gives_a_bounded_delay() -> None:
    assert retry_delay(10**9) == REFRESH_INTERVAL
    assert retry_delay(-1) == REFRESH_INTERVAL


def test_a_failing_provider_is_asked_at_1_3_7_15_then_every_10_seconds() -> None:
    async def scenario() -> None:
        provider, clock = Provider(failing=set(BOTH)), Clock()
        async with running(provider) as session:
            keys = cache(session, provider, clock)
            attempts_at = []
            # A request every half second for a minute, each one wanting keys.
            for step in range(121):
                clock.now = START + step / 2
                before = provider.attempts
                assert not await has_key(keys)
                if provider.attempts > before:
                    attempts_at.append(step / 2)
        assert attempts_at == [0, 1, 3, 7, 15, 25, 35, 45, 55]

    run(scenario)


def test_requests_between_attempts_do_not_reach_the_provider() -> None:
    async def scenario() -> None:
        provider, clock = Provider(failing=set(BOTH)), Clock()
        async with running(provider) as session:
            keys = cache(session, provider, clock)
            results = await asyncio.gather(*(has_key(keys) for _ in range(50)))
            assert results == [False] * 50
            clock.now += RETRY_INITIAL - 0.001
            assert not await has_key(keys)
        assert provider.attempts == 1

    run(scenario)


def test_keys_are_found_at_the_first_attempt_after_the_provider_recovers() -> None:
    async def scenario() -> None:
        provider, clock = Provider(failing=set(BOTH)), Clock()
        async with running(provider) as session:
            keys = cache(session, provider, clock)
            for elapsed in (0, 1, 3):  # three failed attempts: the next is 4 s later
                clock.now = START + elapsed
                assert not await has_key(keys)
            provider.failing = set()
            clock.now = START + 6.9
            assert not await has_key(keys), "asked the provider before the delay was over"
            clock.now = START + 7
            assert await has_key(keys)
        assert provider.attempts == 4

    run(scenario)


def test_documents_that_arrive_in_pieces_are_read_whole() -> None:
    async def scenario() -> None:
        provider = Provider(trickle=True)
        async with running(provider) as session:
            assert await has_key(cache(session, provider, Clock()))
        assert provider.attempts == 1

    run(scenario)


def test_a_success_resets_the_backoff() -> None:
    async def scenario() -> None:
        provider, clock = Provider(failing=set(BOTH)), Clock()
        async with running(provider) as session:
            keys = cache(session, provider, clock)
            for elapsed in (0, 1, 3, 7, 15):
                clock.now = START + elapsed
                assert not await has_key(keys)
            provider.failing = set()
            clock.now = START + 25
            assert await has_key(keys)
            # After a success, an unknown kid waits for the refresh interval...
            provider.failing = set(BOTH)
            asked = provider.requests
            clock.now = START + 25 + REFRESH_INTERVAL - 0.001
            assert not await has_key(keys, "rotated")
            assert provider.requests == asked
            clock.now = START + 25 + REFRESH_INTERVAL
            assert not await has_key(keys, "rotated")
            assert provider.requests > asked
            # ...and a new failure is retried after the initial delay, not the last one.
            asked = provider.requests
            clock.now += RETRY_INITIAL
            assert not await has_key(keys, "rotated")
            assert provider.requests > asked
            # The keys fetched at +25 are still in use for known kids meanwhile.
            assert await has_key(keys)

    run(scenario)


def token(issuer: str) -> str:
    now = int(time.time())
    claims = {"iss": issuer, "aud": AUDIENCE, "email": "alice@example.com", "exp": now + 600}
    return jwt.encode(claims, KEY, algorithm="RS256", headers={"kid": KID})


def test_a_gateway_started_before_its_provider_answers_503_then_accepts_the_token() -> None:
    async def scenario() -> None:
        provider, clock = Provider(), Clock()
        clock.now = time.time()
        headers = {"Authorization": f"Bearer {token(provider.issuer)}"}
        config = OIDCConfig(issuer=provider.issuer, audience=AUDIENCE)
        async with aiohttp.ClientSession() as session:
            auth = Authenticator(config, {}, None, session, clock)
            # Nothing listens on the issuer's port yet: discovery fails to connect.
            with pytest.raises(AuthError) as refused:
                await auth.authenticate(headers)
            assert (refused.value.reason, refused.value.status) == (
                "auth_backend_unavailable",
                503,
            )
            await provider.start()
            try:
                # Up now, but the gateway waits out its delay before it asks again.
                with pytest.raises(AuthError):
                    await auth.authenticate(headers)
                assert provider.attempts == 0
                clock.now += RETRY_INITIAL
                identity = await auth.authenticate(headers)
            finally:
                await provider.stop()
        assert (identity.name, identity.method) == ("alice@example.com", "oidc")
        assert provider.attempts == 1

    run(scenario)


@pytest.mark.parametrize("step", BOTH)
def test_a_failure_at_either_step_counts_toward_the_backoff(step: str) -> None:
    async def scenario() -> None:
        provider, clock = Provider(failing={step}), Clock()
        async with running(provider) as session:
            keys = cache(session, provider, clock)
            for elapsed in (0, 0.5, 1, 2.5, 3):
                clock.now = START + elapsed
                assert not await has_key(keys)
        assert provider.hits[step] == 3  # at 0, 1 and 3

    run(scenario)
