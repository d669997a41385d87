"""Requests held while their model scales from zero.

A model whose Service has no ready replica, and whose route has hold settings
(rendered for models that may scale to zero), gets its requests held instead of
refused: they wait in arrival order, at most `maxQueue` of them and each at most
`maxWaitSeconds`, and go on together, oldest first, once a replica is ready. Past
a bound the client gets 503 with `Retry-After`; a client that leaves frees its
place at once; a stopping gateway answers every held request at once.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .config import HoldSettings
from .errors import GatewayError


def retry_after(seconds: float) -> dict[str, str]:
    """The Retry-After header for `seconds`: whole seconds, at least one."""
    return {"Retry-After": str(max(1, math.ceil(seconds)))}


@dataclass(eq=False)
class Held:
    """One held request: its place in its model's queue and when its wait ends."""

    model: str
    limit: float  # seconds it may wait
    deadline: float  # event-loop time
    # Set when the request may go on (None) or must be refused (the error).
    outcome: asyncio.Future[GatewayError | None] = field(repr=False)


class HoldQueues:
    """Every model's held requests, oldest first."""

    def __init__(self) -> None:
        # Dicts keep insertion order and remove in O(1): a queue of thousands empties fast.
        self._queues: dict[str, dict[Held, None]] = {}
        self._stopping: Callable[[], GatewayError] | None = None

    def held(self, model: str) -> int:
        return len(self._queues.get(model, ()))

    def enter(self, model: str, settings: HoldSettings) -> Held:
        """A place in `model`'s queue; GatewayError when there is none."""
        if self._stopping is not None:
            raise self._stopping()
        loop = asyncio.get_running_loop()
        now = loop.time()
        queue = self._queues.setdefault(model, {})
        if len(queue) >= settings.max_queue:
            # A place frees up at the latest when the oldest request's wait ends.
            oldest = next(iter(queue))
            raise GatewayError(
                503,
                "hold_queue_full",
                f"the model {model!r} is starting from zero and already holds "
                f"{len(queue)} requests; retry later",
                headers=retry_after(oldest.deadline - now),
            )
        limit = settings.max_wait_seconds
        held = Held(model, limit, now + limit, loop.create_future())
        queue[held] = None
        return held

    async def wait(self, held: Held, client_gone: asyncio.Future[None] | None) -> None:
        """Wait until the request may go on; GatewayError when its wait ends otherwise.

        Its place is freed however the wait ends, cancellation included.
        """
        waits: list[asyncio.Future[Any]] = [held.outcome]
        if client_gone is not None:
            waits.append(client_gone)
        timeout = held.deadline - asyncio.get_running_loop().time()
        try:
            await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self._leave(held)
        if client_gone is not None and client_gone.done():
            # Whatever else happened, nobody is there to answer.
            raise GatewayError(
                499,
                "client_disconnected",
                "the client closed the connection while its request was held",
            )
        if held.outcome.done():
            refusal = held.outcome.result()
            if refusal is not None:
                raise refusal
            return
        # Another wait as long: the model is late, not necessarily broken.
        raise GatewayError(
            503,
            "model_scaling_from_zero_timeout",
            f"the model {held.model!r} is starting from zero and was not ready within "
            f"{held.limit:g} s; retry later",
            headers=retry_after(held.limit),
        )

    def release(self, model: str) -> int:
        """Let `model`'s held requests go on, oldest first; how many there were."""
        queue = self._queues.pop(model, {})
        for held in queue:
            held.outcome.set_result(None)
        return len(queue)

    def stop(self, refusal: Callable[[], GatewayError]) -> None:
        """Refuse every held request, and every later one, with a fresh `refusal()`."""
        self._stopping = refusal
        queues, self._queues = self._queues, {}
        for queue in queues.values():
            for held in queue:
                held.outcome.set_result(refusal())

    def _leave(self, held: Held) -> None:
        queue = self._queues.get(held.model)
        if queue is not None:
            queue.pop(held, None)
            if not queue:
                del self._queues[held.model]
