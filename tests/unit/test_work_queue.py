"""The work queue hands out each key once at a time and never loses a request."""

from __future__ import annotations

import asyncio

from privatellm.controllers.runtime import WorkQueue


def test_a_key_queued_twice_is_handed_out_once() -> None:
    async def scenario() -> list[tuple[str, str]]:
        queue = WorkQueue()
        queue.add(("ns", "a"))
        queue.add(("ns", "b"))
        queue.add(("ns", "a"))
        first, second = await queue.get(), await queue.get()
        assert queue.depth() == 0
        return [first, second]

    assert asyncio.run(scenario()) == [("ns", "a"), ("ns", "b")]


def test_a_request_during_processing_runs_again_after_it() -> None:
    async def scenario() -> None:
        queue = WorkQueue()
        queue.add(("ns", "a"))
        key = await queue.get()
        queue.add(key)  # the object changed while it was being reconciled
        assert queue.depth() == 0, "not handed to a second worker at the same time"
        queue.done(key)
        assert queue.depth() == 1
        assert await queue.get() == key
        queue.done(key)
        assert queue.depth() == 0

    asyncio.run(scenario())
