"""A gateway in front of local OpenAI-compatible upstreams, on loopback, per test."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web

from privatellm.gateway.audit import AuditEvent, AuditSink, MemorySink
from privatellm.gateway.auth import hash_api_key
from privatellm.gateway.config import GatewayConfig
from privatellm.gateway.discovery import Replica, ReplicaChanges
from privatellm.gateway.listener import start_listener
from privatellm.gateway.server import Gateway
from tests.support.fake_openai import FakeOpenAI

ALICE_KEY = "pllm-alice-0123456789abcdefghijklmnopqrstuvwxyzABCDEFG"
BOB_KEY = "pllm-bob-0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJ"


def base_config(upstreams: dict[str, list[str]], **policy: Any) -> dict[str, Any]:
    """A namespace with the given models, alice allowed on all of them, bob on none."""
    spec: dict[str, Any] = {
        "subjects": [{"kind": "APIKey", "name": "alice", "secretName": "alice-key"}],
        "models": ["*"],
        "dataClasses": [{"name": "public", "action": "allow"}],
    }
    spec.update(policy)
    return {
        "namespace": "team-a",
        "models": [
            {"name": name, "servedName": "fake-model", "endpoints": urls}
            for name, urls in upstreams.items()
        ],
        "policies": [{"name": "alice", "spec": spec}],
        "auth": {
            "apiKeys": {hash_api_key(ALICE_KEY): "alice", hash_api_key(BOB_KEY): "bob"},
        },
    }


@dataclass
class DiscoveredView:
    """What an EndpointWatcher would know: each Service's ready replicas (`None` until the
    namespace was listed), and who waits for them to change."""

    services: dict[str, list[Replica]] | None = None
    changes: ReplicaChanges = field(default_factory=ReplicaChanges)

    def ready(self, service: str) -> Sequence[Replica] | None:
        if self.services is None:
            return None
        return self.services.get(service, [])

    def set(self, service: str, replicas: list[Replica]) -> None:
        """The Service's ready replicas are now `replicas`, as a watch event would say."""
        if self.services is None:
            self.services = {}
        self.services[service] = replicas
        self.changes.notify([service])


@dataclass
class Stack:
    """A running gateway, its audit events and an HTTP client."""

    url: str
    gateway: Gateway
    sink: AuditSink
    http: aiohttp.ClientSession
    runner: web.AppRunner

    async def stop(self) -> None:
        """Stop the gateway as SIGTERM does (once; leaving the stack does it otherwise)."""
        if self.runner.server is not None:
            await self.runner.cleanup()

    @property
    def events(self) -> list[AuditEvent]:
        assert isinstance(self.sink, MemorySink)
        return self.sink.events

    async def post(
        self, path: str, body: Any, key: str | None = ALICE_KEY, **headers: str
    ) -> tuple[int, Any]:
        send = dict(headers)
        if key:
            send["Authorization"] = f"Bearer {key}"
        data = body if isinstance(body, bytes) else None
        if data is not None:
            send.setdefault("Content-Type", "application/json")
        async with self.http.post(
            self.url + path, json=None if data is not None else body, data=data, headers=send
        ) as response:
            raw = await response.read()
            try:
                return response.status, await response.json(content_type=None)
            except ValueError:
                return response.status, raw

    async def chat(self, text: str, model: str = "llama", **kwargs: Any) -> tuple[int, Any]:
        body = {"model": model, "messages": [{"role": "user", "content": text}]}
        return await self.post("/v1/chat/completions", body, **kwargs)


async def read_stream(stack: Stack, body: dict[str, Any]) -> tuple[int, list[Any]]:
    """Post a streamed chat; its status and its events, "[DONE]" included."""
    headers = {"Authorization": f"Bearer {ALICE_KEY}"}
    events: list[Any] = []
    async with stack.http.post(
        stack.url + "/v1/chat/completions", json=body, headers=headers
    ) as response:
        async for line in response.content:
            if line.startswith(b"data: "):
                data = line[6:].strip()
                events.append("[DONE]" if data == b"[DONE]" else json.loads(data))
        return response.status, events


@asynccontextmanager
async def gateway_stack(
    config: dict[str, Any], sink: AuditSink | None = None, **options: Any
) -> AsyncIterator[Stack]:
    sink = sink or MemorySink()
    gateway = Gateway(GatewayConfig.model_validate(config), sink, **options)
    runner = await start_listener(gateway.app(), gateway, "127.0.0.1", 0)
    port = runner.addresses[0][1]
    async with aiohttp.ClientSession() as http:
        stack = Stack(f"http://127.0.0.1:{port}", gateway, sink, http, runner)
        try:
            yield stack
        finally:
            await stack.stop()


@asynccontextmanager
async def upstream(**options: Any) -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI(model="fake-model", **options) as server:
        yield server


class ThreadedGateway:
    """A gateway on its own event loop in a background thread, for synchronous callers."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config
        self.sink = MemorySink()
        self.url = ""
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._runner: web.AppRunner | None = None

    async def _start(self) -> None:
        gateway = Gateway(GatewayConfig.model_validate(self.config), self.sink)
        self._runner = await start_listener(gateway.app(), gateway, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"

    def __enter__(self) -> ThreadedGateway:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(timeout=10)
        return self

    def __exit__(self, *_: object) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
