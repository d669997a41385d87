"""The demo's last step: real requests through the gateway the operator configured.

On the simulated cluster the model Pods run nothing, so the demo runs the namespace's
gateway here, as `privatellm gateway`, from the Secret the operator rendered for it
(its configuration, its filters' hash key and its audit signing key), with one change:
the models' replicas are a local model server. That server is the real vLLM CPU build
when .bench/vllm exists (`make test-vllm` prepares it), and otherwise a stand-in that
says what it is; either way it records what reached it, so the demo can show the
prompt as the model received it. Then it prints the answer, the refusal of a request
the policy forbids, and the audit records of both, read only after the log verified.
"""

from __future__ import annotations

import asyncio
import base64
import json
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from aiohttp import ClientSession, web

from privatellm.audit import Signer
from privatellm.audit.query import AuditQuery, query_log
from privatellm.controllers.usage import store_usage
from privatellm.cost.usage import answer_months, parse_answer, usage_configmap
from privatellm.gateway.usage import USAGE_FILE
from privatellm.kube.client import KINDS, Kube
from privatellm.render.gateway import AUDIT_KEY_KEY, CONFIG_KEY, CONFIG_SECRET, HASH_KEY_KEY

from .cluster import free_port
from .vllm import SERVED_NAME, VLLMInstall, vllm_environment

# The API key examples/gateway-secrets.yaml stores the digest of.
DEMO_API_KEY = "pllm-demo-helpdesk-key-do-not-use-in-production-000"
DEMO_MODEL = "llama-8b"
ALLOWED_PROMPT = (
    "Summarise this ticket: jane.doe@example.com asks us to send her refund to IBAN"
    " DE89 3704 0044 0532 0130 00 instead of her card."
)
FORBIDDEN_PROMPT = "Charge my card 4111 1111 1111 1111 for the renewal."
STAND_IN_ANSWER = (
    "[stand-in model: no language model runs here; install one with `make test-vllm`]"
    " The customer asks for her refund to go to a bank account instead of her card."
)


class ModelServer:
    """An OpenAI-compatible server on loopback that records each chat request; it
    answers itself, or passes the request on to vLLM at `upstream`."""

    def __init__(self, upstream: str | None = None) -> None:
        self.upstream = upstream
        self.received: list[dict[str, Any]] = []
        self.url = ""
        self._loop = asyncio.new_event_loop()
        self._runner: web.AppRunner | None = None

    async def _chat(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.received.append(body)
        if self.upstream is None:
            message = {"role": "assistant", "content": STAND_IN_ANSWER}
            words = sum(len(str(m.get("content", "")).split()) for m in body["messages"])
            usage = {"prompt_tokens": words, "completion_tokens": 20, "total_tokens": words + 20}
            answer = {
                "id": "chatcmpl-stand-in",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": body.get("model", ""),
                "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
                "usage": usage,
            }
            return web.json_response(answer)
        # The tiny model answers to its own name, whatever the gateway calls it.
        forwarded = {**body, "model": SERVED_NAME, "max_tokens": 40}
        async with (
            ClientSession() as session,
            session.post(f"{self.upstream}/v1/chat/completions", json=forwarded) as response,
        ):
            return web.json_response(await response.json(), status=response.status)

    def start(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat)
        self._runner = web.AppRunner(app, access_log=None)
        port = free_port()
        self._loop.run_until_complete(self._runner.setup())
        site = web.TCPSite(self._runner, "127.0.0.1", port)
        self._loop.run_until_complete(site.start())
        self.url = f"http://127.0.0.1:{port}"
        threading.Thread(target=self._loop.run_forever, daemon=True).start()

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)


def local_gateway_config(rendered: dict[str, Any], model_url: str) -> dict[str, Any]:
    """The rendered configuration with the local model server as every model's replica;
    what only works inside the cluster (EndpointSlices, peers, mutual TLS to the Pods,
    reviews of ServiceAccount tokens) is left out: the demo's caller has an API key."""
    config = {
        key: value
        for key, value in rendered.items()
        if key not in ("discovery", "quotaSharing", "upstreamTls")
    }
    auth = rendered.get("auth") or {}
    config["auth"] = {key: value for key, value in auth.items() if key != "tokenReview"}
    config["models"] = [
        {**{k: v for k, v in model.items() if k != "service"}, "endpoints": [model_url]}
        for model in rendered["models"]
    ]
    return config


