"""Collect every gateway replica's usage tally into its namespace's usage ledgers.

Each replica counts requests and tokens per subject, AccessPolicy and model in a durable
tally and serves it as `GET /usage` on its peer port (the bearer token and TLS of
`GET /demand`). Every USAGE_POLL_SECONDS the collector reads each replica of each
namespace that has a CostBudget and merges the answers, month by month, into the
namespace's ConfigMap of each month, `usage_configmap(month)` (cost/usage.py): in etcd,
the counters of a replica that is gone, or of one whose answer could not be read this
time, still count, across operator restarts. A replica that fails is logged once and
asked again at the next poll; a malformed answer is refused whole and never written.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import aiohttp

from privatellm.cost.usage import (
    MAX_LEDGER_BYTES,
    UsageAnswer,
    answer_months,
    ledger_bytes,
    merge,
    parse_answer,
    usage_configmap,
)
from privatellm.kube.client import KINDS, ApiError, Kube
from privatellm.render.meta import MANAGED_BY, MANAGED_BY_LABEL

from .demand import FindAccess, FindReplicas, PeerAccess

log = logging.getLogger(__name__)

CONFIG_MAP = KINDS["ConfigMap"]
# Counters are cumulative: a late read loses nothing, so a slow poll is enough.
USAGE_POLL_SECONDS = 30.0
FETCH_TIMEOUT_SECONDS = 10.0
# Two collectors (an old and a new leader) may write at once; each retry re-reads.
WRITE_ATTEMPTS = 5
# (replica base URL) -> the JSON body of its `GET /usage`; raises OSError or ValueError.
Fetch = Callable[[str], Any]


class _Trouble:
    """Says a source's failure when it starts or changes, and its recovery, once each."""

    def __init__(self) -> None:
        self._last: dict[str, str] = {}

    def failed(self, source: str, message: str) -> None:
        if self._last.get(source) == message:
            log.debug("%s", message)
        else:
            log.warning("%s", message)
        self._last[source] = message

    def succeeded(self, source: str) -> None:
        if self._last.pop(source, None) is not None:
            log.info("usage of %s is read again", source)


def render_usage_ledger(namespace: str, month: str, data: Mapping[str, str]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": usage_configmap(month),
            "namespace": namespace,
            "labels": {MANAGED_BY_LABEL: MANAGED_BY},
        },
        "data": dict(data),
    }


def store_month(kube: Kube, namespace: str, month: str, answers: Iterable[UsageAnswer]) -> bool:
    """Merge the rows of `month` of `answers` into the namespace's ledger of that month;
    True when it was written.

    Written only when the merge changes it, with the resourceVersion read, so a
    concurrent writer's update is re-read and merged, never overwritten. A merge that
    would not fit in a ConfigMap is logged as an error and not written: the figures
    stored before stay whole, rather than a ledger cut short or a write that fails.
    """
    answers = list(answers)
    name = usage_configmap(month)
    for _ in range(WRITE_ATTEMPTS):
        live = kube.get(CONFIG_MAP, namespace, name)
        stored = (live or {}).get("data") or {}
        merged = merge(month, stored, answers)
        if merged == stored and (live is not None or not merged):
            return False
        size = ledger_bytes(merged)
        if size > MAX_LEDGER_BYTES:
            log.error(
                "usage of namespace %s in %s is not recorded: its ledger %s would hold "
                "%d bytes, over the limit of %d; it keeps the figures stored before",
                namespace,
                month,
                name,
                size,
                MAX_LEDGER_BYTES,
            )
            return False
        try:
            kube.write_if_unchanged(render_usage_ledger(namespace, month, merged), live)
        except ApiError as error:
            if error.status != 409:
                raise
            continue
        return True
    raise RuntimeError(
        f"the usage ledger {namespace}/{name} changed under each of {WRITE_ATTEMPTS} writes"
    )


