"""Gateway authentication against a local identity provider and a local TokenReview endpoint.

One aiohttp server on loopback plays the OIDC provider (discovery and JWKS, with RSA, EC
and Ed25519 keys) and the Kubernetes API server (TokenReview); it counts every request,
so the tests can tell when the gateway fetched keys or asked for a review. Time is an
injected clock: nothing sleeps.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import hashlib
import hmac
import json
import string
from collections import Counter
from collections.abc import Coroutine, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import jwt
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from hypothesis import given, settings
from hypothesis import strategies as st

from privatellm.gateway.auth import (
    Authenticator,
    AuthError,
    Identity,
    OIDCConfig,
    TokenReviewConfig,
    generate_api_key,
    hash_api_key,
)
from privatellm.gateway.jwks import cache_lifetime, signing_keys
from privatellm.gateway.tokenreview import TokenReviewer

ISSUER = "https://idp.example.test/realms/corp"
AUDIENCE = "privatellm-gateway"
K8S_ISSUER = "https://kubernetes.default.svc.cluster.local"
START = 1_700_000_000.0
REFRESH_GAP = 10  # seconds between two fetches of the key set, at least
T = TypeVar("T")


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> float:
        return self.now


@dataclass(frozen=True)
class SigningKey:
    kid: str
    alg: str
    private: Any

    def jwk(self) -> dict[str, Any]:
        algorithm = jwt.get_algorithm_by_name(self.alg)
        public = algorithm.to_jwk(self.private.public_key(), as_dict=True)
        return {**public, "kid": self.kid, "alg": self.alg, "use": "sig"}

    def public_pem(self) -> bytes:
        return bytes(
            self.private.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )


def signing_key(kid: str, alg: str = "RS256") -> SigningKey:
    """One key per (kid, alg) for the whole run: RSA generation is slow."""
    return _generated_key(kid, alg)


@functools.cache
def _generated_key(kid: str, alg: str) -> SigningKey:
    if alg == "RS256":
        return SigningKey(kid, alg, rsa.generate_private_key(public_exponent=65537, key_size=2048))
    if alg == "ES256":
        return SigningKey(kid, alg, ec.generate_private_key(ec.SECP256R1()))
    return SigningKey(kid, alg, ed25519.Ed25519PrivateKey.generate())


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unsigned_jwt(header: Any, claims: Any, signature: bytes = b"") -> str:
    """A JWT assembled by hand, for headers and signatures no library would produce."""
    return ".".join(
        [
            b64url(json.dumps(header).encode()),
            b64url(json.dumps(claims).encode()),
            b64url(signature),
        ]
    )


@dataclass
class Provider:
    """The identity provider and the API server the tests control."""

    issuer: str = ISSUER
    published: list[SigningKey] = field(default_factory=list)
    cache_control: str = "max-age=300"
    jwks_failing: bool = False
    # When set, JWKS answers wait for it: requests that arrive meanwhile pile up.
    hold: asyncio.Event | None = None
    received: asyncio.Event = field(default_factory=asyncio.Event)
    hits: Counter[str] = field(default_factory=Counter)
    # TokenReview: the gateway's expected own token, and the status per presented token.
    gateway_token: str = "gateway-token-1"
    reviews: dict[str, dict[str, Any]] = field(default_factory=dict)
    review_failing: bool = False
    reviewer_tokens: list[str] = field(default_factory=list)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/.well-known/openid-configuration", self.discovery)
        app.router.add_get("/jwks", self.jwks)
        app.router.add_post("/apis/authentication.k8s.io/v1/tokenreviews", self.token_review)
        return app

    async def discovery(self, request: web.Request) -> web.Response:
        self.hits["discovery"] += 1
        base = str(request.url.origin())
        return web.json_response({"issuer": self.issuer, "jwks_uri": f"{base}/jwks"})

    async def jwks(self, request: web.Request) -> web.Response:
        self.hits["jwks"] += 1
        self.received.set()
        if self.hold is not None:
            await self.hold.wait()
        if self.jwks_failing:
            return web.Response(status=503)
        return web.json_response(
            {"keys": [key.jwk() for key in self.published]},
            headers={"Cache-Control": self.cache_control},
        )

    async def token_review(self, request: web.Request) -> web.Response:
        self.hits["tokenreview"] += 1
        bearer = request.headers.get("Authorization", "").removeprefix("Bearer ")
        self.reviewer_tokens.append(bearer)
        if self.review_failing:
            return web.Response(status=500)
        if bearer != self.gateway_token:
            return web.Response(status=401)
        body = await request.json()
        status = self.reviews.get(body["spec"]["token"], {"authenticated": False, "error": "no"})
        return web.json_response({**body, "status": status}, status=201)


class Env:
    """The running provider, an HTTP session, a clock, and helpers to mint and present tokens."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        provider: Provider,
        base_url: str,
        session: aiohttp.ClientSession,
        token_file: Path,
    ) -> None:
        self.loop = loop
        self.provider = provider
        self.base_url = base_url
        self.session = session
        self.token_file = token_file
        self.clock = Clock()

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coroutine)

    def oidc(self, **changes: Any) -> OIDCConfig:
        return OIDCConfig(
            **{"issuer": ISSUER, "audience": AUDIENCE, "jwks_uri": f"{self.base_url}/jwks"}
            | changes
        )

    def token_review(self, **changes: Any) -> TokenReviewConfig:
        settings: dict[str, Any] = {
            "api_server": self.base_url,
            "token_file": str(self.token_file),
            "ca_file": None,
        }
        return TokenReviewConfig(**settings | changes)

    def authenticator(
        self,
        oidc: OIDCConfig | None = None,
        api_keys: Mapping[str, str] | None = None,
        token_review: TokenReviewConfig | None = None,
    ) -> Authenticator:
        return Authenticator(oidc, api_keys or {}, token_review, self.session, clock=self.clock)

    def mint(self, key: SigningKey, *, headers: dict[str, Any] | None = None, **claims: Any) -> str:
        now = int(self.clock.now)
        payload = {
            "iss": ISSUER,
            "aud": AUDIENCE,
            "sub": "u-1234",
            "email": "alice@example.com",
            "groups": ["ml-team", "finance"],
            "iat": now,
            "exp": now + 600,
        } | claims
        return jwt.encode(
            payload, key.private, algorithm=key.alg, headers={"kid": key.kid} | (headers or {})
        )

    def identity(self, auth: Authenticator, headers: Mapping[str, str]) -> Identity:
        return self.run(auth.authenticate(headers))

    def failure(self, auth: Authenticator, headers: Mapping[str, str]) -> AuthError:
        with pytest.raises(AuthError) as caught:
            self.run(auth.authenticate(headers))
        return caught.value


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@contextmanager
def environment(tmp_path: Path) -> Iterator[Env]:
    loop = asyncio.new_event_loop()
    provider = Provider()
    server = TestServer(provider.app(), host="127.0.0.1")

    async def start() -> aiohttp.ClientSession:
        await server.start_server()
        return aiohttp.ClientSession()

    session = loop.run_until_complete(start())
    token_file = tmp_path / "token"
    token_file.write_text(provider.gateway_token + "\n")
    try:
        yield Env(loop, provider, str(server.make_url("")).rstrip("/"), session, token_file)
    finally:
        loop.run_until_complete(session.close())
        loop.run_until_complete(server.close())
        loop.close()


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    with environment(tmp_path) as running:
        yield running


