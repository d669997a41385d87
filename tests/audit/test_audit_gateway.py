"""The gateway writing to the audit log, and the `privatellm audit` command reading it back."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import os
import threading
from pathlib import Path
from typing import Any

import pytest

from privatellm.audit import AuditLog, Signer, verify_log
from privatellm.audit.query import AuditQuery, query_log
from privatellm.cli.main import main
from privatellm.gateway.audit import AuditLogSink
from tests.gateway.conftest import ALICE_KEY, BOB_KEY, base_config, gateway_stack, upstream

HASH_KEY = b"k" * 32


@pytest.fixture
def keys(tmp_path: Path) -> tuple[Path, Path]:
    private = tmp_path / "keys" / "audit.pem"
    assert main(["audit", "keygen", "--out", str(private)]) == 0
    return private, private.with_name("audit.pem.pub")


def run_requests(log_dir: Path, private: Path, scenario: Any) -> None:
    log = AuditLog(log_dir, Signer.from_file(private))

    async def go() -> None:
        async with upstream(reply="fine, thanks") as model:
            config = base_config({"llama": [model.url]})
            async with gateway_stack(config, AuditLogSink(log, pod="gw-0"), hash_key=HASH_KEY) as s:
                await scenario(s)

    try:
        asyncio.run(go())
    finally:
        log.close()


def test_every_request_is_in_the_log_before_its_answer(
    tmp_path: Path, keys: tuple[Path, Path]
) -> None:
    private, _ = keys
    log_dir = tmp_path / "log"

    async def scenario(stack: Any) -> None:
        for text in ("hello", "my IBAN is NL91ABNA0417164300", "hello"):
            status, body = await stack.chat(text)
            assert status == 200, body
        assert (await stack.chat("hello", key=BOB_KEY))[0] == 403
        assert (await stack.post("/v1/chat/completions", b"{not json"))[0] == 400
        # Each answer was given after its record was durable, so the log has it now.
        assert len(query_log(log_dir, public_key, AuditQuery()).records) == 6

    public_key = Signer.from_file(private).public_key
    run_requests(log_dir, private, scenario)
    report = verify_log(log_dir, public_key)
    assert report.ok and report.records == 6
    start, *records = query_log(log_dir, public_key, AuditQuery()).records
    assert (start["kind"], start["action"], start["namespace"]) == (
        "control",
        "gateway.start",
        "team-a",
    )
    assert [r["status"] for r in records] == [200, 200, 200, 403, 400]
    assert [r["subject"] for r in records] == ["alice", "alice", "alice", "bob", "alice"]
    assert {r["pod"] for r in records} == {"gw-0"}
    # Equal prompts have equal keyed hashes; the prompt itself is not in the record.
    assert records[0]["prompt_hash"] == records[2]["prompt_hash"] != records[1]["prompt_hash"]
    assert "NL91ABNA0417164300" not in json.dumps(records)


def test_the_tuesday_audit_from_the_command_line(
    tmp_path: Path, keys: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    private, public = keys
    log_dir = tmp_path / "log"

    async def scenario(stack: Any) -> None:
        for text in ("first question", "second question"):
            assert (await stack.chat(text))[0] == 200
        assert (await stack.chat("not allowed", key=BOB_KEY))[0] == 403

    run_requests(log_dir, private, scenario)
    log = AuditLog(log_dir, Signer.from_file(private))
    log.seal()
    log.close()
    capsys.readouterr()

    common = ["audit", "query", str(log_dir), "--public-key", str(public)]
    assert main([*common, "--subject", "alice", "--format", "json"]) == 0
    out, err = capsys.readouterr()
    rows = [json.loads(line) for line in out.splitlines()]
    assert [r["subject"] for r in rows] == ["alice", "alice"]
    assert "2 records from 1 verified segments" in err

    assert main([*common, "--subject", "bob", "--format", "csv"]) == 0
    table = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [(r["subject"], r["decision"], r["status"]) for r in table] == [("bob", "deny", "403")]

    # A day with no traffic has an empty, but still verified, trail.
    assert main([*common, "--from", "2001-01-02", "--to", "2001-01-03"]) == 0
    out, err = capsys.readouterr()
    assert out.splitlines()[0].startswith("TIME") and len(out.splitlines()) == 1
    assert "(1 outside the time range)" in err

    hash_key = tmp_path / "hash.key"
    hash_key.write_bytes(HASH_KEY)
    by_text = ["--prompt-text", "second question", "--hash-key-file", str(hash_key)]
    assert main([*common, *by_text, "--format", "json"]) == 0
    assert [json.loads(r)["seq"] for r in capsys.readouterr().out.splitlines()] == [3]

    assert main(["audit", "verify", str(log_dir), "--public-key", str(public)]) == 0
    assert "OK: 4 records in 2 segments" in capsys.readouterr().out


def test_a_tampered_log_gives_no_trail_and_names_the_place(
    tmp_path: Path, keys: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    private, public = keys
    log_dir = tmp_path / "log"

    async def scenario(stack: Any) -> None:
        for _ in range(3):
            assert (await stack.chat("hello"))[0] == 200

    run_requests(log_dir, private, scenario)
    segment = log_dir / "00000001.log"
    segment.write_bytes(segment.read_bytes().replace(b'"alice"', b'"alicf"', 1))
    capsys.readouterr()
    common = ["--public-key", str(public)]
    assert main(["audit", "query", str(log_dir), *common, "--subject", "alice"]) == 1
    err = capsys.readouterr().err
    assert "failed verification; no trail is given" in err
    assert "00000001.log at offset 61: chain hash does not follow" in err
    assert main(["audit", "verify", str(log_dir), *common, "--format", "json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] is False and report["problems"][0]["offset"] == 61


def test_no_answer_without_a_record(tmp_path: Path, keys: tuple[Path, Path]) -> None:
    """When the log cannot keep a record, the client gets 503 and not the model's answer."""
    private, _ = keys
    log = AuditLog(tmp_path / "log", Signer.from_file(private))
    log.close()  # a log that refuses every record

    async def go() -> None:
        async with upstream(reply="the secret answer") as model:
            config = base_config({"llama": [model.url]})
            async with gateway_stack(config, AuditLogSink(log)) as stack:
                status, body = await stack.chat("hello")
                assert status == 503, body
                assert body["error"]["code"] == "audit_unavailable"
                assert "secret" not in json.dumps(body)
                # A stream has sent its text already: its last event is the error.
                message = {"role": "user", "content": "x"}
                async with stack.http.post(
                    stack.url + "/v1/chat/completions",
                    json={"model": "llama", "stream": True, "messages": [message]},
                    headers={"Authorization": f"Bearer {ALICE_KEY}"},
                ) as response:
                    text = (await response.read()).decode()
                events = [e for e in text.split("\n\n") if e.startswith("data:")]
                assert "audit_unavailable" in events[-2] and events[-1] == "data: [DONE]"

    asyncio.run(go())


def test_the_answer_waits_until_the_record_is_on_disk(
    tmp_path: Path, keys: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """While fdatasync has not returned, the client has no answer; then it has."""
    private, _ = keys
    disk_done = threading.Event()
    real_fdatasync = os.fdatasync

    def slow_disk(fd: int) -> None:
        disk_done.wait(10)
        real_fdatasync(fd)

    monkeypatch.setattr(os, "fdatasync", slow_disk)

    async def scenario(stack: Any) -> None:
        request = asyncio.ensure_future(stack.chat("hello"))
        await asyncio.sleep(0.5)
        assert not request.done(), "answered before the record was on disk"
        disk_done.set()
        status, _ = await asyncio.wait_for(request, 10)
        assert status == 200

    run_requests(tmp_path / "log", private, scenario)
