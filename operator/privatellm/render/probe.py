"""The golden-prompt readiness check: the model must answer one token within a bound.

vLLM's /health says the engine runs; it does not say the model answers in time. The
check below asks for one token of a fixed prompt and fails when the answer is
missing, wrong in shape, or later than `spec.health.maxFirstTokenLatencyMs`. It runs
as an exec probe inside the vLLM container, which has Python, so no further image
is needed and it presents the Pod's own certificate under mutual TLS. Arguments:
URL, model name, prompt, bound in ms, client certificate, client key ("" for none).
"""

from __future__ import annotations

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