RSA_1 = signing_key("rsa-1")
EC_1 = signing_key("ec-1", "ES256")


@pytest.fixture
def provider(env: Env) -> Provider:
    env.provider.published = [RSA_1, EC_1, signing_key("ed-1", "EdDSA")]
    return env.provider


# OIDC: claims and signatures


@pytest.mark.parametrize("kid,alg", [("rsa-1", "RS256"), ("ec-1", "ES256"), ("ed-1", "EdDSA")])
def test_a_valid_token_names_the_user_and_groups(
    env: Env, provider: Provider, kid: str, alg: str
) -> None:
    auth = env.authenticator(env.oidc())
    identity = env.identity(auth, bearer(env.mint(signing_key(kid, alg))))
    assert identity == Identity(
        "User", "alice@example.com", frozenset({"ml-team", "finance"}), "oidc"
    )


def test_configured_claims_name_the_user_and_groups(env: Env, provider: Provider) -> None:
    auth = env.authenticator(env.oidc(username_claim="preferred_username", groups_claim="roles"))
    token = env.mint(RSA_1, preferred_username="alice", roles=["reader"])
    identity = env.identity(auth, bearer(token))
    assert (identity.name, identity.groups) == ("alice", frozenset({"reader"}))


@pytest.mark.parametrize("groups", ["ml-team", ["ml-team", 7], {"ml-team": True}, None])
def test_without_a_username_claim_sub_names_the_user_and_odd_groups_are_none(
    env: Env, provider: Provider, groups: Any
) -> None:
    auth = env.authenticator(env.oidc())
    identity = env.identity(auth, bearer(env.mint(RSA_1, email=None, groups=groups)))
    assert (identity.name, identity.groups) == ("u-1234", frozenset())


def test_a_token_naming_no_user_is_malformed(env: Env, provider: Provider) -> None:
    auth = env.authenticator(env.oidc())
    token = env.mint(RSA_1, email=None, sub=None)
    assert env.failure(auth, bearer(token)).reason == "malformed_credentials"


