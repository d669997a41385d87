"""Scale from zero in real time on the local stack: idle -> zero -> burst, CYCLES times.

The simulated cluster (real API server, controller-manager, scheduler, KWOK), the
operator's model reconcile with its autoscaler, the operator's demand collector, and a
real gateway in front of a local OpenAI-compatible upstream standing in for vLLM. Each
cycle: the model is idle past scaleToZeroAfter (an injected clock, so no real half
hour passes) and goes to zero; then BURST requests arrive at once and are held; the
collector's wake queues a reconcile, the Deployment gets a replica, KWOK starts its
Pod, and once the Pod is ready (plus ENGINE_START seconds standing for vLLM's start)
the gateway sees a replica and releases the held requests.

Reports failed requests (target 0), scale-ups per burst (target 1), and the held
requests' added latency beyond the replica's start (answer time minus the moment the
replica became ready).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from kubernetes import config

from privatellm.api import GROUP, VERSION
from privatellm.controllers.autoscaling import Autoscaler
from privatellm.controllers.demand import DemandCollector, PeerAccess
from privatellm.controllers.inference import reconcile
from privatellm.devcluster import LocalCluster, Toolchain
from privatellm.gateway.discovery import Replica
from privatellm.gateway.quotas import peer_token
from privatellm.kube.client import KINDS, Kube
from privatellm.render.inference_status import NodeView
from tests.gateway.test_gateway_holding import HASH_KEY, at_zero, chat, peer_port

from .report import write_section

ROOT = Path(__file__).resolve().parents[2]
SECTION = "scale-from-zero"
NAMESPACE = "bench"
MODEL = "llama"


def inference_deployment() -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "InferenceDeployment",
        "metadata": {"name": MODEL, "namespace": NAMESPACE},
        "spec": {
            "model": {
                "name": MODEL,
                "source": {
                    "uri": "s3://models/llama",
                    "s3Endpoint": "https://minio.storage.svc:9000",
                    "sizeGiB": 1,
                },
            },
            "resources": {"accelerator": "cpu", "gpusPerReplica": 0, "cpu": "1", "memory": "1Gi"},
            "weightCache": {"enabled": False},
            "zones": ["zone-a", "zone-b", "zone-c"],
            "autoscaling": {
                "minReplicas": 0,
                "maxReplicas": 3,
                "targetInFlightPerReplica": 64,
                "scaleToZeroAfter": "2m",
            },
        },
    }


class Clock:
    """The autoscaler's and the gateway's rates' time: real time plus the idle hours skipped."""

    def __init__(self) -> None:
        self.skipped = 0.0

    def __call__(self) -> float:
        return time.time() + self.skipped


def ready_replicas(kube: Kube) -> int:
    deployments = kube.list(KINDS["Deployment"], NAMESPACE)
    return sum((d.get("status") or {}).get("readyReplicas") or 0 for d in deployments)


async def run(cycles: int, burst: int, engine_start: float) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="privatellm-bench-"))
    cluster = LocalCluster(workdir, Toolchain.locate())
    cluster.start()
    try:
        cluster.kubectl("apply", "--server-side", "-f", str(ROOT / "crds"))
        cluster.kubectl("wait", "--for=condition=Established", "-f", str(ROOT / "crds"))
        cluster.kubectl("create", "namespace", NAMESPACE)
        kube = Kube(config.new_client_from_config(str(cluster.kubeconfig)))  # type: ignore[no-untyped-call]
        kube.apply(inference_deployment(), live=None)
        nodes = [NodeView.from_node(n) for n in kube.list(KINDS["Node"])]
        return await _cycles(kube, nodes, cycles, burst, engine_start)
    finally:
        cluster.stop()
        shutil.rmtree(workdir, ignore_errors=True)


