"""Pods of the simulated cluster served for real, as a kubelet would run them.

KWOK marks Pods Running with an address from its Pod range and runs nothing. Two
pieces make such a Pod answer:

- `local_pod_network` routes the whole Pod range to the loopback device, so that every
  Pod address is local: a server bound to a Pod's address is reached there by the
  operator and the gateways, through the addresses the real EndpointSlice controller
  published. Needs CAP_NET_ADMIN (root); without it the tests that need it are skipped
  with that reason.
- `LocalPod` runs one container of such a Pod as a local `privatellm` process with the
  container's own arguments and environment: its Secret, ConfigMap, projected and
  emptyDir volumes become directories, each mount path in its arguments, environment
  and mounted files points there, and it listens on the Pod's address. The only other
  change is the one cluster DNS would make: the in-cluster API server address becomes
  the test API server's.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from privatellm.devcluster.cluster import POD_CIDR

from .conftest import Cluster
from .test_gateway_tokenreview import api_server

IN_CLUSTER_API_SERVER = "https://kubernetes.default.svc"


@contextmanager
def local_pod_network() -> Iterator[None]:
    """Every address of KWOK's Pod range is local while the block runs."""
    route = ["ip", "route", "{}", "local", POD_CIDR, "dev", "lo"]
    added = subprocess.run(
        [part.format("add") for part in route], capture_output=True, text=True, check=False
    )
    if added.returncode != 0 and "File exists" not in added.stderr:
        pytest.skip(f"Pod addresses cannot be made local: {added.stderr.strip()}")
    try:
        yield
    finally:
        if added.returncode == 0:
            subprocess.run([part.format("del") for part in route], check=False)


class LocalPod:
    """One container of a scheduled Pod, run here as its process; restartable."""

    def __init__(self, cluster: Cluster, pod: Mapping[str, Any], container: str, root: Path):
        self.cluster = cluster
        self.pod = pod
        self.namespace: str = pod["metadata"]["namespace"]
        self.name: str = pod["metadata"]["name"]
        self.ip: str = pod["status"]["podIP"]
        self.container = next(c for c in pod["spec"]["containers"] if c["name"] == container)
        self.root = root / self.name
        self.log = self.root / "process.log"
        self.process: subprocess.Popen[bytes] | None = None
        self._api_server, _ = api_server(cluster.kubeconfig, root)
        self._replacements: dict[str, str] = {}

    def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self._mount_volumes()
        env = {**os.environ, **self._environment()}
        args = [self._localised(a) for a in self.container.get("args") or []]
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "privatellm.cli.main", *args, f"--host={self.ip}"],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process is None:
            return
        self.process.send_signal(sig)
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process = None

    def _mount_volumes(self) -> None:
        volumes = {v["name"]: v for v in self.pod["spec"].get("volumes") or []}
        mounts = sorted(
            self.container.get("volumeMounts") or [],
            key=lambda m: len(m["mountPath"]),
            reverse=True,
        )
        for mount in mounts:
            local = self.root / "volumes" / mount["name"]
            self._replacements[mount["mountPath"]] = str(local)
        self._replacements[IN_CLUSTER_API_SERVER] = self._api_server
        for mount in mounts:
            local = self.root / "volumes" / mount["name"]
            if local.exists() and mount["name"] in volumes and _is_data(volumes[mount["name"]]):
                shutil.rmtree(local)  # Secrets and tokens are read afresh at each start.
            local.mkdir(parents=True, exist_ok=True)
            volume = volumes.get(mount["name"], {"emptyDir": {}})  # a claim template's volume
            for relative, data in self._volume_files(volume).items():
                path = local / relative
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(self._localised_bytes(data))

    def _volume_files(self, volume: Mapping[str, Any]) -> dict[str, bytes]:
        if "secret" in volume:
            return self._secret_files(volume["secret"]["secretName"])
        if "configMap" in volume:
            return self._config_map_files(volume["configMap"]["name"])
        if "projected" in volume:
            files: dict[str, bytes] = {}
            for source in volume["projected"]["sources"]:
                files.update(self._projected_files(source))
            return files
        return {}  # emptyDir and claims: an empty directory

    def _projected_files(self, source: Mapping[str, Any]) -> dict[str, bytes]:
        if "serviceAccountToken" in source:
            token = source["serviceAccountToken"]
            audience = [f"--audience={token['audience']}"] if token.get("audience") else []
            account = self.pod["spec"].get("serviceAccountName") or "default"
            created = self.cluster.kubectl(
                "create", "token", account, "-n", self.namespace, *audience
            )
            return {token["path"]: created.split()[0].encode()}
        if "configMap" in source:
            found = self._config_map_files(source["configMap"]["name"])
            items = source["configMap"].get("items")
            return {i["path"]: found[i["key"]] for i in items} if items else found
        if "secret" in source:
            return self._secret_files(source["secret"]["name"])
        if "downwardAPI" in source:
            return {
                item["path"]: str(self._field(item["fieldRef"]["fieldPath"])).encode()
                for item in source["downwardAPI"]["items"]
                if "fieldRef" in item
            }
        return {}

    def _secret_files(self, name: str) -> dict[str, bytes]:
        secret = self._get("secret", name)
        return {k: base64.b64decode(v) for k, v in (secret.get("data") or {}).items()}

    def _config_map_files(self, name: str) -> dict[str, bytes]:
        found = self._get("configmap", name)
        return {k: v.encode() for k, v in (found.get("data") or {}).items()}

    def _get(self, kind: str, name: str) -> dict[str, Any]:
        found: dict[str, Any] = json.loads(
            self.cluster.kubectl("get", kind, name, "-n", self.namespace, "-o", "json")
        )
        return found

    def _environment(self) -> dict[str, str]:
        env: dict[str, str] = {}
        for variable in self.container.get("env") or []:
            if "value" in variable:
                env[variable["name"]] = self._localised(variable["value"])
            elif "fieldRef" in (variable.get("valueFrom") or {}):
                field = variable["valueFrom"]["fieldRef"]["fieldPath"]
                env[variable["name"]] = str(self._field(field))
        return env

    def _field(self, path: str) -> Any:
        value: Any = self.pod
        for part in path.split("."):
            value = value[part]
        return value

    def _localised(self, text: str) -> str:
        # One pass, longest first, whole path segments only: /tmp in /tmp/x, not in /tmpx,
        # nor inside a path this has already replaced.
        originals = sorted(self._replacements, key=len, reverse=True)
        pattern = "|".join(re.escape(o) for o in originals)
        found = re.compile(rf"(?<![\w./-])({pattern})(?![\w.-])")
        return found.sub(lambda m: self._replacements[m.group(1)], text)

    def _localised_bytes(self, data: bytes) -> bytes:
        try:
            return self._localised(data.decode()).encode()
        except UnicodeDecodeError:
            return data


def _is_data(volume: Mapping[str, Any]) -> bool:
    return any(kind in volume for kind in ("secret", "configMap", "projected"))
