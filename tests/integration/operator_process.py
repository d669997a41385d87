"""Run `privatellm operator` as the chart's ServiceAccount, with only the chart's RBAC.

The operator authenticates with a token of the ServiceAccount the Helm chart creates,
bound to the ClusterRole the chart renders: if that role lacks a permission the
operator needs, the tests fail; the role's exact shape is pinned by the chart tests.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import yaml

from privatellm.devcluster import Toolchain

from .conftest import ROOT, Cluster

# A release of its own, so that the chart tests' install and uninstall never touch it.
RELEASE = "privatellm-under-test"
NAMESPACE = "privatellm-under-test"
SERVICE_ACCOUNT = RELEASE
USERNAME = f"system:serviceaccount:{NAMESPACE}:{SERVICE_ACCOUNT}"
RBAC_KINDS = {"ServiceAccount", "ClusterRole", "ClusterRoleBinding"}


def chart_rbac() -> list[dict[str, object]]:
    """The chart's ServiceAccount, ClusterRole and binding, as `helm template` renders them."""
    rendered = subprocess.run(
        [
            Toolchain.locate().binary("helm"),
            "template",
            RELEASE,
            str(ROOT / "charts/privatellm"),
            "--namespace",
            NAMESPACE,
            "--kube-version",
            "v1.36.0",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return [d for d in yaml.safe_load_all(rendered) if d and d["kind"] in RBAC_KINDS]


def service_account_kubeconfig(cluster: Cluster, path: Path) -> Path:
    """A kubeconfig that authenticates as the chart's ServiceAccount."""
    cluster.kubectl("create", "namespace", NAMESPACE, check=False)
    cluster.kubectl("apply", "-f", "-", stdin=yaml.safe_dump_all(chart_rbac()))
    token = cluster.kubectl(
        "create", "token", SERVICE_ACCOUNT, "-n", NAMESPACE, "--duration=4h"
    ).strip()
    admin = yaml.safe_load(cluster.kubeconfig.read_text())
    context = next(c for c in admin["contexts"] if c["name"] == admin["current-context"])
    cluster_entry = next(c for c in admin["clusters"] if c["name"] == context["context"]["cluster"])
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [cluster_entry],
        "users": [{"name": SERVICE_ACCOUNT, "user": {"token": token}}],
        "contexts": [
            {
                "name": "operator",
                "context": {"cluster": cluster_entry["name"], "user": SERVICE_ACCOUNT},
            }
        ],
        "current-context": "operator",
    }
    path.write_text(yaml.safe_dump(config))
    return path


class OperatorProcess:
    """The operator as a child process; restartable, with its log kept."""

    def __init__(
        self,
        kubeconfig: Path,
        log: Path,
        resync_seconds: float = 5,
        env: dict[str, str] | None = None,
        args: list[str] | None = None,
    ) -> None:
        self.kubeconfig = kubeconfig
        self.log = log
        self.resync_seconds = resync_seconds
        self.env = env or {}
        self.args = args or []
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = {**os.environ, **self.env, "KUBECONFIG": str(self.kubeconfig)}
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "privatellm.cli.main",
                    "operator",
                    f"--resync-seconds={self.resync_seconds}",
                    *self.args,
                ],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self) -> None:
        if self.process is None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()


# Reviews are asked with a create but store nothing: Vault reviews the operator's own
# token when the operator logs in to it.
REVIEW_RESOURCES = ("tokenreviews", "subjectaccessreviews")


def writes_by(audit_log: Path, username: str) -> list[str]:
    """Requests that changed state for `username` so far, as "VERB uri"."""
    writes = []
    with audit_log.open() as lines:
        for line in lines:
            event = json.loads(line)
            if event.get("stage") != "ResponseComplete" or event["user"]["username"] != username:
                continue
            if event.get("objectRef", {}).get("resource") in REVIEW_RESOURCES:
                continue
            writes.append(f"{event['verb']} {event['requestURI']}")
    return writes


def running_operator(
    cluster: Cluster,
    workdir: Path,
    env: dict[str, str] | None = None,
    token_file: Path | None = None,
    args: list[str] | None = None,
    resync_seconds: float = 5,
) -> Iterator[OperatorProcess]:
    """Start the operator as the chart's ServiceAccount; stop it afterwards.

    With `token_file`, the ServiceAccount's token is also written there, as the kubelet
    would project it into the operator's Pod.
    """
    kubeconfig = service_account_kubeconfig(cluster, workdir / "operator.kubeconfig")
    if token_file is not None:
        config = yaml.safe_load(kubeconfig.read_text())
        token_file.write_text(config["users"][0]["user"]["token"])
    operator = OperatorProcess(
        kubeconfig, workdir / "operator.log", resync_seconds, env=env, args=args
    )
    operator.start()
    try:
        time.sleep(1)
        yield operator
    finally:
        operator.stop()
