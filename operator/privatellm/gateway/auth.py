"""Who is calling: every gateway request is authenticated before anything else happens.

Three kinds of credential are accepted, in `Authorization: Bearer <token>` or
`X-API-Key: <key>`:

- API keys (`pllm-...`), known to the gateway only by their SHA-256 digests;
- JWTs from the configured OIDC issuer, verified locally with its published keys;
- any other JWT, typically a Kubernetes ServiceAccount token, judged by the API
  server through a TokenReview (when configured).

Failures raise `AuthError` with a machine-readable reason and an HTTP status: 401,
or 503 when the verdict depends on a backend that cannot be reached. Messages never
contain the credential.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import re
import secrets
import ssl
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import aiohttp
import jwt

from .jwks import JWKSCache, JWKSUnavailableError
from .tokenreview import (
    TokenReviewConfig,
    TokenReviewDeniedError,
    TokenReviewer,
    TokenReviewUnavailableError,
)

__all__ = [
    "API_KEY_PREFIX",
    "AuthError",
    "AuthReason",
    "Authenticator",
    "Identity",
    "OIDCConfig",
    "OIDCVerifier",
    "TokenReviewConfig",
    "generate_api_key",
    "hash_api_key",
]

API_KEY_PREFIX = "pllm-"
MAX_CREDENTIAL_LENGTH = 8192
_VISIBLE_ASCII = re.compile(r"[\x20-\x7e]*")
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
_SERVICE_ACCOUNT_PREFIX = "system:serviceaccount:"

AuthReason = Literal[
    "missing_credentials",
    "malformed_credentials",
    "expired_token",
    "token_not_yet_valid",
    "invalid_signature",
    "wrong_issuer",
    "wrong_audience",
    "unknown_signing_key",
    "unknown_api_key",
    "token_review_denied",
    "auth_backend_unavailable",
]


@dataclass(frozen=True, slots=True)
class Identity:
    """An authenticated caller, as AccessPolicy subjects name it."""

    kind: Literal["User", "ServiceAccount", "APIKey"]
    name: str
    groups: frozenset[str]
    method: Literal["oidc", "apiKey", "serviceAccount"]
    namespace: str | None = None
    # The client Pod, for ServiceAccount tokens bound to one.
    pod: str | None = None


class AuthError(Exception):
    """The request is not authenticated: `reason` for machines, `message` for people."""

    def __init__(self, reason: AuthReason, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason: AuthReason = reason
        self.message = message
        # Only an unreachable backend is the gateway's problem; the client may retry.
        self.status = 503 if reason == "auth_backend_unavailable" else 401


@dataclass(frozen=True)
class OIDCConfig:
    """The one OIDC issuer whose tokens the gateway verifies itself."""

    issuer: str
    audience: str
    # Without it, the key set is found through the issuer's discovery document.
    jwks_uri: str | None = None
    username_claim: str = "email"
    groups_claim: str = "groups"
    leeway_seconds: int = 60
    algorithms: tuple[str, ...] = ("RS256", "ES256", "EdDSA")
    ca_file: str | None = None

    def __post_init__(self) -> None:
        if not self.algorithms:
            raise ValueError("at least one signing algorithm must be allowed")
        known = jwt.algorithms.get_default_algorithms()
        for algorithm in self.algorithms:
            # Shared-secret algorithms would accept a token "signed" with a public key.
            if algorithm == "none" or algorithm.startswith("HS") or algorithm not in known:
                raise ValueError(f"signing algorithm {algorithm!r} is not accepted")
        if self.leeway_seconds < 0:
            raise ValueError("leeway_seconds must not be negative")


def hash_api_key(key: str) -> str:
    """SHA-256 hex digest of an API key: the only form stored (in a Secret, data key "sha256")."""
    return hashlib.sha256(key.encode()).hexdigest()


def generate_api_key() -> str:
    """A new API key: "pllm-" and 43 URL-safe characters (256 random bits)."""
    return API_KEY_PREFIX + secrets.token_urlsafe(32)


def presented_credential(headers: Mapping[str, str]) -> tuple[Literal["bearer", "apiKey"], str]:
    """The one credential in the headers, checked to be plain printable ASCII of sane size."""
    found: list[tuple[Literal["bearer", "apiKey"], str]] = []
    for name, value in headers.items():
        lowered = name.lower()
        if lowered not in ("authorization", "x-api-key"):
            continue
        # Before any parsing: bounded, visible ASCII only (no CR/LF or other controls).
        if len(value) > MAX_CREDENTIAL_LENGTH:
            raise AuthError("malformed_credentials", f"{name} is longer than 8 KiB")
        if not _VISIBLE_ASCII.fullmatch(value):
            raise AuthError(
                "malformed_credentials", f"{name} has characters other than printable ASCII"
            )
        found.append(("bearer" if lowered == "authorization" else "apiKey", value))
    if not found:
        raise AuthError("missing_credentials", "send Authorization: Bearer or X-API-Key")
    if len(found) > 1:
        raise AuthError("malformed_credentials", "send exactly one credential")
    kind, value = found[0]
    if kind == "bearer":
        scheme, _, value = value.partition(" ")
        if scheme.lower() != "bearer":
            raise AuthError("malformed_credentials", "the Authorization scheme must be Bearer")
    value = value.strip(" ")
    if not value or " " in value:
        raise AuthError("malformed_credentials", "the credential must be one non-empty word")
    return kind, value


def _unverified_token(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Header and claims of a JWT, not yet verified: only to decide who verifies it."""
    try:
        header = jwt.get_unverified_header(token)
        claims = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError:
        raise AuthError(
            "malformed_credentials", "the bearer token is neither an API key nor a JWT"
        ) from None
    return header, claims


