"""The operator under faults: what the API server or a child's controller refuses reaches
the InferenceDeployment's status once, and a failing object backs off.

The operator here resyncs every second, so that a retry loop driven by resyncs would
show up as many more reconcile attempts than the backoff allows.
"""

from __future__ import annotations

import math
import socket
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from .admission import refusing_deployments
from .conftest import Cluster, wait_until
from .operator_process import OperatorProcess, running_operator
from .test_inference_operator import (
    condition,
    create,
    events_for,
    model,
    patch_spec,
    read,
    settled,
    token_review_binding,
)

RESYNC_SECONDS = 1.0
H100 = "NVIDIA-H100-80GB-HBM3"
# A memory request that the admission policy below refuses in the test's namespace.
REFUSED_MEMORY = "31Gi"
POLICY_MESSAGE = f"memory requests of {REFUSED_MEMORY} are refused in this namespace"
# The backoff the operator applies: 1 s doubling, jitter of at most -10%.
FIRST_DELAY, SHORTEST_JITTER = 1.0, 0.9


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def metrics_port() -> int:
    return _free_port()


@pytest.fixture(scope="module")
def operator(
    crds: Cluster, metrics_port: int, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorProcess]:
    """The operator as the chart's ServiceAccount, without Vault, resyncing every second."""
    env = {"PRIVATELLM_GATEWAY_TOKENREVIEW_BINDING": token_review_binding()}
    yield from running_operator(
        crds,
        tmp_path_factory.mktemp("operator"),
        env,
        args=["--metrics-port", str(metrics_port)],
        resync_seconds=RESYNC_SECONDS,
    )


