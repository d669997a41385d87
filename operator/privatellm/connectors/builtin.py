"""The connectors shipped in the project's image (`privatellm connector run`).

A connector talks to its external system and to its sidecar on localhost, nothing
else: it never sees the gateway's address nor a ServiceAccount token.

- webhook: an HTTPS endpoint (port 8080) where the external system pushes items,
  each answered with the sidecar's verdict (202 taken, 4xx refused with the reason,
  503 to retry later). Callers present the bearer token in the credentials Secret's
  `token` key when there is one.
- objectStore: an S3-compatible bucket at `endpoint` (https://host[:port]/bucket[/prefix],
  path-style). New objects under `<prefix>/inbox/` go to the sidecar; each is marked
  done under `<prefix>/done/` once the sidecar took or refused it, so a restart does
  not send it again; each result is written to `<prefix>/results/<name>`, the name
  the item had in the inbox.
  Credentials come from the Secret's `accessKeyId` and `secretAccessKey` keys.

Outbound results to an HTTP destination are pushed by the sidecar itself
(sidecar.py): that is the HTTP push destination, and the only way out.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
from collections.abc import Awaitable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from aiohttp import web

from privatellm.audit.s3 import S3Client

from .sidecar import ITEM_KEY

log = logging.getLogger(__name__)

WEBHOOK_PATH = "/items"
# How often the bucket is listed for new objects.
POLL_SECONDS = 5.0


@dataclass(frozen=True)
class Bucket:
    """Where an objectStore connector reads and writes."""

    endpoint_url: str
    name: str
    prefix: str

    @classmethod
    def from_endpoint(cls, endpoint: str) -> Bucket:
        parts = urlsplit(endpoint)
        bucket, _, prefix = parts.path.lstrip("/").partition("/")
        if parts.scheme not in ("http", "https") or not bucket:
            raise ValueError(
                f"an objectStore endpoint is https://host/bucket[/prefix], not {endpoint}"
            )
        prefix = prefix.strip("/")
        return cls(f"{parts.scheme}://{parts.netloc}", bucket, f"{prefix}/" if prefix else "")

    def key(self, folder: str, name: str = "") -> str:
        return f"{self.prefix}{folder}/{name}"


def credential(directory: Path | None, key: str) -> str | None:
    if directory is None or not (directory / key).exists():
        return None
    return (directory / key).read_text().strip()


async def _forward(
    session: aiohttp.ClientSession, sidecar: str, data: bytes, key: str
) -> tuple[int, Any]:
    async with session.post(f"{sidecar}/items", data=data, headers={ITEM_KEY: key}) as response:
        return response.status, await response.json(content_type=None)


def webhook_app(sidecar: str, session: aiohttp.ClientSession, token: str | None) -> web.Application:
    """The webhook: each pushed item is passed to the sidecar and its answer returned."""

    async def take(request: web.Request) -> web.Response:
        if token is not None:
            given = request.headers.get("Authorization", "").removeprefix("Bearer ")
            if not hmac.compare_digest(given.encode(), token.encode()):
                body = {
                    "error": {"code": "unauthenticated", "message": "a bearer token is required"}
                }
                return web.json_response(body, status=401)
        status, body = await _forward(
            session, sidecar, await request.read(), request.headers.get(ITEM_KEY, "")
        )
        return web.json_response(body, status=status)

    # The sidecar enforces the item limit; this only keeps a body from filling memory first.
    app = web.Application(client_max_size=1024 * 1024 * 1024)
    app.router.add_post(WEBHOOK_PATH, take)
    return app


class ObjectStoreConnector:
    """Moves new objects of a bucket to the sidecar, and results back into the bucket."""

    def __init__(
        self, bucket: Bucket, client: Any, sidecar: str, session: aiohttp.ClientSession
    ) -> None:
        self.bucket = bucket
        self.client = client
        self.sidecar = sidecar
        self.session = session

    async def run(self, poll_seconds: float = POLL_SECONDS) -> None:
        await asyncio.gather(self._items(poll_seconds), self._results())

    async def _items(self, poll_seconds: float) -> None:
        while True:
            try:
                await self.send_new_objects()
            except Exception as error:  # the bucket or the sidecar is away: try again
                log.warning("objectStore: %s", error)
            await asyncio.sleep(poll_seconds)

    async def send_new_objects(self) -> int:
        """Send every object of the inbox not marked done; how many were sent."""
        inbox = await asyncio.to_thread(self._list, self.bucket.key("inbox"))
        done = {
            k.removeprefix(self.bucket.key("done"))
            for k in await asyncio.to_thread(self._list, self.bucket.key("done"))
        }
        sent = 0
        for key in inbox:
            name = key.removeprefix(self.bucket.key("inbox"))
            if not name or name in done:
                continue
            data = await asyncio.to_thread(self._get, key)
            status, body = await _forward(self.session, self.sidecar, data, name)
            if status == 503 or status >= 500:
                raise RuntimeError(f"the sidecar cannot take {name} now: {body}")
            # Taken (202) or refused for good (4xx, quarantined or blocked with a reason
            # the sidecar audited): either way this object is done.
            await asyncio.to_thread(self._put, self.bucket.key("done", name), str(status).encode())
            sent += 1
        return sent

    async def _results(self) -> None:
        while True:
            try:
                async with self.session.get(
                    f"{self.sidecar}/results", params={"wait": "25"}
                ) as response:
                    if response.status == 204:
                        continue
                    result = await response.json()
                name = result["sourceKey"] or result["id"]
                await asyncio.to_thread(
                    self._put, self.bucket.key("results", name), result["text"].encode()
                )
                async with self.session.delete(f"{self.sidecar}/results/{result['id']}"):
                    pass
            except Exception as error:
                log.warning("objectStore results: %s", error)
                await asyncio.sleep(POLL_SECONDS)

    def _list(self, prefix: str) -> list[str]:
        keys: list[str] = []
        for page in self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket.name, Prefix=prefix
        ):
            keys += [o["Key"] for o in page.get("Contents") or ()]
        return keys

    def _get(self, key: str) -> bytes:
        data: bytes = self.client.get_object(Bucket=self.bucket.name, Key=key)["Body"].read()
        return data

    def _put(self, key: str, data: bytes) -> None:
        self.client.put_object(Bucket=self.bucket.name, Key=key, Body=data)


def object_store_client(bucket: Bucket, credentials: Path | None) -> Any:
    """boto3's S3 client for the bucket, path-style, as the audit log's WORM copy uses it.

    A private CA is given as the credentials Secret's `ca.crt` (through AWS_CA_BUNDLE).
    """
    ca_file = credentials / "ca.crt" if credentials is not None else None
    if ca_file is not None and ca_file.exists():
        os.environ["AWS_CA_BUNDLE"] = str(ca_file)
    client = S3Client(
        bucket.endpoint_url,
        access_key=credential(credentials, "accessKeyId"),
        secret_key=credential(credentials, "secretAccessKey"),
    )
    return client.raw


async def serve_webhook(
    app: web.Application, host: str, port: int, ssl_context: Any, stop: Awaitable[None]
) -> None:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port, ssl_context=ssl_context).start()
    try:
        await stop
    finally:
        await runner.cleanup()
