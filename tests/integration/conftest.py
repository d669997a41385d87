"""Integration fixtures: a real control plane, started once per session.

With PRIVATELLM_TEST_KUBECONFIG set, the tests run against that cluster (kind, say)
instead; it must have nodes labelled like the simulated ones (three zones, GPUs).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, config

from privatellm.devcluster import LocalCluster, Toolchain

ROOT = Path(__file__).resolve().parents[2]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/integration" in str(item.fspath):
            item.add_marker(pytest.mark.integration)


@dataclass
class Cluster:
    """A reachable cluster: its kubeconfig, an API client, and kubectl."""

    kubeconfig: Path
    api: client.ApiClient
    kubectl_binary: str
    # The API server's audit log of writes; None on an external cluster.
    audit_log: Path | None = None

    def kubectl(self, *args: str, stdin: str | None = None, check: bool = True) -> str:
        result = subprocess.run(
            [self.kubectl_binary, f"--kubeconfig={self.kubeconfig}", *args],
            input=stdin,
            capture_output=True,
            text=True,
            check=False,
        )
        if check and result.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed: {result.stderr}")
        return result.stdout + result.stderr

    @property
    def core(self) -> client.CoreV1Api:
        return client.CoreV1Api(self.api)

    @property
    def apps(self) -> client.AppsV1Api:
        return client.AppsV1Api(self.api)

    @property
    def custom(self) -> client.CustomObjectsApi:
        return client.CustomObjectsApi(self.api)


def wait_until(
    condition: Callable[[], Any], timeout: float = 60, interval: float = 0.5, what: str = ""
) -> Any:
    """Poll `condition` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = condition()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what or condition}: {last!r}")


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    external = os.environ.get("PRIVATELLM_TEST_KUBECONFIG")
    if external:
        kubectl = shutil.which("kubectl") or Toolchain.locate().binary("kubectl")
        yield Cluster(Path(external), config.new_client_from_config(external), kubectl)
        return
    workdir = tmp_path_factory.mktemp("cluster")
    local = LocalCluster(workdir, Toolchain.locate())
    local.start()
    try:
        api = config.new_client_from_config(str(local.kubeconfig))
        yield Cluster(local.kubeconfig, api, local.tools.binary("kubectl"), local.audit_log)
    finally:
        local.stop()
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture(scope="session")
def crds(cluster: Cluster) -> Cluster:
    """The project's CRDs, installed and Established."""
    cluster.kubectl("apply", "--server-side", "-f", str(ROOT / "crds"))
    cluster.kubectl(
        "wait", "--for=condition=Established", "--timeout=60s", "-f", str(ROOT / "crds")
    )
    return cluster


@pytest.fixture
def namespace(cluster: Cluster) -> Iterator[str]:
    """A fresh namespace whose default ServiceAccount exists (Pods need it)."""
    name = f"t-{uuid.uuid4().hex[:8]}"
    cluster.core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    wait_until(
        lambda: cluster.core.list_namespaced_service_account(name).items,
        what=f"default ServiceAccount in {name}",
    )
    yield name
    cluster.core.delete_namespace(name)