def failed_reconciles(port: int) -> int:
    """How many InferenceDeployment reconciles have failed, from the metrics endpoint."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "privatellm_reconciles_total" and sample.labels == {
                "kind": "InferenceDeployment",
                "result": "error",
            }:
                return int(sample.value)
    return 0


def most_attempts_in(window: float) -> int:
    """The most reconcile attempts the backoff allows within `window` seconds.

    With the shortest jitter every wait is 0.9 * 2**(k-1) s, so n retries take at least
    0.9 * (2**n - 1) s; the attempt the window starts with counts too.
    """
    retries = math.floor(math.log2(window / (FIRST_DELAY * SHORTEST_JITTER) + 1))
    return retries + 1


@pytest.fixture
def refusing_policy(cluster: Cluster, namespace: str) -> Iterator[None]:
    """An admission policy refusing Deployments that request REFUSED_MEMORY in `namespace`."""
    requests = "c.resources.requests"
    allowed = (
        "object.spec.template.spec.containers.all(c, "
        f"!has(c.resources) || !has({requests}) || !('memory' in {requests}) "
        f"|| {requests}['memory'] != '{REFUSED_MEMORY}')"
    )
    with refusing_deployments(
        cluster,
        namespace,
        f"privatellm-test-refuse-{namespace}",
        allowed,
        POLICY_MESSAGE,
        lambda: _dry_run_deployment(cluster, namespace),
    ):
        yield


def _dry_run_deployment(cluster: Cluster, namespace: str) -> str:
    probe = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "probe", "namespace": namespace},
        "spec": {
            "selector": {"matchLabels": {"app": "probe"}},
            "template": {
                "metadata": {"labels": {"app": "probe"}},
                "spec": {
                    "containers": [
                        {
                            "name": "c",
                            "image": "probe",
                            "resources": {"requests": {"memory": REFUSED_MEMORY}},
                        }
                    ]
                },
            },
        },
    }
    return cluster.kubectl(
        "create", "--dry-run=server", "-f", "-", stdin=yaml.safe_dump(probe), check=False
    )


def refused_model(name: str) -> dict[str, Any]:
    resources = {"gpusPerReplica": 1, "gpuProduct": H100, "memory": REFUSED_MEMORY}
    return model(name, zones=["zone-a"], replicas=1, resources=resources)


def degraded_with(cluster: Cluster, namespace: str, name: str, reason: str) -> dict[str, Any]:
    """The object once its Degraded condition is True with `reason`, else {}."""
    obj = read(cluster, namespace, name)
    found = condition(obj, "Degraded")
    return obj if (found.get("status"), found.get("reason")) == ("True", reason) else {}


def log_since(log: Path, offset: int) -> list[str]:
    with log.open(errors="replace") as lines:
        lines.seek(offset)
        return lines.read().splitlines()


def test_a_refused_child_is_degraded_once_with_the_api_servers_message(
    operator: OperatorProcess,
    cluster: Cluster,
    namespace: str,
    metrics_port: int,
    refusing_policy: None,
) -> None:
    log_start = operator.log.stat().st_size
    create(cluster, namespace, refused_model("refused"))
    obj = wait_until(
        lambda: degraded_with(cluster, namespace, "refused", "ApplyFailed"),
        timeout=60,
        what="Degraded ApplyFailed",
    )
    message = condition(obj, "Degraded")["message"]
    assert message.startswith('Deployment/refused-zone-a: deployments.apps "refused-zone-a"')
    assert POLICY_MESSAGE in message
    assert obj["status"]["observedGeneration"] == obj["metadata"]["generation"]
    assert condition(obj, "Progressing")["reason"] == "ApplyFailed"

    failed = failed_reconciles(metrics_port)
    wait_until(
        lambda: failed_reconciles(metrics_port) >= failed + 3,
        timeout=60,
        what="three more failed attempts",
    )
    warnings = [e for e in events_for(cluster, namespace, "refused") if e.reason == "ApplyFailed"]
    assert [(e.type, e.count) for e in warnings] == [("Warning", 1)]
    assert POLICY_MESSAGE in (warnings[0].message or "")
    lines = log_since(operator.log, log_start)
    mentions = [line for line in lines if f"{namespace}/refused" in line]
    assert len(mentions) == 1, mentions
    assert POLICY_MESSAGE in mentions[0]
    assert not [line for line in lines if line.startswith("Traceback")]

    patch_spec(cluster, namespace, "refused", {"resources": {"memory": "32Gi"}})
    fixed = wait_until(
        lambda: settled(cluster, namespace, "refused", 1), timeout=120, what="Ready once fixed"
    )
    assert condition(fixed, "Degraded")["status"] == "False"
    assert fixed["status"]["observedGeneration"] == 2


def test_pods_refused_for_a_missing_priority_class_are_degraded_with_failed_create(
    operator: OperatorProcess, cluster: Cluster, namespace: str
) -> None:
    create(
        cluster,
        namespace,
        model("unranked", zones=["zone-a"], replicas=1, priorityClassName="no-such-class"),
    )
    obj = wait_until(
        lambda: degraded_with(cluster, namespace, "unranked", "FailedCreate"),
        timeout=120,
        what="Degraded FailedCreate",
    )
    message = condition(obj, "Degraded")["message"]
    assert message.startswith("Deployment/unranked-zone-a: ")
    assert "no PriorityClass with name no-such-class was found" in message
    assert obj["status"]["observedGeneration"] == obj["metadata"]["generation"]
    time.sleep(3 * RESYNC_SECONDS)  # resyncs and the ReplicaSet's retries change nothing
    warnings = [e for e in events_for(cluster, namespace, "unranked") if e.reason == "FailedCreate"]
    assert [(e.type, e.count) for e in warnings] == [("Warning", 1)]

    patch_spec(cluster, namespace, "unranked", {"priorityClassName": None})
    # The Deployment drops its ReplicaFailure condition a moment after its new Pods are
    # ready, so Degraded clears a reconcile after Ready: wait for both.
    wait_until(
        lambda: (
            (obj := settled(cluster, namespace, "unranked", 1))
            and condition(obj, "Degraded")["status"] == "False"
        ),
        timeout=120,
        what="Ready and no longer Degraded once fixed",
    )


def test_a_job_whose_pods_are_refused_is_degraded_with_failed_create(
    operator: OperatorProcess, cluster: Cluster, namespace: str
) -> None:
    quota = {
        "apiVersion": "v1",
        "kind": "ResourceQuota",
        "metadata": {"name": "no-pods", "namespace": namespace},
        "spec": {"hard": {"pods": "0"}},
    }
    cluster.kubectl("apply", "-f", "-", stdin=yaml.safe_dump(quota))
    create(cluster, namespace, model("starved", zones=["zone-a"], replicas=1))
    obj = wait_until(
        lambda: degraded_with(cluster, namespace, "starved", "FailedCreate"),
        timeout=120,
        what="Degraded FailedCreate",
    )
    message = condition(obj, "Degraded")["message"]
    assert message.startswith("Job/starved-prestage-zone-a: Error creating: ")
    assert "quota" in message


def test_a_failing_object_is_retried_as_the_backoff_allows_not_at_every_resync(
    operator: OperatorProcess,
    cluster: Cluster,
    namespace: str,
    metrics_port: int,
    refusing_policy: None,
) -> None:
    create(cluster, namespace, refused_model("backoff"))
    wait_until(
        lambda: degraded_with(cluster, namespace, "backoff", "ApplyFailed"),
        timeout=60,
        what="Degraded ApplyFailed",
    )
    before, started = failed_reconciles(metrics_port), time.monotonic()
    time.sleep(20 * RESYNC_SECONDS)
    attempts = failed_reconciles(metrics_port) - before
    window = time.monotonic() - started
    # One attempt of slack for the one running as the window opens or closes.
    allowed = most_attempts_in(window) + 1
    assert allowed < window / RESYNC_SECONDS / 2, "the window tells backoff from resyncs"
    assert 1 <= attempts <= allowed, f"{attempts} attempts in {window:.0f}s"

    patch_spec(cluster, namespace, "backoff", {"resources": {"memory": "32Gi"}})
    wait_until(
        lambda: condition(read(cluster, namespace, "backoff"), "Degraded").get("status") == "False",
        timeout=60,
        what="Degraded cleared once the spec is fixed",
    )
