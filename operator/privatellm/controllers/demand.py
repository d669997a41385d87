"""The operator's side of the demand signal: every gateway replica's `GET /demand`, read on.

One task per namespace with autoscaled models finds the gateway's replicas (the ready
endpoints of its peers Service), reads the namespace's peer token (from the hash key in
the gateway's configuration Secret) and CA, and keeps one long poll open per replica.
Each answer replaces that replica's reports; a replica that stops answering is dropped
until it answers again. Every answer calls `on_change`: at once when a model became
wanted (a request came while it had no ready replica), so a model at zero is scaled up
on the first request, not at the next resync; otherwise at the end of each long poll,
which gives the autoscaler a fresh look at every model about twice a minute. Beside
the gateways' figures it hands out the engines' own, which an `EngineScraper`
(engines.py) reads from vLLM. See docs/autoscaling.md.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import aiohttp

from privatellm.autoscale import EngineReport, GatewayReport
from privatellm.autoscale.answers import AnswerError, ReplicaAnswer, read_answer
from privatellm.gateway.quotas import peer_token
from privatellm.kube.client import KINDS, Kube
from privatellm.render.gateway import (
    CONFIG_SECRET,
    GATEWAY_NAME,
    HASH_KEY_KEY,
    PEER_PORT,
    PEERS_SERVICE,
)
from privatellm.render.tls import CA_CERT_KEY, NAMESPACE_CA_SECRET, secret_bytes

from .engines import EngineScraper

log = logging.getLogger(__name__)

SECRET = KINDS["Secret"]
ENDPOINT_SLICES = KINDS["EndpointSlice"]
# A long poll is answered within this (the gateway caps it at 30 s).
POLL_WAIT_SECONDS = 25.0
# How often the replicas, token and CA are looked up again.
DISCOVERY_SECONDS = 15.0
# After a failed call, a replica is asked again after this long.
RETRY_SECONDS = 5.0


@dataclass(frozen=True)
class PeerAccess:
    """How the operator calls one namespace's gateway replicas."""

    token: str
    ssl: ssl.SSLContext | bool
    # The name the replicas' certificate is checked against (they are called by address).
    server_name: str | None = None


# (namespace) -> replica base URLs; and the access to them, None while not available.
FindReplicas = Callable[[str], Sequence[str]]
FindAccess = Callable[[str], PeerAccess | None]


