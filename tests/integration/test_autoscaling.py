"""Scale to zero and back on the real API server: the model controller's reconcile, with
its autoscaler reading a real gateway's demand through the operator's collector; and
what the operator needs to read vLLM's own figures: the ready replicas, a NetworkPolicy
that admits it, and a client certificate the model's server accepts.

The operator's event loop is left out: the test calls the reconcile the way a worker
does, with an injected clock, so that an idle period passes in no time.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp

from privatellm.api import GROUP, VERSION
from privatellm.controllers.autoscaling import Autoscaler
from privatellm.controllers.demand import DemandCollector, PeerAccess
from privatellm.controllers.engines import (
    ClientCertificates,
    engine_replicas,
    namespace_ca,
    scrape_engine,
    server_name,
)
from privatellm.controllers.inference import reconcile
from privatellm.gateway.discovery import Replica
from privatellm.gateway.quotas import peer_token
from privatellm.kube.client import KINDS, Kube
from privatellm.render.inference_status import NodeView
from privatellm.render.tls import secret_bytes
from tests.gateway.test_gateway_holding import HASH_KEY, at_zero, chat, peer_port, until
from tests.support.fake_openai import FakeOpenAI

from .conftest import Cluster, wait_until

SCALING = {"minReplicas": 0, "maxReplicas": 3, "targetInFlightPerReplica": 2}


def llama() -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "InferenceDeployment",
        "metadata": {"name": "llama"},
        "spec": {
            "model": {"name": "llama", "source": {"uri": "pvc://weights/llama", "sizeGiB": 1}},
            "resources": {"accelerator": "cpu", "gpusPerReplica": 0, "cpu": "1", "memory": "1Gi"},
            "weightCache": {"enabled": False},
            "zones": ["zone-a", "zone-b", "zone-c"],
            "autoscaling": {**SCALING, "scaleToZeroAfter": "2m"},
        },
    }


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def deployed_replicas(cluster: Cluster, namespace: str) -> int:
    deployments = cluster.apps.list_namespaced_deployment(namespace).items
    return sum(d.spec.replicas or 0 for d in deployments)


def scaling_events(cluster: Cluster, namespace: str) -> list[str]:
    events = cluster.core.list_namespaced_event(
        namespace, field_selector="involvedObject.kind=InferenceDeployment"
    ).items
    return [e.reason for e in events if e.reason in ("WakeFromZero", "ScaledToZero", "ScaleUp")]


def test_a_model_goes_to_zero_when_idle_and_a_burst_wakes_it_once(
    crds: Cluster, namespace: str
) -> None:
    kube = Kube(crds.api)
    crds.custom.create_namespaced_custom_object(
        GROUP, VERSION, namespace, "inferencedeployments", llama()
    )
    nodes = [NodeView.from_node(n) for n in kube.list(KINDS["Node"])]
    clock = Clock()

    def status() -> dict[str, Any]:
        obj = kube.get(KINDS["InferenceDeployment"], namespace, "llama")
        assert obj is not None
        found: dict[str, Any] = obj.get("status") or {}
        return found

    async def scenario() -> None:
        async with (
            asyncio.timeout(120),
            at_zero() as (stack, view, model),
            peer_port(stack) as peer,
        ):
            wakes: list[bool] = []
            collector = DemandCollector(
                lambda _ns, wake: wakes.append(wake),
                lambda _ns: [peer.url],
                lambda _ns: PeerAccess(peer_token(HASH_KEY), False),
                poll_wait=0.2,  # fresh figures at once, where the operator waits up to 25 s
            )
            running = asyncio.create_task(collector.run())
            await asyncio.sleep(0)
            autoscaler = Autoscaler(collector, clock)
            step: Callable[[], Any] = lambda: asyncio.to_thread(  # noqa: E731
                reconcile, kube, None, nodes, namespace, "llama", autoscaler
            )

            await step()  # asks the collector to read the namespace's gateways
            await until(lambda: bool(collector.reports(namespace, "llama")), "a report")
            await step()
            idle = status()
            assert idle["autoscaling"]["desiredReplicas"] == 0
            ready = next(c for c in idle["conditions"] if c["type"] == "Ready")
            assert (ready["status"], ready["reason"]) == ("True", "ScaledToZero")
            assert deployed_replicas(crds, namespace) == 0

            burst = [asyncio.create_task(chat(stack, f"request {n}")) for n in range(50)]
            await until(lambda: True in wakes, "the wake")
            await until(lambda: stack.gateway.demand.model("llama").held == 50, "all held")
            await until(
                lambda: any(r.wanted for r in collector.reports(namespace, "llama")),
                "the wanted model in the collector",
            )
            await step()
            await step()
            assert wakes.count(True) == 1
            assert status()["autoscaling"]["reason"] in ("WakeFromZero", "Steady", "ScaleUp")
            assert deployed_replicas(crds, namespace) >= 1
            assert scaling_events(crds, namespace).count("WakeFromZero") == 1

            view.set("llama", [Replica(model.url)])
            answers = await asyncio.gather(*burst)
            assert [a.status for a in answers] == [200] * 50

            await until(
                lambda: all(
                    not (r.in_flight or r.held or r.wanted or r.arrived)
                    for r in collector.reports(namespace, "llama")
                ),
                "an idle report",
            )
            # A quiet hour, for the autoscaler and the gateway's rates alike: past the
            # scale-down window and scaleToZeroAfter.
            clock.now = time.time() + 3600
            stack.gateway.demand.clock = clock
            await until(
                lambda: all(
                    not (r.prompt_tokens_per_second or r.completion_tokens_per_second)
                    for r in collector.reports(namespace, "llama")
                ),
                "rates that forgot the burst",
            )
            await step()
            await step()
            assert status()["autoscaling"]["desiredReplicas"] == 0, status()["autoscaling"]
            assert deployed_replicas(crds, namespace) == 0
            assert "ScaledToZero" in scaling_events(crds, namespace)
            running.cancel()

    asyncio.run(scenario())


def test_the_operator_may_reach_each_ready_replica_and_its_server_accepts_its_certificate(
    crds: Cluster, namespace: str, tmp_path: Path
) -> None:
    kube = Kube(crds.api)
    model = llama()
    model["spec"]["autoscaling"] = {**SCALING, "minReplicas": 2}
    # Replicas that run: weights from a store, not from a claim that does not exist here.
    source = {"uri": "s3://models/llama", "s3Endpoint": "https://minio.storage.svc:9000"}
    model["spec"]["model"]["source"] = {**source, "sizeGiB": 1}
    crds.custom.create_namespaced_custom_object(
        GROUP, VERSION, namespace, "inferencedeployments", model
    )
    nodes = [NodeView.from_node(n) for n in kube.list(KINDS["Node"])]
    reconcile(kube, None, nodes, namespace, "llama", operator_namespace="privatellm-system")

    # The API server takes the rule that admits the operator's Pods to the serving port.
    policy = kube.get(KINDS["NetworkPolicy"], namespace, "llama-ingress")
    assert policy is not None
    [rule] = policy["spec"]["ingress"]
    assert rule["ports"] == [{"protocol": "TCP", "port": 8000}]
    assert rule["from"][1] == {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "privatellm-system"}},
        "podSelector": {
            "matchLabels": {
                "app.kubernetes.io/component": "operator",
                "app.kubernetes.io/part-of": "privatellm",
            }
        },
    }

    # The replicas to read are the ready endpoints of the model's Service, on vLLM's port.
    urls = wait_until(
        lambda: len(found := engine_replicas(kube, namespace, "llama")) == 2 and found,
        timeout=120,
        what="two ready replicas",
    )
    selector = "privatellm.io/inference-deployment=llama"
    pods = crds.core.list_namespaced_pod(namespace, label_selector=selector).items
    assert sorted(urls) == sorted(f"https://{p.status.pod_ip}:8000" for p in pods if p.status)

    # A server set up from the Secret the operator wrote for the model, as vLLM is under
    # encryption.tls: mutual, answers the operator's own client certificate.
    secret = kube.get(KINDS["Secret"], namespace, "llama-tls")
    for key in ("tls.crt", "tls.key", "ca.crt"):
        (tmp_path / key).write_bytes(secret_bytes(secret, key))
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=tmp_path / "ca.crt")
    server_tls.load_cert_chain(tmp_path / "tls.crt", tmp_path / "tls.key")
    server_tls.verify_mode = ssl.CERT_REQUIRED
    access = ClientCertificates(lambda ns: namespace_ca(kube, ns)).access(namespace)
    assert access is not None

    async def scrape() -> tuple[str, Any]:
        async with (
            FakeOpenAI(model="llama", ssl_context=server_tls) as server,
            aiohttp.ClientSession() as session,
        ):
            server.running, server.waiting, server.kv_cache_usage = 3, 1, 0.4
            name = server_name(namespace, "llama")
            return server.url, await scrape_engine(session, server.url, access, name)

    url, report = asyncio.run(scrape())
    assert (report.source, report.running, report.waiting, report.kv_cache_usage) == (
        url,
        3,
        1,
        0.4,
    )
