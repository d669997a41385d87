"""The golden-prompt readiness check, run as the probe runs it, against a local server."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from privatellm.render.probe import golden_prompt_command


class Upstream(ThreadingHTTPServer):
    """Answers /v1/completions like vLLM, after `delay` seconds, with `status` and `answer`."""

    delay = 0.0
    status = 200
    answer: object = {"choices": [{"text": "OK", "index": 0}]}
    requests: list[dict[str, object]]


class Handler(BaseHTTPRequestHandler):
    server: Upstream

    def do_POST(self) -> None:
        length = int(self.headers["Content-Length"])
        self.server.requests.append({"path": self.path, **json.loads(self.rfile.read(length))})
        time.sleep(self.server.delay)
        body = json.dumps(self.server.answer).encode()
        self.send_response(self.server.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_: object) -> None:
        pass


@pytest.fixture
def upstream() -> Iterator[Upstream]:
    server = Upstream(("127.0.0.1", 0), Handler)
    server.requests = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def check(server: Upstream, bound_ms: int) -> subprocess.CompletedProcess[str]:
    url = f"http://127.0.0.1:{server.server_address[1]}"
    command = golden_prompt_command(url, "llama", "Reply with OK.", bound_ms)
    return subprocess.run(
        [sys.executable, *command[1:]], capture_output=True, text=True, timeout=30, check=False
    )


def test_a_prompt_answered_in_time_passes(upstream: Upstream) -> None:
    result = check(upstream, bound_ms=5000)
    assert result.returncode == 0, result.stderr
    assert upstream.requests == [
        {
            "path": "/v1/completions",
            "model": "llama",
            "prompt": "Reply with OK.",
            "max_tokens": 1,
            "temperature": 0,
        }
    ]


def test_a_slow_answer_fails_and_says_how_slow(upstream: Upstream) -> None:
    upstream.delay = 0.3
    result = check(upstream, bound_ms=100)
    assert result.returncode == 1
    assert "bound 100 ms" in result.stderr


def test_an_error_status_fails(upstream: Upstream) -> None:
    upstream.status = 503
    result = check(upstream, bound_ms=5000)
    assert result.returncode == 1
    assert "golden prompt failed: HTTP Error 503" in result.stderr


def test_an_answer_without_choices_fails(upstream: Upstream) -> None:
    upstream.answer = {"object": "error"}
    result = check(upstream, bound_ms=5000)
    assert result.returncode == 1
    assert "no choices" in result.stderr


def test_an_unreachable_server_fails() -> None:
    command = golden_prompt_command("http://127.0.0.1:9", "llama", "hi", 500)
    result = subprocess.run(
        [sys.executable, *command[1:]], capture_output=True, text=True, timeout=30, check=False
    )
    assert result.returncode == 1
    assert "golden prompt failed" in result.stderr