def _wait_for(url: str, process: subprocess.Popen[bytes], what: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with {process.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except urllib.error.HTTPError:
            return
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"{what} did not answer {url} within {timeout:.0f} s")


@contextmanager
def _process(
    command: list[str], log: Path, env: dict[str, str] | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        yield process
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _chat(gateway: str, prompt: str) -> tuple[int, dict[str, Any]]:
    body = {"model": DEMO_MODEL, "messages": [{"role": "user", "content": prompt}]}
    request = urllib.request.Request(
        f"{gateway}/v1/chat/completions",
        data=json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {DEMO_API_KEY}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")


def run_demo(kube: Kube, namespace: str, workdir: Path, vllm: VLLMInstall | None) -> int:
    """Serve two requests through the namespace's gateway and print what happened."""
    secret = kube.get(KINDS["Secret"], namespace, CONFIG_SECRET)
    if secret is None:
        print(f"no {CONFIG_SECRET} in {namespace}: is the operator running?", file=sys.stderr)
        return 1
    data = {k: base64.b64decode(v) for k, v in (secret.get("data") or {}).items()}
    workdir.mkdir(parents=True, exist_ok=True)
    for key in (HASH_KEY_KEY, AUDIT_KEY_KEY):
        (workdir / key).write_bytes(data[key])
        (workdir / key).chmod(0o600)
    audit_dir = workdir / f"audit-{int(time.time())}"
    with _model_server(vllm, workdir) as model:
        config = local_gateway_config(json.loads(data[CONFIG_KEY]), model.url)
        (workdir / "gateway.json").write_text(json.dumps(config, indent=1))
        port = free_port()
        command = [sys.executable, "-m", "privatellm.cli.main", "gateway"]
        command += ["--config", str(workdir / "gateway.json"), "--host", "127.0.0.1"]
        command += ["--port", str(port), "--hash-key-file", str(workdir / HASH_KEY_KEY)]
        command += ["--audit-dir", str(audit_dir)]
        command += ["--audit-signing-key", str(workdir / AUDIT_KEY_KEY)]
        gateway = f"http://127.0.0.1:{port}"
        with _process(command, workdir / "gateway.log") as process:
            _wait_for(f"{gateway}/healthz", process, "the gateway", 60)
            print(f"The gateway of {namespace}, from the operator's Secret {CONFIG_SECRET},")
            print(f"in front of {'vLLM (CPU build)' if model.upstream else 'a stand-in model'}.")
            print(f"\n1. A support agent's request to {DEMO_MODEL}:\n   {ALLOWED_PROMPT}")
            status, answer = _chat(gateway, ALLOWED_PROMPT)
            received = model.received[-1]["messages"][-1]["content"] if model.received else None
            print(f"   What the model received:\n   {received}")
            content = answer.get("choices", [{}])[0].get("message", {}).get("content")
            print(f"   HTTP {status}, the answer:\n   {content}")
            if model.upstream:
                print("   (the tiny model's weights are random: its words mean nothing)")
            print(f"\n2. A request the policy forbids:\n   {FORBIDDEN_PROMPT}")
            before = len(model.received)
            status, answer = _chat(gateway, FORBIDDEN_PROMPT)
            error = answer.get("error") or {}
            print(f"   HTTP {status}: {error.get('code')}: {error.get('message')}")
            print(f"   Requests that reached the model: {len(model.received) - before}")
    _store_usage(kube, namespace, audit_dir / USAGE_FILE)
    public_key = Signer.from_file(workdir / AUDIT_KEY_KEY).public_key
    records = query_log(audit_dir, public_key, AuditQuery()).records
    print(f"\n3. The gateway's audit records ({audit_dir}, chain and signatures verified):")
    for record in records:
        if record.get("kind") == "control":
            continue
        print(
            "   "
            + json.dumps(
                {k: record.get(k) for k in ("subject", "model", "decision", "reason", "status")}
            )
        )
    return 0


def _store_usage(kube: Kube, namespace: str, tally: Path) -> None:
    """Put the gateway's usage tally where the operator would: the operator reads it from
    the gateways in the cluster, and cannot reach this one on the loopback device."""
    if not tally.exists():
        return
    answer = parse_answer(json.loads(tally.read_bytes()))
    store_usage(kube, namespace, [answer])
    months = ", ".join(usage_configmap(month) for month in answer_months([answer]))
    print(f"\nThe gateway's usage tally ({tally}) is in the usage ledger: {months}")


@contextmanager
def _model_server(vllm: VLLMInstall | None, workdir: Path) -> Iterator[ModelServer]:
    if vllm is None or not vllm.ready():
        server = ModelServer()
        server.start()
        try:
            yield server
        finally:
            server.stop()
        return
    port = free_port()
    print("Starting vLLM (CPU build, tiny model); this takes a minute or two ...")
    with _process(vllm.command(port), workdir / "vllm.log", vllm_environment()) as process:
        _wait_for(f"http://127.0.0.1:{port}/health", process, "vLLM", 900)
        server = ModelServer(f"http://127.0.0.1:{port}")
        server.start()
        try:
            yield server
        finally:
            server.stop()
