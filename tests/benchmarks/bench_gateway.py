"""Gateway overhead: direct upstream, our gateway and LiteLLM's proxy, side by side with wrk.

Starts the fake OpenAI upstream, then `privatellm gateway` (API key, an AccessPolicy,
PII filters in and out, metering and a durable audit record per request) and
LiteLLM's proxy (one worker, a master key, its local regex content filter for PII)
in front of it, and drives all three paths with wrk at each concurrency in turn:
non-streaming chat completions with a 4 KiB prompt carrying an email address and a
phone number. Reports requests/s, p50 and p99, the latency each proxy adds over the
direct path, and the throughput ratios, next to the product's targets. A path that
cannot start is reported as such and the others still run; a run with errors is
reported as failed, never as a fast run.

Run by `make bench` after `scripts/bench-tools.sh` (wrk) and `scripts/bench-venv.sh
litellm` (LiteLLM in .bench/litellm).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import hashlib
import json
import os
import platform
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any, TextIO

import orjson
import yaml

from privatellm.audit import Signer, verify_log
from privatellm.audit.segment import SegmentReader
from privatellm.devcluster.cluster import free_port
from privatellm.gateway.config import GatewayConfig

from .report import write_section

AUDIT_SIGNER = Signer.generate()

SECTION = "gateway"
ROOT = Path(__file__).resolve().parents[2]
LITELLM_VENV = ROOT / ".bench/litellm"
MODEL = "bench-model"
PROMPT_BYTES = 4096
PROMPT_EMAIL = "priya.natarajan@example.com"
PROMPT_PHONE = "(415) 555-0134"
REPLY_EMAIL = "jordan.lee@example.org"
REPLY = (
    f"Thanks for the summary. I have forwarded it to {REPLY_EMAIL} and will confirm "
    "the renewal terms with the finance team by Thursday."
)
CONCURRENCIES = (1, 16, 64)
START_SECONDS = 120.0
RESULT_MARKER = "WRK_RESULT "
# The product's targets: latency added at concurrency 1, throughput at its best.
TARGET_ADDED_P50_MS = 1.0
TARGET_ADDED_P99_MS = 3.0
TARGET_VS_LITELLM = 20.0
TARGET_VS_DIRECT = 0.25

PARAGRAPHS = (
    f"Hi team, following up on yesterday's call about the Northwind contract renewal. "
    f"Priya asked that all questions about the pricing schedule go to her directly at "
    f"{PROMPT_EMAIL}, or by phone on {PROMPT_PHONE} between nine and five Pacific time. "
    "She will be travelling next week, so please send anything urgent before Friday.",
    "The current agreement covers three regional warehouses and the shared logistics "
    "platform. The customer wants to add the new distribution centre in Sacramento from "
    "the first of March, which means the volume tier changes and the discount we agreed "
    "last year no longer applies as written. Legal has reviewed the draft amendment and "
    "raised two points: the liability cap should scale with the new annual value, and the "
    "termination clause needs a ninety-day notice period instead of sixty.",
    "Operations reported that on-time delivery for the last quarter was ninety-six percent, "
    "slightly below the ninety-seven percent service level in the contract. The shortfall "
    "came from two weeks in November when the carrier changed its routing software. We "
    "should acknowledge this openly in the renewal meeting and present the corrective "
    "actions already in place, including the weekly exception report and the second "
    "carrier we onboarded in December.",
    "Finance would like the renewal to move from quarterly to monthly invoicing, which the "
    "customer's procurement team has asked for twice. This has no effect on revenue "
    "recognition but does require a change to the billing configuration and an update to "
    "the purchase order references. Please check whether the customer portal can show "
    "monthly statements before we commit to a date.",
    "For the meeting itself, I suggest we open with the service review, then walk through "
    "the expansion and the revised pricing, and leave the legal points to the end so that "
    "counsel on both sides can take them offline if needed. Could each of you send me your "
    "slides by Wednesday evening so I can put the deck together and circulate it for "
    "comments on Thursday morning?",
    "Finally, a reminder that the customer's security questionnaire is due at the end of "
    "the month. Most answers carry over from last year, but the sections on data retention "
    "and subprocessors have changed and need input from the platform team. Thanks again "
    "for all the work on this account; it remains one of our most important relationships.",
)


def make_prompt(size: int = PROMPT_BYTES) -> str:
    """English business text of exactly `size` bytes, with an email and a phone number."""
    text = ""
    index = 0
    while len(text.encode()) < size:
        text += ("\n\n" if text else "") + PARAGRAPHS[index % len(PARAGRAPHS)]
        index += 1
    cut = text.encode()[:size].decode(errors="ignore")
    cut = cut[: cut.rfind(" ")]
    return cut + " " * (size - len(cut.encode()))


def chat_request(prompt: str) -> bytes:
    """The body every run posts: one user message, no streaming."""
    return json.dumps(
        {"model": MODEL, "messages": [{"role": "user", "content": prompt}], "max_tokens": 64}
    ).encode()


def lua_string(value: str) -> str:
    """A Lua string literal for a printable ASCII value."""
    if not value.isascii() or not value.isprintable():
        raise ValueError(f"not printable ASCII: {value!r}")
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def wrk_script(body_path: Path, api_key: str) -> str:
    """The wrk script: POST the body with the key; count non-2xx; print p50/p99 as JSON."""
    return f"""\
