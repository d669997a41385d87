"""The connector spool: durable before acknowledged, removed after delivery, bounded, in order."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from privatellm.connectors.spool import (
    IDEMPOTENCY_KEY,
    Backoff,
    Spool,
    SpoolEntry,
    SpoolError,
    SpoolFullError,
    SpoolItemTooLargeError,
    stable_item_id,
)

ROOT = Path(__file__).resolve().parents[2]


class FakeTime:
    """A clock that moves only when the spool sleeps; records every delay asked for."""

    def __init__(self) -> None:
        self.now = 1_000.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        await asyncio.sleep(0)


@pytest.fixture
def fake_time() -> FakeTime:
    return FakeTime()


def open_spool(directory: Path, fake_time: FakeTime, **bounds: int) -> Spool:
    return Spool(
        directory,
        "mail",
        backoff=Backoff(base=0.5, cap=4.0, jitter=0.5),
        clock=fake_time.clock,
        sleep=fake_time.sleep,
        rand=lambda: 0.0,
        **bounds,
    )


Deliver = Callable[[SpoolEntry], Awaitable[None]]


def drain(spool: Spool, deliver: Deliver) -> None:
    asyncio.run(asyncio.wait_for(spool.drain(deliver, until_empty=True), timeout=10))


def test_put_writes_the_entry_before_returning_and_ids_are_stable(
    tmp_path: Path, fake_time: FakeTime
) -> None:
    with open_spool(tmp_path, fake_time) as spool:
        entry = spool.put(b"invoice 7", source_key="INBOX/7", content_type="message/rfc822")
        assert entry.path.exists()
        assert entry.read() == b"invoice 7"
        assert entry.item_id == stable_item_id("mail", "INBOX/7", b"invoice 7")
        assert entry.headers == {IDEMPOTENCY_KEY: entry.item_id, "Content-Type": "message/rfc822"}
        # Each part counts: another source key or another connector is another item.
        assert stable_item_id("mail", "INBOX/8", b"invoice 7") != entry.item_id
        assert stable_item_id("crm", "INBOX/7", b"invoice 7") != entry.item_id
        # Length prefixes: moving bytes between fields changes the id.
        assert stable_item_id("ab", "c", b"") != stable_item_id("a", "bc", b"")


def test_a_duplicate_id_is_stored_once_per_destination(tmp_path: Path, fake_time: FakeTime) -> None:
    with open_spool(tmp_path, fake_time) as spool:
        first = spool.put(b"same", source_key="k")
        again = spool.put(b"same", source_key="k")
        assert again == first
        assert len(spool) == 1
        given = spool.put(b"other bytes", item_id="crm-42")
        assert spool.put(b"other bytes", item_id="crm-42") == given
        elsewhere = spool.put(b"same", source_key="k", destination="archive")
        assert elsewhere.item_id == first.item_id and elsewhere.seq != first.seq
        assert len(spool) == 3
        assert len(list(tmp_path.glob("*.entry"))) == 3


def test_hostile_header_values_are_refused(tmp_path: Path, fake_time: FakeTime) -> None:
    with open_spool(tmp_path, fake_time) as spool:
        for item_id in ("a\r\nX-Injected: 1", "has space", "é"):
            with pytest.raises(ValueError, match="item id"):
                spool.put(b"x", item_id=item_id)
        with pytest.raises(ValueError, match="content type"):
            spool.put(b"x", content_type="text/plain\nX: y")
        with pytest.raises(ValueError, match="destination"):
            spool.put(b"x", destination="")
        assert len(spool) == 0


def test_order_is_kept_per_destination_and_a_failing_one_holds_up_no_other(
    tmp_path: Path, fake_time: FakeTime
) -> None:
    delivered: list[tuple[str, bytes]] = []
    failures = {b"a1": 3}
    b_done = asyncio.Event()

    async def deliver(entry: SpoolEntry) -> None:
        data = entry.read()
        if entry.destination == "a" and failures.get(data, 0) > 0:
            failures[data] -= 1
            # While `a` backs off, `b` goes on: `a` fails until `b` is through.
            await asyncio.wait_for(b_done.wait(), timeout=5)
            raise ConnectionError("destination a is down")
        delivered.append((entry.destination, data))
        if entry.destination == "b" and data == b"b3":
            b_done.set()

    with open_spool(tmp_path, fake_time) as spool:
        for n in (1, 2, 3):
            spool.put(f"a{n}".encode(), destination="a")
            spool.put(f"b{n}".encode(), destination="b")
        drain(spool, deliver)
        assert len(spool) == 0
    assert [d for dest, d in delivered if dest == "a"] == [b"a1", b"a2", b"a3"]
    assert [d for dest, d in delivered if dest == "b"] == [b"b1", b"b2", b"b3"]
    assert delivered.index(("b", b"b3")) < delivered.index(("a", b"a1"))
    assert list(tmp_path.glob("*.entry")) == []


def test_retries_back_off_exponentially_up_to_the_cap(tmp_path: Path, fake_time: FakeTime) -> None:
    attempts = 0

    async def deliver(entry: SpoolEntry) -> None:
        nonlocal attempts
        attempts += 1
        if attempts <= 6:
            raise OSError("connection refused")

    with open_spool(tmp_path, fake_time) as spool:
        spool.put(b"item")
        drain(spool, deliver)
    # base 0.5 doubling, capped at 4; rand() = 0 means no jitter.
    assert fake_time.sleeps == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    assert attempts == 7


def test_jitter_shortens_a_delay_by_at_most_its_share() -> None:
    backoff = Backoff(base=1.0, cap=30.0, jitter=0.5)
    assert backoff.delay(3, 0.0) == 4.0
    assert backoff.delay(3, 0.999) == pytest.approx(2.002)
    assert backoff.delay(10_000, 0.0) == 30.0
    with pytest.raises(ValueError):
        Backoff(base=2.0, cap=1.0)


def test_an_entry_is_removed_only_after_the_delivery_is_acknowledged(
    tmp_path: Path, fake_time: FakeTime
) -> None:
    seen_on_disk: list[bool] = []

    async def refuse(entry: SpoolEntry) -> None:
        seen_on_disk.append(entry.path.exists())
        raise RuntimeError("503 from the gateway")

    async def hang(entry: SpoolEntry) -> None:
        await asyncio.Event().wait()

    async def accept(entry: SpoolEntry) -> None:
        seen_on_disk.append(entry.path.exists())

    async def run(deliver: Deliver, seconds: float) -> None:
        task = asyncio.create_task(spool.drain(deliver))
        await asyncio.sleep(seconds)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    with open_spool(tmp_path, fake_time) as spool:
        entry = spool.put(b"keep me")
        asyncio.run(run(refuse, 0.05))
        assert seen_on_disk and all(seen_on_disk)
        assert spool.pending() == [entry] and entry.path.exists()
        # Cancelled in the middle of a delivery (shutdown): the entry stays.
        asyncio.run(run(hang, 0.05))
        assert spool.pending() == [entry] and entry.path.exists()
        drain(spool, accept)
        assert seen_on_disk[-1] is True
        assert spool.pending() == [] and not entry.path.exists()


def test_full_spool_refuses_and_never_drops(tmp_path: Path, fake_time: FakeTime) -> None:
    with open_spool(tmp_path / "count", fake_time, max_entries=2) as spool:
        kept = [spool.put(b"one"), spool.put(b"two")]
        with pytest.raises(SpoolFullError, match="spool is full") as refused:
            spool.put(b"three")
        assert refused.value.retry_after >= 1
        assert spool.pending() == kept
        # A duplicate of a pending item is not a new item: accepted even when full.
        assert spool.put(b"one") == kept[0]

        async def accept(entry: SpoolEntry) -> None:
            pass

        drain(spool, accept)
        spool.put(b"three")

    with open_spool(tmp_path / "bytes", fake_time, max_bytes=1000) as spool:
        spool.put(b"x" * 600)
        with pytest.raises(SpoolFullError, match="bytes"):
            spool.put(b"y" * 600)
        with pytest.raises(SpoolItemTooLargeError):
            spool.put(b"z" * 1000)
        assert [e.size for e in spool.pending()] == [600]
        assert 600 < spool.held_bytes < 1000


def test_pending_entries_survive_a_crash_in_arrival_order(
    tmp_path: Path, fake_time: FakeTime
) -> None:
    # A real crash: a process puts items, starts writing another, and is killed.
    script = textwrap.dedent(
        f"""
        import os, signal, tempfile
        from pathlib import Path
        from privatellm.connectors.spool import Spool
        spool = Spool(Path({str(tmp_path)!r}), "mail")
        for n in range(5):
            spool.put(f"item {{n}}".encode(), destination="a" if n % 2 else "b")
        # A write that never got renamed into place: never acknowledged.
        fd, _ = tempfile.mkstemp(dir={str(tmp_path)!r}, prefix=".", suffix=".tmp")
        os.write(fd, b"half an item")
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, check=False)
    assert result.returncode == -signal.SIGKILL
    assert list(tmp_path.glob(".*.tmp"))

    delivered: dict[str, list[bytes]] = {"a": [], "b": []}

    async def deliver(entry: SpoolEntry) -> None:
        delivered[entry.destination].append(entry.read())

    with open_spool(tmp_path, fake_time) as spool:
        assert [e.read() for e in spool.pending()] == [f"item {n}".encode() for n in range(5)]
        assert list(tmp_path.glob(".*.tmp")) == []
        # New items queue behind the recovered ones.
        spool.put(b"item 5", destination="b")
        drain(spool, deliver)
    assert delivered == {
        "a": [b"item 1", b"item 3"],
        "b": [b"item 0", b"item 2", b"item 4", b"item 5"],
    }


