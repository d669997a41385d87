"""Transit keys and envelope records against a real Vault-API server.

The server is a dev-mode `vault` started for this module (see
privatellm.devcluster.vault). With BAO_ADDR/BAO_TOKEN or VAULT_ADDR/VAULT_TOKEN
set, the tests use that server instead (it needs a token that may mount Transit
and manage keys); the tests that stop the server or configure its auth methods
then skip.
"""

from __future__ import annotations

import base64
import os
import uuid
from pathlib import Path

import pytest
import yaml

from privatellm.devcluster import DevVault
from privatellm.keys import (
    DecryptionError,
    Envelope,
    EnvelopeRecord,
    RecordContext,
    TransitClient,
    VaultClient,
    VaultError,
    VaultUnavailableError,
)

from .conftest import Cluster, VaultServer

CONTEXT = RecordContext(namespace="tenant-a", model="llama-8b", record_id="audit-42")


@pytest.fixture
def key(vault: VaultServer) -> str:
    """A new Transit key, named uniquely so that tests never share one."""
    name = f"test-{uuid.uuid4().hex[:10]}"
    vault.transit.create_key(name, auto_rotate_period=86400)
    return name


def test_create_and_read_key(vault: VaultServer, key: str) -> None:
    info = vault.transit.read_key(key)
    assert (info.name, info.type, info.derived) == (key, "aes256-gcm96", False)
    assert (info.latest_version, info.min_decryption_version, info.versions) == (1, 1, (1,))
    assert info.auto_rotate_period_seconds == 86400


def test_missing_key_is_a_vault_error(vault: VaultServer) -> None:
    with pytest.raises(VaultError) as caught:
        vault.transit.read_key(f"missing-{uuid.uuid4().hex[:8]}")
    assert caught.value.status == 404
    assert not isinstance(caught.value, VaultUnavailableError)


def test_datakey_and_envelope_round_trip(vault: VaultServer, key: str) -> None:
    plaintext, wrapped = vault.transit.datakey(key)
    assert len(plaintext) == 32 and wrapped.startswith("vault:v1:")
    assert vault.transit.decrypt_datakey(key, wrapped) == plaintext

    envelope = Envelope(vault.transit, key)
    record = envelope.encrypt(b"prompt: summarise the claim", CONTEXT)
    assert EnvelopeRecord.from_bytes(record).key_version == 1
    assert envelope.decrypt(record, CONTEXT) == b"prompt: summarise the claim"
    elsewhere = RecordContext("tenant-b", "llama-8b", "audit-42")
    with pytest.raises(DecryptionError, match=r"audit-42.*authentication failed"):
        envelope.decrypt(record, elsewhere)


def test_rotate_then_rewrap_names_the_new_version(vault: VaultServer, key: str) -> None:
    envelope = Envelope(vault.transit, key)
    record = envelope.encrypt(b"response", CONTEXT)
    vault.transit.rotate(key)
    assert vault.transit.read_key(key).latest_version == 2

    rewrapped = envelope.rewrap(record)
    before, after = EnvelopeRecord.from_bytes(record), EnvelopeRecord.from_bytes(rewrapped)
    assert after.wrapped_key.startswith("vault:v2:") and after.key_version == 2
    assert (after.nonce, after.ciphertext) == (before.nonce, before.ciphertext)
    assert envelope.decrypt(rewrapped, CONTEXT) == b"response"

    envelope.forget_data_keys()
    fresh = envelope.encrypt(b"after rotation", CONTEXT)
    assert EnvelopeRecord.from_bytes(fresh).key_version == 2


def test_min_decryption_version_revokes_old_records(vault: VaultServer, key: str) -> None:
    envelope = Envelope(vault.transit, key)
    kept = envelope.encrypt(b"rewrapped in time", CONTEXT)
    stale_context = RecordContext("tenant-a", "llama-8b", "audit-43")
    stale = envelope.encrypt(b"left on v1", stale_context)
    vault.transit.rotate(key)
    kept = envelope.rewrap(kept)

    vault.transit.set_min_decryption_version(key, 2)
    assert vault.transit.read_key(key).min_decryption_version == 2
    assert envelope.decrypt(kept, CONTEXT) == b"rewrapped in time"
    with pytest.raises(DecryptionError, match=r"'audit-43'.*v1.*disallowed by policy") as caught:
        envelope.decrypt(stale, stale_context)
    assert caught.value.record_id == "audit-43"


def test_forged_wrapped_key_fails(vault: VaultServer, key: str) -> None:
    envelope = Envelope(vault.transit, key)
    parsed = EnvelopeRecord.from_bytes(envelope.encrypt(b"payload", CONTEXT))
    forged = base64.b64encode(os.urandom(60)).decode()
    record = EnvelopeRecord(key, f"vault:v1:{forged}", parsed.nonce, parsed.ciphertext)
    with pytest.raises(DecryptionError, match=r"audit-42.*Transit refused"):
        envelope.decrypt(record.to_bytes(), CONTEXT)