local file = assert(io.open({lua_string(str(body_path))}, "rb"))
wrk.method = "POST"
wrk.body = file:read("*a")
file:close()
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = {lua_string("Bearer " + api_key)}

local threads = {{}}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  non2xx = 0
end

function response(status, headers, body)
  if status < 200 or status > 299 then
    non2xx = non2xx + 1
  end
end

function done(summary, latency, requests)
  local bad = 0
  for _, thread in ipairs(threads) do
    bad = bad + thread:get("non2xx")
  end
  local e = summary.errors
  io.write(string.format(
    '{RESULT_MARKER}{{"requests":%d,"duration_us":%d,"non2xx":%d,"socket_errors":%d,'
    .. '"p50_us":%d,"p99_us":%d}}\\n',
    summary.requests, summary.duration, bad, e.connect + e.read + e.write + e.timeout,
    latency:percentile(50), latency:percentile(99)))
end
"""


@dataclass(frozen=True)
class WrkResult:
    """What one wrk run measured."""

    requests: int
    seconds: float
    non2xx: int
    socket_errors: int
    p50_ms: float
    p99_ms: float

    @property
    def rate(self) -> float:
        """Requests per second."""
        return self.requests / self.seconds if self.seconds > 0 else 0.0

    @property
    def failed(self) -> bool:
        """Whether any request failed: such a run says nothing about speed."""
        return self.non2xx > 0 or self.socket_errors > 0 or self.requests == 0


def parse_wrk(output: str) -> WrkResult:
    """The result line the script's `done` callback printed."""
    line = next((x for x in output.splitlines() if x.startswith(RESULT_MARKER)), None)
    if line is None:
        raise RuntimeError(f"wrk printed no result:\n{output[-2000:]}")
    data = json.loads(line.removeprefix(RESULT_MARKER))
    return WrkResult(
        requests=data["requests"],
        seconds=data["duration_us"] / 1e6,
        non2xx=data["non2xx"],
        socket_errors=data["socket_errors"],
        p50_ms=data["p50_us"] / 1000,
        p99_ms=data["p99_us"] / 1000,
    )


