"""`privatellm gateway`: run one namespace's gateway from its configuration file."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import secrets
import signal
import socket
import ssl
import sys
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from aiohttp import web
    from opentelemetry.trace import Tracer

    from privatellm.audit import AuditLog
    from privatellm.audit.worm import SegmentShipper
    from privatellm.gateway.audit import AuditSink, JsonLinesSink
    from privatellm.gateway.server import Gateway


DRAIN_SECONDS = 10.0


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
        "--audit-dir",
        type=Path,
        default=None,
        help="keep audit records in this tamper-evident log (DIR/worker-N per worker); "
        "an answer is sent only once its record is on disk",
    )
    gateway.add_argument(
        "--audit-signing-key",
        type=Path,
        default=None,
        help="Ed25519 private key (PEM) that signs the log's checkpoints",
    )
    gateway.add_argument(
        "--audit-segment-records",
        type=int,
        default=100_000,
        help="seal a segment after this many records",
    )
    gateway.add_argument(
        "--audit-segment-seconds",
        type=float,
        default=3600.0,
        help="seal a segment at the latest this long after it was opened",
    )
    gateway.add_argument(
        "--audit-retention",
        action="append",
        default=[],
        metavar="CLASS=DAYS",
        help="keep segments holding this data class at least DAYS (repeatable)",
    )
    gateway.add_argument(
        "--audit-default-retention-days",
        type=float,
        default=365.0,
        help="retention of records without a data class",
    )
    gateway.add_argument(
        "--audit-prune-expired",
        action="store_true",
        help="remove segments past their retention date (once shipped, with a WORM bucket); "
        "their signed checkpoints stay",
    )
    gateway.add_argument(
        "--audit-worm-bucket",
        default=None,
        help="ship every sealed segment to this S3 bucket (Object Lock, compliance mode); "
        "endpoint and credentials from AWS_ENDPOINT_URL_S3, AWS_ACCESS_KEY_ID, ...",
    )
    gateway.add_argument("--audit-worm-prefix", default="audit", help="key prefix in the bucket")
    gateway.add_argument(
        "--metrics-port", type=int, default=0, help="serve Prometheus metrics here (0: off)"
    )
    gateway.add_argument(
        "--peer-port",
        type=int,
        default=0,
        help="serve this replica's quota counts to the other replicas here (0: off)",
    )
    gateway.add_argument(
        "--hash-key-file",
        type=Path,
        default=None,
        help="key of the filters' hash action; replicas must share it (default: random)",
    )
    gateway.add_argument(
        "--trace-log",
        type=Path,
        default=None,
        help="write OpenTelemetry spans (authenticate, filters, upstream) here as JSON",
    )
    gateway.add_argument(
        "--workers",
        type=int,
        default=1,
        help="processes sharing the port (SO_REUSEPORT); quotas and replica health are "
        "kept per process, and each writes its own audit file (PATH.N)",
    )
    gateway.add_argument("--tls-cert", type=Path, default=None, help="serve HTTPS with this")
    gateway.add_argument("--tls-key", type=Path, default=None)


def run_gateway(args: argparse.Namespace) -> int:
    # Imported here so that other commands do not pay for the data plane's imports.
    from privatellm.gateway.audit import JsonLinesSink
    from privatellm.gateway.config import load_config
    from privatellm.gateway.reload import ConfigWatcher
    from privatellm.gateway.server import Gateway

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    try:
        config = load_config(args.config)
    except Exception as error:
        print(f"gateway: {args.config}: {error}", file=sys.stderr)
        return 2
    if args.audit_dir and not args.audit_signing_key:
        print("gateway: --audit-dir needs --audit-signing-key", file=sys.stderr)
        return 2
    # Made before forking: every worker must hash the same value to the same token.
    hash_key = args.hash_key_file.read_bytes() if args.hash_key_file else secrets.token_bytes(32)
    index, children = _fork_workers(max(1, args.workers))
    sink = _open_sink(args, index)
    gateway = Gateway(
        config,
        sink,
        hash_key=hash_key,
        tracer=_tracer(args.trace_log),
        peer_url=_own_peer_url(args.peer_port),
    )
    app = gateway.app()
    app.cleanup_ctx.append(ConfigWatcher(gateway, args.config).run)
    if isinstance(sink, JsonLinesSink):
        app.cleanup_ctx.append(_flush_periodically(sink))
    try:
        _run_loop(_serve(app, gateway, args, children))
    finally:
        sink.close()
    return 0


def _own_peer_url(peer_port: int) -> str | None:
    """Where the other replicas reach this one: the Pod's IP (downward API) and peer port."""
    from privatellm.gateway.discovery import replica_url

    address = os.environ.get("POD_IP")
    return replica_url(address, peer_port) if address and peer_port else None


