"""The work queue hands out each key once at a time, never loses a request, and holds
a failing key in backoff until it is due or its spec changes."""

from __future__ import annotations

import asyncio
import logging

import pytest

from privatellm.controllers.events import ReportedError
from privatellm.controllers.runtime import Backoff, FailureLog, Generations, WorkQueue
from privatellm.kube.client import ApiError

A = ("ns", "a")


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def queue_with_clock(draw: float = 0.5) -> tuple[WorkQueue, FakeClock]:
    clock = FakeClock()
    return WorkQueue(clock=clock, draw=lambda: draw), clock


def take(queue: WorkQueue) -> tuple[str, str]:
    """The next key, which must be ready now."""
    assert queue.depth() > 0, "nothing is ready"
    return asyncio.run(queue.get())


def fail(queue: WorkQueue, key: tuple[str, str] = A) -> float:
    assert take(queue) == key
    return queue.retry_later(key)


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


def test_a_waiting_worker_wakes_when_a_key_is_added() -> None:
    async def scenario() -> tuple[str, str]:
        queue = WorkQueue()
        waiting = asyncio.create_task(queue.get())
        await asyncio.sleep(0)
        assert not waiting.done()
        queue.add(A)
        return await waiting

    assert asyncio.run(scenario()) == A


def test_backoff_doubles_from_one_second_to_a_five_minute_cap() -> None:
    backoff = Backoff()
    assert [backoff.delay(n, 0.5) for n in range(1, 11)] == [
        1,
        2,
        4,
        8,
        16,
        32,
        64,
        128,
        256,
        300,
    ]
    assert backoff.delay(10_000, 0.5) == 300


def test_backoff_jitter_stays_within_ten_percent() -> None:
    backoff = Backoff()
    assert backoff.delay(3, 0.0) == pytest.approx(3.6)
    assert backoff.delay(3, 0.999999) == pytest.approx(4.4, abs=1e-5)
    assert backoff.delay(20, 0.0) == pytest.approx(270)


def test_a_failing_key_waits_out_its_backoff_whatever_resyncs_ask() -> None:
    queue, clock = queue_with_clock()
    queue.add(A)
    assert fail(queue) == 1.0
    for _ in range(5):  # resyncs, node events, the status of its Pods
        queue.add(A)
    assert queue.depth() == 0
    clock.now += 0.99
    assert queue.depth() == 0
    clock.now += 0.01
    assert take(queue) == A


def test_each_failure_in_a_row_doubles_the_wait() -> None:
    queue, clock = queue_with_clock()
    queue.add(A)
    delays = []
    for _ in range(4):
        delays.append(fail(queue))
        clock.now += delays[-1]
    assert delays == [1.0, 2.0, 4.0, 8.0]


def test_the_returned_delay_is_when_the_key_comes_back() -> None:
    queue, clock = queue_with_clock(draw=0.0)  # the shortest jitter: -10%
    queue.add(A)
    first = fail(queue)
    clock.now += first
    failed_at = clock.now
    second = fail(queue)
    assert first == pytest.approx(0.9)
    assert second == pytest.approx(1.8)
    clock.now = failed_at + second - 0.01
    assert queue.depth() == 0
    clock.now = failed_at + second
    assert queue.depth() == 1


def test_a_spec_change_ends_the_backoff() -> None:
    queue, clock = queue_with_clock()
    queue.add(A)
    fail(queue)
    queue.add(A, urgent=True)
    assert take(queue) == A
    queue.done(A)
    clock.now += 1
    assert queue.depth() == 0, "not handed out again when its backoff would have ended"


def test_a_spec_change_during_a_failing_reconcile_retries_at_once() -> None:
    queue, _ = queue_with_clock()
    queue.add(A)
    assert take(queue) == A
    queue.add(A, urgent=True)
    assert queue.retry_later(A) == 0.0
    assert take(queue) == A


def test_an_ordinary_request_during_a_failing_reconcile_does_not_skip_the_backoff() -> None:
    queue, _ = queue_with_clock()
    queue.add(A)
    assert take(queue) == A
    queue.add(A)
    assert queue.retry_later(A) == 1.0
    assert queue.depth() == 0


def test_success_forgets_the_failures() -> None:
    queue, clock = queue_with_clock()
    queue.add(A)
    fail(queue)
    clock.now += 1
    fail(queue)
    clock.now += 2
    assert take(queue) == A
    queue.done(A)
    queue.add(A)
    assert fail(queue) == 1.0


def test_other_keys_are_handed_out_while_one_backs_off() -> None:
    queue, _ = queue_with_clock()
    queue.add(A)
    fail(queue)
    queue.add(("ns", "b"))
    assert take(queue) == ("ns", "b")


def test_generations_tell_a_spec_change_from_a_status_write() -> None:
    def body(generation: int) -> dict[str, object]:
        meta = {"namespace": "ns", "name": "m", "generation": generation}
        return {"kind": "InferenceDeployment", "metadata": meta}

    seen = Generations()
    assert seen.changed("ADDED", body(1))
    assert not seen.changed("MODIFIED", body(1)), "a status write keeps the generation"
    assert seen.changed("MODIFIED", body(2))
    assert seen.changed("DELETED", body(2))


def test_an_object_re_created_under_its_name_is_a_new_version() -> None:
    def body(uid: str) -> dict[str, object]:
        meta = {"namespace": "ns", "name": "p", "generation": 1, "uid": uid}
        return {"kind": "AccessPolicy", "metadata": meta}

    seen = Generations()
    assert seen.changed(None, body("first"))
    assert seen.changed("ADDED", body("second")), "its deletion was not seen"


def test_a_repeated_failure_is_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    failures = FailureLog()
    refused = ApiError(422, '{"message": "Deployment.apps \\"m\\" is invalid"}')
    with caplog.at_level(logging.INFO, logger="privatellm.controllers.runtime"):
        for delay in (1.0, 2.0, 4.0):
            failures.failed("InferenceDeployment", A, refused, delay)
        failures.succeeded("InferenceDeployment", A)
        failures.succeeded("InferenceDeployment", A)
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        (
            "WARNING",
            'InferenceDeployment ns/a failed: 422: Deployment.apps "m" is invalid; '
            "retrying in 1.0s",
        ),
        ("INFO", "InferenceDeployment ns/a reconciled again"),
    ]
    assert caplog.records[0].exc_info is None


def test_a_changed_failure_is_logged_again(caplog: pytest.LogCaptureFixture) -> None:
    failures = FailureLog()
    with caplog.at_level(logging.INFO, logger="privatellm.controllers.runtime"):
        failures.failed("Gateway", ("ns", ""), ReportedError("first"), 1.0)
        failures.failed("Gateway", ("ns", ""), ReportedError("second"), 2.0)
    assert [r.getMessage() for r in caplog.records] == [
        "Gateway ns failed: first; retrying in 1.0s",
        "Gateway ns failed: second; retrying in 2.0s",
    ]


def test_only_an_unexpected_error_carries_a_traceback(caplog: pytest.LogCaptureFixture) -> None:
    failures = FailureLog()
    with caplog.at_level(logging.INFO, logger="privatellm.controllers.runtime"):
        try:
            raise KeyError("spec")
        except KeyError as error:
            failures.failed("InferenceDeployment", A, error, 1.0)
    [record] = caplog.records
    assert record.levelname == "ERROR"
    assert record.exc_info is not None
