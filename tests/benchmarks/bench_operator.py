"""The operator at scale, on the simulated cluster: run by `make bench`.

Creates one InferenceDeployment, then COUNT more at once, and measures in the same run:
time until Ready (one, and all of them, and their ratio), reconcile latency p50/p99
from the operator's own histogram, API writes per no-op resync (target 0) and the
operator's resident memory. The results replace this benchmark's section of
docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import datetime
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from privatellm.devcluster import LocalCluster, NodePlan, Toolchain
from privatellm.devcluster.cluster import free_port

from .report import write_section

ROOT = Path(__file__).resolve().parents[2]
SECTION = "operator-scale"
NAMESPACE = "bench"
RESYNC_SECONDS = 30
GPUS_PER_NODE = 8


def model(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "privatellm.io/v1alpha1",
        "kind": "InferenceDeployment",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {
            "model": {
                "name": name,
                "source": {
                    "uri": f"s3://models/{name}",
                    "s3Endpoint": "https://minio.storage.svc:9000",
                    "sizeGiB": 16,
                },
            },
            "resources": {"gpusPerReplica": 1},
            "zones": ["zone-a", "zone-b", "zone-c"],
            "replicas": 3,
        },
    }


def ready_count(cluster: LocalCluster) -> int:
    template = '{range .items[*]}{.status.conditions[?(@.type=="Ready")].status}{"\\n"}{end}'
    output = cluster.kubectl("get", "infd", "-n", NAMESPACE, "-o", f"jsonpath={template}")
    return output.split().count("True")


def wait_ready(cluster: LocalCluster, count: int, timeout: float) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if ready_count(cluster) >= count:
            return time.monotonic() - started
        time.sleep(2)
    raise TimeoutError(f"{count} InferenceDeployments not Ready after {timeout}s")


def apply(cluster: LocalCluster, objects: list[dict[str, Any]]) -> None:
    cluster.kubectl("apply", "--server-side", "-f", "-", stdin=yaml.safe_dump_all(objects))


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text: str = response.read().decode()
        return text


def metric_sum(text: str, name: str) -> float:
    pattern = re.compile(rf"^{name}(\{{[^}}]*\}})? ([0-9.e+-]+)$", re.MULTILINE)
    return sum(float(m.group(2)) for m in pattern.finditer(text))


def histogram_quantile(text: str, name: str, q: float) -> float:
    """Upper bound of the bucket holding the q-quantile (as Prometheus would interpolate)."""
    buckets = [
        (float("inf") if le == "+Inf" else float(le), float(value))
        for le, value in re.findall(rf'^{name}_bucket\{{.*le="([^"]+)"\}} ([0-9.e+]+)$', text, re.M)
    ]
    buckets.sort()
    total = buckets[-1][1]
    rank = q * total
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if bound == float("inf"):
                return lower_bound
            fraction = (rank - lower_count) / (count - lower_count) if count > lower_count else 0
            return lower_bound + (bound - lower_bound) * fraction
        lower_bound, lower_count = bound, count
    return lower_bound


def resident_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def run(count: int) -> str:
    gpu_nodes = -(-(count + 1) // GPUS_PER_NODE) + 1
    plan = NodePlan(
        gpu_nodes_per_zone=gpu_nodes,
        cpu_nodes_per_zone=2,
        spot_gpu_node=False,
        pods_per_node=count + 20,
        volumes_per_zone=count + 10,
    )
    workdir = Path(tempfile.mkdtemp(prefix="privatellm-bench-"))
    cluster = LocalCluster(workdir, Toolchain.locate(), plan)
    cluster.start()
    operator: subprocess.Popen[bytes] | None = None
    try:
        cluster.kubectl("apply", "--server-side", "-f", str(ROOT / "crds"))
        cluster.kubectl("wait", "--for=condition=Established", "-f", str(ROOT / "crds"))
        cluster.kubectl("create", "namespace", NAMESPACE)
        port = free_port()
        env = {**os.environ, "KUBECONFIG": str(cluster.kubeconfig)}
        operator = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "privatellm.cli.main",
                "operator",
                f"--metrics-port={port}",
                f"--resync-seconds={RESYNC_SECONDS}",
            ],
            env=env,
            stdout=(workdir / "operator.log").open("wb"),
            stderr=subprocess.STDOUT,
        )
        time.sleep(3)  # the operator's watches start

        apply(cluster, [model("single")])
        one = wait_ready(cluster, 1, timeout=300)
        apply(cluster, [model(f"m{i:03d}") for i in range(count)])
        many = wait_ready(cluster, count + 1, timeout=1800)

        time.sleep(RESYNC_SECONDS + 5)  # let the status of every object settle
        metrics = scrape(port)
        p50 = histogram_quantile(metrics, "privatellm_reconcile_duration_seconds", 0.5)
        p99 = histogram_quantile(metrics, "privatellm_reconcile_duration_seconds", 0.99)
        reconciles = metric_sum(metrics, "privatellm_reconcile_duration_seconds_count")
        before = metric_sum(scrape(port), "privatellm_api_writes_total")
        resyncs = 2
        time.sleep(resyncs * RESYNC_SECONDS)
        idle_writes = (metric_sum(scrape(port), "privatellm_api_writes_total") - before) / resyncs
        rss = resident_mib(operator.pid)
    finally:
        if operator is not None:
            operator.terminate()
            operator.wait(timeout=30)
        cluster.stop()
        shutil.rmtree(workdir, ignore_errors=True)

    total_nodes = len(plan.zones) * (plan.gpu_nodes_per_zone + plan.cpu_nodes_per_zone)
    today = datetime.date.today().isoformat()
    return f"""## Operator at scale

`make bench` (`python -m tests.benchmarks.bench_operator --count {count}`), {today}, on
the simulated cluster ({total_nodes} KWOK nodes, 3 zones), 2 cores shared by the control
plane, KWOK and the operator. Each InferenceDeployment: 3 replicas (one per zone), 1 GPU
each, weight cache on (3 cache PVCs, 3 pre-staging Jobs, 3 Deployments, Service, PDB,
NetworkPolicy, ServiceAccount). Resync every {RESYNC_SECONDS}s, 4 workers.

| measure | value |
|---|---|
| time to Ready, 1 object alone | {one:.1f} s |
| time to Ready, {count} objects applied at once | {many:.1f} s |
| ratio: {count} objects / 1 object | {many / one:.1f} x (for {count} x the work) |
| reconciles during the run | {reconciles:.0f} |
| reconcile latency p50 / p99 (operator histogram) | {p50 * 1000:.0f} ms / {p99 * 1000:.0f} ms |
| API writes per no-op resync of {count + 1} objects | {idle_writes:.1f} (target 0) |
| operator resident memory | {rss:.0f} MiB |

Time to Ready includes what the control plane does: scheduling, the Job controller, KWOK
completing pre-staging Pods and starting serving Pods."""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, default=200)
    args = parser.parse_args()
    body = run(args.count)
    write_section(SECTION, body)
    print(body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