@pytest.mark.parametrize(
    "claims,reason",
    [
        ({"exp": START - 3600}, "expired_token"),
        ({"nbf": START + 3600}, "token_not_yet_valid"),
        ({"iat": START + 3600}, "token_not_yet_valid"),
        ({"exp": None}, "malformed_credentials"),
        ({"exp": "tomorrow"}, "malformed_credentials"),
        ({"exp": True}, "malformed_credentials"),
        ({"exp": 10**400}, "malformed_credentials"),
        ({"nbf": 10**400}, "malformed_credentials"),
    ],
)
def test_lifetime_claims_are_enforced(
    env: Env, provider: Provider, claims: dict[str, Any], reason: str
) -> None:
    auth = env.authenticator(env.oidc())
    error = env.failure(auth, bearer(env.mint(RSA_1, **claims)))
    assert (error.reason, error.status) == (reason, 401)


@pytest.mark.parametrize(
    "claims,accepted",
    [
        ({"exp": START - 59}, True),
        ({"exp": START - 60}, False),
        ({"nbf": START + 60}, True),
        ({"nbf": START + 61}, False),
        ({"iat": START + 60}, True),
        ({"iat": START + 61}, False),
    ],
)
def test_leeway_admits_clock_skew_up_to_its_edge(
    env: Env, provider: Provider, claims: dict[str, Any], accepted: bool
) -> None:
    auth = env.authenticator(env.oidc(leeway_seconds=60))
    headers = bearer(env.mint(RSA_1, **claims))
    if accepted:
        assert env.identity(auth, headers).name == "alice@example.com"
    else:
        assert env.failure(auth, headers).reason in ("expired_token", "token_not_yet_valid")


def test_a_token_from_another_issuer_is_refused_without_token_review(
    env: Env, provider: Provider
) -> None:
    auth = env.authenticator(env.oidc())
    token = env.mint(RSA_1, iss="https://evil.example.test")
    assert env.failure(auth, bearer(token)).reason == "wrong_issuer"
    assert provider.hits["jwks"] == 0


@pytest.mark.parametrize("aud", ["another-service", ["another-service", "more"], None])
def test_a_token_for_another_audience_is_refused(env: Env, provider: Provider, aud: Any) -> None:
    auth = env.authenticator(env.oidc())
    assert env.failure(auth, bearer(env.mint(RSA_1, aud=aud))).reason == "wrong_audience"


def test_a_token_for_several_audiences_including_the_gateway_is_accepted(
    env: Env, provider: Provider
) -> None:
    auth = env.authenticator(env.oidc())
    token = env.mint(RSA_1, aud=["another-service", AUDIENCE])
    assert env.identity(auth, bearer(token)).name == "alice@example.com"


def test_a_token_signed_by_another_key_with_a_known_kid_is_refused(
    env: Env, provider: Provider
) -> None:
    auth = env.authenticator(env.oidc())
    forged = env.mint(SigningKey("rsa-1", "RS256", signing_key("attacker").private))
    assert env.failure(auth, bearer(forged)).reason == "invalid_signature"


def test_a_tampered_payload_is_refused(env: Env, provider: Provider) -> None:
    auth = env.authenticator(env.oidc())
    header, _, signature = env.mint(RSA_1).split(".")
    payload = b64url(
        json.dumps({"iss": ISSUER, "aud": AUDIENCE, "sub": "root", "exp": START + 600}).encode()
    )
    error = env.failure(auth, bearer(f"{header}.{payload}.{signature}"))
    assert error.reason == "invalid_signature"


def test_an_unsigned_token_is_refused_before_any_key_lookup(env: Env, provider: Provider) -> None:
    auth = env.authenticator(env.oidc())
    claims = {"iss": ISSUER, "aud": AUDIENCE, "sub": "root", "exp": START + 600}
    for alg in ("none", "None", "NONE"):
        token = unsigned_jwt({"alg": alg, "kid": "rsa-1", "typ": "JWT"}, claims)
        assert env.failure(auth, bearer(token)).reason == "invalid_signature"
    assert provider.hits["jwks"] == 0


def test_an_hmac_token_keyed_with_the_public_key_is_refused(env: Env, provider: Provider) -> None:
    auth = env.authenticator(env.oidc())
    header = b64url(json.dumps({"alg": "HS256", "kid": "rsa-1", "typ": "JWT"}).encode())
    claims = {"iss": ISSUER, "aud": AUDIENCE, "sub": "root", "exp": START + 600}
    signing_input = f"{header}.{b64url(json.dumps(claims).encode())}"
    mac = hmac.new(RSA_1.public_pem(), signing_input.encode(), hashlib.sha256).digest()
    error = env.failure(auth, bearer(f"{signing_input}.{b64url(mac)}"))
    assert error.reason == "invalid_signature"


