"""The compromise drill and `privatellm keys` against a real Vault-API server.

Like tests/integration/test_vault.py: a dev-mode `vault` started for this module,
or the server named by BAO_ADDR/BAO_TOKEN or VAULT_ADDR/VAULT_TOKEN (then the
tests that stop a server skip). The CLI is called through its entry function
with the Vault address and token in the environment, as a person would run it.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

from privatellm.audit import Signer
from privatellm.audit.query import AuditQuery, query_log
from privatellm.cli.main import main
from privatellm.devcluster import DevVault
from privatellm.keys import (
    DecryptionError,
    Envelope,
    EnvelopeRecord,
    RecordContext,
    TransitClient,
    drill,
)
from privatellm.keys.drill import DrillAbortedError, FailureKind

from .conftest import VaultServer

NAMESPACE, MODEL = "tenant-a", "llama-8b"


def _point_cli_at(monkeypatch: pytest.MonkeyPatch, addr: str, token: str) -> None:
    # BAO_* win over VAULT_* in VaultClient.from_env, so these two are enough.
    monkeypatch.setenv("BAO_ADDR", addr)
    monkeypatch.setenv("BAO_TOKEN", token)


@pytest.fixture
def cli_env(vault: VaultServer, monkeypatch: pytest.MonkeyPatch) -> None:
    _point_cli_at(monkeypatch, vault.addr, vault.token)


@pytest.fixture
def key(vault: VaultServer) -> str:
    """A new Transit key, named uniquely so that tests never share one."""
    name = f"drill-{uuid.uuid4().hex[:10]}"
    vault.transit.create_key(name)
    return name


@dataclass(frozen=True)
class Stored:
    """A record written to disk, with what a reader needs to check it later."""

    path: Path
    context: RecordContext
    plaintext: bytes
    original: bytes


def _store(envelope: Envelope, path: Path) -> Stored:
    """Encrypt a record whose id is the file's stem and write it to `path`."""
    context = RecordContext(NAMESPACE, MODEL, record_id=path.stem)
    plaintext = f"prompt of {path.stem}".encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    record = envelope.encrypt(plaintext, context)
    path.write_bytes(record)
    return Stored(path, context, plaintext, record)


def _forged(envelope: Envelope, path: Path) -> Path:
    """A well-formed record whose wrapped key Transit never issued."""
    parsed = EnvelopeRecord.from_bytes(envelope.encrypt(b"x", RecordContext("a", "b", "c")))
    forged = f"vault:v1:{base64.b64encode(os.urandom(60)).decode()}"
    path.write_bytes(
        EnvelopeRecord(parsed.key_name, forged, parsed.nonce, parsed.ciphertext).to_bytes()
    )
    return path


def _assert_rewrapped(envelope: Envelope, stored: Stored, version: int) -> None:
    """Only the wrapped key changed, it names `version`, and the record still decrypts."""
    before = EnvelopeRecord.from_bytes(stored.original)
    after = EnvelopeRecord.from_bytes(stored.path.read_bytes())
    assert after.key_version == version, stored.path
    assert after.wrapped_key != before.wrapped_key
    assert (after.key_name, after.nonce, after.ciphertext) == (
        before.key_name,
        before.nonce,
        before.ciphertext,
    )
    assert envelope.decrypt(stored.path.read_bytes(), stored.context) == stored.plaintext


