"""The operator's look at vLLM's own figures: each ready replica's `GET /metrics`.

Every few seconds, for each model the autoscaler asked about lately, each ready replica
is read; the round's figures replace the model's previous ones, and a replica that fails
(unreachable, refused, not a vLLM page) is logged when it starts failing and left out
until it answers again. The decision refuses absurd figures (autoscale/demand.py).

Where: the ready endpoints of the model's Service, the replicas the gateway routes to,
on vLLM's port, which serves the metrics page next to the API. How: HTTPS, the server's
certificate checked against the namespace CA and the name `<model>.<namespace>.svc`,
and a client certificate of the operator's own, which a model with
`encryption.tls: mutual` demands. The operator issues that certificate itself from the
namespace CA, whose key it holds anyway: for client authentication only, valid for a
day, kept in memory and never written to the cluster. Borrowing the gateway's
certificate instead would make the operator the gateway in the servers' eyes and tie
the scrape to a Secret that cert-manager may be rewriting. See docs/autoscaling.md.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import ssl
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from privatellm.autoscale import EngineReport, MetricsError, read_engine_metrics
from privatellm.gateway.discovery import SERVICE_NAME_LABEL, ready_replicas
from privatellm.keys.tls import KeyPair, issue_client, needs_renewal
from privatellm.kube.client import KINDS, Kube
from privatellm.render.tls import CA_CERT_KEY, CA_KEY_KEY, NAMESPACE_CA_SECRET, secret_bytes

log = logging.getLogger(__name__)

SECRET = KINDS["Secret"]
ENDPOINT_SLICES = KINDS["EndpointSlice"]
METRICS_PATH = "/metrics"
# How often the replicas are read: about as often as the autoscaler decides.
SCRAPE_SECONDS = 15.0
# A replica that has not answered within this is left out of the round.
SCRAPE_TIMEOUT_SECONDS = 5.0
# The autoscaler asks about each of its models at every decision, and decides at least
# at every resync; a model not asked about for this long is gone or no longer autoscaled.
ASKED_SECONDS = 300.0
# vLLM's page is some hundred KiB of histograms: one far bigger is not vLLM's, and is
# not read to the end.
MAX_METRICS_BYTES = 4 * 1024 * 1024
CLIENT_NAME = "privatellm-operator"
# Short-lived, since nothing revokes it: a copy that leaked is useless by tomorrow.
CLIENT_VALIDITY = datetime.timedelta(days=1)
CLIENT_RENEW_BEFORE = datetime.timedelta(hours=12)


@dataclass(frozen=True)
class EngineAccess:
    """How the operator calls one namespace's vLLM servers."""

    ssl: ssl.SSLContext


def engine_replicas(kube: Kube, namespace: str, model: str) -> list[str]:
    """Base URLs of the ready endpoints of the model's Service (named after the model)."""
    slices = kube.list(ENDPOINT_SLICES, namespace, selector=f"{SERVICE_NAME_LABEL}={model}")
    return [replica.url for replica in ready_replicas(slices).get(model, ())]


def server_name(namespace: str, model: str) -> str:
    """The name a model's servers are checked against: they are called by Pod address."""
    return f"{model}.{namespace}.svc"


@dataclass(frozen=True)
class _Issued:
    ca_cert_pem: bytes
    cert_pem: bytes
    access: EngineAccess


def namespace_ca(kube: Kube, namespace: str) -> KeyPair | None:
    """The namespace's CA as its Secret holds it; None until the operator made one."""
    secret = kube.get(SECRET, namespace, NAMESPACE_CA_SECRET)
    ca = KeyPair(secret_bytes(secret, CA_CERT_KEY), secret_bytes(secret, CA_KEY_KEY))
    return ca if ca.cert_pem and ca.key_pem else None


class ClientCertificates:
    """The operator's client certificate for each namespace's vLLM servers, kept in memory."""

    def __init__(
        self,
        read_ca: Callable[[str], KeyPair | None],
        clock: Callable[[], datetime.datetime] = lambda: datetime.datetime.now(datetime.UTC),
    ) -> None:
        """`read_ca(namespace)` is the namespace's CA (`namespace_ca`), None while it has none."""
        self._read_ca = read_ca
        self._clock = clock
        self._issued: dict[str, _Issued] = {}

    def access(self, namespace: str) -> EngineAccess | None:
        """The namespace's access, issued anew when its CA changed or the certificate
        nears its end; None while the namespace has no CA."""
        ca = self._read_ca(namespace)
        if ca is None:
            return None
        now = self._clock()
        issued = self._issued.get(namespace)
        if (
            issued is None
            or issued.ca_cert_pem != ca.cert_pem
            or needs_renewal(issued.cert_pem, now, CLIENT_RENEW_BEFORE)
        ):
            client = issue_client(ca, CLIENT_NAME, now, CLIENT_VALIDITY)
            issued = _Issued(ca.cert_pem, client.cert_pem, client_access(ca.cert_pem, client))
            self._issued[namespace] = issued
        return issued.access


def client_access(ca_cert_pem: bytes, client: KeyPair) -> EngineAccess:
    """Trust the namespace CA only, and present `client`."""
    context = ssl.create_default_context(cadata=ca_cert_pem.decode())
    # ssl loads a certificate and key only from a file: they are on disk for the moment
    # it takes, in a directory only this process's user may enter.
    with tempfile.TemporaryDirectory(prefix="privatellm-client-") as directory:
        path = Path(directory) / "client.pem"
        path.write_bytes(client.key_pem + client.cert_pem)
        context.load_cert_chain(path)
    return EngineAccess(context)


