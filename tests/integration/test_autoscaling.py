"""Scale to zero and back on the real API server: the model controller's reconcile, with
its autoscaler reading a real gateway's demand through the operator's collector.

The operator's event loop is left out: the test calls the reconcile the way a worker
does, with an injected clock, so that an idle period passes in no time.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from privatellm.api import GROUP, VERSION
from privatellm.controllers.autoscaling import Autoscaler
from privatellm.controllers.demand import DemandCollector, PeerAccess
from privatellm.controllers.inference import reconcile
from privatellm.gateway.discovery import Replica
from privatellm.gateway.quotas import peer_token
from privatellm.kube.client import KINDS, Kube
from privatellm.render.inference_status import NodeView
from tests.gateway.test_gateway_holding import HASH_KEY, at_zero, chat, peer_port, until

from .conftest import Cluster

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
