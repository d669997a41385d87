"""Configuration reload: the gateway re-reads its file when the mounted Secret changes."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from pathlib import Path

from aiohttp import web

from .config import load_config
from .server import Gateway

log = logging.getLogger("privatellm.gateway")


class ConfigWatcher:
    """Reloads the configuration when its file changes (a Secret volume update)."""

    def __init__(self, gateway: Gateway, path: Path, interval: float = 2.0) -> None:
        self.gateway, self.path, self.interval = gateway, path, interval
        self._seen = self._stamp()

    def _stamp(self) -> tuple[int, int, int] | None:
        try:
            stat = self.path.stat()
        except OSError:
            return None
        return (stat.st_ino, stat.st_mtime_ns, stat.st_size)

    def poll(self) -> bool:
        """Reload when the file changed; keep the old configuration when the new one is bad."""
        stamp = self._stamp()
        if stamp is None or stamp == self._seen:
            return False
        self._seen = stamp
        try:
            config = load_config(self.path)
        except Exception as error:
            log.error("configuration %s rejected, keeping the previous one: %s", self.path, error)
            self.gateway.metering.config_reloads.labels("rejected").inc()
            return False
        self.gateway.reload(config)
        log.info("configuration %s reloaded", self.path)
        return True

    async def run(self, _app: web.Application) -> AsyncIterator[None]:
        async def loop() -> None:
            while True:
                await asyncio.sleep(self.interval)
                self.poll()

        task = asyncio.create_task(loop())
        yield
        task.cancel()
