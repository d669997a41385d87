"""Scale to zero and back with every part real: the operator process, the gateway
processes, the model Service's EndpointSlices.

The operator runs as the chart's ServiceAccount and renders the namespace's gateway; its
two Pods, scheduled on KWOK nodes, are run here as `privatellm gateway` processes on
their Pod addresses (local_pods.py). The model's replicas are KWOK Pods too; a local
OpenAI-compatible server answers on port 8000 of every Pod address in their place, so
the gateways reach each replica through the addresses the EndpointSlice controller
published. The operator finds the gateways the same way and reads their demand over
the peer port with the token and CA it issued. Nothing is injected: time is real, so
the model's idle period is short.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import signal
import ssl
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from privatellm.api import GROUP, VERSION
from privatellm.render.gateway import GATEWAY_NAME, GATEWAY_PORT, GATEWAY_REPLICAS
from privatellm.render.tls import CA_CERT_KEY, NAMESPACE_CA_SECRET
from tests.support.fake_openai import FakeOpenAI

from .conftest import Cluster, wait_until
from .local_pods import LocalPod, local_pod_network
from .operator_process import OperatorProcess, running_operator

API_KEY = "pllm-scale-from-zero-test-key-0000000000000000"
BURST = 50
# Each answer takes this long, so that the burst is still in flight after the wake.
ANSWER_SECONDS = 8.0
MAX_REPLICAS = 3


def resources(namespace: str) -> list[dict[str, Any]]:
    digest = hashlib.sha256(API_KEY.encode()).hexdigest()
    return [
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "client-key", "namespace": namespace},
            "stringData": {"sha256": digest},
        },
        {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "AccessPolicy",
            "metadata": {"name": "clients", "namespace": namespace},
            "spec": {
                "subjects": [{"kind": "APIKey", "name": "client", "secretName": "client-key"}],
                "models": ["llama"],
            },
        },
        {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "InferenceDeployment",
            "metadata": {"name": "llama", "namespace": namespace},
            "spec": {
                "model": {
                    "name": "llama",
                    "source": {
                        "uri": "s3://models/llama",
                        "s3Endpoint": "https://minio.storage.svc:9000",
                        "sizeGiB": 1,
                    },
                },
                "resources": {
                    "accelerator": "cpu",
                    "gpusPerReplica": 0,
                    "cpu": "1",
                    "memory": "1Gi",
                },
                "weightCache": {"enabled": False},
                "zones": ["zone-a", "zone-b", "zone-c"],
                "autoscaling": {
                    "minReplicas": 0,
                    "maxReplicas": MAX_REPLICAS,
                    "targetInFlightPerReplica": 2,
                    "scaleToZeroAfter": "5s",
                },
            },
        },
    ]


def model_replicas(cluster: Cluster, namespace: str) -> int:
    selector = "privatellm.io/inference-deployment=llama"
    deployments = cluster.apps.list_namespaced_deployment(namespace, label_selector=selector)
    return sum(d.spec.replicas or 0 for d in deployments.items)


def autoscaling_status(cluster: Cluster, namespace: str) -> dict[str, Any]:
    found = cluster.custom.get_namespaced_custom_object(
        GROUP, VERSION, namespace, "inferencedeployments", "llama"
    )
    status: dict[str, Any] = (found.get("status") or {}).get("autoscaling") or {}
    return status


def scaling_events(cluster: Cluster, namespace: str) -> list[str]:
    events = cluster.core.list_namespaced_event(
        namespace, field_selector="involvedObject.kind=InferenceDeployment"
    ).items
    return [
        e.reason
        for e in sorted(events, key=lambda e: e.metadata.creation_timestamp)
        for _ in range(e.count or 1)
        if e.reason in ("WakeFromZero", "ScaleUp", "ScaleDown", "ScaledToZero")
    ]


def model_server_tls(cluster: Cluster, namespace: str, workdir: Path) -> ssl.SSLContext:
    """What vLLM is given under encryption.tls: the model's certificate, callers' checked."""
    secret = wait_until(
        lambda: (
            cluster.core.list_namespaced_secret(
                namespace, field_selector="metadata.name=llama-tls"
            ).items
        ),
        what="the model's TLS Secret",
    )[0]
    for key in ("tls.crt", "tls.key", "ca.crt"):
        (workdir / key).write_bytes(base64.b64decode(secret.data[key]))
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=workdir / "ca.crt")
    tls.load_cert_chain(workdir / "tls.crt", workdir / "tls.key")
    tls.verify_mode = ssl.CERT_REQUIRED
    return tls


@pytest.fixture
def stack(
    crds: Cluster, namespace: str, tmp_path: Path
) -> Iterator[tuple[OperatorProcess, list[LocalPod]]]:
    """The operator, the namespace's gateway Pods running here as processes, and one
    server on port 8000 of every (local) Pod address: each replica of the model."""
    operator_dir = tmp_path / "operator"
    operator_dir.mkdir()
    with ExitStack() as running:
        running.enter_context(local_pod_network())
        operator = running.enter_context(contextmanager(running_operator)(crds, operator_dir))
        for manifest in resources(namespace):
            crds.kubectl("apply", "-f", "-", stdin=json.dumps(manifest))
        tls = model_server_tls(crds, namespace, tmp_path)
        running.enter_context(
            FakeOpenAI(
                model="llama", host="0.0.0.0", port=8000, delay=ANSWER_SECONDS, ssl_context=tls
            )
        )
        pods = wait_until(
            lambda: len(found := gateway_pods(crds, namespace)) == GATEWAY_REPLICAS and found,
            timeout=120,
            what="the gateway's Pods with their addresses",
        )
        gateways = [LocalPod(crds, pod, "gateway", tmp_path / "pods") for pod in pods]
        for gateway in gateways:
            gateway.start()
            running.callback(gateway.stop)
        yield operator, gateways


def gateway_pods(cluster: Cluster, namespace: str) -> list[dict[str, Any]]:
    found = json.loads(
        cluster.kubectl(
            "get",
            "pods",
            "-n",
            namespace,
            "-l",
            f"app.kubernetes.io/name={GATEWAY_NAME}",
            "-o",
            "json",
        )
    )
    return [p for p in found["items"] if (p.get("status") or {}).get("podIP")]


def client_tls(cluster: Cluster, namespace: str) -> ssl.SSLContext:
    """Trusts the namespace CA, which issued the gateway's certificate."""
    secret = cluster.core.read_namespaced_secret(NAMESPACE_CA_SECRET, namespace)
    return ssl.create_default_context(cadata=base64.b64decode(secret.data[CA_CERT_KEY]).decode())