def _time_claim(claims: Mapping[str, Any], name: str) -> float | None:
    """A NumericDate claim, None when absent."""
    value = claims.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise AuthError("malformed_credentials", f"the token's {name} is not a number")
    try:
        moment = float(value)
    except OverflowError:
        moment = math.inf
    if not math.isfinite(moment):
        raise AuthError("malformed_credentials", f"the token's {name} is out of range")
    return moment


def check_lifetime(claims: Mapping[str, Any], now: float, leeway: float) -> None:
    """Raise unless exp, nbf and iat admit the token at `now`, give or take `leeway` seconds."""
    expires = _time_claim(claims, "exp")
    if expires is None:
        raise AuthError("malformed_credentials", "the token has no expiry (exp)")
    if expires <= now - leeway:
        raise AuthError("expired_token", "the token has expired")
    for name in ("nbf", "iat"):
        moment = _time_claim(claims, name)
        if moment is not None and moment > now + leeway:
            raise AuthError("token_not_yet_valid", f"the token is not valid yet ({name})")


def oidc_user(claims: Mapping[str, Any], config: OIDCConfig) -> Identity:
    """The user a verified OIDC token names: username claim (else sub) and groups claim."""
    name = claims.get(config.username_claim)
    if not isinstance(name, str) or not name:
        name = claims.get("sub")
    if not isinstance(name, str) or not name:
        raise AuthError("malformed_credentials", "the token names no user")
    groups = claims.get(config.groups_claim)
    if not isinstance(groups, list) or not all(isinstance(g, str) for g in groups):
        groups = []
    return Identity("User", name, frozenset(groups), "oidc")


def _verification_failure(error: jwt.PyJWTError) -> AuthError:
    """The reason for a token PyJWT refused (lifetime is checked separately, with the clock)."""
    if isinstance(
        error, jwt.InvalidSignatureError | jwt.InvalidAlgorithmError | jwt.InvalidKeyError
    ):
        return AuthError("invalid_signature", "the token's signature does not verify")
    if isinstance(error, jwt.InvalidIssuerError):
        return AuthError("wrong_issuer", "the token is from another issuer")
    if isinstance(error, jwt.InvalidAudienceError) or (
        isinstance(error, jwt.MissingRequiredClaimError) and error.claim == "aud"
    ):
        return AuthError("wrong_audience", "the token is not meant for this gateway")
    return AuthError("malformed_credentials", "the token's claims are malformed")