def store_usage(kube: Kube, namespace: str, answers: Iterable[UsageAnswer]) -> bool:
    """Merge `answers` into the namespace's ledger of each month they count anything in;
    True when any was written.

    A month the API server refuses does not keep the others from being written; the
    refusals are raised together afterwards. An API server that cannot be reached stops
    the round at once.
    """
    answers = list(answers)
    written = False
    refused = []
    for month in answer_months(answers):
        try:
            written = store_month(kube, namespace, month, answers) or written
        except (ApiError, RuntimeError) as error:
            refused.append(f"{usage_configmap(month)} not written: {error}")
    if refused:
        raise RuntimeError("; ".join(refused))
    return written


def _read(url: str, body: Any, trouble: _Trouble) -> UsageAnswer | None:
    try:
        answer = parse_answer(body)
    except ValueError as error:
        trouble.failed(url, f"usage of the gateway at {url} refused: {error}")
        return None
    trouble.succeeded(url)
    return answer


def collect_once(kube: Kube, namespace: str, replicas: Iterable[str], fetch: Fetch) -> bool:
    """Read each replica's `GET /usage` with `fetch` and merge what answers well into the
    namespace's usage ledgers; True when any was written. A replica that fails or answers
    something malformed is logged and left out."""
    trouble = _Trouble()
    answers = []
    for url in replicas:
        try:
            body = fetch(url)
        except (OSError, ValueError) as error:
            trouble.failed(url, f"usage of the gateway at {url}: {error}")
            continue
        if (answer := _read(url, body, trouble)) is not None:
            answers.append(answer)
    return store_usage(kube, namespace, answers)


class UsageCollector:
    """Polls the gateway replicas of the namespaces `namespaces()` names into their ledgers."""

    def __init__(
        self,
        kube: Kube,
        namespaces: Callable[[], Iterable[str]],
        find_replicas: FindReplicas,
        find_access: FindAccess,
        poll_seconds: float = USAGE_POLL_SECONDS,
    ) -> None:
        """`namespaces()` is asked at each poll, on the event loop: a namespace is read
        from the first poll after it appears until the one after it goes."""
        self._kube = kube
        self._namespaces = namespaces
        self._find_replicas = find_replicas
        self._find_access = find_access
        self._poll_seconds = poll_seconds
        self._trouble = _Trouble()

    async def run(self) -> None:
        """Poll until cancelled."""
        timeout = aiohttp.ClientTimeout(total=FETCH_TIMEOUT_SECONDS)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            while True:
                for namespace in sorted(set(self._namespaces())):
                    try:
                        await self.collect(session, namespace)
                    except Exception as error:
                        # The API server is away: the tallies keep counting, read them later.
                        self._trouble.failed(namespace, f"usage ledgers of {namespace}: {error}")
                    else:
                        self._trouble.succeeded(namespace)
                await asyncio.sleep(self._poll_seconds)

    async def collect(self, session: aiohttp.ClientSession, namespace: str) -> bool:
        """One poll of the namespace's replicas; True when any of its ledgers was written."""
        replicas = await asyncio.to_thread(self._find_replicas, namespace)
        access = await asyncio.to_thread(self._find_access, namespace)
        if access is None or not replicas:
            return False
        bodies = await asyncio.gather(*(self._fetch(session, url, access) for url in replicas))
        answers = []
        for url, body in zip(replicas, bodies, strict=True):
            if body is not None and (answer := _read(url, body, self._trouble)) is not None:
                answers.append(answer)
        if not answers:
            return False
        return await asyncio.to_thread(store_usage, self._kube, namespace, answers)

    async def _fetch(self, session: aiohttp.ClientSession, url: str, access: PeerAccess) -> Any:
        """The replica's answer; None, logged, when it could not be read."""
        try:
            async with session.get(
                f"{url}/usage",
                headers={"Authorization": f"Bearer {access.token}"},
                ssl=access.ssl,
                server_hostname=access.server_name,
            ) as response:
                if response.status != 200:
                    raise aiohttp.ClientResponseError(
                        response.request_info,
                        (),
                        status=response.status,
                        message=(await response.text())[:200],
                    )
                return await response.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError) as error:
            self._trouble.failed(url, f"usage of the gateway at {url}: {error}")
            return None
