"""Gateway replicas find each other through the real API server and share quotas over TLS.

The gateway's peer Service has two EndpointSlices, one per replica, with this
machine's own address (the API server refuses loopback ones) and each replica's
peer port. Each replica listens there with a certificate from the namespace CA,
reads the slices as the gateway's ServiceAccount holding only the rendered Role,
leaves itself out, and checks the other's certificate against the gateway's name.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import socket
import ssl
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from privatellm.devcluster.cluster import free_port
from privatellm.gateway.config import DiscoverySettings
from privatellm.gateway.discovery import replica_url
from privatellm.keys.tls import issue_ca, issue_leaf, service_names
from privatellm.render.gateway import (
    GATEWAY_NAME,
)
from tests.gateway.conftest import Stack, base_config, gateway_stack
from tests.support.fake_openai import FakeOpenAI

from .conftest import Cluster
from .test_gateway_discovery import endpoint_reader

PEERS = f"{GATEWAY_NAME}-peers"
NOW = 1_000_020.0  # one minute for both replicas
ALICE = ("alice/APIKey//alice", "req", int(NOW // 60))  # alice's requests in that minute


def host_address() -> str:
    """This machine's address on its default route: where the replicas listen."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect(("192.0.2.1", 9))  # no packet is sent: this picks the route
        address = str(probe.getsockname()[0])
    if address.startswith("127."):
        pytest.skip("no address but loopback, which EndpointSlices may not hold")
    return address


@pytest.fixture
def replicas_at() -> list[tuple[str, int]]:
    address = host_address()
    return [(address, free_port()), (address, free_port())]


@pytest.fixture
def discovery(
    cluster: Cluster, namespace: str, tmp_path: Path, replicas_at: list[tuple[str, int]]
) -> DiscoverySettings:
    """The gateway's ServiceAccount with its Role, and its peer Service with two Pods."""
    reader = endpoint_reader(cluster, namespace, tmp_path)
    # As rendered, but without a selector: the slices below stand for the Pods.
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": PEERS, "namespace": namespace},
        "spec": {"clusterIP": "None", "ports": [{"name": "https", "port": 8444}]},
    }
    cluster.kubectl("apply", "-f", "-", stdin=json.dumps(service))
    for index, (address, port) in enumerate(replicas_at):
        endpoints = {
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {
                "name": f"{PEERS}-{index}",
                "namespace": namespace,
                "labels": {"kubernetes.io/service-name": PEERS},
            },
            "addressType": "IPv4",
            "endpoints": [{"addresses": [address], "conditions": {"ready": True}}],
            "ports": [{"name": "https", "port": port, "protocol": "TCP"}],
        }
        cluster.kubectl("apply", "-f", "-", stdin=json.dumps(endpoints))
    return reader


@asynccontextmanager
async def two_replicas(
    discovery: DiscoverySettings,
    namespace: str,
    tmp_path: Path,
    upstream: str,
    replicas_at: list[tuple[str, int]],
) -> AsyncIterator[list[Stack]]:
    now = datetime.datetime.now(datetime.UTC)
    ca = issue_ca(namespace, now)
    leaf = issue_leaf(ca, GATEWAY_NAME, service_names(GATEWAY_NAME, namespace), now)
    paths = {"ca": ca.cert_pem, "crt": leaf.cert_pem, "key": leaf.key_pem}
    for suffix, data in paths.items():
        (tmp_path / f"gateway.{suffix}").write_bytes(data)
    listener = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    listener.load_cert_chain(tmp_path / "gateway.crt", tmp_path / "gateway.key")
    config: dict[str, Any] = base_config({"llama": [upstream]}, quotas={"requestsPerMinute": 3})
    config["namespace"] = namespace
    config["discovery"] = discovery.model_dump(by_alias=True)
    config["quotaSharing"] = {
        "service": PEERS,
        "serverName": f"{GATEWAY_NAME}.{namespace}.svc",
        "intervalSeconds": 0.1,
    }
    config["upstreamTls"] = {
        "caFile": str(tmp_path / "gateway.ca"),
        "certFile": str(tmp_path / "gateway.crt"),
        "keyFile": str(tmp_path / "gateway.key"),
    }
    async with AsyncExitStack() as stack:
        replicas = []
        for address, port in replicas_at:
            own = replica_url(address, port)
            replica = await stack.enter_async_context(
                gateway_stack(config, hash_key=b"h" * 32, peer_url=own, clock=lambda: NOW)
            )
            runner = web.AppRunner(replica.gateway.peer_app(), access_log=None)
            await runner.setup()
            stack.push_async_callback(runner.cleanup)
            await web.TCPSite(runner, address, port, ssl_context=listener).start()
            replicas.append(replica)
        yield replicas


async def until(condition: Any, what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


def test_replicas_found_through_endpoint_slices_share_a_subjects_limit(
    discovery: DiscoverySettings,
    namespace: str,
    tmp_path: Path,
    replicas_at: list[tuple[str, int]],
) -> None:
    urls = [replica_url(address, port) for address, port in replicas_at]

    async def scenario() -> None:
        async with (
            FakeOpenAI(model="fake-model") as model,
            two_replicas(discovery, namespace, tmp_path, model.url, replicas_at) as (a, b),
        ):
            for replica, other in ((a, urls[1]), (b, urls[0])):
                peers = replica.gateway.quota_peers
                assert peers is not None
                await until(lambda p=peers, o=other: p.replicas() == [o], "the other replica")
            assert [(await a.chat("hi"))[0] for _ in range(2)] == [200, 200]
            await until(lambda: b.gateway.quotas.count(ALICE) == 2, "b to learn a's count")
            assert [(await b.chat("hi"))[0] for _ in range(2)] == [200, 429]
            assert b.events[-1].reason == "rate_limited:requests_per_minute"
            assert len(model.requests) == 3

    asyncio.run(scenario())