class Server:
    """A server process in its own process group, stopped with everything it started."""

    def __init__(self, name: str, command: list[str], log_path: Path, env: dict[str, str]):
        self.name = name
        self.command = command
        self.log_path = log_path
        self.env = env
        self.process: subprocess.Popen[str] | None = None

    def start(self, stdout: int | TextIO | None = None) -> subprocess.Popen[str]:
        """Start the process; its output goes to the log unless `stdout` is given."""
        with self.log_path.open("w") as log:
            self.process = subprocess.Popen(
                self.command,
                cwd=ROOT,
                env=self.env,
                stdout=stdout if stdout is not None else log,
                stderr=log,
                stdin=subprocess.DEVNULL,
                text=True,
                start_new_session=True,  # its workers share the group: one signal stops all
            )
        return self.process

    @property
    def running(self) -> bool:
        """Whether the process was started and has not exited."""
        return self.process is not None and self.process.poll() is None

    def stop(self) -> None:
        """Terminate the process group; kill it if it does not exit in time."""
        process = self.process
        if process is None:
            return
        for signum, wait in ((signal.SIGTERM, 15.0), (signal.SIGKILL, 5.0)):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signum)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=wait)
                break
        if process.stdout is not None:
            process.stdout.close()
        self.process = None

    def log_tail(self, lines: int = 15) -> str:
        """The end of the server's log, for a report that says why it failed."""
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.strip().splitlines()[-lines:])


class StartError(Exception):
    """A path's server did not come up ready to serve."""


