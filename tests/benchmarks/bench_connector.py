"""The filter sidecar's cost per item: the same pipeline with its filters on and off.

A mixed corpus (mails with attachments, office documents, PDFs, JSON, CSV, HTML and
text; a few with personal data or an injection attempt; seeded) is posted to the
sidecar's local port over real HTTP, as a connector does. Each item goes the whole
way the sidecar takes before it answers: HTTP, the inbound checks, the spool (fsync)
and the audit log (fsync). With the filters off, the checks are replaced by one that
passes the bytes as text; everything else is the same code. The spool is not drained,
so the gateway's time is not part of either figure.

Throughput: items posted by 8 concurrent clients. Latency: items posted one at a
time; the added latency is the filters' difference at each percentile.

Run: python -m tests.benchmarks.bench_connector [--items N] [--seed S] [--no-write]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from privatellm.audit import AuditLog, Signer
from privatellm.connectors.checks import InboundVerdict
from privatellm.connectors.sidecar import Sidecar, SidecarConfig, Terms
from privatellm.connectors.spool import Spool
from tests.support.corpus import Item, mixed_corpus

from .report import write_section

CONCURRENCY = 8


class FiltersOff:
    """Passes every item as its bytes decoded: the pipeline without its filters."""

    def check(self, data: bytes) -> InboundVerdict:
        text = data.decode("utf-8", "replace")
        return InboundVerdict(
            outcome="passed",
            reason=None,
            message="",
            text=text,
            changes=(),
            content_type="application/octet-stream",
            parts=(),
            item_bytes=len(data),
            decompressed_bytes=0,
            sha256="",
            data_classes=frozenset(),
            customers=0,
        )


def config(state: Path) -> SidecarConfig:
    return SidecarConfig.model_validate(
        {
            "name": "bench",
            "namespace": "bench",
            "type": "webhook",
            "direction": "inbound",
            "endpoint": "https://example.invalid",
            "models": ["llama"],
            "filters": {"maxItemBytes": 16 * 1024 * 1024, "injection": "block"},
            "gateway": "https://127.0.0.1:1",
            "tokenFile": str(state / "token"),
            "stateDir": str(state),
        }
    )


async def run(items: Sequence[Item], filters: bool) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as directory:
        state = Path(directory)
        audit = AuditLog(state / "audit", Signer.generate())
        try:
            async with aiohttp.ClientSession() as session:
                with Spool(state / "spool", "bench", max_entries=10 * len(items)) as spool:
                    sidecar = Sidecar(
                        config(state),
                        hash_key=b"k" * 32,
                        terms=Terms(),
                        audit=audit,
                        quarantine=None,
                        spool=spool,
                        session=session,
                        read_token=lambda: "",
                    )
                    if not filters:
                        sidecar.inbound = FiltersOff()  # type: ignore[assignment]
                    return await measure(sidecar, session, items)
        finally:
            audit.close()


async def measure(
    sidecar: Sidecar, session: aiohttp.ClientSession, items: Sequence[Item]
) -> dict[str, Any]:
    runner = web.AppRunner(sidecar.local_app(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}/items"
    outcomes: dict[int, int] = {}

    async def post(index: int, item: Item) -> float:
        started = time.perf_counter()
        headers = {"X-Item-Key": f"{index}-{item.name}"}
        async with session.post(url, data=item.data, headers=headers) as response:
            await response.read()
            outcomes[response.status] = outcomes.get(response.status, 0) + 1
        return time.perf_counter() - started

    try:
        latencies = [await post(i, item) for i, item in enumerate(items)]
        queue = list(enumerate(items))
        started = time.perf_counter()

        async def client() -> None:
            while queue:
                index, item = queue.pop()
                await post(len(items) + index, item)

        await asyncio.gather(*(client() for _ in range(CONCURRENCY)))
        elapsed = time.perf_counter() - started
    finally:
        await runner.cleanup()
    latencies.sort()
    return {
        "throughput": len(items) / elapsed,
        "p50": statistics.median(latencies) * 1000,
        "p99": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000,
        "outcomes": outcomes,
    }


def report(items: Sequence[Item], on: dict[str, Any], off: dict[str, Any], seed: int) -> str:
    size = sum(len(i.data) for i in items) / len(items) / 1024
    refused = sum(n for status, n in on["outcomes"].items() if status != 202)
    day = datetime.date.today().isoformat()
    return f"""## Connector filter sidecar

`make bench` (`python -m tests.benchmarks.bench_connector --items {len(items)} --seed {seed}`),
{day}, 2 shared cores. A mixed corpus of {len(items)} items (mails with attachments, docx,
xlsx, pptx, PDF, JSON, CSV, HTML, UTF-8 and UTF-16 text; {size:.1f} KiB on average; seeded)
posted to the sidecar's local port; each answer comes after the inbound checks, the spool
and the audit record are on disk. Filters off: the same pipeline with the checks replaced
by a pass-through. {refused} of the {2 * len(items)} posts with filters on were refused
(injection attempts, mixed customers), as the corpus plants them.

| pipeline | items/s ({CONCURRENCY} clients) | p50 latency | p99 latency |
|---|---|---|---|
| filters off | {off["throughput"]:.0f} | {off["p50"]:.1f} ms | {off["p99"]:.1f} ms |
| filters on | {on["throughput"]:.0f} | {on["p50"]:.1f} ms | {on["p99"]:.1f} ms |
| ratio on / off | {on["throughput"] / off["throughput"]:.2f} | | |
| added by the filters | | {on["p50"] - off["p50"]:.1f} ms | {on["p99"] - off["p99"]:.1f} ms |
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--items", type=int, default=500)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    items = mixed_corpus(args.items, args.seed)
    off = asyncio.run(run(items, filters=False))
    on = asyncio.run(run(items, filters=True))
    text = report(items, on, off, args.seed)
    print(text)
    if not args.no_write:
        write_section("connector-sidecar", text.strip())


if __name__ == "__main__":
    main()