@pytest.mark.usefixtures("cli_env")
def test_compromise_cli_rewraps_every_record_then_revokes_the_old_version(
    vault: VaultServer, key: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    records = tmp_path / "records"
    envelope = Envelope(vault.transit, key)
    good = [_store(envelope, records / f"req-{i}.rec") for i in range(3)]
    good += [_store(envelope, records / "2025-06" / f"req-{i}.rec") for i in range(3, 5)]
    corrupt = records / "corrupt.rec"
    corrupt.write_bytes(b"PLEV\x01 overwritten by a bad disk")
    forged = _forged(envelope, records / "forged.rec")
    # A copy the drill does not know of, like a backup taken before the compromise.
    backup = tmp_path / "backup" / "req-0.rec"
    backup.parent.mkdir()
    shutil.copy(good[0].path, backup)

    code = main(["keys", "compromise", key, "--records", str(records), "--format", "json"])

    out, err = capsys.readouterr()
    assert code == 1, err
    report = json.loads(out)
    assert (report["key"], report["previous_version"], report["new_version"]) == (key, 1, 2)
    assert report["min_decryption_version"] == 2
    assert report["rewrapped"] == {"total": 5, "by_old_version": {"1": 5}}
    failures = {Path(f["path"]): (f["kind"], f["reason"]) for f in report["not_reprotected"]}
    assert failures.keys() == {corrupt, forged}
    assert failures[corrupt][0] == "corrupt" and "truncated" in failures[corrupt][1]
    assert failures[forged][0] == "refused" and "wrapped with v1" in failures[forged][1]

    for stored in good:
        _assert_rewrapped(envelope, stored, version=2)
    assert vault.transit.read_key(key).min_decryption_version == 2
    with pytest.raises(DecryptionError, match=r"'req-0'.*v1.*disallowed by policy") as caught:
        envelope.decrypt(backup.read_bytes(), good[0].context)
    assert caught.value.record_id == "req-0"
    assert corrupt.read_bytes() == b"PLEV\x01 overwritten by a bad disk"
    leftovers = [p for p in records.rglob("*") if p.is_file() and p.suffix != ".rec"]
    assert leftovers == []


@pytest.mark.usefixtures("cli_env")
def test_complete_drill_over_two_folders_exits_zero_and_prints_a_table(
    vault: VaultServer, key: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    envelope = Envelope(vault.transit, key)
    live, archive = tmp_path / "live", tmp_path / "archive"
    stored = [_store(envelope, live / f"audit-{i}.rec") for i in range(2)]
    stored.append(_store(envelope, archive / "audit-old.rec"))

    assert main(["keys", "compromise", key, "--records", str(live), "--records", str(archive)]) == 0

    out = capsys.readouterr().out
    assert f"key {key} (mount transit/): rotated v1 -> v2" in out
    assert "re-protected: 3 records" in out and "from v1  3" in out
    assert "NOT re-protected" not in out
    for record in stored:
        _assert_rewrapped(envelope, record, version=2)


def test_drill_reports_records_already_below_the_minimum_and_other_keys(
    vault: VaultServer, key: str, tmp_path: Path
) -> None:
    transit = vault.transit
    envelope = Envelope(transit, key)
    stale = _store(envelope, tmp_path / "stale.rec")
    assert drill.rotate_key(transit, key).latest_version == 2
    envelope.forget_data_keys()
    current = _store(envelope, tmp_path / "current.rec")
    transit.set_min_decryption_version(key, 2)
    other_key = f"{key}-other"
    transit.create_key(other_key)
    other_envelope = Envelope(transit, other_key)
    foreign = _store(other_envelope, tmp_path / "foreign.rec")

    report = drill.run_compromise_drill(transit, key, [tmp_path])

    assert (report.previous_version, report.new_version, report.min_decryption_version) == (
        2,
        3,
        3,
    )
    assert report.rewrapped_by_version == {2: 1}
    assert not report.complete
    assert [(f.path, f.kind) for f in report.failures] == [
        (foreign.path, FailureKind.OTHER_KEY),
        (stale.path, FailureKind.REFUSED),
    ]
    assert "disallowed by policy" in report.failures[1].reason
    _assert_rewrapped(envelope, current, version=3)
    # The other key's record is untouched and still readable with its own key.
    assert foreign.path.read_bytes() == foreign.original
    assert other_envelope.decrypt(foreign.original, foreign.context) == foreign.plaintext
    rows = {
        line.split()[0]: line.split()[1]
        for line in drill.format_compromise(report, "table").splitlines()[5:]
    }
    assert rows == {str(foreign.path): "other-key", str(stale.path): "refused"}


def test_failed_write_stops_the_drill_before_the_minimum_is_raised(
    vault: VaultServer, key: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    transit = vault.transit
    envelope = Envelope(transit, key)
    stored = [_store(envelope, tmp_path / f"req-{i}.rec") for i in range(3)]
    write = drill.write_atomically

    def disk_full_on_second_record(path: Path, data: bytes) -> None:
        if path.name == "req-1.rec":
            raise OSError(28, "No space left on device")
        write(path, data)

    monkeypatch.setattr(drill, "write_atomically", disk_full_on_second_record)
    with pytest.raises(DrillAbortedError, match=r"1 of 3 records.*req-1.rec.*NOT raised"):
        drill.run_compromise_drill(transit, key, [tmp_path])

    assert transit.read_key(key).min_decryption_version == 1
    assert [EnvelopeRecord.from_bytes(s.path.read_bytes()).key_version for s in stored] == [
        2,
        1,
        1,
    ]
    for record in stored:
        assert envelope.decrypt(record.path.read_bytes(), record.context) == record.plaintext

    monkeypatch.undo()
    report = drill.run_compromise_drill(transit, key, [tmp_path])
    assert report.complete and report.rewrapped_by_version == {1: 2, 2: 1}
    assert report.min_decryption_version == 3
    for record in stored:
        _assert_rewrapped(envelope, record, version=3)


@pytest.mark.usefixtures("cli_env")
def test_rotate_cli_prints_the_new_latest_version(
    vault: VaultServer, key: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["keys", "rotate", key]) == 0
    assert f"{key} (mount transit/): rotated v1 -> v2" in capsys.readouterr().out
    assert main(["keys", "rotate", key, "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["latest_version"] == 3
    assert vault.transit.read_key(key).latest_version == 3


@pytest.mark.usefixtures("cli_env")
def test_a_rotation_is_recorded_in_the_audit_log_first(
    vault: VaultServer, key: str, tmp_path: Path
) -> None:
    signer = Signer.generate()
    signing_key = tmp_path / "audit.pem"
    signing_key.write_bytes(signer.private_pem())
    audit = ["--audit-dir", str(tmp_path / "audit"), "--audit-signing-key", str(signing_key)]
    assert main(["keys", "rotate", key, *audit]) == 0
    # Without a signing key nothing is recorded, so nothing is rotated.
    assert main(["keys", "rotate", key, "--audit-dir", str(tmp_path / "audit")]) == 2
    assert vault.transit.read_key(key).latest_version == 2
    (record,) = query_log(tmp_path / "audit", signer.public_key, AuditQuery()).records
    assert (record["action"], record["details"]["key"]) == ("key.rotate", f"transit/{key}")
    assert record["details"]["vault_policies"] == ["root"]


def _keys_command(command: str, key: str, records: Path) -> list[str]:
    """`keys rotate KEY` or `keys compromise KEY --records DIR`."""
    return ["keys", command, key, *(["--records", str(records)] if command == "compromise" else [])]


@pytest.mark.usefixtures("cli_env")
@pytest.mark.parametrize("command", ["rotate", "compromise"])
def test_unknown_key_exits_2_with_a_message(
    command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = f"missing-{uuid.uuid4().hex[:8]}"
    assert main(_keys_command(command, missing, tmp_path)) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err == (
        f"privatellm keys {command}: Transit key '{missing}' not found under mount 'transit/'\n"
    )


@pytest.mark.parametrize("command", ["rotate", "compromise"])
def test_stopped_vault_exits_2_with_a_message(
    own_vault: DevVault,
    command: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    TransitClient(own_vault.client()).create_key("records")
    own_vault.stop()
    _point_cli_at(monkeypatch, own_vault.addr, own_vault.root_token)
    capsys.readouterr()  # the server's own log lines

    assert main(_keys_command(command, "records", tmp_path)) == 2

    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith(f"privatellm keys {command}: Vault is unreachable, nothing was changed: ")
    assert f"cannot reach {own_vault.addr}" in err and "Traceback" not in err


def test_vault_lost_during_the_drill_leaves_the_minimum_alone(
    own_vault: DevVault, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    transit = TransitClient(own_vault.client())
    transit.create_key("records")
    envelope = Envelope(transit, "records")
    for i in range(3):
        _store(envelope, tmp_path / "records" / f"req-{i}.rec")
    write = drill.write_atomically

    def vault_dies_after_the_first_write(path: Path, data: bytes) -> None:
        write(path, data)
        own_vault.stop()

    monkeypatch.setattr(drill, "write_atomically", vault_dies_after_the_first_write)
    with pytest.raises(DrillAbortedError) as caught:
        drill.run_compromise_drill(transit, "records", [tmp_path / "records"])
    message = str(caught.value)
    assert "1 of 3 records: Vault became unreachable" in message
    assert "min_decryption_version was NOT raised (still 1)" in message