def post(url: str, body: bytes, api_key: str, timeout: float = 30.0) -> tuple[int, bytes]:
    """POST JSON; return the status and body, whatever the status."""
    request = urllib.request.Request(
        url,
        data=body,
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {api_key}"},
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def wait_until_serving(server: Server, base_url: str, body: bytes, api_key: str) -> str:
    """Poll with a real request until it succeeds; return the reply text.

    Connection refusals and 503 mean "not yet"; any other answer is final.
    """
    deadline = time.monotonic() + START_SECONDS
    process = server.process
    assert process is not None
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise StartError(f"exited with code {process.returncode}:\n{server.log_tail()}")
        try:
            status, answer = post(f"{base_url}/v1/chat/completions", body, api_key)
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(0.25)
            continue
        if status == 200:
            content: str = json.loads(answer)["choices"][0]["message"]["content"]
            return content
        if status != 503:
            raise StartError(f"answered {status}: {answer[:500].decode(errors='replace')}")
        time.sleep(0.25)
    raise StartError(f"not serving after {START_SECONDS:.0f} s:\n{server.log_tail()}")


@dataclass
class BenchPath:
    """One way to reach the upstream, and what became of it."""

    key: str
    label: str
    url: str = ""
    api_key: str = ""
    problem: str = ""
    reply: str = ""
    server: Server | None = None
    completed: int = 0  # requests answered, warm-ups and the start check included
    audit_dir: Path | None = None
    audit_events: int | None = None
    audit_verified: bool | None = None

    @property
    def runnable(self) -> bool:
        """Whether it started and may be measured."""
        return bool(self.url) and not self.problem


def start_upstream(stack: contextlib.ExitStack, workdir: Path) -> str:
    """Start the fake upstream as its own process; return its URL."""
    command = [sys.executable, "-m", "tests.support.fake_openai", "--port", "0"]
    command += ["--model", MODEL, "--reply", REPLY]
    server = Server("upstream", command, workdir / "upstream.log", dict(os.environ))
    stack.callback(server.stop)
    process = server.start(stdout=subprocess.PIPE)
    assert process.stdout is not None
    url = process.stdout.readline().strip()
    if not url.startswith("http"):
        raise RuntimeError(f"the fake upstream did not start:\n{server.log_tail()}")
    return url


def gateway_config(upstream_url: str, api_key: str) -> dict[str, Any]:
    """The gateway's configuration: one model, one API key, PII filters both ways."""
    return {
        "namespace": "bench",
        "models": [{"name": MODEL, "servedName": MODEL, "endpoints": [upstream_url]}],
        "policies": [
            {
                "name": "bench",
                "spec": {
                    "subjects": [{"kind": "APIKey", "name": "bench", "secretName": "bench-key"}],
                    "models": ["*"],
                    "dataClasses": [
                        {"name": "public", "action": "allow"},
                        {"name": "pii", "action": "redact"},
                    ],
                    "inbound": {
                        "pii": [
                            {"entity": "email", "action": "redact"},
                            {"entity": "phone", "action": "mask"},
                        ],
                        # LiteLLM has no injection heuristics to compare with.
                        "injection": "off",
                    },
                    "outbound": {"pii": [{"entity": "email", "action": "redact"}]},
                },
            }
        ],
        "auth": {"apiKeys": {hashlib.sha256(api_key.encode()).hexdigest(): "bench"}},
    }


def litellm_config(upstream_url: str, master_key: str) -> dict[str, Any]:
    """LiteLLM's configuration: the upstream as an openai/ model, a master key, no database.

    PII goes through LiteLLM's local regex content filter (its Presidio guardrail
    needs Presidio's HTTP services): email and phone masked in, email masked out.
    """

    def pattern(name: str) -> dict[str, str]:
        return {"pattern_type": "prebuilt", "pattern_name": name, "action": "MASK"}

    def guardrail(name: str, mode: str, patterns: list[str]) -> dict[str, Any]:
        params = {
            "guardrail": "litellm_content_filter",
            "mode": mode,
            "default_on": True,
            "patterns": [pattern(p) for p in patterns],
        }
        return {"guardrail_name": name, "litellm_params": params}

    return {
        "model_list": [
            {
                "model_name": MODEL,
                "litellm_params": {
                    "model": f"openai/{MODEL}",
                    "api_base": f"{upstream_url}/v1",
                    "api_key": "unused",
                },
            }
        ],
        "general_settings": {"master_key": master_key},
        "guardrails": [
            guardrail("pii-inbound", "pre_call", ["email", "us_phone"]),
            guardrail("pii-outbound", "post_call", ["email"]),
        ],
    }


def start_gateway(
    stack: contextlib.ExitStack,
    workdir: Path,
    upstream_url: str,
    body: bytes,
    workers: int,
    durable: bool = True,
) -> BenchPath:
    """Path (b): `privatellm gateway` in front of the upstream, with its durable audit log.

    Not `durable`, path (b'): the same gateway writing its audit events to a JSON-lines
    file without fsync, to show what durability costs.
    """
    key, label = (
        ("b", "(b) privatellm gateway")
        if durable
        else (
            "b'",
            "(b') the same, audit to a file without fsync",
        )
    )
    path = BenchPath(key, label, api_key="pllm-" + secrets.token_hex(16))
    name = "gateway" if durable else "gateway-file-audit"
    try:
        config = gateway_config(upstream_url, path.api_key)
        GatewayConfig.model_validate(config)
        config_path = workdir / f"{name}.yaml"
        config_path.write_text(yaml.safe_dump(config))
        executable = Path(sys.executable).with_name("privatellm")
        port = free_port()
        command = [str(executable), "gateway", "--config", str(config_path)]
        command += ["--host", "127.0.0.1", "--port", str(port), "--workers", str(workers)]
        if durable:
            # The production audit path: a durable, chained log per worker; each answer
            # waits until its record is on disk.
            path.audit_dir = workdir / "audit"
            signing_key = workdir / "audit.pem"
            signing_key.write_bytes(AUDIT_SIGNER.private_pem())
            command += ["--audit-dir", str(path.audit_dir)]
            command += ["--audit-signing-key", str(signing_key)]
        else:
            command += ["--audit-log", str(workdir / "audit.jsonl")]
        server = Server(name, command, workdir / f"{name}.log", dict(os.environ))
        stack.callback(server.stop)
        path.server = server
        server.start()
        path.url = f"http://127.0.0.1:{port}"
        path.reply = wait_until_serving(server, path.url, body, path.api_key)
        path.completed = 1
    except (StartError, OSError, ValueError) as error:
        path.problem = f"did not start: {error}"
    return path


def start_litellm(
    stack: contextlib.ExitStack, workdir: Path, upstream_url: str, body: bytes, workers: int
) -> BenchPath:
    """Path (c): LiteLLM's proxy, with as many workers as the gateway, in front of the upstream."""
    path = BenchPath("c", "(c) LiteLLM proxy", api_key="sk-" + secrets.token_hex(16))
    executable = LITELLM_VENV / "bin/litellm"
    if not executable.exists():
        path.problem = f"not installed: run scripts/bench-venv.sh litellm ({executable} missing)"
        return path
    config_path = workdir / "litellm.yaml"
    config_path.write_text(yaml.safe_dump(litellm_config(upstream_url, path.api_key)))
    port = free_port()
    command = [str(executable), "--config", str(config_path), "--host", "127.0.0.1"]
    command += ["--port", str(port), "--num_workers", str(workers)]
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    env["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"  # no network: use the bundled cost map
    server = Server("litellm", command, workdir / "litellm.log", env)
    stack.callback(server.stop)
    path.server = server
    try:
        server.start()
        path.url = f"http://127.0.0.1:{port}"
        path.reply = wait_until_serving(server, path.url, body, path.api_key)
    except (StartError, OSError) as error:
        path.problem = f"did not start: {error}"
    return path


def litellm_version() -> str:
    """The installed LiteLLM release, or "unknown"."""
    python = LITELLM_VENV / "bin/python"
    if not python.exists():
        return "unknown"
    code = "import importlib.metadata as m; print(m.version('litellm'))"
    result = subprocess.run([str(python), "-c", code], capture_output=True, text=True)
    return result.stdout.strip() or "unknown"


def run_wrk(script: Path, url: str, connections: int, seconds: float) -> WrkResult:
    """One wrk run against the chat endpoint."""
    threads = min(connections, 2)
    command = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds:g}s", "--timeout", "10s"]
    command += ["-s", str(script), f"{url}/v1/chat/completions"]
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=seconds + 60, check=False
    )
    return parse_wrk(result.stdout + result.stderr)


