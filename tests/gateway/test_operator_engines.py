"""The operator reads vLLM's own figures: local vLLM-like servers on loopback, under mutual
TLS with the namespace CA, read by the operator's real scraper and client certificate."""

from __future__ import annotations

import asyncio
import datetime
import logging
import ssl
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

import pytest

from privatellm.autoscale import EngineReport, aggregate_demand
from privatellm.controllers.demand import DemandCollector
from privatellm.controllers.engines import ClientCertificates, EngineAccess, EngineScraper
from privatellm.keys.tls import KeyPair, issue_ca, issue_leaf, service_names
from tests.support.fake_openai import FakeOpenAI

from .test_gateway_holding import HANG_GUARD_SECONDS, until

NAMESPACE = "team"
MODEL = "llama"
NOW = datetime.datetime.now(datetime.UTC)
# Rounds follow each other at once here; the operator waits 15 s between them.
EVERY = 0.02
SCRAPER_LOG = "privatellm.controllers.engines"


def server_context(ca: KeyPair, service: str, directory: Path) -> ssl.SSLContext:
    """What vLLM runs with under `encryption.tls: mutual`: the Service's certificate, and
    client certificates required from the namespace CA."""
    leaf = issue_leaf(ca, service, service_names(service, NAMESPACE), NOW)
    (directory / "ca.crt").write_bytes(ca.cert_pem)
    (directory / f"{service}.pem").write_bytes(leaf.key_pem + leaf.cert_pem)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=directory / "ca.crt")
    context.load_cert_chain(directory / f"{service}.pem")
    context.verify_mode = ssl.CERT_REQUIRED
    return context


@asynccontextmanager
async def replicas(
    count: int, ca: KeyPair, directory: Path, service: str = MODEL
) -> AsyncIterator[list[FakeOpenAI]]:
    """`count` replicas serving metrics pages, with the certificate of `service`."""
    context = server_context(ca, service, directory)
    async with AsyncExitStack() as stack:
        yield [
            await stack.enter_async_context(FakeOpenAI(model=MODEL, ssl_context=context))
            for _ in range(count)
        ]


def scraper(urls: Sequence[str], access: EngineAccess | None) -> EngineScraper:
    return EngineScraper(lambda _ns, _model: urls, lambda _ns: access, every=EVERY)


def logged(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == SCRAPER_LOG]


def figures(reports: Sequence[EngineReport]) -> list[tuple[float, float, float]]:
    return sorted((r.running, r.waiting, r.kv_cache_usage) for r in reports)


def test_the_operator_reads_each_replica_with_a_client_certificate_of_its_own(
    tmp_path: Path,
) -> None:
    async def scenario() -> None:
        ca = issue_ca(NAMESPACE, NOW)
        async with asyncio.timeout(HANG_GUARD_SECONDS), replicas(2, ca, tmp_path) as [a, b]:
            a.running, a.waiting, a.kv_cache_usage = 6, 2, 0.95
            b.running, b.kv_cache_usage = 5, 0.91
            access = ClientCertificates(lambda _ns: ca).access(NAMESPACE)
            collector = DemandCollector(
                lambda _ns, _wake: None,
                lambda _ns: [],
                lambda _ns: None,
                engines=scraper([a.url, b.url], access),
            )
            running = asyncio.create_task(collector.run())
            await asyncio.sleep(0)
            # Nothing is read before the autoscaler asks about the model.
            assert collector.engines(NAMESPACE, MODEL) == []
            await until(lambda: len(collector.engines(NAMESPACE, MODEL)) == 2, "both replicas")
            reports = collector.engines(NAMESPACE, MODEL)
            assert figures(reports) == [(5, 0, 0.91), (6, 2, 0.95)]
            assert sorted(r.source for r in reports) == sorted([a.url, b.url])
            demand = aggregate_demand([], reports)
            assert (demand.engines, demand.engine_requests) == (2, 13)

            b.kv_cache_usage = 0.5
            await until(
                lambda: (5, 0, 0.5) in figures(collector.engines(NAMESPACE, MODEL)),
                "the next round's figures",
            )
            running.cancel()

    asyncio.run(scenario())


def test_a_replica_that_fails_is_left_out_and_logged_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, SCRAPER_LOG)

    async def scenario() -> None:
        ca = issue_ca(NAMESPACE, NOW)
        async with asyncio.timeout(HANG_GUARD_SECONDS), replicas(2, ca, tmp_path) as [good, bad]:
            bad.metrics_page = "<html>502 Bad Gateway</html>"
            engines = scraper(
                [good.url, bad.url], ClientCertificates(lambda _ns: ca).access(NAMESPACE)
            )
            running = asyncio.create_task(engines.run())
            await asyncio.sleep(0)
            engines.engines(NAMESPACE, MODEL)
            await until(lambda: bad.metrics_reads >= 3, "three failed rounds")
            await until(lambda: good.metrics_reads >= bad.metrics_reads, "the round's end")
            assert [r.source for r in engines.engines(NAMESPACE, MODEL)] == [good.url]
            warnings = logged(caplog)
            assert len(warnings) == 1 and warnings[0].startswith(f"vLLM metrics at {bad.url}: ")
            assert "not Prometheus text" in warnings[0]

            bad.metrics_page = None
            await until(lambda: len(engines.engines(NAMESPACE, MODEL)) == 2, "its recovery")
            running.cancel()

    asyncio.run(scenario())


def test_the_client_certificate_is_kept_until_half_its_day_is_over_or_the_ca_changes() -> None:
    cas = {NAMESPACE: issue_ca(NAMESPACE, NOW)}
    clock = [NOW]
    certificates = ClientCertificates(cas.get, lambda: clock[0])
    first = certificates.access(NAMESPACE)
    assert first is not None and certificates.access(NAMESPACE) is first
    assert certificates.access("no-ca-yet") is None
    clock[0] = NOW + datetime.timedelta(hours=11)
    assert certificates.access(NAMESPACE) is first
    clock[0] = NOW + datetime.timedelta(hours=13)
    renewed = certificates.access(NAMESPACE)
    assert renewed is not None and renewed is not first
    cas[NAMESPACE] = issue_ca(NAMESPACE, NOW)
    assert certificates.access(NAMESPACE) not in (first, renewed)


@pytest.mark.parametrize(
    ("service", "client_certificate"),
    [
        # Signed by the namespace CA, but for the Service "chat": not llama's server.
        ("chat", True),
        # Without the operator's certificate, a server under mutual TLS refuses the call.
        (MODEL, False),
    ],
)
def test_no_figures_without_the_models_certificate_or_the_operators(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, service: str, client_certificate: bool
) -> None:
    caplog.set_level(logging.WARNING, SCRAPER_LOG)

    async def scenario() -> None:
        ca = issue_ca(NAMESPACE, NOW)
        access = ClientCertificates(lambda _ns: ca).access(NAMESPACE)
        if not client_certificate:
            access = EngineAccess(ssl.create_default_context(cadata=ca.cert_pem.decode()))
        async with (
            asyncio.timeout(HANG_GUARD_SECONDS),
            replicas(1, ca, tmp_path, service) as [server],
        ):
            engines = scraper([server.url], access)
            running = asyncio.create_task(engines.run())
            await asyncio.sleep(0)
            engines.engines(NAMESPACE, MODEL)
            await until(lambda: bool(logged(caplog)), "the refusal logged")
            assert logged(caplog)[0].startswith(f"vLLM metrics at {server.url}: ")
            assert engines.engines(NAMESPACE, MODEL) == []
            assert server.metrics_reads == 0
            running.cancel()

    asyncio.run(scenario())
