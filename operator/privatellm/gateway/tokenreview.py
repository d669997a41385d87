"""Kubernetes ServiceAccount tokens, judged by the API server through the TokenReview API.

The gateway sends the presented token with its own ServiceAccount token, which needs
the `system:auth-delegator` ClusterRole. Its own token is read from the file on every
review because the kubelet rotates it. Accepted tokens are remembered for a short
while, keyed by their SHA-256 (the raw token is never kept), never past the token's
own expiry, in a least-recently-used map of bounded size.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import ssl
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

REVIEW_PATH = "/apis/authentication.k8s.io/v1/tokenreviews"
REVIEW_TIMEOUT = aiohttp.ClientTimeout(total=5)
DEFAULT_CACHE_ENTRIES = 10_000

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TokenReviewConfig:
    """Where the API server is, and how the gateway authenticates to it."""

    api_server: str
    token_file: str
    ca_file: str | None
    # Audiences the token must be issued for; empty means the API server's own.
    audiences: tuple[str, ...] = ()
    # How long an accepted token is remembered; 0 asks the API server every time.
    cache_seconds: float = 30.0


@dataclass(frozen=True, slots=True)
class ReviewedUser:
    """Who the API server says the token belongs to."""

    username: str
    groups: frozenset[str]
    # The Pod a bound ServiceAccount token was issued to, when the API server says so.
    pod: str | None = None


# Where the API server names the Pod a bound token belongs to.
POD_NAME_EXTRA = "authentication.kubernetes.io/pod-name"


class TokenReviewDeniedError(Exception):
    """The API server looked at the token and did not accept it."""


class TokenReviewUnavailableError(Exception):
    """The token was not judged: the API server is unreachable or refused the review itself."""


def token_digest(token: str) -> str:
    """The cache key of a token: its SHA-256, so the cache never holds a usable credential."""
    return hashlib.sha256(token.encode()).hexdigest()


def reviewed_user(review: Any, audiences: tuple[str, ...]) -> ReviewedUser:
    """The user of an answered TokenReview; TokenReviewDeniedError when it is not accepted."""
    status = review.get("status") if isinstance(review, dict) else None
    if not isinstance(status, dict) or status.get("authenticated") is not True:
        error = status.get("error") if isinstance(status, dict) else None
        # The API server's own words go to the log, not to the client.
        log.info("TokenReview denied: %s", error or "not authenticated")
        raise TokenReviewDeniedError("the API server did not accept the token")
    # The API documents that an authenticator may ignore the requested audiences,
    # so the answer's own audiences are checked as well.
    granted = status.get("audiences")
    if audiences and not (isinstance(granted, list) and set(granted) & set(audiences)):
        raise TokenReviewDeniedError("the token is not valid for the gateway's audiences")
    user = status.get("user")
    username = user.get("username") if isinstance(user, dict) else None
    if not isinstance(username, str) or not username:
        raise TokenReviewDeniedError("the review names no user")
    assert isinstance(user, dict)
    groups = user.get("groups")
    extra = user.get("extra")
    pods = extra.get(POD_NAME_EXTRA) if isinstance(extra, dict) else None
    pod = pods[0] if isinstance(pods, list) and pods and isinstance(pods[0], str) else None
    names = frozenset(g for g in groups if isinstance(g, str)) if isinstance(groups, list) else None
    return ReviewedUser(username, names or frozenset(), pod)


class TokenReviewer:
    """Asks the API server who a token belongs to, remembering accepted answers briefly."""

    def __init__(
        self,
        config: TokenReviewConfig,
        session: aiohttp.ClientSession,
        clock: Callable[[], float],
        max_entries: int = DEFAULT_CACHE_ENTRIES,
    ) -> None:
        self._config = config
        self._session = session
        self._clock = clock
        self._max_entries = max_entries
        self._url = config.api_server.rstrip("/") + REVIEW_PATH
        self._ssl: ssl.SSLContext | bool = (
            ssl.create_default_context(cafile=config.ca_file) if config.ca_file else True
        )
        self._accepted: OrderedDict[str, tuple[ReviewedUser, float]] = OrderedDict()
        self._pending: dict[str, asyncio.Task[ReviewedUser]] = {}

    async def review(self, token: str, expires_at: float | None) -> ReviewedUser:
        """The user the token belongs to; `expires_at` (the token's exp) bounds the caching."""
        digest = token_digest(token)
        cached = self._accepted.get(digest)
        if cached is not None:
            user, valid_until = cached
            if self._clock() < valid_until:
                self._accepted.move_to_end(digest)
                return user
            del self._accepted[digest]
        # A client that opens many requests at once with a new token costs one review.
        pending = self._pending.get(digest)
        if pending is None:
            pending = asyncio.create_task(self._review_and_remember(token, digest, expires_at))
            self._pending[digest] = pending
            pending.add_done_callback(lambda task: self._forget(digest, task))
        # Shielded: one caller giving up must not cancel the review the others wait for.
        return await asyncio.shield(pending)

    def _forget(self, digest: str, task: asyncio.Task[ReviewedUser]) -> None:
        self._pending.pop(digest, None)
        # Marked as seen: when every waiter has given up, nobody else would look at it.
        if not task.cancelled():
            task.exception()

    async def _review_and_remember(
        self, token: str, digest: str, expires_at: float | None
    ) -> ReviewedUser:
        asked_at = self._clock()
        user = reviewed_user(await self._ask(token), self._config.audiences)
        valid_until = asked_at + self._config.cache_seconds
        if expires_at is not None:
            valid_until = min(valid_until, expires_at)
        if valid_until > self._clock():
            self._accepted[digest] = (user, valid_until)
            while len(self._accepted) > self._max_entries:
                self._accepted.popitem(last=False)
        return user

    async def _ask(self, token: str) -> Any:
        try:
            own_token = Path(self._config.token_file).read_text().strip()
        except OSError as error:
            raise TokenReviewUnavailableError(
                f"the gateway's own token cannot be read: {error.strerror}"
            ) from error
        body: dict[str, Any] = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenReview",
            "spec": {"token": token},
        }
        if self._config.audiences:
            body["spec"]["audiences"] = list(self._config.audiences)
        try:
            async with self._session.post(
                self._url,
                json=body,
                headers={"Authorization": f"Bearer {own_token}"},
                ssl=self._ssl,
                timeout=REVIEW_TIMEOUT,
            ) as response:
                if response.status not in (200, 201):
                    # 401/403 mean the gateway itself may not review tokens: the
                    # presented token was never judged, so this is not a denial.
                    raise TokenReviewUnavailableError(
                        f"the API server answered the TokenReview with HTTP {response.status}"
                    )
                return await response.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError) as error:
            raise TokenReviewUnavailableError(
                f"the API server could not be asked: {type(error).__name__}"
            ) from error