async def chats(gateway: LocalPod, namespace: str, count: int) -> list[tuple[int, str]]:
    """`count` concurrent chat requests to one gateway: each answer's status and error code."""
    url = f"https://{gateway.ip}:{GATEWAY_PORT}/v1/chat/completions"
    headers = {"Authorization": f"Bearer {API_KEY}"}
    tls = await asyncio.to_thread(client_tls, gateway.cluster, namespace)
    server_name = f"{GATEWAY_NAME}.{namespace}.svc"

    async def one(n: int, session: aiohttp.ClientSession) -> tuple[int, str]:
        body = {"model": "llama", "messages": [{"role": "user", "content": f"question {n}"}]}
        async with session.post(
            url, json=body, headers=headers, ssl=tls, server_hostname=server_name
        ) as response:
            answer = await response.json(content_type=None)
            return response.status, (answer.get("error") or {}).get("code", "")

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=180)) as session:
        return list(await asyncio.gather(*(one(n, session) for n in range(count))))


async def until(condition: Callable[[], bool], what: str, timeout: float = 120) -> None:
    """Wait, off the event loop's thread, until `condition` holds."""
    deadline = time.monotonic() + timeout
    while not await asyncio.to_thread(condition):
        assert time.monotonic() < deadline, f"never: {what}"
        await asyncio.sleep(0.2)


def at_zero(cluster: Cluster, namespace: str) -> bool:
    status = autoscaling_status(cluster, namespace)
    return status.get("reason") == "ScaledToZero" and model_replicas(cluster, namespace) == 0


def test_a_burst_at_zero_wakes_the_model_once_though_the_operator_restarts_mid_scale(
    crds: Cluster, namespace: str, stack: tuple[OperatorProcess, list[LocalPod]]
) -> None:
    operator, gateways = stack
    # Idle from the start: zero once the period has passed with both gateways reporting.
    wait_until(lambda: at_zero(crds, namespace), timeout=120, what="the model at zero")

    async def scenario() -> list[tuple[int, str]]:
        requests = asyncio.create_task(chats(gateways[0], namespace, BURST))
        await until(lambda: model_replicas(crds, namespace) >= 1, "the wake")
        await until(lambda: "WakeFromZero" in scaling_events(crds, namespace), "its Event")
        # Killed right after the wake, while the burst is in flight: the operator that
        # comes back must neither wake the model again nor lose the count it set.
        assert operator.process is not None
        operator.process.send_signal(signal.SIGKILL)
        operator.process.wait()
        operator.process = None
        operator.start()
        await until(
            lambda: model_replicas(crds, namespace) == MAX_REPLICAS, "the scale-up under load"
        )
        return await requests

    answers = asyncio.run(scenario())
    assert answers == [(200, "")] * BURST
    events = scaling_events(crds, namespace)
    assert events.count("WakeFromZero") == 1, events
    # The scale-up's own Event may be missing: on a loaded machine the old operator can
    # write the new count and be killed before it posts the Event. Nothing else happened.
    assert set(events) <= {"WakeFromZero", "ScaleUp"}, events

    # Idle again: back to zero after the period, with no scale-down window in between.
    wait_until(lambda: at_zero(crds, namespace), timeout=120, what="the model at zero again")
    assert scaling_events(crds, namespace).count("WakeFromZero") == 1


def test_requests_held_by_a_gateway_that_stops_get_a_clear_answer_at_once(
    crds: Cluster, namespace: str, stack: tuple[OperatorProcess, list[LocalPod]]
) -> None:
    operator, gateways = stack
    wait_until(lambda: at_zero(crds, namespace), timeout=120, what="the model at zero")
    operator.stop()  # nothing wakes the model: the requests stay held

    async def scenario() -> list[tuple[int, str]]:
        requests = asyncio.create_task(chats(gateways[0], namespace, 5))
        await asyncio.sleep(2)
        assert not requests.done()
        stopped = time.monotonic()
        await asyncio.to_thread(gateways[0].stop)
        answers = await requests
        # The drain answers held requests at once; it does not wait for a replica.
        assert time.monotonic() - stopped < 15
        return answers

    assert asyncio.run(scenario()) == [(503, "gateway_stopping")] * 5
