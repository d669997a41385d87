"""`privatellm sidecar` and `privatellm connector run`: the two containers of a DataConnector."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import secrets
import signal
import ssl
import sys
from pathlib import Path
from typing import Any


def _address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host or "127.0.0.1", int(port)


def add_connector_parsers(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    sidecar = commands.add_parser("sidecar", help="run a DataConnector's filter sidecar")
    sidecar.add_argument("--config", type=Path, required=True, help="connector.json")
    sidecar.add_argument(
        "--listen",
        type=_address,
        default=None,
        help="HOST:PORT for the connector (default: config)",
    )
    sidecar.add_argument("--host", default="0.0.0.0", help="address of the metrics port")
    connector = commands.add_parser("connector", help="run a built-in connector")
    actions = connector.add_subparsers(dest="connector_command", required=True)
    run = actions.add_parser("run", help="run the connector the configuration names")
    run.add_argument("--config", type=Path, required=True, help="connector.json")
    run.add_argument("--host", default="0.0.0.0", help="address the webhook listens on")


def _stopped() -> asyncio.Future[None]:
    """Done at SIGTERM or SIGINT."""
    loop = asyncio.get_running_loop()
    stop: asyncio.Future[None] = loop.create_future()

    def set_stop() -> None:
        if not stop.done():
            stop.set_result(None)

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, set_stop)
    return stop


def _signer(config: Any, state: Path) -> Any:
    """The key that signs the sidecar's audit checkpoints: the namespace's, when given."""
    from privatellm.audit import Signer

    if config.audit_signing_key_file:
        return Signer.from_file(Path(config.audit_signing_key_file))
    own = state / "audit-signing-key.pem"
    if not own.exists():
        own.write_bytes(Signer.generate().private_pem())
        own.chmod(0o600)
    return Signer.from_file(own)


def run_sidecar(args: argparse.Namespace) -> int:
    from privatellm.connectors.sidecar import SidecarConfig

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    try:
        config = SidecarConfig.model_validate_json(args.config.read_text())
    except (OSError, ValueError) as error:
        print(f"sidecar: {args.config}: {error}", file=sys.stderr)
        return 2
    asyncio.run(_sidecar(config, args))
    return 0


async def _sidecar(config: Any, args: argparse.Namespace) -> None:
    import aiohttp

    from privatellm.audit import AuditLog
    from privatellm.connectors.quarantine import Quarantine
    from privatellm.connectors.sidecar import Sidecar, Terms, serve
    from privatellm.connectors.spool import Spool

    state = Path(config.state_dir)
    state.mkdir(parents=True, exist_ok=True)
    if config.hash_key_file:
        hash_key = Path(config.hash_key_file).read_bytes()
    else:
        logging.warning("sidecar: no hash key file; hashed values differ from the gateway's")
        hash_key = secrets.token_bytes(32)
    quarantine = None
    if config.encryption is not None:
        quarantine = Quarantine.from_settings(
            state / "quarantine", config.encryption, config.namespace, config.name
        )
    else:
        logging.warning("sidecar: no encryption settings; refused items are not kept here")
    tls = ssl.create_default_context()
    if config.gateway_ca_file and Path(config.gateway_ca_file).exists():
        tls.load_verify_locations(config.gateway_ca_file)
    token_file = Path(config.token_file)
    audit = AuditLog(state / "audit", _signer(config, state))
    listen = args.listen or _address(config.sidecar.removeprefix("http://"))
    try:
        async with aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=tls),
            timeout=aiohttp.ClientTimeout(total=600, connect=5),
        ) as session:
            with Spool(state / "spool", config.name) as spool:
                sidecar = Sidecar(
                    config,
                    hash_key=hash_key,
                    terms=Terms.from_file(Path(config.terms_file) if config.terms_file else None),
                    audit=audit,
                    quarantine=quarantine,
                    spool=spool,
                    session=session,
                    read_token=lambda: token_file.read_text().strip(),
                )
                await serve(sidecar, listen, (args.host, config.metrics_port), _stopped())
    finally:
        audit.close()


def run_connector(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    try:
        config = json.loads(args.config.read_text())
    except (OSError, ValueError) as error:
        print(f"connector: {args.config}: {error}", file=sys.stderr)
        return 2
    kind = config.get("type")
    if kind not in ("webhook", "objectStore"):
        print(
            f"connector: no built-in connector for type {kind}: give the DataConnector an image",
            file=sys.stderr,
        )
        return 2
    try:
        asyncio.run(_connector(config, args))
    except ValueError as error:
        print(f"connector: {error}", file=sys.stderr)
        return 2
    return 0


async def _connector(config: dict[str, Any], args: argparse.Namespace) -> None:
    import aiohttp

    from privatellm.connectors.builtin import (
        Bucket,
        ObjectStoreConnector,
        credential,
        object_store_client,
        serve_webhook,
        webhook_app,
    )

    credentials = Path(config["credentialsDir"]) if config.get("credentialsDir") else None
    sidecar = config["sidecar"]
    stop = _stopped()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600)) as session:
        if config["type"] == "webhook":
            if credentials is None or not (credentials / "tls.crt").exists():
                raise ValueError("a webhook serves HTTPS: its credentials Secret needs tls.crt")
            tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            tls.load_cert_chain(credentials / "tls.crt", credentials / "tls.key")
            app = webhook_app(sidecar, session, credential(credentials, "token"))
            await serve_webhook(app, args.host, int(config.get("webhookPort", 8080)), tls, stop)
            return
        bucket = Bucket.from_endpoint(config["endpoint"])
        client = object_store_client(bucket, credentials)
        running = asyncio.create_task(ObjectStoreConnector(bucket, client, sidecar, session).run())
        await stop
        running.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await running