def ms(value: float) -> str:
    return f"{value:.2f}"


def ratio(numerator: float, denominator: float) -> str:
    return f"{numerator / denominator:.2f}x" if denominator > 0 else "n/a"


def verdict(met: bool | None) -> str:
    return {True: "yes", False: "**no**", None: "not measured"}[met]


Results = dict[tuple[str, int], WrkResult]


def good(results: Results, key: str, concurrency: int) -> WrkResult | None:
    """A run that completed without errors, or None."""
    result = results.get((key, concurrency))
    return result if result is not None and not result.failed else None


def best_rate(results: Results, key: str, concurrencies: Sequence[int]) -> float | None:
    """The highest error-free throughput of a path over the concurrencies."""
    rates = [r.rate for c in concurrencies if (r := good(results, key, c)) is not None]
    return max(rates) if rates else None


def durability_cost(results: Results, concurrencies: Sequence[int]) -> str:
    """What answering only after the audit record is on disk costs: (b) against (b')."""
    durable, file = good(results, "b", 1), good(results, "b'", 1)
    best, best_file = (
        best_rate(results, "b", concurrencies),
        best_rate(results, "b'", concurrencies),
    )
    if not (durable and file and best and best_file):
        return ""
    return (
        "what the durable audit costs, (b) against (b'): "
        f"{durable.p50_ms - file.p50_ms:+.2f} ms p50 and {durable.p99_ms - file.p99_ms:+.2f} ms "
        f"p99 at concurrency 1; best throughput {best / best_file:.0%} of (b')'s"
    )


def result_rows(paths: Sequence[BenchPath], results: Results, concurrencies: Sequence[int]) -> str:
    """The per-path, per-concurrency table rows."""
    rows = []
    for concurrency in concurrencies:
        direct = good(results, "a", concurrency)
        for path in paths:
            result = results.get((path.key, concurrency))
            if result is None:
                cells = [path.label, str(concurrency), "not run", "", "", "", "", ""]
            elif result.failed:
                errors = f"**FAILED**: {result.non2xx} non-2xx, {result.socket_errors} socket"
                cells = [path.label, str(concurrency), "-", "-", "-", "-", "-", errors]
            else:
                added = ["", ""]
                if path.key != "a" and direct is not None:
                    added = [ms(result.p50_ms - direct.p50_ms), ms(result.p99_ms - direct.p99_ms)]
                cells = [
                    path.label,
                    str(concurrency),
                    f"{result.rate:,.0f}",
                    ms(result.p50_ms),
                    ms(result.p99_ms),
                    *added,
                    "0",
                ]
            rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


