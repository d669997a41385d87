"""The gateway's EndpointSlice watch against the real control plane.

Pods of a Deployment run on KWOK's CPU nodes, which mark them Ready with a fake
IP; the real EndpointSlice controller puts them in the Service's slices. The
watcher reads them as the gateway's ServiceAccount holding only the Role the
operator renders. The Pod IPs are not reachable, so nothing is sent to them:
routing over discovered replicas is tested in tests/gateway.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from kubernetes import client

from privatellm.devcluster.nodes import ZONE_LABEL
from privatellm.gateway.config import DiscoverySettings
from privatellm.gateway.discovery import EndpointWatcher, Replica
from privatellm.render.gateway import (
    GATEWAY_NAME,
    GatewayInputs,
    render_gateway_role,
    render_gateway_role_binding,
)

from .conftest import Cluster
from .test_gateway_tokenreview import api_server, create_token

SERVICE = "llama"
LABELS = {"app": SERVICE}


def endpoint_reader(cluster: Cluster, namespace: str, workdir: Path) -> DiscoverySettings:
    """The gateway's ServiceAccount holding the rendered Role, and its discovery settings."""
    server, ca_file = api_server(cluster.kubeconfig, workdir)
    cluster.kubectl("create", "serviceaccount", GATEWAY_NAME, "-n", namespace)
    inputs = GatewayInputs(namespace=namespace, image="unused", models=(), policies=())
    for manifest in (render_gateway_role(inputs), render_gateway_role_binding(inputs)):
        cluster.kubectl("apply", "-f", "-", stdin=json.dumps(manifest))
    token_file = workdir / "token"
    token_file.write_text(create_token(cluster, namespace, GATEWAY_NAME))
    return DiscoverySettings(api_server=server, token_file=str(token_file), ca_file=ca_file)


@pytest.fixture
def settings(cluster: Cluster, namespace: str, tmp_path: Path) -> DiscoverySettings:
    """The gateway's ServiceAccount with the rendered Role, and a model Service."""
    reader = endpoint_reader(cluster, namespace, tmp_path)
    cluster.core.create_namespaced_service(
        namespace,
        client.V1Service(
            metadata=client.V1ObjectMeta(name=SERVICE),
            spec=client.V1ServiceSpec(
                selector=LABELS,
                ports=[client.V1ServicePort(name="https", port=8000, target_port="https")],
            ),
        ),
    )
    return reader


def model_deployment(replicas: int) -> client.V1Deployment:
    """vLLM-like Pods on CPU nodes (GPU nodes are tainted; nothing here tolerates it)."""
    return client.V1Deployment(
        metadata=client.V1ObjectMeta(name=SERVICE),
        spec=client.V1DeploymentSpec(
            replicas=replicas,
            selector=client.V1LabelSelector(match_labels=LABELS),
            template=client.V1PodTemplateSpec(
                metadata=client.V1ObjectMeta(labels=LABELS),
                spec=client.V1PodSpec(
                    containers=[
                        client.V1Container(
                            name="vllm",
                            image="vllm/vllm-openai",
                            ports=[client.V1ContainerPort(name="https", container_port=8000)],
                            resources=client.V1ResourceRequirements(requests={"cpu": "100m"}),
                        )
                    ],
                ),
            ),
        ),
    )


def scale(cluster: Cluster, namespace: str, replicas: int) -> None:
    cluster.apps.patch_namespaced_deployment_scale(
        SERVICE, namespace, {"spec": {"replicas": replicas}}
    )


def pod_replicas(cluster: Cluster, namespace: str) -> set[Replica]:
    """What the watcher should see: each running Pod's IP on port 8000, in its node's zone."""
    nodes = {n.metadata.name: n.metadata.labels[ZONE_LABEL] for n in cluster.core.list_node().items}
    pods = cluster.core.list_namespaced_pod(namespace, label_selector=f"app={SERVICE}").items
    return {
        Replica(f"https://{p.status.pod_ip}:8000", nodes[p.spec.node_name])
        for p in pods
        if p.status.pod_ip and not p.metadata.deletion_timestamp
    }


async def eventually(
    watcher: EndpointWatcher,
    wanted: Callable[[Sequence[Replica]], bool],
    what: str,
    timeout: float = 60,
) -> Sequence[Replica]:
    deadline = time.monotonic() + timeout
    ready = watcher.ready(SERVICE)
    while time.monotonic() < deadline:
        ready = watcher.ready(SERVICE)
        if ready is not None and wanted(ready):
            return ready
        await asyncio.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}: {ready!r}")


def counting(replicas: int) -> Callable[[Sequence[Replica]], bool]:
    return lambda ready: len(ready) == replicas