@pytest.mark.parametrize("algorithms", [("RS256", "HS256"), ("none",), (), ("RS265",)])
def test_shared_secret_unsigned_and_unknown_algorithms_cannot_be_allowed(
    algorithms: tuple[str, ...],
) -> None:
    with pytest.raises(ValueError):
        OIDCConfig(ISSUER, AUDIENCE, algorithms=algorithms)


def test_a_token_whose_alg_does_not_fit_the_key_is_refused(env: Env, provider: Provider) -> None:
    auth = env.authenticator(env.oidc())
    # Signed with an EC key, but naming the RSA key: the RSA key is bound to RS256.
    token = env.mint(EC_1, headers={"kid": "rsa-1"})
    assert env.failure(auth, bearer(token)).reason == "invalid_signature"


@pytest.mark.filterwarnings("ignore:The RSA key is 1024 bits long")  # minting it warns
def test_a_short_rsa_key_is_refused(env: Env, provider: Provider) -> None:
    weak = SigningKey(
        "weak", "RS256", rsa.generate_private_key(public_exponent=65537, key_size=1024)
    )
    provider.published = [weak]
    auth = env.authenticator(env.oidc())
    assert env.failure(auth, bearer(env.mint(weak))).reason == "invalid_signature"


def test_a_token_without_kid_is_verified_only_by_a_single_published_key(
    env: Env, provider: Provider
) -> None:
    provider.published = [RSA_1]
    token = jwt.encode(
        {"iss": ISSUER, "aud": AUDIENCE, "sub": "u-1", "exp": int(START) + 600},
        RSA_1.private,
        algorithm="RS256",
    )
    assert env.identity(env.authenticator(env.oidc()), bearer(token)).name == "u-1"
    provider.published = [RSA_1, signing_key("rsa-2")]
    env.clock.now += REFRESH_GAP
    assert env.failure(env.authenticator(env.oidc()), bearer(token)).reason == (
        "unknown_signing_key"
    )


def test_an_algorithm_outside_the_allow_list_is_refused(env: Env, provider: Provider) -> None:
    auth = env.authenticator(env.oidc(algorithms=("RS256",)))
    assert env.failure(auth, bearer(env.mint(EC_1))).reason == "invalid_signature"


# OIDC: the key cache


def test_keys_come_from_the_discovery_document_when_no_jwks_uri_is_given(
    env: Env, provider: Provider
) -> None:
    provider.issuer = env.base_url
    auth = env.authenticator(env.oidc(issuer=env.base_url, jwks_uri=None))
    for _ in range(3):
        env.identity(auth, bearer(env.mint(RSA_1, iss=env.base_url)))
    assert (provider.hits["discovery"], provider.hits["jwks"]) == (1, 1)


def test_a_discovery_document_of_another_issuer_gives_no_keys(env: Env, provider: Provider) -> None:
    provider.issuer = "https://elsewhere.example.test"
    auth = env.authenticator(env.oidc(issuer=env.base_url, jwks_uri=None))
    error = env.failure(auth, bearer(env.mint(RSA_1, iss=env.base_url)))
    assert (error.reason, error.status) == ("auth_backend_unavailable", 503)
    assert provider.hits["jwks"] == 0


def test_an_unknown_kid_refreshes_once_and_finds_the_rotated_key(
    env: Env, provider: Provider
) -> None:
    auth = env.authenticator(env.oidc())
    env.identity(auth, bearer(env.mint(RSA_1)))
    env.clock.now += REFRESH_GAP
    rotated = signing_key("rsa-2")
    provider.published = [rotated]
    assert env.identity(auth, bearer(env.mint(rotated))).name == "alice@example.com"
    assert env.identity(auth, bearer(env.mint(rotated))).name == "alice@example.com"
    assert provider.hits["jwks"] == 2


def test_forged_kids_cause_at_most_one_refresh_per_ten_seconds(
    env: Env, provider: Provider
) -> None:
    auth = env.authenticator(env.oidc())
    env.identity(auth, bearer(env.mint(RSA_1)))
    forged = [SigningKey(f"forged-{n}", "RS256", RSA_1.private) for n in range(50)]
    for key in forged:
        assert env.failure(auth, bearer(env.mint(key))).reason == "unknown_signing_key"
    assert provider.hits["jwks"] == 1, "no refresh within 10 s of the first fetch"
    env.clock.now += REFRESH_GAP - 1
    env.failure(auth, bearer(env.mint(forged[0])))
    assert provider.hits["jwks"] == 1
    env.clock.now += 1
    for key in forged:
        assert env.failure(auth, bearer(env.mint(key))).reason == "unknown_signing_key"
    assert provider.hits["jwks"] == 2, "one refresh for the whole burst"


