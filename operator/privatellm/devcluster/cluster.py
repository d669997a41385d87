"""A local Kubernetes control plane with simulated GPU nodes, for tests and the demo.

Real upstream binaries (etcd, kube-apiserver, kube-controller-manager,
kube-scheduler) built by `scripts/testenv.sh`, plus KWOK, which plays the kubelet
for nodes that exist only as API objects: the real scheduler places real Pods on
them and KWOK marks the Pods Running.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .nodes import NodePlan, default_node_plan, render_nodes
from .pki import Pki, create_pki
from .storage import render_storage

BINARIES = (
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kwok",
    "kubectl",
)
# Not part of the control plane: the NetworkPolicy analyzer that the policy tests run
# offline (tests/support/cyclonus.py), built by `scripts/testenv.sh` like the rest.
CYCLONUS_BINARY = "cyclonus"
SERVICE_CIDR = "10.96.0.0/16"
# KWOK gives Pods addresses from here; nothing routes them unless a test makes them local.
POD_CIDR = "10.244.0.0/16"
# Every write, with who made it, goes to the audit log: tests count a component's writes.
AUDIT_POLICY = {
    "apiVersion": "audit.k8s.io/v1",
    "kind": "Policy",
    "omitStages": ["RequestReceived"],
    "rules": [
        {
            "level": "Metadata",
            "verbs": ["create", "update", "patch", "delete", "deletecollection"],
        },
        {"level": "None"},
    ],
}
# Short grace and toleration periods so that node loss is noticed and Pods are
# moved within seconds, not minutes.
NODE_MONITOR_GRACE = "20s"
TOLERATION_SECONDS = "10"


def default_cache() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(os.environ.get("PRIVATELLM_TESTENV_CACHE") or Path(base) / "privatellm/testenv")


class ToolchainMissingError(RuntimeError):
    """The control-plane binaries have not been built yet."""


@dataclass(frozen=True)
class Toolchain:
    """Where the control-plane binaries and KWOK's stage definitions live."""

    cache: Path

    @classmethod
    def locate(cls) -> Toolchain:
        tools = cls(default_cache())
        missing = [b for b in BINARIES if not (tools.bin_dir / b).exists()]
        if missing:
            raise ToolchainMissingError(
                f"missing {', '.join(missing)} in {tools.bin_dir}: run `make testenv`"
            )
        return tools

    @property
    def bin_dir(self) -> Path:
        return self.cache / "bin"

    def binary(self, name: str) -> str:
        return str(self.bin_dir / name)

    def required(self, name: str) -> str:
        """A binary that must exist; ToolchainMissingError (run `make testenv`) otherwise."""
        path = self.bin_dir / name
        if not path.exists():
            raise ToolchainMissingError(f"missing {name} in {self.bin_dir}: run `make testenv`")
        return str(path)

    def kwok_stages(self) -> list[Path]:
        version = (self.bin_dir / ".kwok.version").read_text().strip()
        root = self.cache / f"kwok-stages-{version}"
        wanted = [root / "node/fast", root / "node/heartbeat-with-lease", root / "pod/general"]
        return sorted(p for d in wanted for p in d.glob("*.yaml") if p.name != "kustomization.yaml")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _log(message: str) -> None:
    print(f"[cluster] {message}", file=sys.stderr, flush=True)