def test_an_entry_redelivered_after_a_crash_keeps_its_idempotency_key(
    tmp_path: Path, fake_time: FakeTime
) -> None:
    # The destination takes the item, then the process dies before removing the entry.
    script = textwrap.dedent(
        f"""
        import asyncio, os, signal
        from pathlib import Path
        from privatellm.connectors.spool import IDEMPOTENCY_KEY, Spool
        spool = Spool(Path({str(tmp_path)!r}), "mail")
        spool.put(b"order 1", source_key="crm/1")

        async def deliver(entry):
            print(entry.headers[IDEMPOTENCY_KEY], flush=True)
            os.kill(os.getpid(), signal.SIGKILL)

        asyncio.run(spool.drain(deliver))
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert result.returncode == -signal.SIGKILL, result.stderr
    keys = [result.stdout.strip()]

    async def deliver(entry: SpoolEntry) -> None:
        keys.append(entry.headers[IDEMPOTENCY_KEY])

    with open_spool(tmp_path, fake_time) as spool:
        drain(spool, deliver)
    # Delivered twice, with one key: the destination can tell the repeat.
    assert keys == [stable_item_id("mail", "crm/1", b"order 1")] * 2


def test_a_damaged_entry_is_set_aside_not_delivered(tmp_path: Path, fake_time: FakeTime) -> None:
    with open_spool(tmp_path, fake_time) as spool:
        bad = spool.put(b"good bytes")
        spool.put(b"next")
    data = bytearray(bad.path.read_bytes())
    data[-1] ^= 0x01
    bad.path.write_bytes(bytes(data))
    delivered: list[bytes] = []

    async def deliver(entry: SpoolEntry) -> None:
        delivered.append(entry.read())

    with open_spool(tmp_path, fake_time) as spool:
        drain(spool, deliver)
    assert delivered == [b"next"]
    assert (tmp_path / (bad.path.name + ".corrupt")).exists()


def test_one_process_per_directory(tmp_path: Path, fake_time: FakeTime) -> None:
    with open_spool(tmp_path, fake_time), pytest.raises(SpoolError, match="in use"):
        open_spool(tmp_path, fake_time)


def test_put_from_another_thread_wakes_the_drain(tmp_path: Path, fake_time: FakeTime) -> None:
    delivered: list[bytes] = []

    async def deliver(entry: SpoolEntry) -> None:
        delivered.append(entry.read())

    async def scenario(spool: Spool) -> None:
        task = asyncio.create_task(spool.drain(deliver))
        await asyncio.sleep(0.01)
        await asyncio.to_thread(spool.put, b"late item")
        for _ in range(500):
            if not spool.pending():
                break
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    with open_spool(tmp_path, fake_time) as spool:
        asyncio.run(scenario(spool))
        assert delivered == [b"late item"]
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".entry")]
    assert os.listdir(tmp_path) == ["LOCK"]