def test_concurrent_requests_share_one_fetch(env: Env, provider: Provider) -> None:
    auth = env.authenticator(env.oidc())
    provider.hold = asyncio.Event()
    tokens = [env.mint(RSA_1, email=f"user-{n}@example.com") for n in range(20)]

    async def scenario() -> list[Identity]:
        requests = [asyncio.create_task(auth.authenticate(bearer(token))) for token in tokens]
        await provider.received.wait()
        assert provider.hold is not None
        provider.hold.set()
        return await asyncio.gather(*requests)

    identities = env.run(scenario())
    assert [identity.name for identity in identities] == [
        f"user-{n}@example.com" for n in range(20)
    ]
    assert provider.hits["jwks"] == 1


def test_a_caller_giving_up_does_not_cancel_the_fetch_of_the_others(
    env: Env, provider: Provider
) -> None:
    auth = env.authenticator(env.oidc())
    provider.hold = asyncio.Event()

    async def scenario() -> Identity:
        impatient = asyncio.create_task(auth.authenticate(bearer(env.mint(RSA_1))))
        patient = asyncio.create_task(auth.authenticate(bearer(env.mint(RSA_1))))
        await provider.received.wait()
        impatient.cancel()
        assert provider.hold is not None
        provider.hold.set()
        return await patient

    assert env.run(scenario()).name == "alice@example.com"
    assert provider.hits["jwks"] == 1


def test_keys_are_fetched_again_after_their_max_age(env: Env, provider: Provider) -> None:
    provider.cache_control = "public, max-age=120"
    auth = env.authenticator(env.oidc())
    env.identity(auth, bearer(env.mint(RSA_1)))
    env.clock.now += 119
    env.identity(auth, bearer(env.mint(RSA_1)))
    assert provider.hits["jwks"] == 1
    env.clock.now += 1
    env.identity(auth, bearer(env.mint(RSA_1)))
    assert provider.hits["jwks"] == 2


@pytest.mark.parametrize(
    "header,seconds",
    [
        (None, 300),
        ("", 300),
        ("public", 300),
        ("max-age=900", 900),
        ("public, max-age=900, must-revalidate", 900),
        ('MAX-AGE="900"', 900),
        ("max-age=5", 60),
        ("max-age=86400", 3600),
        ("no-store", 60),
        ("s-maxage=900", 300),
        ("max-age=abc", 300),
    ],
)
def test_cache_lifetime_follows_max_age_within_bounds(header: str | None, seconds: float) -> None:
    assert cache_lifetime(header) == seconds


def test_only_public_signature_keys_are_taken_from_a_key_set() -> None:
    public = RSA_1.jwk()
    private = {**public, "kid": "private", "d": "AQAB"}
    document = {
        "keys": [
            public,
            {**EC_1.jwk(), "kid": "encryption", "use": "enc"},
            {"kty": "oct", "kid": "shared", "k": "c2VjcmV0"},
            private,
            {"kid": "no-type"},
            "not-a-key",
        ]
    }
    assert signing_keys(document) == {"rsa-1": public}


def test_a_key_named_for_one_algorithm_does_not_verify_another(
    env: Env, provider: Provider
) -> None:
    auth = env.authenticator(env.oidc(algorithms=("RS256", "PS256")))
    # A valid PS256 signature by the key the JWKS publishes for RS256 only.
    token = env.mint(SigningKey("rsa-1", "PS256", RSA_1.private))
    assert env.failure(auth, bearer(token)).reason == "invalid_signature"


def test_cached_keys_serve_for_an_hour_while_the_provider_is_down(
    env: Env, provider: Provider
) -> None:
    auth = env.authenticator(env.oidc())
    env.identity(auth, bearer(env.mint(RSA_1)))
    provider.jwks_failing = True
    env.clock.now += 300 + 3600 - 1
    assert env.identity(auth, bearer(env.mint(RSA_1))).name == "alice@example.com"
    assert provider.hits["jwks"] == 2, "the expired keys were due for a refresh"
    env.clock.now += REFRESH_GAP
    error = env.failure(auth, bearer(env.mint(RSA_1)))
    assert (error.reason, error.status) == ("auth_backend_unavailable", 503)
    provider.jwks_failing = False
    env.clock.now += REFRESH_GAP
    assert env.identity(auth, bearer(env.mint(RSA_1))).name == "alice@example.com"


def test_without_cached_keys_a_provider_outage_is_a_503_without_flooding_it(
    env: Env, provider: Provider
) -> None:
    provider.jwks_failing = True
    auth = env.authenticator(env.oidc())
    for _ in range(20):
        error = env.failure(auth, bearer(env.mint(RSA_1)))
        assert (error.reason, error.status) == ("auth_backend_unavailable", 503)
    assert provider.hits["jwks"] == 1


