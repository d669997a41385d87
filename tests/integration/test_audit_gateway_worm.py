"""A gateway process whose audit log reaches WORM storage, and `audit verify` against it."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from privatellm.cli.main import main
from privatellm.devcluster import DevS3
from privatellm.devcluster.cluster import Toolchain, default_cache, free_port
from tests.gateway.conftest import base_config
from tests.support.fake_openai import FakeOpenAI
from tests.support.gateway_client import chat, first_answer

BUCKET = "gateway-audit"


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevS3]:
    server = DevS3(tmp_path_factory.mktemp("s3"), Toolchain(default_cache()))
    server.start()
    try:
        server.client().create_bucket(BUCKET)
        yield server
    finally:
        server.stop()
        shutil.rmtree(server.workdir, ignore_errors=True)


def _serve(tmp_path: Path, s3: DevS3, signing_key: Path, requests: int) -> None:
    """Run a 2-worker gateway, send `requests` requests, stop it with SIGTERM."""
    with FakeOpenAI(model="fake-model") as model:
        config = tmp_path / "gateway.yaml"
        config.write_text(yaml.safe_dump(base_config({"llama": [model.url]})))
        port = free_port()
        command = [sys.executable, "-m", "privatellm.cli.main", "gateway", "--workers", "2"]
        command += ["--config", str(config), "--host", "127.0.0.1", "--port", str(port)]
        command += ["--audit-dir", str(tmp_path / "audit")]
        command += ["--audit-signing-key", str(signing_key), "--audit-worm-bucket", BUCKET]
        with (tmp_path / "gateway.log").open("a") as log:
            process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **s3.env()}
            )
        try:
            url = f"http://127.0.0.1:{port}"
            # Both workers must take requests, or one has no segment to ship: a worker
            # slower to start would leave all of them to the other.
            _until_listening(tmp_path / "gateway.log", workers=2)
            first_answer(url)
            assert [chat(url) for _ in range(requests)] == [200] * requests
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=60)
    assert process.returncode == 0, (tmp_path / "gateway.log").read_text()


def _until_listening(log: Path, workers: int, seconds: float = 60) -> None:
    """Until each of the gateway's `workers` has said it listens."""
    deadline = time.monotonic() + seconds
    while log.read_text().count("gateway listening on") < workers:
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.1)


def test_a_stopping_gateway_ships_its_log_and_verify_compares_with_the_copy(
    tmp_path: Path, s3: DevS3, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    signing_key = tmp_path / "audit.pem"
    assert main(["audit", "keygen", "--out", str(signing_key)]) == 0
    _serve(tmp_path, s3, signing_key, requests=20)
    workers = sorted((tmp_path / "audit").iterdir())
    assert [w.name for w in workers] == ["worker-0", "worker-1"]

    for name, value in s3.env().items():
        monkeypatch.setenv(name, value)
    verify = ["audit", "verify", *map(str, workers), "--public-key", f"{signing_key}.pub"]
    capsys.readouterr()
    assert main([*verify, "--worm-bucket", BUCKET]) == 0, capsys.readouterr().out
    out = capsys.readouterr().out
    # Each worker sealed its open segment on SIGTERM: everything is in the WORM copy.
    assert out.count(": OK: ") == 2

    # An auditor without access to the gateways works on copies from the bucket.
    copies = tmp_path / "copies"
    assert main(["audit", "fetch", "--worm-bucket", BUCKET, "--out", str(copies)]) == 0
    fetched = sorted(copies.iterdir())
    assert len(fetched) == 2
    capsys.readouterr()
    public = ["--public-key", f"{signing_key}.pub"]
    assert main(["audit", "verify", *map(str, fetched), *public]) == 0
    assert capsys.readouterr().out.count(": OK: ") == 2
    assert main(["audit", "query", *map(str, fetched), *public, "--format", "json"]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    requests = [r for r in records if r["kind"] == "request"]
    assert len(requests) == 21  # the first request that found the gateway up, then 20

    # Someone removes the newest sealed segment of one worker, checkpoint and all, and
    # the open segment after it: the log alone still looks whole, its WORM copy shows
    # what is missing.
    newest = sorted(workers[0].glob("*.ckpt"))[-1]
    for suffix in (".log", ".idx", ".ckpt"):
        newest.with_suffix(suffix).unlink()
    for active in workers[0].glob("*.log"):
        if not active.with_suffix(".ckpt").exists():
            active.unlink()
    alone = ["audit", "verify", str(workers[0]), "--public-key", f"{signing_key}.pub"]
    assert main(alone) == 0
    capsys.readouterr()
    assert main([*verify, "--worm-bucket", BUCKET]) == 1
    out = capsys.readouterr().out
    assert f"{newest.name}: the published head checkpoint is missing here" in out