class DemandCollector:
    """Keeps the latest `GET /demand` answer of every gateway replica of the namespaces asked."""

    def __init__(
        self,
        on_change: Callable[[str, bool], None],
        find_replicas: FindReplicas,
        find_access: FindAccess,
        poll_wait: float = POLL_WAIT_SECONDS,
        engines: EngineScraper | None = None,
    ) -> None:
        """`on_change(namespace, wake)` is called after each answer; `wake` when a model
        became wanted since the replica's previous answer. `poll_wait` bounds how old a
        replica's figures get while nothing wakes. Without `engines`, no engine's own
        figures are read."""
        self._on_change = on_change
        self._find_replicas = find_replicas
        self._find_access = find_access
        self._poll_wait = poll_wait
        self._engines = engines
        self._answers: dict[str, dict[str, ReplicaAnswer]] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None

    def reports(self, namespace: str, model: str) -> list[GatewayReport]:
        """The model's report from every replica that answers; empty when none does."""
        answers = self._answers.get(namespace, {})
        return [a.reports[model] for a in list(answers.values()) if model in a.reports]

    def engines(self, namespace: str, model: str) -> list[EngineReport]:
        """The model's vLLM replicas' own figures, where they are read; callable from any thread."""
        return self._engines.engines(namespace, model) if self._engines is not None else []

    def watch(self, namespace: str) -> None:
        """Start reading the namespace's gateways; callable from any thread."""
        if self._loop is None:
            return
        self._loop.call_soon_threadsafe(self._start, namespace)

    async def run(self) -> None:
        """Serve `watch` calls, and read the engines, until cancelled; then stop every
        namespace's polls."""
        self._loop = asyncio.get_running_loop()
        try:
            if self._engines is not None:
                await self._engines.run()
            else:
                await asyncio.Event().wait()
        finally:
            for task in self._tasks.values():
                task.cancel()

    def _start(self, namespace: str) -> None:
        if namespace not in self._tasks:
            self._tasks[namespace] = asyncio.create_task(self._namespace(namespace))

    async def _namespace(self, namespace: str) -> None:
        polls: dict[str, asyncio.Task[None]] = {}
        answers = self._answers.setdefault(namespace, {})
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
            try:
                while True:
                    try:
                        replicas = await asyncio.to_thread(self._find_replicas, namespace)
                        access = await asyncio.to_thread(self._find_access, namespace)
                    except Exception as error:
                        # The API server is away: keep the polls there are, look again.
                        log.warning("gateways of %s: %s", namespace, error)
                        await asyncio.sleep(RETRY_SECONDS)
                        continue
                    for url in set(polls) - set(replicas):
                        polls.pop(url).cancel()
                        answers.pop(url, None)
                    for url in set(replicas) - set(polls):
                        if access is not None:
                            poll = self._poll(session, namespace, url, access)
                            polls[url] = asyncio.create_task(poll)
                    await asyncio.sleep(DISCOVERY_SECONDS)
            finally:
                for task in polls.values():
                    task.cancel()

    async def _poll(
        self, session: aiohttp.ClientSession, namespace: str, url: str, access: PeerAccess
    ) -> None:
        answers = self._answers[namespace]
        headers = {"Authorization": f"Bearer {access.token}"}
        failing = False
        while True:
            previous = answers.get(url)
            query = {}
            if previous is not None:
                query = {"since": str(previous.seq), "instance": previous.instance}
                query["wait"] = str(self._poll_wait)
            try:
                async with session.get(
                    f"{url}/demand",
                    params=query,
                    headers=headers,
                    ssl=access.ssl,
                    server_hostname=access.server_name,
                ) as response:
                    body = await response.json(content_type=None)
                    if response.status != 200:
                        raise AnswerError(f"{url}: answered {response.status}: {body}")
                answer = read_answer(url, body, previous)
            except (aiohttp.ClientError, TimeoutError, ValueError) as error:
                answers.pop(url, None)
                if not failing:
                    log.warning("demand of the gateway at %s: %s", url, error)
                failing = True
                await asyncio.sleep(RETRY_SECONDS)
                continue
            failing = False
            answers[url] = answer
            woke = _woke(previous, answer)
            self._on_change(namespace, woke)


def _woke(previous: ReplicaAnswer | None, answer: ReplicaAnswer) -> bool:
    """Whether a model became wanted between two answers of one replica."""
    if previous is None or previous.instance != answer.instance:
        return any(r.wanted for r in answer.reports.values())
    return answer.seq != previous.seq


def replicas_from_slices(kube: Kube, namespace: str) -> list[str]:
    """Base URLs of the ready endpoints of the gateway's peers Service."""
    slices = kube.list(
        ENDPOINT_SLICES, namespace, selector=f"kubernetes.io/service-name={PEERS_SERVICE}"
    )
    urls = []
    for item in slices:
        for endpoint in item.get("endpoints") or []:
            if (endpoint.get("conditions") or {}).get("ready") is False:
                continue
            for address in endpoint.get("addresses") or []:
                host = f"[{address}]" if ":" in address else address
                urls.append(f"https://{host}:{PEER_PORT}")
    return sorted(set(urls))


def access_from_secrets(kube: Kube, namespace: str) -> PeerAccess | None:
    """The peer token and the namespace CA; None until the gateway's Secrets exist."""
    hash_key = secret_bytes(kube.get(SECRET, namespace, CONFIG_SECRET), HASH_KEY_KEY)
    ca = secret_bytes(kube.get(SECRET, namespace, NAMESPACE_CA_SECRET), CA_CERT_KEY)
    if not hash_key or not ca:
        return None
    context = ssl.create_default_context(cadata=ca.decode())
    server_name = f"{GATEWAY_NAME}.{namespace}.svc"
    return PeerAccess(peer_token(hash_key), context, server_name)
