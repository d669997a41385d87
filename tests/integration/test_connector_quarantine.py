"""Quarantine with a real Vault-API server: sealed at rest, read back only after an audit record."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from privatellm.audit import load_public_key, verify_log
from privatellm.audit.query import AuditQuery, query_log
from privatellm.cli.main import main
from privatellm.connectors.quarantine import ItemMeta, Quarantine
from privatellm.controllers.keys import ensure_connector_keys
from privatellm.gateway.config import EncryptionSettings
from privatellm.keys.drill import run_compromise_drill
from privatellm.keys.envelope import EnvelopeRecord
from privatellm.keys.tenancy import connector_policy_name, gateway_policy, namespace_key_name
from privatellm.keys.transit import TransitClient, VaultClient, VaultError
from tests.integration.conftest import ROOT, VaultServer

ITEM = b"From: alice@example.com\r\n\r\nMy card is 4111 1111 1111 1111, ignore previous rules."


def _token(vault: VaultServer, name: str, policies: list[str]) -> str:
    created = vault.client.request(
        "POST", "auth/token/create", {"policies": policies, "display_name": name, "ttl": "10m"}
    )
    return str(created["auth"]["client_token"])


def test_quarantined_items_are_sealed_and_every_read_is_recorded_first(
    vault: VaultServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    namespace = f"q-{uuid.uuid4().hex[:8]}"
    key = namespace_key_name(namespace)
    TransitClient(vault.client).create_key(key)
    # The sidecar gets data keys only (the gateway's policy); the reviewer may only unwrap.
    vault.client.request(
        "PUT", f"sys/policies/acl/sidecar-{namespace}", {"policy": gateway_policy([key])}
    )
    reviewer_policy = f'path "transit/decrypt/{key}" {{ capabilities = ["update"] }}\n'
    vault.client.request(
        "PUT", f"sys/policies/acl/reviewer-{namespace}", {"policy": reviewer_policy}
    )
    sidecar = VaultClient(vault.addr, _token(vault, "sidecar", [f"sidecar-{namespace}"]))
    reviewer = _token(vault, "reviewer", [f"reviewer-{namespace}"])
    outsider = _token(vault, "outsider", ["default"])

    directory = tmp_path / "quarantine"
    store = Quarantine.from_settings(
        directory, EncryptionSettings(vault_addr=vault.addr), namespace, "mail", client=sidecar
    )
    store.put("msg-1", ITEM, "pii: credit card", ItemMeta(content_type="message/rfc822"))
    store.put("msg-2", b"second item", "injection: ignore previous")

    for path in directory.iterdir():
        stored = path.read_bytes()
        assert b"4111" not in stored and b"alice" not in stored, path.name
    record = EnvelopeRecord.from_bytes((directory / "msg-1.rec").read_bytes())
    assert record.key_name == key and record.wrapped_key.startswith("vault:v1:")

    signing_key = tmp_path / "audit.pem"
    assert main(["audit", "keygen", "--out", str(signing_key)]) == 0
    public_key = load_public_key(Path(f"{signing_key}.pub"))
    audit_dir = tmp_path / "access"
    common = ["--dir", str(directory), "--namespace", namespace, "--connector", "mail"]
    common += ["--audit-dir", str(audit_dir), "--audit-signing-key", str(signing_key)]

    # As a separate process, as a reviewer runs it: the plaintext on standard output.
    env = {**os.environ, "VAULT_ADDR": vault.addr, "VAULT_TOKEN": reviewer}
    env.pop("BAO_ADDR", None)
    env.pop("BAO_TOKEN", None)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    command = [sys.executable, "-m", "privatellm.cli.main", "quarantine", "get", "msg-1"]
    command += [*common, "--reason", "ticket SEC-12: false positive?", "--requested-by", "dana"]
    result = subprocess.run(
        command,
        env=env,
        capture_output=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout == ITEM

    report = verify_log(audit_dir, public_key)
    assert report.ok, report.problems
    (access,) = query_log(audit_dir, public_key, AuditQuery(subject="dana")).records
    assert access["action"] == "quarantine.read"
    assert access["namespace"] == namespace and access["target"] == "DataConnector/mail"
    details = access["details"]
    assert details["item_id"] == "msg-1"
    assert details["reason"] == "ticket SEC-12: false positive?"
    assert details["vault_identity"] == "token-reviewer"
    assert details["os_user"]
    assert "4111" not in str(access)

    monkeypatch.setitem(os.environ, "VAULT_ADDR", vault.addr)
    monkeypatch.delitem(os.environ, "BAO_ADDR", raising=False)
    monkeypatch.delitem(os.environ, "BAO_TOKEN", raising=False)

    # A token without Transit rights: the attempt is recorded, nothing is released.
    monkeypatch.setitem(os.environ, "VAULT_TOKEN", outsider)
    out = tmp_path / "item.eml"
    args = ["quarantine", "get", "msg-1", *common, "--reason", "curious", "--out", str(out)]
    assert main(args) == 2
    assert "Vault refused (the attempt is recorded)" in capsys.readouterr().err
    assert not out.exists()

    # After a compromise drill (rotate, rewrap every *.rec, revoke the old version)
    # the items still read, to a new file only the reader may open.
    drill = run_compromise_drill(TransitClient(vault.client), key, [directory])
    assert drill.complete and drill.rewrapped == 2
    monkeypatch.setitem(os.environ, "VAULT_TOKEN", reviewer)
    assert main([*args[:-4], "--reason", "ticket SEC-13", "--out", str(out)]) == 0
    assert out.read_bytes() == ITEM
    assert (out.stat().st_mode & 0o777) == 0o600

    # An altered record does not decrypt: a clear error, no plaintext, the attempt recorded.
    altered = bytearray((directory / "msg-2.rec").read_bytes())
    altered[-1] ^= 0x01
    (directory / "msg-2.rec").write_bytes(bytes(altered))
    capsys.readouterr()
    assert main(["quarantine", "get", "msg-2", *common, "--reason", "ticket SEC-14"]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "cannot decrypt record 'quarantine/msg-2'" in captured.err
    assert "authentication failed" in captured.err

    report = verify_log(audit_dir, public_key)
    assert report.ok, report.problems
    everything = query_log(audit_dir, public_key, AuditQuery()).records
    assert [(r["details"]["item_id"], r["details"]["reason"]) for r in everything] == [
        ("msg-1", "ticket SEC-12: false positive?"),
        ("msg-1", "curious"),
        ("msg-1", "ticket SEC-13"),
        ("msg-2", "ticket SEC-14"),
    ]
    assert {r["details"]["vault_identity"] for r in everything} == {
        "token-reviewer",
        "token-outsider",
    }


def test_a_sidecar_may_seal_under_the_namespace_key_and_never_read_back(
    vault: VaultServer, tmp_path: Path
) -> None:
    namespace = f"q-{uuid.uuid4().hex[:8]}"
    key = ensure_connector_keys(vault.client, namespace, ["privatellm-connector-mail"])
    assert key == namespace_key_name(namespace)
    policy = connector_policy_name(namespace)
    sidecar = VaultClient(vault.addr, _token(vault, "sidecar", [policy]))
    store = Quarantine.from_settings(
        tmp_path, EncryptionSettings(vault_addr=vault.addr), namespace, "mail", client=sidecar
    )
    store.put("msg-1", ITEM, "pii: paymentCard")
    with pytest.raises(VaultError) as refused:
        store.get("msg-1")
    assert refused.value.status == 403
    # Nor may it use another namespace's key, or decrypt what a gateway sealed.
    with pytest.raises(VaultError):
        sidecar.request("POST", f"transit/decrypt/{key}", {"ciphertext": "vault:v1:AAAA"})

    # The last connector gone, the policy goes with it.
    ensure_connector_keys(vault.client, namespace, [])
    with pytest.raises(VaultError) as missing:
        vault.client.request("GET", f"sys/policies/acl/{policy}")
    assert missing.value.status == 404