def test_an_unreachable_provider_is_a_503(env: Env, provider: Provider) -> None:
    auth = env.authenticator(env.oidc(jwks_uri="http://127.0.0.1:9/jwks"))
    error = env.failure(auth, bearer(env.mint(RSA_1)))
    assert (error.reason, error.status) == ("auth_backend_unavailable", 503)


# API keys


def test_api_keys_are_accepted_in_either_header(env: Env) -> None:
    key = generate_api_key()
    auth = env.authenticator(api_keys={hash_api_key(key): "batch-jobs"})
    expected = Identity("APIKey", "batch-jobs", frozenset(), "apiKey")
    assert env.identity(auth, bearer(key)) == expected
    assert env.identity(auth, {"X-API-Key": key}) == expected
    assert env.identity(auth, {"x-api-key": key}) == expected


def test_an_unknown_api_key_is_refused(env: Env) -> None:
    auth = env.authenticator(api_keys={hash_api_key(generate_api_key()): "batch-jobs"})
    assert env.failure(auth, bearer(generate_api_key())).reason == "unknown_api_key"
    assert env.failure(auth, {"X-API-Key": "not-even-a-pllm-key"}).reason == "unknown_api_key"


def test_replacing_api_keys_revokes_the_old_and_admits_the_new(env: Env) -> None:
    old, new = generate_api_key(), generate_api_key()
    auth = env.authenticator(api_keys={hash_api_key(old): "old"})
    assert env.identity(auth, bearer(old)).name == "old"
    auth.replace_api_keys({hash_api_key(new).upper(): "new"})
    assert env.failure(auth, bearer(old)).reason == "unknown_api_key"
    assert env.identity(auth, bearer(new)).name == "new"


def test_api_key_digests_must_be_sha256_hex(env: Env) -> None:
    with pytest.raises(ValueError):
        env.authenticator(api_keys={"plaintext-key": "oops"})
    auth = env.authenticator()
    with pytest.raises(ValueError):
        auth.replace_api_keys({hash_api_key("k")[:-1]: "short"})


def test_generated_api_keys_are_random_and_hash_to_sha256_hex() -> None:
    keys = {generate_api_key() for _ in range(100)}
    assert len(keys) == 100
    alphabet = set(string.ascii_letters + string.digits + "-_")
    for key in keys:
        assert key.startswith("pllm-") and len(key) == 48 and set(key[5:]) <= alphabet
    assert hash_api_key("pllm-x") == hashlib.sha256(b"pllm-x").hexdigest()


# Headers


@pytest.mark.parametrize(
    "headers,reason",
    [
        ({}, "missing_credentials"),
        ({"Cookie": "session=1"}, "missing_credentials"),
        ({"Authorization": "Bearer pllm-abc\r\nX-Admin: 1"}, "malformed_credentials"),
        ({"Authorization": "Bearer pllm-abc\n"}, "malformed_credentials"),
        ({"Authorization": "Bearer pllm-ab\x00c"}, "malformed_credentials"),
        ({"Authorization": "Bearer pllm-\tabc"}, "malformed_credentials"),
        ({"Authorization": "Bearer pllm-ключ"}, "malformed_credentials"),
        ({"X-API-Key": "pllm-é"}, "malformed_credentials"),
        ({"Authorization": "Bearer pllm-" + "a" * 8187}, "malformed_credentials"),
        ({"Authorization": "Basic dXNlcjpwYXNz"}, "malformed_credentials"),
        ({"Authorization": "Bearer"}, "malformed_credentials"),
        ({"Authorization": "Bearer  "}, "malformed_credentials"),
        ({"Authorization": "Bearer a b"}, "malformed_credentials"),
        ({"Authorization": "Bearer not-a-jwt"}, "malformed_credentials"),
        ({"Authorization": "Bearer pllm-a", "X-API-Key": "pllm-a"}, "malformed_credentials"),
        (
            {"Authorization": "Bearer pllm-a", "authorization": "Bearer pllm-a"},
            "malformed_credentials",
        ),
    ],
)
def test_malformed_or_missing_credentials_are_refused(
    env: Env, headers: dict[str, str], reason: str
) -> None:
    auth = env.authenticator(env.oidc(), token_review=env.token_review())
    error = env.failure(auth, headers)
    assert (error.reason, error.status) == (reason, 401)
    assert sum(env.provider.hits.values()) == 0


def test_a_credential_of_exactly_8_kib_is_read(env: Env) -> None:
    key = "pllm-" + "a" * (8192 - len("Bearer pllm-"))
    assert len(f"Bearer {key}") == 8192
    auth = env.authenticator(api_keys={hash_api_key(key): "long"})
    assert env.identity(auth, bearer(key)).name == "long"


def test_the_bearer_scheme_is_case_insensitive(env: Env) -> None:
    key = generate_api_key()
    auth = env.authenticator(api_keys={hash_api_key(key): "k"})
    assert env.identity(auth, {"authorization": f"bearer {key}"}).name == "k"


