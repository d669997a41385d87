"""A blocking client for a gateway process under test."""

from __future__ import annotations

import json
import time
import urllib.request

from tests.gateway.conftest import ALICE_KEY


def chat(url: str) -> int:
    """One chat completion as alice; the HTTP status."""
    body = json.dumps({"model": "llama", "messages": [{"role": "user", "content": "hi"}]})
    request = urllib.request.Request(
        url + "/v1/chat/completions",
        data=body.encode(),
        headers={"Authorization": f"Bearer {ALICE_KEY}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        status: int = response.status
        return status


def first_answer(url: str, timeout: float = 30.0) -> int:
    """Chat until the gateway answers (it may still be starting); that first status."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return chat(url)
        except OSError:
            assert time.monotonic() < deadline, "the gateway did not start"
            time.sleep(0.2)
