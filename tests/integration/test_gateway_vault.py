"""The gateway seals prompts and responses with Transit data keys and fails closed without Vault."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import time
from typing import Any

import pytest

from privatellm.audit.payloads import erase_subject, open_payload
from privatellm.devcluster import DevVault
from privatellm.gateway.audit import AuditEvent
from privatellm.keys.envelope import DecryptionError, RecordContext
from privatellm.keys.tenancy import namespace_key_name
from privatellm.keys.transit import TransitClient
from tests.gateway.conftest import base_config, gateway_stack, upstream

KEY = namespace_key_name("team-a")


def _config(model_url: str, vault: DevVault) -> dict[str, Any]:
    config = base_config({"llama": [model_url]})
    config["encryption"] = {"vaultAddr": vault.addr, "dataKeySeconds": 0.5}
    return config


def _opened(transit: TransitClient, event: AuditEvent, kind: str) -> bytes:
    record = event.prompt_record if kind == "prompt" else event.response_record
    context = RecordContext("team-a", "llama", f"{event.request_id}/{kind}")
    return open_payload(transit, event.subject or "", context, base64.b64decode(record or ""))


def test_payloads_are_sealed_and_a_vault_outage_fails_closed(
    own_vault: DevVault, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(os.environ, "VAULT_TOKEN", own_vault.root_token)
    transit = TransitClient(own_vault.client())
    transit.create_key(KEY)

    async def scenario() -> None:
        async with (
            upstream(reply="The answer is 42.") as model,
            gateway_stack(_config(model.url, own_vault)) as stack,
        ):
            status, body = await stack.chat("my question, in confidence")
            assert status == 200, body
            sealed = stack.events[-1]
            prompt = _opened(transit, sealed, "prompt")
            assert json.loads(prompt)["messages"][0]["content"] == "my question, in confidence"
            answer = _opened(transit, sealed, "response")
            assert "The answer is 42." in answer.decode()
            # Nothing of the conversation is in the event in the clear.
            assert "confidence" not in json.dumps(sealed.as_dict())

            # Erasing the subject's key makes its stored payloads unreadable for good,
            # while the subject's requests once the cached data key is due get a new key.
            erase_subject(transit, sealed.subject or "")
            with pytest.raises(DecryptionError, match="Transit refused"):
                _opened(transit, sealed, "prompt")
            await asyncio.sleep(0.6)
            status, body = await stack.chat("after erasure")
            assert status == 200, body
            assert b"after erasure" in _opened(transit, stack.events[-1], "prompt")

            own_vault.stop()
            await asyncio.sleep(0.6)  # the cached data key has expired
            forwarded = len(model.requests)
            status, body = await stack.chat("secret while Vault is down")
            assert status == 503 and body["error"]["code"] == "encryption_unavailable"
            assert len(model.requests) == forwarded, "the prompt reached the model"
            refused = stack.events[-1]
            assert refused.prompt_record is None
            assert "Vault is down" not in json.dumps(refused.as_dict())

            # Dev mode keeps keys in memory: the restarted server needs its key again.
            own_vault.restart()
            TransitClient(own_vault.client()).create_key(KEY)
            deadline = time.monotonic() + 10
            while (await stack.chat("back again"))[0] != 200:
                assert time.monotonic() < deadline, "the gateway did not recover"
                await asyncio.sleep(0.2)
            assert stack.events[-1].prompt_record

    asyncio.run(scenario())
