"""`privatellm gateway`: run one namespace's gateway from its configuration file."""

from __future__ import annotations

import argparse
import asyncio
import logging
import ssl
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from aiohttp import web

    from privatellm.gateway.audit import JsonLinesSink
    from privatellm.gateway.server import Gateway


def add_gateway_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    gateway = commands.add_parser(
        "gateway", help="serve the OpenAI-compatible gateway of one namespace"
    )
    gateway.add_argument("--config", type=Path, required=True, help="the gateway's config file")
    gateway.add_argument("--host", default="0.0.0.0", help="address to listen on")
    gateway.add_argument("--port", type=int, default=8080)
    gateway.add_argument(
        "--audit-log",
        type=Path,
        default=None,
        help="append audit events to this file as JSON lines (default: standard output)",
    )
    gateway.add_argument(
        "--metrics-port", type=int, default=0, help="serve Prometheus metrics here (0: off)"
    )
    gateway.add_argument(
        "--hash-key-file",
        type=Path,
        default=None,
        help="key of the filters' hash action; replicas must share it (default: random)",
    )
    gateway.add_argument("--tls-cert", type=Path, default=None, help="serve HTTPS with this")
    gateway.add_argument("--tls-key", type=Path, default=None)


def run_gateway(args: argparse.Namespace) -> int:
    # Imported here so that other commands do not pay for the data plane's imports.
    from privatellm.gateway.audit import JsonLinesSink
    from privatellm.gateway.config import load_config
    from privatellm.gateway.server import ConfigWatcher, Gateway

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    try:
        config = load_config(args.config)
    except Exception as error:
        print(f"gateway: {args.config}: {error}", file=sys.stderr)
        return 2
    sink = JsonLinesSink.append_to(args.audit_log) if args.audit_log else JsonLinesSink(sys.stdout)
    hash_key = args.hash_key_file.read_bytes() if args.hash_key_file else None
    gateway = Gateway(config, sink, hash_key=hash_key)
    app = gateway.app()
    app.cleanup_ctx.append(ConfigWatcher(gateway, args.config).run)
    app.cleanup_ctx.append(_flush_periodically(sink))
    try:
        asyncio.run(_serve(app, gateway, args))
    except KeyboardInterrupt:
        pass
    finally:
        sink.close()
    return 0


def _flush_periodically(
    sink: JsonLinesSink,
) -> Callable[[web.Application], AsyncIterator[None]]:
    async def flusher(_app: web.Application) -> AsyncIterator[None]:
        async def loop() -> None:
            while True:
                await asyncio.sleep(1.0)
                sink.flush()

        task = asyncio.create_task(loop())
        yield
        task.cancel()
        sink.flush()

    return flusher


async def _serve(app: web.Application, gateway: Gateway, args: argparse.Namespace) -> None:
    from aiohttp import web
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    ssl_context = None
    if args.tls_cert and args.tls_key:
        ssl_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ssl_context.load_cert_chain(args.tls_cert, args.tls_key)
    await web.TCPSite(runner, args.host, args.port, ssl_context=ssl_context).start()
    if args.metrics_port:
        metrics = web.Application()

        async def serve_metrics(_request: web.Request) -> web.Response:
            body = generate_latest(gateway.metering.registry)
            return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

        metrics.router.add_get("/metrics", serve_metrics)
        metrics_runner = web.AppRunner(metrics, access_log=None)
        await metrics_runner.setup()
        await web.TCPSite(metrics_runner, args.host, args.metrics_port).start()
    print(f"gateway listening on {args.host}:{args.port}", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()