async def scrape_engine(
    session: aiohttp.ClientSession, url: str, access: EngineAccess, server: str
) -> EngineReport:
    """One replica's figures; MetricsError, aiohttp.ClientError or TimeoutError when it
    gives none."""
    async with session.get(
        f"{url}{METRICS_PATH}",
        ssl=access.ssl,
        server_hostname=server,
        timeout=aiohttp.ClientTimeout(total=SCRAPE_TIMEOUT_SECONDS),
    ) as response:
        if response.status != 200:
            raise MetricsError(f"{url}: answered {response.status}")
        body = bytearray()
        async for chunk in response.content.iter_chunked(64 * 1024):
            body += chunk
            if len(body) > MAX_METRICS_BYTES:
                raise MetricsError(f"{url}: the page is larger than {MAX_METRICS_BYTES} bytes")
    # Parsing some hundred KiB takes a while: not on the loop that serves the long polls.
    return await asyncio.to_thread(read_engine_metrics, url, body.decode())


# (namespace, model)
ModelKey = tuple[str, str]
# (namespace, model) -> the model's ready replicas' base URLs; (namespace) -> the access
# to them, None while not available.
FindEngines = Callable[[str, str], Sequence[str]]
FindEngineAccess = Callable[[str], EngineAccess | None]


class EngineScraper:
    """The latest figures of each ready vLLM replica of the models asked about."""

    def __init__(
        self,
        find_replicas: FindEngines,
        find_access: FindEngineAccess,
        every: float = SCRAPE_SECONDS,
    ) -> None:
        """`every` bounds how old the figures get."""
        self._find_replicas = find_replicas
        self._find_access = find_access
        self._every = every
        # When the autoscaler last asked about each model (loop time), and its figures.
        self._asked: dict[ModelKey, float] = {}
        self._figures: dict[ModelKey, list[EngineReport]] = {}
        # Replicas, and namespaces whose replicas could not be found, failing since logged.
        self._failing: set[str] = set()
        self._loop: asyncio.AbstractEventLoop | None = None

    def engines(self, namespace: str, model: str) -> list[EngineReport]:
        """The figures of the model's replicas that answered the last round; asking keeps
        them being read. Callable from any thread."""
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._ask, (namespace, model))
        return list(self._figures.get((namespace, model), ()))

    async def run(self) -> None:
        """Read the replicas every `every` seconds until cancelled."""
        self._loop = asyncio.get_running_loop()
        async with aiohttp.ClientSession() as session:
            while True:
                await self._round(session)
                await asyncio.sleep(self._every)

    def _ask(self, key: ModelKey) -> None:
        self._asked[key] = asyncio.get_running_loop().time()

    async def _round(self, session: aiohttp.ClientSession) -> None:
        now = asyncio.get_running_loop().time()
        for key, asked in list(self._asked.items()):
            if now - asked > ASKED_SECONDS:
                del self._asked[key]
                self._figures.pop(key, None)
        namespaces = sorted({namespace for namespace, _ in self._asked})
        seen = await asyncio.gather(*(self._namespace(session, ns) for ns in namespaces))
        # What is gone cannot fail again; an address given to a new Pod is logged afresh.
        self._failing &= set(namespaces).union(*seen)

    async def _namespace(self, session: aiohttp.ClientSession, namespace: str) -> set[str]:
        """Read the namespace's models; the replicas found."""
        models = sorted(model for ns, model in self._asked if ns == namespace)
        found: dict[str, Sequence[str]] = {}
        try:
            access = await asyncio.to_thread(self._find_access, namespace)
            if access is not None:
                for model in models:
                    found[model] = await asyncio.to_thread(self._find_replicas, namespace, model)
        except Exception as error:  # the API server is away, say: the next round tries again
            self._failed(namespace, f"vLLM replicas of namespace {namespace}: {error}")
            access, found = None, {}
        else:
            self._failing.discard(namespace)
        for model in models:
            reports: list[EngineReport | None] = []
            if access is not None:
                server = server_name(namespace, model)
                scrapes = (self._scrape(session, url, access, server) for url in found[model])
                reports = await asyncio.gather(*scrapes)
            self._figures[(namespace, model)] = [r for r in reports if r is not None]
        return {url for urls in found.values() for url in urls}

    async def _scrape(
        self, session: aiohttp.ClientSession, url: str, access: EngineAccess, server: str
    ) -> EngineReport | None:
        try:
            report = await scrape_engine(session, url, access, server)
        except (aiohttp.ClientError, TimeoutError, ValueError) as error:
            # A MetricsError names the replica already; a timeout says nothing of itself.
            text = str(error) or type(error).__name__
            reason = text if isinstance(error, MetricsError) else f"{url}: {text}"
            self._failed(url, f"vLLM metrics at {reason}")
            return None
        self._failing.discard(url)
        return report

    def _failed(self, what: str, message: str) -> None:
        """Log a failure when it starts; a repeat says nothing new."""
        if what not in self._failing:
            log.warning("%s", message)
        self._failing.add(what)