def test_wrapped_key_of_another_transit_key_fails(vault: VaultServer, key: str) -> None:
    other = f"{key}-other"
    vault.transit.create_key(other)
    _, foreign_wrapped = vault.transit.datakey(other)
    envelope = Envelope(vault.transit, key)
    parsed = EnvelopeRecord.from_bytes(envelope.encrypt(b"payload", CONTEXT))
    record = EnvelopeRecord(key, foreign_wrapped, parsed.nonce, parsed.ciphertext)
    with pytest.raises(DecryptionError, match="Transit refused"):
        envelope.decrypt(record.to_bytes(), CONTEXT)


def test_derived_key_needs_the_same_context(vault: VaultServer) -> None:
    name = f"test-derived-{uuid.uuid4().hex[:8]}"
    vault.transit.create_key(name, derived=True)
    plaintext, wrapped = vault.transit.datakey(name, context=b"tenant-a")
    assert vault.transit.decrypt_datakey(name, wrapped, context=b"tenant-a") == plaintext
    with pytest.raises(VaultError) as caught:
        vault.transit.decrypt_datakey(name, wrapped, context=b"tenant-b")
    assert caught.value.status == 400


def test_stopped_vault_fails_closed_and_restarted_vault_works_again(own_vault: DevVault) -> None:
    transit = TransitClient(own_vault.client())
    transit.create_key("records")
    envelope = Envelope(transit, "records")
    record = envelope.encrypt(b"before the outage", CONTEXT)

    own_vault.stop()
    with pytest.raises(VaultUnavailableError):
        envelope.decrypt(record, CONTEXT)
    envelope.forget_data_keys()
    with pytest.raises(VaultUnavailableError, match="cannot reach"):
        envelope.encrypt(b"must not be written in the clear", CONTEXT)

    # Dev mode keeps keys in memory: the server comes back empty, with Transit mounted.
    own_vault.restart()
    with pytest.raises(DecryptionError, match="audit-42"):
        envelope.decrypt(record, CONTEXT)
    transit.create_key("records")
    again = envelope.encrypt(b"after the outage", CONTEXT)
    assert envelope.decrypt(again, CONTEXT) == b"after the outage"


def test_sealed_vault_fails_closed(own_vault: DevVault) -> None:
    client = own_vault.client()
    transit = TransitClient(client)
    transit.create_key("records")
    envelope = Envelope(transit, "records")
    client.request("PUT", "sys/seal")

    with pytest.raises(VaultUnavailableError) as caught:
        envelope.encrypt(b"must not be written in the clear", CONTEXT)
    assert caught.value.status == 503 and "sealed" in caught.value.message


def _api_server(kubeconfig: Path) -> tuple[str, str]:
    """The API server URL and its CA certificate (PEM) from a kubeconfig."""
    config = yaml.safe_load(kubeconfig.read_text())
    cluster = config["clusters"][0]["cluster"]
    if "certificate-authority-data" in cluster:
        ca = base64.b64decode(cluster["certificate-authority-data"]).decode()
    else:
        ca = Path(cluster["certificate-authority"]).read_text()
    return cluster["server"], ca


def test_service_account_logs_in_and_uses_only_its_key(
    vault: VaultServer, key: str, request: pytest.FixtureRequest
) -> None:
    if vault.dev is None:
        pytest.skip("configures auth methods: needs the dev-mode server")
    # Asked for only now, so that a skipped test does not start a control plane.
    cluster: Cluster = request.getfixturevalue("cluster")
    namespace: str = request.getfixturevalue("namespace")
    server, ca = _api_server(cluster.kubeconfig)
    vault.dev.enable_kubernetes_auth(server, ca)
    binding = f"vault-review-{namespace}"
    cluster.kubectl("create", "serviceaccount", "gateway", "-n", namespace)
    # Without a reviewer JWT, Vault reviews each login with the token being checked.
    cluster.kubectl(
        "create",
        "clusterrolebinding",
        binding,
        "--clusterrole=system:auth-delegator",
        f"--serviceaccount={namespace}:gateway",
    )
    try:
        root = vault.client
        policy = (
            f'path "transit/datakey/plaintext/{key}" {{ capabilities = ["update"] }}\n'
            f'path "transit/decrypt/{key}" {{ capabilities = ["update"] }}\n'
        )
        root.request("PUT", f"sys/policies/acl/{key}", {"policy": policy})
        root.request(
            "POST",
            f"auth/kubernetes/role/{key}",
            {
                "bound_service_account_names": ["gateway"],
                "bound_service_account_namespaces": [namespace],
                "token_policies": [key],
                "token_ttl": "10m",
            },
        )
        # kubectl's output may end with warnings; the token is its first word.
        jwt = cluster.kubectl("create", "token", "gateway", "-n", namespace).split()[0]
        login = VaultClient(root.addr, "").request(
            "POST", "auth/kubernetes/login", {"role": key, "jwt": jwt}
        )
        gateway = TransitClient(VaultClient(root.addr, login["auth"]["client_token"]))

        envelope = Envelope(gateway, key)
        record = envelope.encrypt(b"through the gateway's identity", CONTEXT)
        assert envelope.decrypt(record, CONTEXT) == b"through the gateway's identity"
        with pytest.raises(VaultError) as caught:
            gateway.rotate(key)
        assert caught.value.status == 403
    finally:
        cluster.kubectl("delete", "clusterrolebinding", binding, check=False)
