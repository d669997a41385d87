"""The built image, run by a real OCI runtime: runc, on a bundle that umoci unpacked.

`make test-image` builds the image into build/image/oci (scripts/image.sh) and installs
runc and umoci; without them, or when not run as root, the tests here are skipped.
The image is unpacked once per session; every container gets a bundle of its own over
that one root file system, mounted read-only as the chart mounts it, with a tmpfs on
/tmp as the chart's emptyDir. Bundles, runc's state and the unpacked image are removed
at the end.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
LAYOUT = Path(os.environ.get("PRIVATELLM_IMAGE_LAYOUT", ROOT / "build" / "image" / "oci"))


@dataclass(frozen=True)
class Mount:
    """A host file or folder bind-mounted read-only into the container."""

    source: Path
    destination: str


@dataclass
class Image:
    """The unpacked image and what runs containers of it."""

    tag: str
    rootfs: Path
    config: dict[str, Any]
    workdir: Path

    @property
    def entrypoint(self) -> list[str]:
        """The image's ENTRYPOINT and CMD, as umoci put them in the runtime config."""
        return list(self.config["process"]["args"])

    def runc_command(self, *args: str) -> list[str]:
        """A runc command line with this session's own state folder."""
        return ["runc", "--root", str(self.workdir / "runc"), *args]

    def _bundle(self, args: Sequence[str], mounts: Sequence[Mount], host_network: bool) -> Path:
        config = json.loads(json.dumps(self.config))
        config["root"] = {"path": str(self.rootfs), "readonly": True}
        config["process"]["args"] = list(args)
        config["process"]["terminal"] = False
        config["mounts"].append(
            {
                "destination": "/tmp",
                "type": "tmpfs",
                "source": "tmpfs",
                "options": ["nosuid", "nodev", "mode=1777", "size=64m"],
            }
        )
        for mount in mounts:
            config["mounts"].append(
                {
                    "destination": mount.destination,
                    "type": "bind",
                    "source": str(mount.source),
                    "options": ["rbind", "ro"],
                }
            )
        if host_network:
            namespaces = config["linux"]["namespaces"]
            config["linux"]["namespaces"] = [n for n in namespaces if n["type"] != "network"]
        bundle = self.workdir / "bundles" / uuid.uuid4().hex[:12]
        bundle.mkdir(parents=True)
        (bundle / "config.json").write_text(json.dumps(config))
        return bundle

    def run(
        self, args: Sequence[str], mounts: Sequence[Mount] = (), timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        """Run a container to its end; its exit status, output and errors."""
        bundle = self._bundle(args, mounts, host_network=False)
        name = f"privatellm-test-{bundle.name}"
        try:
            return subprocess.run(
                self.runc_command("run", "--bundle", str(bundle), name),
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
            )
        finally:
            self._remove(name, bundle)

    @contextmanager
    def start(
        self, args: Sequence[str], log: Path, mounts: Sequence[Mount] = ()
    ) -> Iterator[Container]:
        """A container in the host's network namespace, stopped and removed on exit."""
        bundle = self._bundle(args, mounts, host_network=True)
        name = f"privatellm-test-{bundle.name}"
        with log.open("w") as out:
            process = subprocess.Popen(
                self.runc_command("run", "--bundle", str(bundle), name),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        try:
            yield Container(self, name, process, log)
        finally:
            if process.poll() is None:
                subprocess.run(
                    self.runc_command("kill", name, "KILL"), capture_output=True, check=False
                )
                process.wait(timeout=30)
            self._remove(name, bundle)

    def _remove(self, name: str, bundle: Path) -> None:
        subprocess.run(
            self.runc_command("delete", "--force", name), capture_output=True, check=False
        )
        shutil.rmtree(bundle, ignore_errors=True)


@dataclass
class Container:
    """A running container: its runc process (whose exit status is the container's)."""

    image: Image
    name: str
    process: subprocess.Popen[bytes]
    log: Path

    def stop(self, timeout: float = 30) -> int:
        """Send SIGTERM, as the kubelet does, and wait for the exit status."""
        subprocess.run(self.image.runc_command("kill", self.name, "TERM"), check=True)
        return self.process.wait(timeout=timeout)

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def _tag(layout: Path) -> str:
    """The layout's one reference, which scripts/image.sh names after the chart's appVersion."""
    manifests = json.loads((layout / "index.json").read_text())["manifests"]
    tags = [m.get("annotations", {}).get("org.opencontainers.image.ref.name") for m in manifests]
    assert len(tags) == 1 and tags[0], f"{layout}: expected one tagged image, found {tags}"
    return str(tags[0])


@pytest.fixture(scope="session")
def image(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Image]:
    if os.geteuid() != 0:
        pytest.skip("runc runs the image as root")
    missing = [tool for tool in ("runc", "umoci") if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"{', '.join(missing)} missing: `make test-image` installs them")
    if not (LAYOUT / "index.json").is_file():
        pytest.skip(f"no image in {LAYOUT}: `make test-image` builds it")
    tag = _tag(LAYOUT)
    workdir = tmp_path_factory.mktemp("image")
    unpacked = workdir / "unpacked"
    try:
        subprocess.run(
            ["umoci", "unpack", "--image", f"{LAYOUT}:{tag}", str(unpacked)],
            check=True,
            capture_output=True,
        )
        config = json.loads((unpacked / "config.json").read_text())
        yield Image(tag, unpacked / "rootfs", config, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