def test_error_messages_never_contain_the_credential(env: Env, provider: Provider) -> None:
    auth = env.authenticator(env.oidc(), token_review=env.token_review())
    presented = [
        generate_api_key(),
        env.mint(RSA_1, exp=START - 3600),
        env.mint(RSA_1, iss=K8S_ISSUER),
        "not-a-jwt-but-secret",
        "pllm-secret\n",
    ]
    for credential in presented:
        error = env.failure(auth, bearer(credential))
        assert credential.strip() not in error.message and credential.strip() not in str(error)


# ServiceAccount tokens through TokenReview


def service_account_token(env: Env, name: str = "client", exp: float = START + 3600) -> str:
    token = env.mint(
        signing_key("k8s"),
        iss=K8S_ISSUER,
        aud=["https://kubernetes.default.svc"],
        sub=f"system:serviceaccount:team-a:{name}",
        exp=int(exp),
    )
    env.provider.reviews[token] = {
        "authenticated": True,
        "user": {
            "username": f"system:serviceaccount:team-a:{name}",
            "uid": "0f6c",
            "groups": [
                "system:serviceaccounts",
                "system:serviceaccounts:team-a",
                "system:authenticated",
            ],
            "extra": {"authentication.kubernetes.io/pod-name": ["client-7d9f"]},
        },
        "audiences": ["https://kubernetes.default.svc"],
    }
    return token


def test_a_service_account_token_is_accepted_through_token_review(env: Env) -> None:
    auth = env.authenticator(env.oidc(), token_review=env.token_review())
    identity = env.identity(auth, bearer(service_account_token(env)))
    assert identity == Identity(
        "ServiceAccount",
        "client",
        frozenset(
            {"system:serviceaccounts", "system:serviceaccounts:team-a", "system:authenticated"}
        ),
        "serviceAccount",
        "team-a",
        "client-7d9f",
    )
    assert env.provider.reviewer_tokens == ["gateway-token-1"]


def test_an_oidc_token_is_never_sent_for_review(env: Env, provider: Provider) -> None:
    auth = env.authenticator(env.oidc(), token_review=env.token_review())
    env.identity(auth, bearer(env.mint(RSA_1)))
    env.failure(auth, bearer(env.mint(RSA_1, aud="another-service")))
    assert provider.hits["tokenreview"] == 0


def test_concurrent_requests_with_a_new_token_share_one_review(env: Env) -> None:
    auth = env.authenticator(token_review=env.token_review())
    token = service_account_token(env)

    async def scenario() -> list[Identity]:
        return await asyncio.gather(*(auth.authenticate(bearer(token)) for _ in range(20)))

    assert {identity.name for identity in env.run(scenario())} == {"client"}
    assert env.provider.hits["tokenreview"] == 1


def test_a_token_the_api_server_rejects_is_denied(env: Env) -> None:
    auth = env.authenticator(token_review=env.token_review())
    token = env.mint(signing_key("k8s"), iss=K8S_ISSUER)
    error = env.failure(auth, bearer(token))
    assert (error.reason, error.status) == ("token_review_denied", 401)


def test_an_authenticated_user_that_is_no_service_account_is_denied(env: Env) -> None:
    auth = env.authenticator(token_review=env.token_review())
    token = env.mint(signing_key("k8s"), iss=K8S_ISSUER)
    env.provider.reviews[token] = {"authenticated": True, "user": {"username": "admin"}}
    assert env.failure(auth, bearer(token)).reason == "token_review_denied"


def test_a_review_granting_other_audiences_is_denied(env: Env) -> None:
    auth = env.authenticator(token_review=env.token_review(audiences=(AUDIENCE,)))
    token = service_account_token(env)
    assert env.failure(auth, bearer(token)).reason == "token_review_denied"
    env.provider.reviews[token]["audiences"] = [AUDIENCE]
    assert env.identity(auth, bearer(token)).name == "client"


@pytest.mark.parametrize(
    "cause", ["server error", "unreachable", "gateway not allowed", "no token"]
)
def test_an_unusable_api_server_is_a_503(env: Env, cause: str) -> None:
    config = env.token_review()
    if cause == "server error":
        env.provider.review_failing = True
    elif cause == "unreachable":
        config = env.token_review(api_server="http://127.0.0.1:9")
    elif cause == "gateway not allowed":
        env.token_file.write_text("a-token-the-api-server-refuses")
    else:
        env.token_file.unlink()
    auth = env.authenticator(token_review=config)
    error = env.failure(auth, bearer(service_account_token(env)))
    assert (error.reason, error.status) == ("auth_backend_unavailable", 503)


