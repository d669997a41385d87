"""The image as a cluster runs it: its entry point, the compiled scanner, a non-root user,
a read-only root file system, and the gateway answering its health check."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from privatellm.devcluster.cluster import free_port
from tests.image.conftest import Container, Image, Mount

pytestmark = pytest.mark.image

PYTHON = "/opt/privatellm/bin/python"


def python(image: Image, code: str) -> str:
    """Run Python code in a container of the image; its standard output."""
    done = image.run([PYTHON, "-c", code])
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_the_entry_point_reports_the_version_the_image_is_tagged_with(image: Image) -> None:
    done = image.run([*image.entrypoint, "--version"])
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"privatellm {image.tag}\n"


def test_the_filters_use_the_compiled_scanner(image: Image) -> None:
    code = """
import privatellm_pii_scan
from privatellm.filters import injection, scanner
print(privatellm_pii_scan.__file__)
print(scanner.NativeScanner is privatellm_pii_scan.NativeScanner)
print(injection.KeywordSet is privatellm_pii_scan.KeywordSet)
print(privatellm_pii_scan.KeywordSet(["ignore", "system"]).present("please ignore that"))
"""
    where, scanner, keywords, present = python(image, code).splitlines()
    assert where.startswith("/opt/privatellm/lib/python3.11/site-packages/privatellm_pii_scan/")
    assert (scanner, keywords, present) == ("True", "True", "[0]")


def test_processes_run_as_the_numeric_non_root_user(image: Image) -> None:
    assert image.config["process"]["user"]["uid"] == 65532
    ids = python(image, "import os; print(os.getuid(), os.getgid(), os.geteuid())")
    assert ids.split() == ["65532", "65532", "65532"]


def test_a_read_only_root_file_system_is_enough(image: Image) -> None:
    code = """
import errno, os
for path in ("/opt/privatellm/written", "/home/nonroot/written", "/written"):
    try:
        open(path, "w")
    except OSError as error:
        print(path, errno.errorcode[error.errno])
with open("/tmp/written", "w") as scratch:
    print("/tmp", scratch.write("ok"))
"""
    assert python(image, code).splitlines() == [
        "/opt/privatellm/written EROFS",
        "/home/nonroot/written EROFS",
        "/written EROFS",
        "/tmp 2",
    ]


def test_no_shell_no_compiler_no_package_manager(image: Image) -> None:
    tools = ["sh", "bash", "dash", "gcc", "cc", "rustc", "cargo", "pip", "apt-get", "dpkg"]
    code = f"import shutil; print([t for t in {tools!r} if shutil.which(t)])"
    assert python(image, code).strip() == "[]"


def test_the_gateway_answers_its_health_check(image: Image, tmp_path: Path) -> None:
    config = tmp_path / "gateway.yaml"
    config.write_text(yaml.safe_dump({"namespace": "team-a"}))
    port = free_port()
    args = [*image.entrypoint, "gateway", "--config", "/etc/privatellm/gateway.yaml"]
    args += ["--host", "127.0.0.1", "--port", str(port)]
    mount = Mount(config, "/etc/privatellm/gateway.yaml")
    with image.start(args, tmp_path / "gateway.log", mounts=[mount]) as gateway:
        url = f"http://127.0.0.1:{port}"
        health = _wait_for_health(f"{url}/healthz", gateway)
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"{url}/v1/models", timeout=5)
        status = gateway.stop()
    assert health == {"status": "ok"}
    assert refused.value.code == 401
    assert status == 0, gateway.output()


def _wait_for_health(url: str, gateway: Container) -> Any:
    """The health check's JSON once the gateway answers; fails when it exits or takes > 60 s."""
    deadline = time.monotonic() + 60
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                return json.loads(response.read())
        except (urllib.error.URLError, ConnectionError):
            pass
        assert gateway.process.poll() is None, f"the gateway exited:\n{gateway.output()}"
        assert time.monotonic() < deadline, f"no answer from {url}:\n{gateway.output()}"
        time.sleep(0.2)