def _open_sink(args: argparse.Namespace, index: int) -> AuditSink:
    """The audit log when --audit-dir is given, else JSON lines (a file or standard output)."""
    from privatellm.gateway.audit import AuditLogSink, JsonLinesSink

    several = args.workers > 1
    if args.audit_dir:
        directory = args.audit_dir / f"worker-{index}" if several else args.audit_dir
        log, shipper = _open_audit_log(args, directory)
        pod = os.environ.get("POD_NAME") or socket.gethostname()
        return AuditLogSink(log, pod=pod, shipper=shipper)
    audit_log = args.audit_log
    if audit_log and several:
        audit_log = audit_log.with_name(f"{audit_log.name}.{index}")
    return JsonLinesSink.append_to(audit_log) if audit_log else JsonLinesSink(sys.stdout)


def _open_audit_log(
    args: argparse.Namespace, directory: Path
) -> tuple[AuditLog, SegmentShipper | None]:
    """The worker's audit log and, with a WORM bucket, the shipper of its sealed segments."""
    from privatellm.audit import AuditLog, Checkpoint, Signer
    from privatellm.audit.retention import Retention
    from privatellm.audit.writer import SegmentLimits

    shipper: SegmentShipper | None = None

    def may_prune(checkpoint: Checkpoint) -> bool:
        # With a WORM copy, a segment goes only once it is safely there.
        if not args.audit_worm_bucket:
            return True
        return shipper is not None and checkpoint.segment <= shipper.shipped_through()

    log = AuditLog(
        directory,
        Signer.from_file(args.audit_signing_key),
        limits=SegmentLimits(
            records=args.audit_segment_records, seconds=args.audit_segment_seconds
        ),
        retention=Retention.parse(args.audit_retention, args.audit_default_retention_days),
        prune=may_prune if args.audit_prune_expired else None,
    )
    if args.audit_worm_bucket:
        from privatellm.audit.s3 import S3Client
        from privatellm.audit.worm import SegmentShipper, WormStore

        store = WormStore.for_directory(
            S3Client(), args.audit_worm_bucket, directory, prefix=args.audit_worm_prefix
        )
        shipper = SegmentShipper(store)
        log.on_sealed = shipper
        # Segments sealed while the store was out of reach are shipped first.
        shipper.start(directory)
    return log, shipper


def _fork_workers(workers: int) -> tuple[int, list[int]]:
    """Fork `workers - 1` copies before any event loop exists; (this process's index, children)."""
    children: list[int] = []
    for index in range(1, workers):
        pid = os.fork()
        if pid == 0:
            return index, []
        children.append(pid)
    return 0, children


def _run_loop(main: Coroutine[Any, Any, None]) -> None:
    """Run on uvloop where it is installed: it halves the event loop's share of each request."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(main)
    else:
        uvloop.run(main)


def _tracer(path: Path | None) -> Tracer | None:
    if path is None:
        return None
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

    provider = TracerProvider()
    out = path.open("a", encoding="utf-8")
    provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter(out=out)))
    return provider.get_tracer("privatellm.gateway")


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


async def _serve(
    app: web.Application, gateway: Gateway, args: argparse.Namespace, children: list[int]
) -> None:
    from aiohttp import web
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    from privatellm.gateway.listener import start_listener

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    ssl_context = None
    if args.tls_cert and args.tls_key:
        ssl_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ssl_context.load_cert_chain(args.tls_cert, args.tls_key)
    # On SIGTERM, requests in flight get this long to finish before the sink is closed.
    runner = await start_listener(
        app,
        gateway,
        args.host,
        args.port,
        ssl_context=ssl_context,
        reuse_port=True,
        shutdown_timeout=DRAIN_SECONDS,
    )
    runners = [runner]
    if args.metrics_port:
        metrics = web.Application()

        async def serve_metrics(_request: web.Request) -> web.Response:
            body = generate_latest(gateway.metering.registry)
            return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

        metrics.router.add_get("/metrics", serve_metrics)
        runners.append(
            await start_listener(metrics, gateway, args.host, args.metrics_port, shutdown_timeout=1)
        )
    if args.peer_port:
        peer_runner = await start_listener(
            gateway.peer_app(),
            gateway,
            args.host,
            args.peer_port,
            ssl_context=ssl_context,
            reuse_port=True,
            shutdown_timeout=1,
        )
        runners.append(peer_runner)
    print(f"gateway listening on {args.host}:{args.port}", flush=True)
    await stop.wait()
    # Kubernetes signals only the first process; the other workers drain with it.
    for pid in children:
        os.kill(pid, signal.SIGTERM)
    for each in runners:
        await each.cleanup()
    for pid in children:
        await asyncio.to_thread(os.waitpid, pid, 0)