def ratio_rows(results: Results, concurrencies: Sequence[int]) -> str:
    """Throughput of (b) against (c) and (a) at each concurrency."""
    rows = []
    for concurrency in concurrencies:
        a, b, c = (good(results, key, concurrency) for key in "abc")
        vs_c = ratio(b.rate, c.rate) if b and c else "n/a"
        vs_a = ratio(b.rate, a.rate) if b and a else "n/a"
        rows.append(f"| {concurrency} | {vs_c} | {vs_a} |")
    return "\n".join(rows)


def target_rows(results: Results, concurrencies: Sequence[int]) -> str:
    """The product's targets next to what this run measured."""
    a1, b1 = good(results, "a", 1), good(results, "b", 1)
    added_p50 = b1.p50_ms - a1.p50_ms if a1 and b1 else None
    added_p99 = b1.p99_ms - a1.p99_ms if a1 and b1 else None
    best = {key: best_rate(results, key, concurrencies) for key in "abc"}
    vs_c = best["b"] / best["c"] if best["b"] and best["c"] else None
    vs_a = best["b"] / best["a"] if best["b"] and best["a"] else None

    def row(target: str, value: float | None, shown: str, limit: float, upper: bool) -> str:
        met = None if value is None else (value <= limit if upper else value >= limit)
        return f"| {target} | {shown if value is not None else '-'} | {verdict(met)} |"

    return "\n".join(
        [
            row(
                f"(b) added p50 at concurrency 1 <= {TARGET_ADDED_P50_MS:g} ms",
                added_p50,
                f"{added_p50:.2f} ms" if added_p50 is not None else "",
                TARGET_ADDED_P50_MS,
                upper=True,
            ),
            row(
                f"(b) added p99 at concurrency 1 <= {TARGET_ADDED_P99_MS:g} ms",
                added_p99,
                f"{added_p99:.2f} ms" if added_p99 is not None else "",
                TARGET_ADDED_P99_MS,
                upper=True,
            ),
            row(
                f"best throughput (b) >= {TARGET_VS_LITELLM:g}x (c)",
                vs_c,
                f"{vs_c:.2f}x" if vs_c is not None else "",
                TARGET_VS_LITELLM,
                upper=False,
            ),
            row(
                f"best throughput (b) >= {TARGET_VS_DIRECT:.0%} of (a)",
                vs_a,
                f"{vs_a:.0%}" if vs_a is not None else "",
                TARGET_VS_DIRECT,
                upper=False,
            ),
        ]
    )


def filter_check(path: BenchPath) -> str:
    """Whether the reply's email came back masked through this path."""
    if not path.runnable or path.key == "a":
        return ""
    masked = REPLY_EMAIL not in path.reply
    return f"{path.label}: reply email {'masked' if masked else '**NOT masked**'}"


def problem_note(label: str, problem: str) -> str:
    """A list item: the problem's first line, then any log lines as an indented code block."""
    first, _, rest = problem.partition("\n")
    if not rest.strip():
        return f"- {label}: {first}"
    block = "\n".join(f"  {line}" for line in ["```", *rest.splitlines(), "```"])
    return f"- {label}: {first}\n\n{block}"


def machine() -> str:
    """Processor model, core count and OS."""
    model = platform.processor() or "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return f"{os.cpu_count()} cores ({model}), {platform.system()} {platform.release()}"


