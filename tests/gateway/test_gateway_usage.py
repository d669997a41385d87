"""The usage tally at the gateway: what it allowed, per subject, policy, model and month,
and how long each model's replicas were busy, served on the peer port (`GET /usage`) and
kept in the audit directory across restarts."""

from __future__ import annotations

import asyncio
import datetime
import json
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import yaml
from aiohttp import web

from privatellm.audit import AuditLog, Signer
from privatellm.cli.main import main
from privatellm.devcluster.cluster import free_port
from privatellm.gateway.audit import AuditLogSink
from privatellm.gateway.quotas import peer_token
from privatellm.gateway.server import Gateway
from privatellm.gateway.usage import USAGE_FILE, USAGE_PATH
from tests.support.fake_openai import FakeOpenAI
from tests.support.gateway_client import chat, first_answer
from tests.support.usage import usage_row

from .conftest import BOB_KEY, Stack, base_config, gateway_stack, read_stream, upstream

HASH_KEY = b"u" * 32
TOKEN = peer_token(HASH_KEY)
# 2026-11-30 23:30 UTC: still November in UTC, already December in Amsterdam.
NOW = datetime.datetime(2026, 11, 30, 23, 30, tzinfo=datetime.UTC).timestamp()
SIGNER = Signer.generate()


def usage_config(model_url: str) -> dict[str, Any]:
    """alice (policy "alice") on every model, bob (policy "analysts") on llama only."""
    config = base_config({"llama": [model_url], "small": [model_url]})
    analysts = {**config["policies"][0]["spec"], "models": ["llama"]}
    analysts["subjects"] = [{"kind": "APIKey", "name": "bob", "secretName": "bob-key"}]
    config["policies"].append({"name": "analysts", "spec": analysts})
    config["usageTimeZones"] = ["UTC", "Europe/Amsterdam"]
    return config


