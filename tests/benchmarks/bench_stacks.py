"""Which server stack the gateway is built on: pass-through proxies compared with wrk.

Each candidate is the smallest proxy its stack allows: read the request body,
POST it to the upstream over a pooled connection, return the answer. No
authentication, no filters. What is left is the cost the stack itself adds to
every request, which is what the choice of stack decides.

- aiohttp server and client on uvloop (the project's virtual environment);
- Starlette on uvicorn (uvloop; h11, as httptools is not installed) with an
  httpx.AsyncClient, the stack of FastAPI-based proxies such as LiteLLM (run from
  LiteLLM's virtual environment, which has all three).

Run: python -m tests.benchmarks.bench_stacks [--seconds S] [--no-write]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import signal
import sys
import time
from pathlib import Path
from typing import Any

from tests.benchmarks.bench_gateway import (
    LITELLM_VENV,
    Server,
    WrkResult,
    chat_request,
    free_port,
    machine,
    make_prompt,
    post,
    raise_keyboard_interrupt,
    run_wrk,
    start_upstream,
    workspace,
    wrk_script,
)
from tests.benchmarks.report import write_section

AIOHTTP_PROXY = """
import sys, aiohttp, uvloop
from aiohttp import web
upstream, port = sys.argv[1], int(sys.argv[2])
async def session(app):
    app["client"] = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
    yield
    await app["client"].close()
async def proxy(request):
    body = await request.read()
    async with request.app["client"].post(
        upstream + request.path, data=body, headers={"Content-Type": "application/json"}
    ) as answer:
        return web.Response(status=answer.status, body=await answer.read(),
                            content_type="application/json")
app = web.Application()
app.cleanup_ctx.append(session)
app.router.add_post("/{tail:.*}", proxy)
web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None,
            loop=uvloop.new_event_loop())
"""

STARLETTE_PROXY = """
import sys, httpx, uvicorn
from starlette.applications import Starlette
from starlette.responses import Response
from starlette.routing import Route
upstream, port = sys.argv[1], int(sys.argv[2])
client = httpx.AsyncClient(limits=httpx.Limits(max_connections=None))
async def proxy(request):
    body = await request.body()
    answer = await client.post(upstream + request.url.path, content=body,
                               headers={"Content-Type": "application/json"})
    return Response(answer.content, status_code=answer.status_code,
                    media_type="application/json")
app = Starlette(routes=[Route("/{tail:path}", proxy, methods=["POST"])])
uvicorn.run(app, host="127.0.0.1", port=port, loop="uvloop", http="h11",
            log_level="warning", access_log=False)
"""

CANDIDATES = (
    ("aiohttp + uvloop", AIOHTTP_PROXY, Path(sys.executable)),
    ("Starlette + uvicorn + httpx", STARLETTE_PROXY, LITELLM_VENV / "bin/python"),
)


def start_proxy(
    stack: contextlib.ExitStack, workdir: Path, name: str, code: str, python: Path, upstream: str
) -> str:
    """Start one candidate; return its URL once it answers, or raise RuntimeError."""
    if not python.exists():
        raise RuntimeError(f"{python} missing: run scripts/bench-venv.sh litellm")
    script = workdir / f"proxy_{name.split()[0].lower()}.py"
    script.write_text(code)
    port = free_port()
    server = Server(
        name,
        [str(python), str(script), upstream, str(port)],
        script.with_suffix(".log"),
        dict(os.environ),
    )
    stack.callback(server.stop)
    server.start()
    url = f"http://127.0.0.1:{port}"
    body = chat_request("hello")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            if post(url + "/v1/chat/completions", body, "unused")[0] == 200:
                return url
        time.sleep(0.2)
    raise RuntimeError(f"{name} did not start:\n{server.log_tail()}")


def run(seconds: float, concurrency: int) -> list[tuple[str, WrkResult | str]]:
    """Measure the upstream alone, then each candidate in front of it."""
    rows: list[tuple[str, WrkResult | str]] = []
    with workspace() as workdir, contextlib.ExitStack() as stack:
        (workdir / "body.json").write_bytes(chat_request(make_prompt()))
        script = workdir / "bench.lua"
        script.write_text(wrk_script(workdir / "body.json", "unused"))
        upstream = start_upstream(stack, workdir)
        targets: list[tuple[str, str]] = [("upstream alone", upstream)]
        for name, code, python in CANDIDATES:
            try:
                targets.append((name, start_proxy(stack, workdir, name, code, python, upstream)))
            except RuntimeError as error:
                rows.append((name, str(error).replace("\n", " ")[-300:]))
        for name, url in targets:
            run_wrk(script, url, concurrency, 1.0)
            rows.append((name, run_wrk(script, url, concurrency, seconds)))
    return rows


def report(rows: list[tuple[str, Any]], seconds: float, concurrency: int, command: str) -> str:
    lines = []
    for name, result in rows:
        if isinstance(result, str):
            lines.append(f"| {name} | not run: {result} | | |")
        elif result.failed:
            lines.append(f"| {name} | **FAILED** ({result.non2xx} non-2xx) | | |")
        else:
            lines.append(
                f"| {name} | {result.rate:,.0f} | {result.p50_ms:.2f} | {result.p99_ms:.2f} |"
            )
    table = "\n".join(lines)
    return f"""## Server stack

`{command}`, {machine()}. Pass-through proxies (no authentication, no filters),
4 KiB chat prompts, wrk with {concurrency} connections for {seconds:g} s after a 1 s
warm-up, one process each, sharing the cores with wrk and the upstream. This is
why the gateway is built on aiohttp on uvloop.

| stack | requests/s | p50 ms | p99 ms |
|---|---|---|---|
{table}"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)
    # A SIGTERM unwinds like Ctrl-C, so that every server started is stopped.
    signal.signal(signal.SIGTERM, raise_keyboard_interrupt)
    given = sys.argv[1:] if argv is None else argv
    command = shlex.join(["python", "-m", "tests.benchmarks.bench_stacks", *given])
    body = report(run(args.seconds, args.concurrency), args.seconds, args.concurrency, command)
    if not args.no_write:
        write_section("stacks", body)
    print(body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
