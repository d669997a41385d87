"""The audit trail with a real Vault: decryption needs rights and is recorded; erasure shreds."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any

import pytest

from privatellm.audit import AuditLog, Signer, verify_log
from privatellm.audit.query import AuditQuery, query_log
from privatellm.cli.main import main
from privatellm.gateway.audit import AuditLogSink
from privatellm.keys.tenancy import namespace_key_name
from privatellm.keys.transit import TransitClient
from tests.gateway.conftest import BOB_KEY, base_config, gateway_stack, upstream
from tests.integration.conftest import VaultServer

AUDITOR_POLICY = """
path "transit/decrypt/*" { capabilities = ["update"] }
"""


def _token(vault: VaultServer, name: str, policies: list[str]) -> str:
    created = vault.client.request(
        "POST", "auth/token/create", {"policies": policies, "display_name": name, "ttl": "10m"}
    )
    return str(created["auth"]["client_token"])


def _cli(monkeypatch: pytest.MonkeyPatch, token: str, *args: str) -> int:
    monkeypatch.setitem(os.environ, "VAULT_TOKEN", token)
    return main(["audit", *args])


def test_decryption_is_permitted_recorded_and_erasure_shreds(
    vault: VaultServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setitem(os.environ, "VAULT_ADDR", vault.addr)
    monkeypatch.setitem(os.environ, "VAULT_TOKEN", vault.token)
    monkeypatch.delitem(os.environ, "BAO_ADDR", raising=False)
    monkeypatch.delitem(os.environ, "BAO_TOKEN", raising=False)
    TransitClient(vault.client).create_key(namespace_key_name("team-a"))
    vault.client.request("PUT", "sys/policies/acl/auditor", {"policy": AUDITOR_POLICY})
    signing_key = tmp_path / "audit.pem"
    assert main(["audit", "keygen", "--out", str(signing_key)]) == 0
    public_key = f"{signing_key}.pub"
    log_dir, access_log = tmp_path / "log", tmp_path / "access"

    log = AuditLog(log_dir, Signer.from_file(signing_key))

    async def traffic() -> None:
        async with upstream(reply="Your balance is 12 euros.") as model:
            config: dict[str, Any] = base_config({"llama": [model.url]})
            config["encryption"] = {"vaultAddr": vault.addr}
            async with gateway_stack(config, AuditLogSink(log)) as stack:
                assert (await stack.chat("what is my balance?"))[0] == 200
                assert (await stack.chat("and my last payment?"))[0] == 200
                assert (await stack.chat("let me in", key=BOB_KEY))[0] == 403

    try:
        asyncio.run(traffic())
    finally:
        log.close()
    capsys.readouterr()

    query = ["query", str(log_dir), "--public-key", public_key, "--subject", "alice"]
    recorded = ["--access-log", str(access_log), "--signing-key", str(signing_key)]

    # Without an access log to record it in, nothing is decrypted.
    auditor = _token(vault, "carol", ["auditor"])
    assert _cli(monkeypatch, auditor, *query, "--decrypt") == 2
    assert "--access-log" in capsys.readouterr().err

    assert _cli(monkeypatch, auditor, *query, "--decrypt", *recorded, "--format", "json") == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [json.loads(r["prompt_text"])["messages"][0]["content"] for r in rows] == [
        "what is my balance?",
        "and my last payment?",
    ]
    assert all("12 euros" in r["response_text"] for r in rows)

    # A token without rights on the keys is refused, and the attempt is on record too.
    outsider = _token(vault, "mallory", ["default"])
    assert _cli(monkeypatch, outsider, *query, "--decrypt", *recorded) == 2
    assert "Vault refused to decrypt" in capsys.readouterr().err

    # Erasing alice: her payloads can no longer be read; the trail still verifies.
    assert _cli(monkeypatch, vault.token, "erase", "--subject", "alice", *recorded) == 0
    capsys.readouterr()
    assert _cli(monkeypatch, auditor, *query, "--decrypt", *recorded, "--format", "json") == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(rows) == 2
    assert all(r["prompt_text"].startswith("[not readable:") for r in rows)
    assert all("encryption key not found" in r["response_text"] for r in rows)
    signer = Signer.from_file(signing_key)
    assert verify_log(log_dir, signer.public_key).ok

    accesses = query_log(access_log, signer.public_key, AuditQuery()).records
    assert [(a["action"], a["subject"]) for a in accesses] == [
        ("audit.decrypt", "token-carol"),
        ("audit.decrypt", "token-mallory"),
        ("audit.erasure", "token"),
        ("audit.decrypt", "token-carol"),
    ]
    first = accesses[0]["details"]
    assert first["query"]["subject"] == "alice" and len(first["request_ids"]) == 2
    assert first["vault_policies"] == ["auditor", "default"]
    assert accesses[2]["details"]["vault_policies"] == ["root"]