class OIDCVerifier:
    """Verifies tokens of one OIDC issuer against its published signing keys."""

    def __init__(
        self, config: OIDCConfig, session: aiohttp.ClientSession, clock: Callable[[], float]
    ) -> None:
        self.config = config
        self._clock = clock
        self._keys = JWKSCache(
            session,
            issuer=config.issuer,
            jwks_uri=config.jwks_uri,
            ssl_context=(
                ssl.create_default_context(cafile=config.ca_file) if config.ca_file else True
            ),
            clock=clock,
        )

    async def identity(self, token: str, header: Mapping[str, Any]) -> Identity:
        """The user of a token whose signature, issuer, audience and lifetime all check out."""
        algorithm = header.get("alg")
        if not isinstance(algorithm, str) or algorithm not in self.config.algorithms:
            raise AuthError("invalid_signature", "the token's signing algorithm is not accepted")
        try:
            key = await self._keys.signing_key(header.get("kid"), algorithm)
        except JWKSUnavailableError:
            raise AuthError(
                "auth_backend_unavailable", "the OIDC provider's signing keys are unavailable"
            ) from None
        except jwt.PyJWTError:
            raise AuthError(
                "invalid_signature", "the signing key does not fit the token's algorithm"
            ) from None
        if key is None:
            raise AuthError("unknown_signing_key", "the issuer has no key with the token's kid")
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[algorithm],
                audience=self.config.audience,
                issuer=self.config.issuer,
                # The lifetime is checked below, against the injected clock.
                options={
                    "verify_exp": False,
                    "verify_nbf": False,
                    "verify_iat": False,
                    "enforce_minimum_key_length": True,
                },
            )
        except jwt.PyJWTError as error:
            raise _verification_failure(error) from None
        check_lifetime(claims, self._clock(), self.config.leeway_seconds)
        return oidc_user(claims, self.config)


def service_account_identity(
    username: str, groups: frozenset[str], pod: str | None = None
) -> Identity:
    """The Identity of a user the API server vouched for, if it is a ServiceAccount."""
    namespace, _, name = username.removeprefix(_SERVICE_ACCOUNT_PREFIX).partition(":")
    if not username.startswith(_SERVICE_ACCOUNT_PREFIX) or not namespace or not name or ":" in name:
        raise AuthError("token_review_denied", "the token does not belong to a ServiceAccount")
    return Identity("ServiceAccount", name, groups, "serviceAccount", namespace, pod)


class Authenticator:
    """Turns a request's headers into an Identity, or raises AuthError."""

    def __init__(
        self,
        oidc: OIDCConfig | None,
        api_keys: Mapping[str, str],
        token_review: TokenReviewConfig | None,
        session: aiohttp.ClientSession,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._api_keys: tuple[tuple[bytes, str], ...] = ()
        self.replace_api_keys(api_keys)
        self._oidc = None if oidc is None else OIDCVerifier(oidc, session, clock)
        self._reviewer = (
            None if token_review is None else TokenReviewer(token_review, session, clock)
        )

    def replace_api_keys(self, api_keys: Mapping[str, str]) -> None:
        """Use these API keys (SHA-256 hex digest -> key name) from now on."""
        keys = []
        for digest, name in api_keys.items():
            normalized = digest.strip().lower()
            if not _SHA256_HEX.fullmatch(normalized):
                raise ValueError(f"API key {name!r}: not a SHA-256 hex digest")
            keys.append((normalized.encode(), name))
        # One assignment, so a request sees either the old keys or the new, never a mix.
        self._api_keys = tuple(keys)

    async def authenticate(self, headers: Mapping[str, str]) -> Identity:
        """The caller the request's credential proves; AuthError when it proves none."""
        kind, credential = presented_credential(headers)
        if kind == "apiKey" or credential.startswith(API_KEY_PREFIX):
            return self._api_key_identity(credential)
        header, claims = _unverified_token(credential)
        if self._oidc is not None and claims.get("iss") == self._oidc.config.issuer:
            return await self._oidc.identity(credential, header)
        if self._reviewer is not None:
            return await self._reviewed_identity(credential, claims, self._reviewer)
        raise AuthError("wrong_issuer", "the token is not from a trusted issuer")

    def _api_key_identity(self, key: str) -> Identity:
        digest = hash_api_key(key).encode()
        # Every stored digest is compared, in constant time, so timing tells nothing.
        names = [name for stored, name in self._api_keys if hmac.compare_digest(digest, stored)]
        if not names:
            raise AuthError("unknown_api_key", "the API key is not known")
        return Identity("APIKey", names[0], frozenset(), "apiKey")

    @staticmethod
    async def _reviewed_identity(
        token: str, claims: Mapping[str, Any], reviewer: TokenReviewer
    ) -> Identity:
        try:
            user = await reviewer.review(token, _time_claim(claims, "exp"))
        except TokenReviewDeniedError as error:
            raise AuthError("token_review_denied", str(error)) from None
        except TokenReviewUnavailableError as error:
            raise AuthError("auth_backend_unavailable", str(error)) from None
        return service_account_identity(user.username, user.groups, user.pod)