@dataclass
class LocalCluster:
    """etcd, kube-apiserver, controller-manager, scheduler and KWOK in one folder."""

    workdir: Path
    tools: Toolchain
    nodes: NodePlan = field(default_factory=default_node_plan)

    @property
    def kubeconfig(self) -> Path:
        return self.workdir / "kubeconfig"

    @property
    def audit_log(self) -> Path:
        """JSON lines, one per write request the API server handled."""
        return self.workdir / "audit.log"

    @property
    def _pid_file(self) -> Path:
        return self.workdir / "pids.json"

    def _pids(self) -> dict[str, int]:
        if not self._pid_file.exists():
            return {}
        pids: dict[str, int] = json.loads(self._pid_file.read_text())
        return pids

    def _spawn(self, name: str, args: Sequence[str]) -> None:
        process = spawn_logged(args, self.workdir / "logs" / f"{name}.log")
        pids = self._pids()
        pids[name] = process.pid
        self._pid_file.write_text(json.dumps(pids))

    def running(self) -> bool:
        return bool(self._pids()) and all(_alive(p) for p in self._pids().values())

    def start(self) -> None:
        """Start every component and the simulated nodes; return when all are Ready."""
        started = time.monotonic()
        (self.workdir / "logs").mkdir(parents=True, exist_ok=True)
        pki = create_pki(self.workdir / "pki")
        try:
            self._start_etcd()
            api_port = self._start_apiserver(pki)
            self._write_kubeconfig(pki, api_port)
            self._start_controllers(pki)
            self._start_kwok()
            self._create_nodes()
        except BaseException:
            self.stop()
            raise
        _log(f"ready in {time.monotonic() - started:.1f}s; KUBECONFIG={self.kubeconfig}")

    def _start_etcd(self) -> None:
        client, peer = free_port(), free_port()
        self.etcd_url = f"http://127.0.0.1:{client}"
        self._spawn(
            "etcd",
            [
                self.tools.binary("etcd"),
                "--name=default",
                f"--data-dir={self.workdir / 'etcd'}",
                f"--listen-client-urls={self.etcd_url}",
                f"--advertise-client-urls={self.etcd_url}",
                f"--listen-peer-urls=http://127.0.0.1:{peer}",
                f"--initial-advertise-peer-urls=http://127.0.0.1:{peer}",
                f"--initial-cluster=default=http://127.0.0.1:{peer}",
                "--unsafe-no-fsync",
                "--log-level=warn",
            ],
        )
        _wait_for("etcd", lambda: _http_ok(f"{self.etcd_url}/health"), self)

    def _start_apiserver(self, pki: Pki) -> int:
        port = free_port()
        policy = self.workdir / "audit-policy.yaml"
        policy.write_text(yaml.safe_dump(AUDIT_POLICY))
        self._spawn(
            "kube-apiserver",
            [
                self.tools.binary("kube-apiserver"),
                f"--etcd-servers={self.etcd_url}",
                f"--secure-port={port}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                f"--cert-dir={self.workdir / 'apiserver-certs'}",
                f"--tls-cert-file={pki.serving_cert}",
                f"--tls-private-key-file={pki.serving_key}",
                f"--client-ca-file={pki.ca_cert}",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                f"--service-account-key-file={pki.service_account_pub}",
                f"--service-account-signing-key-file={pki.service_account_key}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--authorization-mode=RBAC",
                "--allow-privileged=true",
                f"--default-not-ready-toleration-seconds={TOLERATION_SECONDS}",
                f"--default-unreachable-toleration-seconds={TOLERATION_SECONDS}",
                "--profiling=false",
                f"--audit-policy-file={policy}",
                f"--audit-log-path={self.audit_log}",
                "--audit-log-format=json",
                "--audit-log-maxbackup=1",
                "--audit-log-maxsize=512",
            ],
        )
        context = _client_tls(pki)
        _wait_for(
            "kube-apiserver",
            lambda: _http_ok(f"https://127.0.0.1:{port}/readyz", context),
            self,
            timeout=120,
        )
        return port

    def _write_kubeconfig(self, pki: Pki, port: int) -> None:
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "privatellm-local",
                    "cluster": {
                        "server": f"https://127.0.0.1:{port}",
                        "certificate-authority": str(pki.ca_cert),
                    },
                }
            ],
            "users": [
                {
                    "name": "admin",
                    "user": {
                        "client-certificate": str(pki.admin_cert),
                        "client-key": str(pki.admin_key),
                    },
                }
            ],
            "contexts": [
                {
                    "name": "privatellm-local",
                    "context": {"cluster": "privatellm-local", "user": "admin"},
                }
            ],
            "current-context": "privatellm-local",
        }
        self.kubeconfig.write_text(yaml.safe_dump(config, sort_keys=False))
        self.kubeconfig.chmod(0o600)

    def _start_controllers(self, pki: Pki) -> None:
        kcm_port, scheduler_port = free_port(), free_port()
        self._spawn(
            "kube-controller-manager",
            [
                self.tools.binary("kube-controller-manager"),
                f"--kubeconfig={self.kubeconfig}",
                f"--authentication-kubeconfig={self.kubeconfig}",
                f"--authorization-kubeconfig={self.kubeconfig}",
                "--leader-elect=false",
                "--bind-address=127.0.0.1",
                f"--secure-port={kcm_port}",
                f"--service-account-private-key-file={pki.service_account_key}",
                f"--root-ca-file={pki.ca_cert}",
                f"--cluster-signing-cert-file={pki.ca_cert}",
                f"--cluster-signing-key-file={pki.ca_key}",
                "--use-service-account-credentials=true",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                f"--node-monitor-grace-period={NODE_MONITOR_GRACE}",
                "--node-monitor-period=2s",
                "--controllers=*",
                # The defaults (20 requests/s) make the ReplicaSet and Job controllers the
                # bottleneck once hundreds of Pods are wanted at once.
                "--kube-api-qps=200",
                "--kube-api-burst=400",
            ],
        )
        self._spawn(
            "kube-scheduler",
            [
                self.tools.binary("kube-scheduler"),
                f"--kubeconfig={self.kubeconfig}",
                f"--authentication-kubeconfig={self.kubeconfig}",
                f"--authorization-kubeconfig={self.kubeconfig}",
                "--leader-elect=false",
                "--bind-address=127.0.0.1",
                f"--secure-port={scheduler_port}",
                "--kube-api-qps=200",
                "--kube-api-burst=400",
            ],
        )
        insecure = ssl.create_default_context()
        insecure.check_hostname = False
        insecure.verify_mode = ssl.CERT_NONE
        for name, port in (
            ("kube-controller-manager", kcm_port),
            ("kube-scheduler", scheduler_port),
        ):
            url = f"https://127.0.0.1:{port}/healthz"
            _wait_for(name, functools.partial(_http_ok, url, insecure), self)

    def _start_kwok(self) -> None:
        args = [
            self.tools.binary("kwok"),
            f"--kubeconfig={self.kubeconfig}",
            "--manage-all-nodes=false",
            "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake",
            "--node-lease-duration-seconds=40",
            f"--cidr={POD_CIDR}",
            "--node-ip=10.240.0.1",
        ]
        args += [f"--config={stage}" for stage in self.tools.kwok_stages()]
        self._spawn("kwok", args)

    def kubectl(self, *args: str, stdin: str | None = None) -> str:
        """Run kubectl against this cluster and return its output."""
        result = subprocess.run(
            [self.tools.binary("kubectl"), f"--kubeconfig={self.kubeconfig}", *args],
            input=stdin,
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(f"kubectl {' '.join(args)}: {result.stderr.strip()}")
        return result.stdout

    def _create_nodes(self) -> None:
        objects = render_nodes(self.nodes) + render_storage(self.nodes)
        self.kubectl("apply", "-f", "-", stdin=yaml.safe_dump_all(objects))
        self.kubectl(
            "wait",
            "--for=condition=Ready",
            "node",
            "--all",
            "--timeout=120s",
        )
        _log(f"{len(self.nodes.names())} simulated nodes Ready")

    def stop(self) -> None:
        """Stop every process this cluster started, newest first."""
        pids = self._pids()
        for name, pid in reversed(list(pids.items())):
            _terminate(pid)
            _log(f"stopped {name}")
        with contextlib.suppress(FileNotFoundError):
            self._pid_file.unlink()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stop_process_group(process: subprocess.Popen[bytes], grace: float = 10.0) -> None:
    """SIGTERM a child started in its own session, then SIGKILL it after `grace` seconds."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def _terminate(pid: int, grace: float = 10.0) -> None:
    """SIGTERM the process group, then SIGKILL it if it is still there after `grace`."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        if not _alive(pid):
            return
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)