COMPARABILITY = """\
What was comparable, and what was not:

- **Process and transport**: both proxies run the same number of worker
  processes (`privatellm gateway --workers N`: N aiohttp event loops on uvloop
  sharing the port; LiteLLM: uvicorn with `--num_workers N`) and reach the same
  upstream over loopback HTTP with pooled connections. wrk keeps its connections
  alive on every path.
- **Authentication**: comparable. Our gateway checks an API key's SHA-256 digest
  and maps it to a subject; LiteLLM checks its master key. Without a database
  LiteLLM has no virtual keys, so there is no per-key lookup on its side.
- **Authorization**: not comparable. Our gateway evaluates an AccessPolicy
  (subject, model, data classes); LiteLLM's per-key model lists, budgets and
  teams need its database, and its master key may call every model.
- **PII filtering**: partly comparable. Our gateway redacts emails and masks
  phone numbers in the prompt and redacts emails in the reply. LiteLLM's
  Presidio guardrail calls Presidio's analyzer and anonymizer HTTP services,
  which do not run here, so LiteLLM uses its built-in local content filter
  (`litellm_content_filter`, regular expressions): prebuilt `email` and
  `us_phone` patterns masked before the call, `email` masked after it. Both do
  regex-class detection over the whole text in process; neither uses a model.
  Our prompt-injection heuristics are off here, as LiteLLM has none; the
  filter benchmark below measures them.
- **Metering and audit**: not comparable. Our gateway meters tokens and writes
  one record per request to its durable, hash-chained audit log (`--audit-dir`,
  one log per worker), answering only once the record is on disk (fdatasync,
  group commit). LiteLLM records spend and
  request logs only into its database, which this setup leaves out; it still
  runs its in-process logging and cost callbacks and writes uvicorn's access log
  line per request (left on, as shipped).
- **Not measured**: streaming, retries and failover, TLS to the upstream."""


def report(
    paths: Sequence[BenchPath],
    results: Results,
    concurrencies: Sequence[int],
    seconds: float,
    warmup: float,
    command: str,
    workers: int,
) -> str:
    """The markdown section for docs/benchmarks.md."""
    today = datetime.date.today().isoformat()
    problems = [problem_note(p.label, p.problem) for p in paths if p.problem]
    checks = [line for p in paths if (line := filter_check(p))]
    checks += [
        f"{p.label}: {p.audit_events:,} request records in the audit logs for "
        f"{p.completed:,} requests completed (warm-ups and the start check included; "
        "requests cut off when a run ends are recorded too); "
        f"`privatellm audit verify`: {'OK' if p.audit_verified else 'FAILED'}"
        for p in paths
        if p.audit_events is not None
    ]
    if cost := durability_cost(results, concurrencies):
        checks.append(cost)
    notes = "\n".join(problems + [f"- {c}" for c in checks])
    return f"""## Gateway overhead

`make bench` (`{command}`), {today}, {machine()}. wrk, the fake upstream and the
proxy under test share these cores; nothing is pinned. Non-streaming chat
completions with a {PROMPT_BYTES}-byte English prompt holding an email address and
a phone number; a {len(REPLY.split())}-word reply holding an email address.
wrk with min(connections, 2) threads, {warmup:g} s warm-up, then {seconds:g} s per
run; the concurrencies run in turn, the three paths one after another at each.
LiteLLM {litellm_version()}. Both proxies run {workers} worker process(es).
Latencies in ms; "added" is over (a) at the same concurrency. A run with any
non-2xx answer or socket error counts as failed.

| path | concurrency | requests/s | p50 | p99 | added p50 | added p99 | errors |
|---|---|---|---|---|---|---|---|
{result_rows(paths, results, concurrencies)}

Throughput of (b):

| concurrency | (b) / (c) | (b) / (a) |
|---|---|---|
{ratio_rows(results, concurrencies)}

| target | measured | met |
|---|---|---|
{target_rows(results, concurrencies)}

{notes}

(a) is wrk straight to the upstream, (b) wrk to `privatellm gateway` (API key,
AccessPolicy allowing the model, PII filters in and out, metering, and each answer
sent only once its record is on disk in the hash-chained audit log), (b') the same
gateway writing its audit events to a file without fsync, and (c) wrk to LiteLLM's
proxy. The targets are checked on (b).

{COMPARABILITY}"""


def raise_keyboard_interrupt(signum: int, frame: FrameType | None) -> None:
    """Turn SIGTERM into the same clean shutdown as Ctrl-C."""
    raise KeyboardInterrupt


