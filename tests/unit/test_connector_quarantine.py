"""Quarantine: items held back by a filter are kept sealed, described without content.

Transit is `LocalKeyring` from test_envelope (real AES, no server);
tests/integration/test_connector_quarantine.py runs the same against a real Vault-API server.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from privatellm.cli.main import main
from privatellm.connectors.quarantine import (
    EntryConflictError,
    EntryNotFoundError,
    InvalidItemIdError,
    ItemMeta,
    Quarantine,
    QuarantineError,
    read_entries,
)
from privatellm.keys.drill import find_records
from privatellm.keys.envelope import DecryptionError, Envelope
from privatellm.keys.tenancy import namespace_key_name
from privatellm.keys.transit import VaultUnavailableError
from tests.unit.test_envelope import LocalKeyring

NAMESPACE = "team-a"
KEY = namespace_key_name(NAMESPACE)
SECRET = b"IBAN DE44 5001 0517 5407 3249 31, please wire today"


@pytest.fixture
def keyring() -> LocalKeyring:
    ring = LocalKeyring()
    ring.create_key(KEY)
    return ring


def quarantine(directory: Path, keyring: LocalKeyring, connector: str = "mail") -> Quarantine:
    return Quarantine(directory, Envelope(keyring, KEY), NAMESPACE, connector, clock=lambda: 50.0)


def test_an_item_is_kept_sealed_and_described_without_its_content(
    tmp_path: Path, keyring: LocalKeyring
) -> None:
    store = quarantine(tmp_path / "q", keyring)
    entry = store.put(
        "msg-1", SECRET, "pii: iban", ItemMeta(content_type="message/rfc822", received=40.0)
    )
    record = (tmp_path / "q" / "msg-1.rec").read_bytes()
    description = (tmp_path / "q" / "msg-1.json").read_bytes()
    for stored in (record, description):
        assert b"IBAN" not in stored and b"wire" not in stored
    assert record.startswith(b"PLEV\x01")
    assert json.loads(description) == {
        "version": 1,
        "item_id": "msg-1",
        "namespace": NAMESPACE,
        "connector": "mail",
        "key_name": KEY,
        "received": 40.0,
        "quarantined": 50.0,
        "reason": "pii: iban",
        "content_type": "message/rfc822",
        "size": len(SECRET),
        "sha256": entry.sha256,
    }
    assert stat.S_IMODE((tmp_path / "q").stat().st_mode) == 0o700
    assert stat.S_IMODE((tmp_path / "q" / "msg-1.rec").stat().st_mode) == 0o600
    assert store.list() == [entry]
    assert store.get("msg-1") == SECRET


def test_hostile_item_ids_are_refused(tmp_path: Path, keyring: LocalKeyring) -> None:
    store = quarantine(tmp_path / "q", keyring)
    for item_id in ("../escape", "a/b", "/etc/passwd", ".hidden", "..", "", "a\x00b", "x" * 201):
        with pytest.raises(InvalidItemIdError):
            store.put(item_id, b"data", "filter")
        with pytest.raises(InvalidItemIdError):
            store.get(item_id)
    assert not (tmp_path / "escape.rec").exists()
    assert not (tmp_path / "q").exists()


def test_the_same_item_twice_is_kept_once_and_an_id_is_never_reused(
    tmp_path: Path, keyring: LocalKeyring
) -> None:
    store = quarantine(tmp_path, keyring)
    first = store.put("item-7", b"first", "injection")
    assert store.put("item-7", b"first", "injection, again") == first
    with pytest.raises(EntryConflictError):
        store.put("item-7", b"different", "injection")
    assert store.get("item-7") == b"first"
    assert keyring.datakeys_issued == 1


def test_a_record_bound_elsewhere_or_altered_does_not_decrypt(
    tmp_path: Path, keyring: LocalKeyring
) -> None:
    store = quarantine(tmp_path, keyring)
    store.put("one", b"first item", "pii")
    store.put("two", b"other item", "pii")
    record = tmp_path / "one.rec"

    # Moved onto another item's name: the associated data names the item id.
    (tmp_path / "two.rec").write_bytes(record.read_bytes())
    with pytest.raises(DecryptionError, match="authentication failed"):
        store.get("two")

    # Altered in place.
    data = bytearray(record.read_bytes())
    data[-3] ^= 0x40
    record.write_bytes(bytes(data))
    with pytest.raises(DecryptionError, match=r"'quarantine/one'.*authentication failed"):
        store.get("one")


def test_another_connector_cannot_read_or_list_the_items(
    tmp_path: Path, keyring: LocalKeyring
) -> None:
    quarantine(tmp_path, keyring).put("one", b"item", "pii")
    other = quarantine(tmp_path, keyring, connector="crm")
    assert other.list() == []
    with pytest.raises(QuarantineError, match="connector 'mail'"):
        other.get("one")
    # Relabelling the description does not help: the record is bound to its connector.
    description = tmp_path / "one.json"
    description.write_text(description.read_text().replace('"mail"', '"crm"'))
    with pytest.raises(DecryptionError):
        other.get("one")


def test_an_altered_description_is_reported(tmp_path: Path, keyring: LocalKeyring) -> None:
    store = quarantine(tmp_path, keyring)
    store.put("one", b"item", "pii")
    description = tmp_path / "one.json"
    fields = json.loads(description.read_text())
    fields["sha256"] = "0" * 64
    description.write_text(json.dumps(fields))
    with pytest.raises(QuarantineError, match="was altered"):
        store.get("one")
    with pytest.raises(EntryNotFoundError):
        store.get("missing")


def test_nothing_is_stored_when_vault_is_unreachable(tmp_path: Path, keyring: LocalKeyring) -> None:
    keyring.reachable = False
    with pytest.raises(VaultUnavailableError):
        quarantine(tmp_path, keyring).put("one", b"item", "pii")
    assert list(tmp_path.iterdir()) == []


def test_records_are_found_by_the_compromise_drill(tmp_path: Path, keyring: LocalKeyring) -> None:
    store = quarantine(tmp_path, keyring)
    store.put("one", b"item", "pii")
    store.put("two", b"item 2", "pii")
    assert find_records([tmp_path]) == [tmp_path / "one.rec", tmp_path / "two.rec"]


def test_the_list_command_needs_no_vault(
    tmp_path: Path, keyring: LocalKeyring, capsys: pytest.CaptureFixture[str]
) -> None:
    store = quarantine(tmp_path, keyring)
    store.put("b-item", b"x", "dlp: internal term", ItemMeta(received=2.0))
    store.put("a-item", b"yy", "pii: iban", ItemMeta(received=1.0))
    assert [e.item_id for e in read_entries(tmp_path)] == ["a-item", "b-item"]
    assert main(["quarantine", "list", "--dir", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:3] == ["ITEM_ID", "RECEIVED", "NAMESPACE"]
    assert lines[1].split()[:4] == ["a-item", "1970-01-01T00:00:01Z", "team-a", "mail"]
    assert lines[2].endswith("dlp: internal term")
    assert main(["quarantine", "list", "--dir", str(tmp_path), "--format", "json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["item_id"] for r in rows] == ["a-item", "b-item"]
    assert main(["quarantine", "list", "--dir", str(tmp_path / "nowhere")]) == 2


def test_get_refuses_without_a_reason_or_an_audit_log(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VAULT_ADDR", "http://127.0.0.1:9")
    monkeypatch.setenv("VAULT_TOKEN", "unused")
    base = ["quarantine", "get", "one", "--dir", str(tmp_path), "--namespace", NAMESPACE]
    base += ["--connector", "mail", "--audit-dir", str(tmp_path / "audit")]
    base += ["--audit-signing-key", str(tmp_path / "key.pem")]
    with pytest.raises(SystemExit) as exited:
        main(base)
    assert exited.value.code == 2
    assert "--reason" in capsys.readouterr().err
    assert main([*base, "--reason", "   "]) == 2
    assert "--reason must say why" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([*base[:-4], "--reason", "ticket 12"])
    assert "--audit-dir" in capsys.readouterr().err
    (tmp_path / "exists").write_bytes(b"")
    assert main([*base, "--reason", "ticket 12", "--out", str(tmp_path / "exists")]) == 2
    assert "exists; name a new file" in capsys.readouterr().err
    assert not (tmp_path / "audit").exists()
    assert os.listdir(tmp_path) == ["exists"]
