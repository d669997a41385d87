"""The golden-prompt readiness check: the model must answer one token within a bound.

vLLM's /health says the engine runs; it does not say the model answers in time. The
check below asks for one token of a fixed prompt and fails when the answer is
missing, wrong in shape, or later than `spec.health.maxFirstTokenLatencyMs`. It runs
as an exec probe inside the vLLM container, which has Python, so no further image
is needed and it presents the Pod's own certificate under mutual TLS. Arguments:
URL, model name, prompt, bound in ms, client certificate, client key ("" for none).

Startup and liveness stay on vLLM's /health (`server_probes`).
"""

from __future__ import annotations

import math

from privatellm.api import InferenceDeploymentSpec

from .engine import SERVING_PORT, TLS_CERT_FILE, TLS_DIR, TLS_KEY_FILE
from .workload import Manifest

PROBE_PERIOD_SECONDS = 10
PROBE_TIMEOUT_SECONDS = 5
READINESS_FAILURE_THRESHOLD = 3
# A busy engine may answer /health late; restarting it drops every request in flight and
# reloads the weights, so liveness tolerates a minute of silence.
LIVENESS_FAILURE_THRESHOLD = 6
# The kubelet cannot present a client certificate, so with mutual TLS an httpGet probe
# never passes the handshake: the check runs in the container and presents the Pod's own
# certificate (which must therefore allow client authentication too). It talks to its own
# process over loopback, so it does not verify the server.
_MUTUAL_TLS_HEALTH_CHECK = f"""\
import ssl, urllib.request
context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
context.check_hostname = False
context.verify_mode = ssl.CERT_NONE
context.load_cert_chain("{TLS_DIR}/{TLS_CERT_FILE}", "{TLS_DIR}/{TLS_KEY_FILE}")
urllib.request.urlopen(
    "https://127.0.0.1:{SERVING_PORT}/health", context=context, timeout={PROBE_TIMEOUT_SECONDS - 1}
)
"""

GOLDEN_PROMPT_CHECK = """\
import json, ssl, sys, time, urllib.request
url, model, prompt, bound_ms, cert, key = sys.argv[1:7]
context = None
if url.startswith("https:"):
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    if cert:
        context.load_cert_chain(cert, key)
body = json.dumps({"model": model, "prompt": prompt, "max_tokens": 1, "temperature": 0})
request = urllib.request.Request(
    url + "/v1/completions", body.encode(), {"Content-Type": "application/json"}
)
started = time.monotonic()
try:
    with urllib.request.urlopen(request, timeout=float(bound_ms) / 1000 + 1, context=context) as r:
        answer = json.load(r)
except Exception as error:
    sys.exit(f"golden prompt failed: {error}")
elapsed_ms = (time.monotonic() - started) * 1000
if not isinstance(answer, dict) or not answer.get("choices"):
    sys.exit("golden prompt: the answer has no choices")
if elapsed_ms > float(bound_ms):
    sys.exit(f"golden prompt took {elapsed_ms:.0f} ms, bound {bound_ms} ms")
"""


def golden_prompt_command(
    url: str, model: str, prompt: str, bound_ms: int, cert: str = "", key: str = ""
) -> list[str]:
    """The exec probe command that runs the check."""
    return ["python3", "-c", GOLDEN_PROMPT_CHECK, url, model, prompt, str(bound_ms), cert, key]


def _health_check(spec: InferenceDeploymentSpec) -> Manifest:
    if spec.encryption.tls == "mutual":
        return {"exec": {"command": ["python3", "-c", _MUTUAL_TLS_HEALTH_CHECK]}}
    return {"httpGet": {"path": "/health", "port": "https", "scheme": "HTTPS"}}


def _golden_prompt_check(spec: InferenceDeploymentSpec) -> Manifest:
    cert, key = "", ""
    if spec.encryption.tls == "mutual":
        cert, key = f"{TLS_DIR}/{TLS_CERT_FILE}", f"{TLS_DIR}/{TLS_KEY_FILE}"
    command = golden_prompt_command(
        f"https://127.0.0.1:{SERVING_PORT}",
        spec.model.name,
        spec.health.probe_prompt,
        spec.health.max_first_token_latency_ms,
        cert,
        key,
    )
    return {"exec": {"command": command}}


def server_probes(spec: InferenceDeploymentSpec) -> Manifest:
    """Startup, readiness and liveness probes of the vLLM container.

    Startup and liveness ask vLLM's /health: the engine runs. Startup allows
    health.startupBudgetSeconds for loading the weights. Readiness asks the model itself
    (render/probe.py): one token of health.probePrompt within maxFirstTokenLatencyMs, every
    health.intervalSeconds; a replica that answers too slowly leaves the Service without
    being restarted.
    """
    health = spec.health
    startup_threshold = math.ceil(health.startup_budget_seconds / PROBE_PERIOD_SECONDS)

    def engine_alive(failure_threshold: int) -> Manifest:
        return {
            **_health_check(spec),
            "periodSeconds": PROBE_PERIOD_SECONDS,
            "timeoutSeconds": PROBE_TIMEOUT_SECONDS,
            "failureThreshold": failure_threshold,
        }

    return {
        "startupProbe": engine_alive(startup_threshold),
        "readinessProbe": {
            **_golden_prompt_check(spec),
            "periodSeconds": health.interval_seconds,
            # the check itself gives up a second after the bound
            "timeoutSeconds": math.ceil(health.max_first_token_latency_ms / 1000) + 2,
            "failureThreshold": READINESS_FAILURE_THRESHOLD,
        },
        "livenessProbe": engine_alive(LIVENESS_FAILURE_THRESHOLD),
    }