@asynccontextmanager
async def peer_port(gateway: Gateway) -> AsyncIterator[str]:
    """The gateway's peer listener on a port of its own; its base URL."""
    port = free_port()
    runner = web.AppRunner(gateway.peer_app(), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


async def get_usage(stack: Stack, url: str, token: str | None = TOKEN) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with stack.http.get(url + USAGE_PATH, headers=headers) as response:
        return response.status, await response.json(content_type=None)


row = usage_row


def test_usage_is_tallied_per_subject_and_month_and_survives_a_restart(tmp_path: Path) -> None:
    audit_dir = tmp_path / "audit"
    answers: list[tuple[int, Any]] = []

    async def serve(clock: float, scenario: Any) -> None:
        # The replica's audit log: the tally goes into its directory, next to it.
        log = AuditLog(audit_dir, SIGNER)
        try:
            async with upstream(reply="fine thanks") as model:
                config = usage_config(model.url)
                sink = AuditLogSink(log, pod="gw-0")
                async with (
                    gateway_stack(config, sink, hash_key=HASH_KEY, clock=lambda: clock) as stack,
                    peer_port(stack.gateway) as peers,
                ):
                    await scenario(stack, peers)
        finally:
            log.close()

    async def first_run(stack: Stack, peers: str) -> None:
        assert (await stack.chat("one two three"))[0] == 200
        assert (await stack.chat("one two three"))[0] == 200
        body = {
            "model": "llama",
            "stream": True,
            "messages": [{"role": "user", "content": "a b c"}],
        }
        assert (await read_stream(stack, body))[0] == 200
        assert (await stack.chat("one", model="small"))[0] == 200
        assert (await stack.chat("one two", key=BOB_KEY))[0] == 200
        # Refused: used no GPU, so not in the tally.
        assert (await stack.chat("one two", model="small", key=BOB_KEY))[0] == 403
        assert (await stack.chat("x", model="nope"))[0] == 404
        answers.append(await get_usage(stack, peers))

    async def second_run(stack: Stack, peers: str) -> None:
        answers.append(await get_usage(stack, peers))
        assert (await stack.chat("one two three"))[0] == 200
        answers.append(await get_usage(stack, peers))

    asyncio.run(serve(NOW, first_run))
    on_disk = json.loads((audit_dir / USAGE_FILE).read_bytes())
    # An hour later it is December in UTC too.
    asyncio.run(serve(NOW + 3600, second_run))

    (status, first), (restarted_status, restarted), (_, counting) = answers
    assert status == 200
    november = [
        ("alice", "alice", "llama", 3, 9, 6),
        ("alice", "alice", "small", 1, 1, 2),
        ("bob", "analysts", "llama", 1, 2, 2),
    ]
    assert first == {
        "tally": first["tally"],
        "usage": [row("Europe/Amsterdam", "2026-12", *r) for r in november]
        + [row("UTC", "2026-11", *r) for r in november],
        "busy": [],  # the clock stood still: no time passed for a replica to be busy
    }
    assert len(first["tally"]) == 32 and int(first["tally"], 16) >= 0
    assert (on_disk["tally"], on_disk["usage"]) == (first["tally"], first["usage"])
    # Restarted on the same audit directory: the same tally, the same counters ...
    assert (restarted_status, restarted) == (200, first)
    # ... which keep counting, each zone in its own month.
    assert counting == {
        "tally": first["tally"],
        "usage": [
            row("Europe/Amsterdam", "2026-12", "alice", "alice", "llama", 4, 12, 8),
            row("Europe/Amsterdam", "2026-12", *november[1]),
            row("Europe/Amsterdam", "2026-12", *november[2]),
            *[row("UTC", "2026-11", *r) for r in november],
            row("UTC", "2026-12", "alice", "alice", "llama", 1, 3, 2),
        ],
        "busy": [],
    }


def test_usage_is_served_only_to_holders_of_the_peer_token(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with upstream() as model:
            config = usage_config(model.url)
            options = {"hash_key": HASH_KEY, "usage_dir": tmp_path}
            async with gateway_stack(config, **options) as stack, peer_port(stack.gateway) as peers:
                assert (await stack.chat("hi"))[0] == 200
                stack.events.clear()
                for token in (None, "guess", peer_token(b"x" * 32)):
                    status, body = await get_usage(stack, peers, token)
                    assert status == 401
                    assert "usage" not in body and "tally" not in body
                assert [(e.path, e.status, e.reason) for e in stack.events] == [
                    (USAGE_PATH, 401, "missing_credentials"),
                    (USAGE_PATH, 401, "invalid_peer_token"),
                    (USAGE_PATH, 401, "invalid_peer_token"),
                ]
                async with stack.http.post(
                    peers + USAGE_PATH, headers={"Authorization": f"Bearer {TOKEN}"}
                ) as response:
                    assert response.status == 405
                status, body = await get_usage(stack, peers)
                assert status == 200
                rows = [(r["zone"], r["subject"], r["requests"]) for r in body["usage"]]
                assert rows == [("Europe/Amsterdam", "alice", 1), ("UTC", "alice", 1)]

    asyncio.run(scenario())


def test_usage_goes_to_the_model_that_served_and_not_to_one_never_reached(
    tmp_path: Path,
) -> None:
    async def scenario() -> dict[str, Any]:
        async with upstream(fail="close") as broken, upstream(reply="fine thanks") as small:
            config = base_config(
                {"llama": [broken.url], "small": [small.url], "down": [broken.url]}
            )
            config["models"][0]["fallback"] = "small"
            options = {"hash_key": HASH_KEY, "usage_dir": tmp_path, "clock": lambda: NOW}
            async with gateway_stack(config, **options) as stack, peer_port(stack.gateway) as peers:
                assert (await stack.chat("one two three"))[0] == 200  # llama, by small
                assert (await stack.chat("one", model="down"))[0] == 503
                assert [e.served_by for e in stack.events] == ["small", None]
                assert [e.decision for e in stack.events] == ["allow", "allow"]
                status, body = await get_usage(stack, peers)
                assert status == 200
                answer: dict[str, Any] = body
                return answer

    answer = asyncio.run(scenario())
    assert answer["usage"] == [row("UTC", "2026-11", "alice", "alice", "small", 1, 3, 2)]


def test_the_gateway_process_keeps_its_tally_in_its_audit_dir_across_sigterm(
    tmp_path: Path,
) -> None:
    key = tmp_path / "keys" / "audit.pem"
    assert main(["audit", "keygen", "--out", str(key)]) == 0
    hash_key = tmp_path / "hash.key"
    hash_key.write_bytes(HASH_KEY)
    audit_dir = tmp_path / "audit"
    with FakeOpenAI(model="fake-model") as model:
        config = tmp_path / "gateway.yaml"
        config.write_text(yaml.safe_dump(base_config({"llama": [model.url]})))

        def run(requests: int) -> dict[str, Any]:
            """Start the gateway, send `requests` chats, read its usage, stop it with SIGTERM."""
            port, peers = free_port(), free_port()
            command = [sys.executable, "-m", "privatellm.cli.main", "gateway"]
            command += ["--config", str(config), "--host", "127.0.0.1", "--port", str(port)]
            command += ["--peer-port", str(peers), "--hash-key-file", str(hash_key)]
            command += ["--audit-dir", str(audit_dir), "--audit-signing-key", str(key)]
            with (tmp_path / "gateway.log").open("a") as log:
                process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
            try:
                url = f"http://127.0.0.1:{port}"
                statuses = [first_answer(url)] + [chat(url) for _ in range(requests - 1)]
                assert statuses == [200] * requests
                answer = peer_get(f"http://127.0.0.1:{peers}{USAGE_PATH}")
            finally:
                process.send_signal(signal.SIGTERM)
                process.wait(timeout=30)
            assert process.returncode == 0
            return answer

        months = {utc_month()}
        first = run(3)
        second = run(2)
        months.add(utc_month())
    assert [(r["subject"], r["model"], r["requests"]) for r in first["usage"]] == [
        ("alice", "llama", 3)
    ]
    assert first["usage"][0]["month"] in months
    on_disk = json.loads((audit_dir / USAGE_FILE).read_bytes())
    assert second["tally"] == first["tally"] == on_disk["tally"]
    assert [r["requests"] for r in second["usage"]] == [5]
    # The last two requests reached the file on SIGTERM, not only the peer port.
    assert on_disk["usage"] == second["usage"]
    # Idle between the last read and SIGTERM: no busy time was added meanwhile.
    assert on_disk["busy"] == second["busy"]
    assert {r["model"] for r in second["busy"]} <= {"llama"}
    before = {(r["zone"], r["month"]): r["replicaMilliseconds"] for r in first["busy"]}
    for r in second["busy"]:
        assert r["replicaMilliseconds"] >= before.get((r["zone"], r["month"]), 0)


def running_clock() -> Any:
    """A clock that starts at NOW and runs as time does: months known, time passing."""
    start = time.monotonic()
    return lambda: NOW + (time.monotonic() - start)


def busy_of(answer: dict[str, Any]) -> dict[tuple[str, str, str], int]:
    return {(r["zone"], r["month"], r["model"]): r["replicaMilliseconds"] for r in answer["busy"]}


def test_replica_busy_time_is_counted_while_requests_are_in_flight_and_not_while_idle(
    tmp_path: Path,
) -> None:
    async def scenario() -> list[dict[str, Any]]:
        answers: list[dict[str, Any]] = []

        async def read() -> None:
            status, body = await get_usage(stack, peers)
            assert status == 200
            answers.append(body)

        async with (
            upstream(delay=0.4) as slow,
            upstream(fail="close") as broken,
            upstream(delay=0.1) as small,
        ):
            config = usage_config(slow.url)
            config["models"].append(
                {"name": "down", "servedName": "fake-model", "endpoints": [broken.url]}
            )
            config["models"][-1]["fallback"] = "small"
            config["models"][1]["endpoints"] = [small.url]
            options = {"hash_key": HASH_KEY, "usage_dir": tmp_path, "clock": running_clock()}
            async with gateway_stack(config, **options) as stack, peer_port(stack.gateway) as peers:
                await read()
                assert (await stack.chat("one two three"))[0] == 200
                await read()
                await asyncio.sleep(0.3)
                await read()
                # Two at once on the one replica: its busy time is their union.
                both = await asyncio.gather(stack.chat("one"), stack.chat("two"))
                assert [status for status, _ in both] == [200, 200]
                await read()
                # Served by the fallback: its replica was the busy one.
                assert (await stack.chat("one", model="down"))[0] == 200
                assert stack.events[-1].served_by == "small"
                await read()
        return answers

    before, after, idle, overlapped, fallback = (busy_of(a) for a in asyncio.run(scenario()))
    assert before == {}
    zones = [("Europe/Amsterdam", "2026-12"), ("UTC", "2026-11")]
    assert set(after) == {(zone, month, "llama") for zone, month in zones}
    # The replica held the answer back 400 ms; one read to the next, with nothing in
    # flight, adds nothing.
    assert all(milliseconds >= 400 for milliseconds in after.values())
    assert idle == after
    for key, milliseconds in overlapped.items():
        assert 400 <= milliseconds - after[key] < 800
    for zone, month in zones:
        assert fallback[(zone, month, "small")] >= 100
        assert fallback[(zone, month, "llama")] == overlapped[(zone, month, "llama")]
    # "down" only for the moment its replica had the request, until it hung up.
    assert {(zone, month) for zone, month, _ in fallback} == set(zones)
    assert {model for _, _, model in fallback} <= {"llama", "small", "down"}


def utc_month() -> str:
    return time.strftime("%Y-%m", time.gmtime())


def peer_get(url: str) -> dict[str, Any]:
    """The peer port's answer at `url` (it may still be starting)."""
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {TOKEN}"})
    deadline = time.monotonic() + 30
    while True:
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                answer: dict[str, Any] = json.loads(response.read())
                return answer
        except urllib.error.HTTPError:
            raise
        except OSError:
            assert time.monotonic() < deadline, "the peer port did not open"
            time.sleep(0.2)