@contextlib.asynccontextmanager
async def watching(settings: DiscoverySettings, namespace: str) -> AsyncIterator[EndpointWatcher]:
    watcher = EndpointWatcher(settings, namespace)
    task = asyncio.create_task(watcher.run())
    try:
        async with asyncio.timeout(30):
            await watcher.wait_synced()
        yield watcher
        assert not task.done(), "the watcher stopped"
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def test_the_watcher_follows_ready_pods_as_the_deployment_scales(
    cluster: Cluster, namespace: str, settings: DiscoverySettings
) -> None:
    async def scenario() -> None:
        async with watching(settings, namespace) as watcher:
            assert watcher.ready(SERVICE) == ()
            await asyncio.to_thread(
                cluster.apps.create_namespaced_deployment, namespace, model_deployment(3)
            )
            ready = await eventually(watcher, counting(3), "three ready replicas")
            assert set(ready) == await asyncio.to_thread(pod_replicas, cluster, namespace)
            assert {r.zone for r in ready} <= {"zone-a", "zone-b", "zone-c"}

            await asyncio.to_thread(scale, cluster, namespace, 1)
            [left] = await eventually(watcher, counting(1), "one ready replica")
            assert left in ready

            await asyncio.to_thread(scale, cluster, namespace, 0)
            await eventually(watcher, counting(0), "no ready replica")

    asyncio.run(scenario())


@dataclass
class FaultyProxy:
    """Forwards to the API server; can break the running watch and answer the next one badly."""

    upstream: str
    ca_file: str | None
    url: str = ""
    lists: int = 0
    watches: int = 0
    # Each fault is used once by the next watch: an HTTP status, or "expired" for a
    # 200 whose only event is a 410 ERROR (how the API server ends an old watch).
    faults: list[int | str] = field(default_factory=list)
    answered: list[int | str] = field(default_factory=list)
    _open: set[asyncio.Task[object]] = field(default_factory=set)

    def break_watch(self, fault: int | str) -> None:
        """Drop the open watch connections; the next watch gets `fault`."""
        self.faults.append(fault)
        for task in self._open:
            task.cancel()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        is_watch = request.query.get("watch") == "true"
        if not is_watch:
            self.lists += 1
        else:
            self.watches += 1
            if self.faults:
                return self._fault(self.faults.pop(0))
        task = asyncio.current_task()
        assert task is not None
        self._open.add(task)
        try:
            return await self._forward(request)
        finally:
            self._open.discard(task)

    def _fault(self, fault: int | str) -> web.Response:
        self.answered.append(fault)
        if fault == "expired":
            event = {"type": "ERROR", "object": {"kind": "Status", "code": 410}}
            return web.Response(text=json.dumps(event) + "\n", content_type="application/json")
        assert isinstance(fault, int)
        return web.json_response({"kind": "Status", "code": fault}, status=fault)

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        context = ssl.create_default_context(cafile=self.ca_file)
        headers = {"Authorization": request.headers["Authorization"], "Accept": "application/json"}
        timeout = aiohttp.ClientTimeout(total=None)
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            session.get(self.upstream + request.path_qs, headers=headers, ssl=context) as upstream,
        ):
            response = web.StreamResponse(status=upstream.status)
            response.content_type = "application/json"
            await response.prepare(request)
            async for chunk in upstream.content.iter_any():
                await response.write(chunk)
            await response.write_eof()
            return response


@pytest.fixture
def proxy(settings: DiscoverySettings) -> FaultyProxy:
    return FaultyProxy(settings.api_server, settings.ca_file)


@contextlib.asynccontextmanager
async def serving(proxy: FaultyProxy) -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_get("/{tail:.*}", proxy.handle)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


def test_a_watch_broken_by_the_api_server_resumes_and_an_expired_one_lists_again(
    cluster: Cluster, namespace: str, settings: DiscoverySettings, proxy: FaultyProxy
) -> None:
    async def scenario() -> None:
        async with serving(proxy) as url:
            through_proxy = settings.model_copy(update={"api_server": url, "ca_file": None})
            async with watching(through_proxy, namespace) as watcher:
                await asyncio.to_thread(
                    cluster.apps.create_namespaced_deployment, namespace, model_deployment(2)
                )
                await eventually(watcher, counting(2), "two ready replicas")
                assert proxy.lists == 1

                # A server error: the watcher backs off and resumes where it was.
                proxy.break_watch(500)
                await asyncio.to_thread(scale, cluster, namespace, 1)
                await eventually(watcher, counting(1), "one replica after a 500")
                assert proxy.answered == [500] and proxy.lists == 1

                # Expired, in both forms the API server uses: a fresh list each time.
                for lists, fault, replicas in ((2, "expired", 3), (3, 410, 2)):
                    proxy.break_watch(fault)
                    await asyncio.to_thread(scale, cluster, namespace, replicas)
                    ready = await eventually(
                        watcher, counting(replicas), f"{replicas} replicas after {fault}"
                    )
                    assert proxy.lists == lists
                assert set(ready) == await asyncio.to_thread(pod_replicas, cluster, namespace)

    asyncio.run(scenario())


def test_without_the_role_the_watcher_keeps_trying_and_knows_nothing(
    cluster: Cluster, namespace: str, settings: DiscoverySettings, tmp_path: Path
) -> None:
    cluster.kubectl("create", "serviceaccount", "unprivileged", "-n", namespace)
    token_file = tmp_path / "unprivileged-token"
    token_file.write_text(create_token(cluster, namespace, "unprivileged"))
    forbidden = settings.model_copy(update={"token_file": str(token_file)})

    async def scenario() -> None:
        watcher = EndpointWatcher(forbidden, namespace)
        task = asyncio.create_task(watcher.run())
        # Long enough for the first refusal and a retry.
        await asyncio.sleep(2)
        assert not task.done() and watcher.ready(SERVICE) is None
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    asyncio.run(scenario())