def _client_tls(pki: Pki) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(pki.ca_cert))
    context.load_cert_chain(str(pki.admin_cert), str(pki.admin_key))
    return context


def _http_ok(url: str, context: ssl.SSLContext | None = None) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2, context=context) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def _wait_for(
    name: str, ready: Callable[[], bool], cluster: LocalCluster, timeout: float = 60
) -> None:
    def alive() -> bool:
        pid = cluster._pids().get(name)
        return pid is None or _alive(pid)

    log_file = cluster.workdir / "logs" / f"{name}.log"
    wait_until_ready(name, ready, alive, log_file, timeout, log=_log)


def spawn_logged(
    args: Sequence[str], log_file: Path, env: Mapping[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """Start a server in a process group of its own, its output appended to `log_file`."""
    with log_file.open("ab") as log:
        return subprocess.Popen(
            args,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=None if env is None else dict(env),
            start_new_session=True,
        )


def wait_until_ready(
    name: str,
    ready: Callable[[], bool],
    alive: Callable[[], bool],
    log_file: Path,
    timeout: float,
    interval: float = 0.2,
    log: Callable[[str], None] = _log,
) -> None:
    """Poll `ready` until it holds; fail at once when the server exits, or at `timeout`."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if not alive():
            raise RuntimeError(f"{name} exited; see {log_file}")
        if ready():
            log(f"{name} ready after {time.monotonic() - started:.1f}s")
            return
        time.sleep(interval)
    raise TimeoutError(f"{name} not ready after {timeout}s; see {log_file}")