@contextlib.contextmanager
def workspace() -> Iterator[Path]:
    """A temporary directory for configs, logs and the wrk script, removed afterwards."""
    path = Path(tempfile.mkdtemp(prefix="privatellm-gateway-bench-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def measure(
    path: BenchPath, workdir: Path, concurrency: int, seconds: float, warmup: float
) -> WrkResult:
    """Warm up, then measure one path at one concurrency."""
    script = workdir / f"{path.key}.lua"
    script.write_text(wrk_script(workdir / "body.json", path.api_key))
    if warmup > 0:
        path.completed += run_wrk(script, path.url, concurrency, warmup).requests
    result = run_wrk(script, path.url, concurrency, seconds)
    path.completed += result.requests
    if path.server is not None and not path.server.running:
        path.problem = f"exited during the runs:\n{path.server.log_tail()}"
    state = "FAILED" if result.failed else "ok"
    print(
        f"{path.label} c={concurrency}: {result.rate:,.0f} req/s, "
        f"p50 {result.p50_ms:.2f} ms, p99 {result.p99_ms:.2f} ms, "
        f"{result.non2xx} non-2xx, {result.socket_errors} socket errors [{state}]",
        file=sys.stderr,
    )
    return result


def run(
    concurrencies: Sequence[int], seconds: float, warmup: float, workers: int
) -> tuple[list[BenchPath], Results]:
    """Start the three paths, measure each at every concurrency, stop everything."""
    body = chat_request(make_prompt())
    results: Results = {}
    with workspace() as workdir:
        with contextlib.ExitStack() as stack:
            (workdir / "body.json").write_bytes(body)
            upstream_url = start_upstream(stack, workdir)
            direct = BenchPath("a", "(a) direct", url=upstream_url, api_key="unused")
            direct.reply = REPLY
            paths = [direct]
            paths.append(start_gateway(stack, workdir, upstream_url, body, workers))
            paths.append(start_gateway(stack, workdir, upstream_url, body, workers, False))
            paths.append(start_litellm(stack, workdir, upstream_url, body, workers))
            for path in paths:
                if path.problem:
                    print(f"{path.label}: {path.problem}", file=sys.stderr)
            for concurrency in concurrencies:
                for path in paths:
                    if path.runnable:
                        results[(path.key, concurrency)] = measure(
                            path, workdir, concurrency, seconds, warmup
                        )
        # Counted and verified once the gateway has stopped and closed its audit logs.
        for path in paths:
            if path.audit_dir is not None and path.audit_dir.exists():
                path.audit_events, path.audit_verified = audit_requests(path.audit_dir)
    return paths, results


def audit_requests(audit_dir: Path) -> tuple[int, bool]:
    """Request records in every worker's log, and whether every log verifies."""
    requests, verified = 0, True
    for worker in sorted(audit_dir.iterdir()):
        verified = verified and verify_log(worker, AUDIT_SIGNER.public_key).ok
        for segment in sorted(worker.glob("*.log")):
            kinds = (orjson.loads(f.body).get("kind") for f in SegmentReader(segment).frames())
            requests += sum(kind == "request" for kind in kinds)
    return requests, verified


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and write its section of docs/benchmarks.md."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="measured seconds per run")
    parser.add_argument("--warmup", type=float, default=2.0, help="warm-up seconds per run")
    parser.add_argument(
        "--concurrency", type=int, nargs="+", default=list(CONCURRENCIES), help="connections"
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=2,
        help="worker processes of each proxy (the same for both; default: one per core)",
    )
    parser.add_argument(
        "--no-write", action="store_true", help="print the report without writing the file"
    )
    args = parser.parse_args(argv)
    if shutil.which("wrk") is None:
        print("wrk is not on PATH: run scripts/bench-tools.sh", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, raise_keyboard_interrupt)
    given = sys.argv[1:] if argv is None else list(argv)
    command = shlex.join(["python", "-m", "tests.benchmarks.bench_gateway", *given])
    try:
        paths, results = run(args.concurrency, args.seconds, args.warmup, args.workers)
    except KeyboardInterrupt:
        print("interrupted: every server it started is stopped", file=sys.stderr)
        return 130
    body = report(
        paths, results, args.concurrency, args.seconds, args.warmup, command, args.workers
    )
    if not args.no_write:
        write_section(SECTION, body)
    print(body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