def test_the_gateway_token_is_read_again_for_every_review(env: Env) -> None:
    auth = env.authenticator(token_review=env.token_review(cache_seconds=0))
    token = service_account_token(env)
    env.identity(auth, bearer(token))
    env.token_file.write_text("gateway-token-2")
    env.provider.gateway_token = "gateway-token-2"
    env.identity(auth, bearer(token))
    assert env.provider.reviewer_tokens == ["gateway-token-1", "gateway-token-2"]


def test_accepted_reviews_are_remembered_for_cache_seconds(env: Env) -> None:
    auth = env.authenticator(token_review=env.token_review(cache_seconds=30))
    token = service_account_token(env)
    env.identity(auth, bearer(token))
    env.clock.now += 29
    env.identity(auth, bearer(token))
    assert env.provider.hits["tokenreview"] == 1
    env.clock.now += 1
    env.identity(auth, bearer(token))
    assert env.provider.hits["tokenreview"] == 2


def test_a_remembered_review_ends_with_the_token(env: Env) -> None:
    auth = env.authenticator(token_review=env.token_review(cache_seconds=30))
    token = service_account_token(env, exp=START + 5)
    env.identity(auth, bearer(token))
    env.clock.now += 5
    del env.provider.reviews[token]  # the API server now refuses the expired token
    assert env.failure(auth, bearer(token)).reason == "token_review_denied"


def test_denials_are_not_remembered(env: Env) -> None:
    auth = env.authenticator(token_review=env.token_review())
    token = env.mint(signing_key("k8s"), iss=K8S_ISSUER)
    env.failure(auth, bearer(token))
    env.failure(auth, bearer(token))
    assert env.provider.hits["tokenreview"] == 2


def test_the_review_cache_forgets_the_least_recently_used(env: Env) -> None:
    reviewer = TokenReviewer(env.token_review(), env.session, env.clock, max_entries=2)
    first, second, third = (service_account_token(env, name) for name in ("a", "b", "c"))

    def review(token: str) -> str:
        return env.run(reviewer.review(token, None)).username

    review(first)
    review(second)
    review(first)  # now the most recently used
    review(third)  # evicts the second
    asked = env.provider.hits["tokenreview"]
    assert review(first).endswith(":a") and review(third).endswith(":c")
    assert env.provider.hits["tokenreview"] == asked
    review(second)
    assert env.provider.hits["tokenreview"] == asked + 1


# Whatever arrives, the only failure is an AuthError


@pytest.fixture(scope="module")
def shared_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    with environment(tmp_path_factory.mktemp("auth")) as running:
        running.provider.published = [RSA_1, EC_1]
        yield running


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3)
    ),
    max_leaves=8,
)
jose_headers = st.fixed_dictionaries(
    {},
    optional={
        "alg": st.sampled_from(["RS256", "ES256", "EdDSA", "HS256", "none", ""]) | json_values,
        "kid": st.sampled_from(["rsa-1", "ec-1", "other"]) | json_values,
        "crit": json_values,
        "typ": json_values,
    },
)
jwt_claims = st.fixed_dictionaries(
    {},
    optional={
        "iss": st.sampled_from([ISSUER, K8S_ISSUER, "other"]) | json_values,
        "aud": st.sampled_from([AUDIENCE, [AUDIENCE]]) | json_values,
        "exp": st.sampled_from([START + 600, START - 600]) | json_values,
        "nbf": json_values,
        "iat": json_values,
        "email": json_values,
        "sub": json_values,
        "groups": json_values,
    },
)
jwt_shaped = st.builds(
    unsigned_jwt, jose_headers | json_values, jwt_claims | json_values, st.binary(max_size=64)
)
header_values = st.one_of(
    st.text(),
    st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=127)),
    st.builds("Bearer {}".format, st.text()),
    st.builds("Bearer {}".format, jwt_shaped),
    st.builds("Bearer {}".format, st.builds("{}.{}".format, jwt_shaped, st.text())),
    jwt_shaped,
    st.just("Bearer pllm-") | st.builds("pllm-{}".format, st.text()),
)
header_sets = st.dictionaries(
    st.sampled_from(["Authorization", "authorization", "X-API-Key", "Accept"]),
    header_values,
    max_size=2,
)


@settings(max_examples=400, deadline=None)
@given(headers=header_sets)
def test_arbitrary_headers_raise_nothing_but_auth_error(
    shared_env: Env, headers: dict[str, str]
) -> None:
    auth = shared_env.authenticator(
        shared_env.oidc(),
        api_keys={hash_api_key("pllm-known"): "known"},
        token_review=shared_env.token_review(),
    )
    try:
        identity = shared_env.run(auth.authenticate(headers))
    except AuthError as error:
        assert error.status in (401, 503) and error.message
    else:
        assert isinstance(identity, Identity)
