"""The OIDC provider's signing keys: fetched, cached and refreshed without flooding it.

Keys live for the JWKS response's Cache-Control max-age (clamped to 60..3600 s). A token
signed with a key the cache does not know triggers a refresh, because providers rotate
keys; but a fetch comes at least `REFRESH_INTERVAL` after a successful one, so tokens
with forged key ids cannot turn the gateway into a client that hammers the provider.
Concurrent callers share one in-flight fetch. When the provider fails, the last keys
stay in use for `STALE_LIMIT` past their max-age.

A failed fetch (provider unreachable, discovery or key set unusable) is retried after a
delay that doubles from `RETRY_INITIAL` up to `REFRESH_INTERVAL` (`retry_delay`): a
gateway that starts while its provider is away answers 503 until the provider is back and
then has its keys within seconds, while a long outage draws no more than one fetch per
`REFRESH_INTERVAL` from it. Fetches, retries included, are made by requests that need
keys: an idle gateway does not poll.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
import jwt

DEFAULT_MAX_AGE = 300.0
MIN_MAX_AGE = 60.0
MAX_MAX_AGE = 3600.0
REFRESH_INTERVAL = 10.0
RETRY_INITIAL = 1.0
STALE_LIMIT = 3600.0
FETCH_TIMEOUT = aiohttp.ClientTimeout(total=5)
# A key set is a few KiB; a bigger answer is a misconfigured or hostile endpoint.
MAX_DOCUMENT_BYTES = 1 << 20

_MAX_AGE = re.compile(r"(?:^|,)\s*max-age\s*=\s*\"?(\d+)\"?\s*(?:,|$)", re.IGNORECASE)
_NO_CACHING = re.compile(r"(?:^|,)\s*(?:no-store|no-cache)\s*(?:,|$)", re.IGNORECASE)

log = logging.getLogger(__name__)


class JWKSUnavailableError(Exception):
    """No usable signing keys: the provider cannot be reached and nothing usable is cached."""


class _FetchError(Exception):
    """The provider answered, but not with a usable discovery document or key set."""


def retry_delay(failures: int) -> float:
    """Seconds from one fetch attempt to the next, after `failures` failed attempts in a row.

    After a success: REFRESH_INTERVAL. After failures: RETRY_INITIAL, doubling with each
    further failure, never more than REFRESH_INTERVAL.
    """
    if failures <= 0:
        return REFRESH_INTERVAL
    # The exponent is bounded so that no count of failures overflows a float.
    return min(RETRY_INITIAL * 2.0 ** min(failures - 1, 32), REFRESH_INTERVAL)


def cache_lifetime(cache_control: str | None) -> float:
    """Seconds to keep a key set, from its Cache-Control header: max-age clamped to 60..3600."""
    if not cache_control:
        return DEFAULT_MAX_AGE
    if _NO_CACHING.search(cache_control):
        return MIN_MAX_AGE
    match = _MAX_AGE.search(cache_control)
    seconds = float(match.group(1)) if match else DEFAULT_MAX_AGE
    return min(max(seconds, MIN_MAX_AGE), MAX_MAX_AGE)


def signing_keys(document: Any) -> dict[str, dict[str, Any]]:
    """Public signature keys of a JWKS document by kid ("" for an unnamed one)."""
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise _FetchError("the JWKS document has no 'keys' list")
    keys: dict[str, dict[str, Any]] = {}
    for jwk in document["keys"]:
        if not isinstance(jwk, dict) or jwk.get("use", "sig") != "sig":
            continue
        # A shared secret published in a key set would let anyone mint tokens, and
        # private key material has no business there either: neither is trusted.
        if jwk.get("kty") in (None, "oct") or "d" in jwk:
            continue
        kid = jwk.get("kid", "")
        if isinstance(kid, str):
            keys[kid] = jwk
    return keys


@dataclass(frozen=True)
class KeySet:
    """Signing keys as fetched at `fetched_at`, fresh for `max_age` seconds."""

    keys: Mapping[str, Mapping[str, Any]]
    fetched_at: float
    max_age: float

    def fresh(self, now: float) -> bool:
        """Within max-age (a clock that went backwards also makes it stale, to re-fetch)."""
        return self.fetched_at <= now < self.fetched_at + self.max_age

    def usable(self, now: float) -> bool:
        """Still allowed to verify tokens while the provider cannot be reached."""
        return now < self.fetched_at + self.max_age + STALE_LIMIT

    def find(self, kid: str | None) -> Mapping[str, Any] | None:
        """The key named `kid`; without a kid, the only key if there is exactly one."""
        if kid is not None:
            return self.keys.get(kid)
        return next(iter(self.keys.values())) if len(self.keys) == 1 else None


class JWKSCache:
    """The signing keys of one OIDC issuer, from its jwks_uri or its discovery document."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        *,
        issuer: str,
        jwks_uri: str | None,
        ssl_context: ssl.SSLContext | bool,
        clock: Callable[[], float],
    ) -> None:
        self._session = session
        self._issuer = issuer
        self._configured_uri = jwks_uri
        self._discovered_uri: str | None = None
        self._ssl = ssl_context
        self._clock = clock
        self._key_set: KeySet | None = None
        self._last_attempt: float | None = None
        # Failed fetches since the last good one: they set the delay to the next attempt.
        self._failures = 0
        self._in_flight: asyncio.Task[None] | None = None
        self._parsed: dict[tuple[str | None, str], jwt.PyJWK] = {}

    async def signing_key(self, kid: str | None, algorithm: str) -> jwt.PyJWK | None:
        """The key to verify a token with this kid and alg; None when the issuer has no such key.

        Raises JWKSUnavailableError when no usable key set can be had, and a PyJWTError
        when the key does not fit the algorithm.
        """
        now = self._clock()
        key_set = self._key_set
        if key_set is None or not key_set.fresh(now) or key_set.find(kid) is None:
            key_set = await self._refreshed(now)
        if key_set is None or not key_set.usable(now):
            raise JWKSUnavailableError("no signing keys from the OIDC provider")
        jwk = key_set.find(kid)
        if jwk is None:
            return None
        return self._parse(kid, jwk, algorithm)

    def _parse(self, kid: str | None, jwk: Mapping[str, Any], algorithm: str) -> jwt.PyJWK:
        parsed = self._parsed.get((kid, algorithm))
        if parsed is None:
            # A key that names its algorithm is for that algorithm only.
            if jwk.get("alg", algorithm) != algorithm:
                raise jwt.PyJWKError("the signing key is for another algorithm")
            parsed = jwt.PyJWK(dict(jwk), algorithm=algorithm)
            self._parsed[(kid, algorithm)] = parsed
        return parsed

    async def _refreshed(self, now: float) -> KeySet | None:
        """Fetch unless a fetch is running or the last attempt is too recent; the keys after."""
        if self._in_flight is None:
            since_last = None if self._last_attempt is None else now - self._last_attempt
            if since_last is not None and 0 <= since_last < retry_delay(self._failures):
                return self._key_set
            self._last_attempt = now
            self._in_flight = asyncio.create_task(self._fetch())
        # Shielded: one caller giving up must not cancel the fetch the others wait for.
        await asyncio.shield(self._in_flight)
        return self._key_set

    async def _fetch(self) -> None:
        try:
            uri = self._configured_uri or self._discovered_uri or await self._discover()
            document, cache_control = await self._get_json(uri)
            keys = signing_keys(document)
        except (aiohttp.ClientError, TimeoutError, _FetchError) as error:
            # A provider that moved its key set is found again by the next discovery.
            self._discovered_uri = None
            self._failures += 1
            log.warning(
                "OIDC signing keys of %s could not be fetched (%s); retrying after %.0f s",
                self._issuer,
                error,
                retry_delay(self._failures),
            )
            return
        finally:
            self._in_flight = None
        self._failures = 0
        self._key_set = KeySet(keys, self._clock(), cache_lifetime(cache_control))
        self._parsed = {}

    async def _discover(self) -> str:
        url = self._issuer.rstrip("/") + "/.well-known/openid-configuration"
        document, _ = await self._get_json(url)
        if not isinstance(document, dict) or document.get("issuer") != self._issuer:
            raise _FetchError("the discovery document names another issuer")
        jwks_uri = document.get("jwks_uri")
        if not isinstance(jwks_uri, str) or not jwks_uri:
            raise _FetchError("the discovery document has no jwks_uri")
        self._discovered_uri = jwks_uri
        return jwks_uri

    async def _get_json(self, url: str) -> tuple[Any, str | None]:
        async with self._session.get(url, ssl=self._ssl, timeout=FETCH_TIMEOUT) as response:
            if response.status != 200:
                raise _FetchError(f"{url} answered HTTP {response.status}")
            # read(n) returns what has arrived, not n bytes: the body may come in pieces.
            body = bytearray()
            async for chunk in response.content.iter_chunked(64 * 1024):
                body += chunk
                if len(body) > MAX_DOCUMENT_BYTES:
                    raise _FetchError(f"{url} answered more than {MAX_DOCUMENT_BYTES} bytes")
            try:
                return json.loads(body), response.headers.get("Cache-Control")
            except ValueError as error:
                raise _FetchError(f"{url} answered invalid JSON") from error