async def _cycles(
    kube: Kube, nodes: list[NodeView], cycles: int, burst: int, engine_start: float
) -> dict[str, Any]:
    clock = Clock()
    failed, scale_ups, added = 0, [], []
    async with at_zero() as (stack, view, model), peer_port(stack) as peer:
        stack.gateway.demand.clock = clock
        woken = asyncio.Event()
        collector = DemandCollector(
            lambda _ns, wake: woken.set() if wake else None,
            lambda _ns: [peer.url],
            lambda _ns: PeerAccess(peer_token(HASH_KEY), False),
            poll_wait=1.0,
        )
        collector_task = asyncio.create_task(collector.run())
        await asyncio.sleep(0)
        autoscaler = Autoscaler(collector, clock)
        decisions: list[str | None] = []

        async def step() -> None:
            await asyncio.to_thread(reconcile, kube, None, nodes, NAMESPACE, MODEL, autoscaler)
            obj = kube.get(KINDS["InferenceDeployment"], NAMESPACE, MODEL) or {}
            decisions.append(((obj.get("status") or {}).get("autoscaling") or {}).get("reason"))

        await step()
        while not collector.reports(NAMESPACE, MODEL):
            await asyncio.sleep(0.05)
        for cycle in range(cycles):
            await _idle_to_zero(kube, collector, clock, step)
            print(f"cycle {cycle + 1}: at zero", file=sys.stderr, flush=True)
            view.set(MODEL, [])
            # The burst: held, one wake, one scale-up, released when a replica is ready.
            woken.clear()
            before = len(decisions)
            requests = [asyncio.create_task(chat(stack, f"r{n}")) for n in range(burst)]
            await woken.wait()
            await step()
            print(f"cycle {cycle + 1}: woken", file=sys.stderr, flush=True)
            while not ready_replicas(kube):
                await asyncio.sleep(0.05)
            await asyncio.sleep(engine_start)
            ready_at = time.perf_counter()
            view.set(MODEL, [Replica(model.url)])
            answers = await asyncio.gather(*requests)
            added.append(time.perf_counter() - ready_at)
            failed += sum(1 for a in answers if a.status != 200)
            scale_ups.append(decisions[before:].count("WakeFromZero"))
        collector_task.cancel()
    return {"failed": failed, "scale_ups": scale_ups, "added": added}


async def _idle_to_zero(kube: Kube, collector: DemandCollector, clock: Clock, step: Any) -> None:
    """Wait for an idle report, skip an hour, and reconcile until the model is at zero."""

    def idle() -> bool:
        reports = collector.reports(NAMESPACE, MODEL)
        return bool(reports) and all(
            not (r.in_flight or r.held or r.wanted or r.arrived) for r in reports
        )

    while not idle():
        await asyncio.sleep(0.05)
    clock.skipped += 3600
    while not all(
        not (r.prompt_tokens_per_second or r.completion_tokens_per_second)
        for r in collector.reports(NAMESPACE, MODEL)
    ):
        await asyncio.sleep(0.05)
    await step()
    while ready_replicas(kube):
        await asyncio.sleep(0.1)


def report(results: dict[str, Any], cycles: int, burst: int, engine_start: float) -> str:
    added = sorted(results["added"])
    today = datetime.date.today().isoformat()
    per_burst = results["scale_ups"]
    median_ms = statistics.median(added) * 1000
    return f"""## Scale from zero, in real time

`make bench` (`python -m tests.benchmarks.bench_scale_from_zero --cycles {cycles} --burst {burst}`),
{today}, on the simulated cluster with the model controller's reconcile, its autoscaler,
the operator's demand collector and a real gateway in front of a local upstream. Each
cycle: idle past `scaleToZeroAfter` (an injected clock skips the hour) and to zero; then
{burst} requests at once, held by the gateway; the wake reaches the operator through the
long poll, the Deployment gets a replica, KWOK starts its Pod, and {engine_start:.0f} s
after it is ready (vLLM's start, simulated) the gateway releases the held requests.

| measure | value | target |
|---|---|---|
| cycles of idle -> zero -> burst | {cycles} | |
| requests sent | {cycles * burst} | |
| failed requests | {results["failed"]} | 0 |
| scale-ups per burst (WakeFromZero decisions) | min {min(per_burst)}, max {max(per_burst)} | 1 |
| held requests' added latency beyond the replica's start, median | {median_ms:.0f} ms | |
| the same, slowest cycle | {added[-1] * 1000:.0f} ms | |

Added latency: from the moment the replica was ready to the moment the last of the
burst's answers arrived, so it covers the release of every held request and their
answers by the upstream."""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cycles", type=int, default=20)
    parser.add_argument("--burst", type=int, default=50)
    parser.add_argument("--engine-start", type=float, default=1.0)
    args = parser.parse_args()
    results = asyncio.run(run(args.cycles, args.burst, args.engine_start))
    body = report(results, args.cycles, args.burst, args.engine_start)
    write_section(SECTION, body)
    print(body)
    return 0 if results["failed"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
