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

from privatellm.cli.main import main
from privatellm.devcluster import DevVault, LocalCluster, Toolchain, enable_transit
from privatellm.keys import TransitClient, VaultClient

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


def recycle_released_volumes(cluster: Cluster) -> None:
    """Make volumes whose claims went with an earlier test's namespace available again.

    The local cluster's volumes exist ahead of time and are retained (devcluster/storage.py),
    so each claim deleted leaves its volume Released: over a whole run they would run out.
    A cloud's provisioner makes new ones; here the earlier claim's reference is cleared.
    """
    for volume in cluster.core.list_persistent_volume().items:
        if volume.status and volume.status.phase == "Released":
            cluster.core.patch_persistent_volume(volume.metadata.name, {"spec": {"claimRef": None}})


@pytest.fixture
def namespace(cluster: Cluster) -> Iterator[str]:
    """A fresh namespace whose default ServiceAccount exists (Pods need it)."""
    recycle_released_volumes(cluster)
    name = f"t-{uuid.uuid4().hex[:8]}"
    cluster.core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    wait_until(
        lambda: cluster.core.list_namespaced_service_account(name).items,
        what=f"default ServiceAccount in {name}",
    )
    yield name
    cluster.core.delete_namespace(name)


@dataclass
class VaultServer:
    """The Vault under test; `dev` is None when BAO_ADDR or VAULT_ADDR names an external one."""

    addr: str
    token: str
    dev: DevVault | None = None

    @property
    def client(self) -> VaultClient:
        return VaultClient(self.addr, self.token)

    @property
    def transit(self) -> TransitClient:
        return TransitClient(self.client)


def _external_vault() -> VaultServer | None:
    addr = os.environ.get("BAO_ADDR") or os.environ.get("VAULT_ADDR")
    token = os.environ.get("BAO_TOKEN") or os.environ.get("VAULT_TOKEN")
    return VaultServer(addr, token) if addr and token else None


@pytest.fixture(scope="module")
def vault(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VaultServer]:
    """A Vault with Transit mounted: the external one when named, else a dev-mode server."""
    external = _external_vault()
    if external is not None:
        enable_transit(external.client)
        yield external
        return
    workdir = tmp_path_factory.mktemp("vault")
    dev = DevVault(workdir, Toolchain.locate())
    dev.start()
    try:
        yield VaultServer(dev.addr, dev.root_token, dev)
    finally:
        dev.stop()
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
def own_vault(tmp_path: Path) -> Iterator[DevVault]:
    """A dev-mode server of the test's own, which it may stop and restart."""
    if _external_vault() is not None:
        pytest.skip("stops the server: needs a dev-mode server of its own")
    dev = DevVault(tmp_path / "vault", Toolchain.locate())
    dev.start()
    try:
        yield dev
    finally:
        dev.stop()


@pytest.fixture
def report(crds: Cluster, monkeypatch: pytest.MonkeyPatch) -> Any:
    """`privatellm cost report ...` as a user runs it: KUBECONFIG names the cluster."""
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setattr(
        "kubernetes.config.kube_config.KUBE_CONFIG_DEFAULT_LOCATION", str(crds.kubeconfig)
    )
    # load_kube_config sets the client's process-wide default: restored after the test.
    monkeypatch.setattr(client.Configuration, "_default", client.Configuration._default)

    def run(capsys: pytest.CaptureFixture[str], *args: str, exit_code: int = 0) -> str:
        capsys.readouterr()
        assert main(["cost", "report", *args]) == exit_code, capsys.readouterr().err
        captured = capsys.readouterr()
        return captured.out if exit_code == 0 else captured.err

    return run
