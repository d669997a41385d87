"""The Vault state a namespace's gateway gets: exactly its data-key operations."""

from __future__ import annotations

import pytest

from privatellm.api import InferenceDeployment
from privatellm.keys.tenancy import (
    duration_seconds,
    gateway_policy,
    gateway_role,
    key_name,
    namespace_key_name,
    operator_policy,
)
from privatellm.keys.transit import KubernetesAuthVaultClient, vault_client_from_env


def model(**encryption: str) -> InferenceDeployment:
    return InferenceDeployment.model_validate(
        {
            "metadata": {"name": "chat", "namespace": "team-a"},
            "spec": {
                "model": {"name": "chat", "source": {"uri": "pvc://w/chat", "sizeGiB": 1}},
                "zones": ["zone-a"],
                "encryption": encryption,
            },
        }
    )


def test_a_model_uses_its_namespace_key_unless_it_names_one() -> None:
    assert key_name(model()) == namespace_key_name("team-a") == "privatellm-team-a"
    assert key_name(model(transitKey="claims")) == "claims"


def test_the_policy_grants_data_key_operations_on_exactly_the_named_keys() -> None:
    policy = gateway_policy(["b", "a", "b"])
    paths = [line.split('"')[1] for line in policy.splitlines() if line.startswith("path")]
    assert paths == [
        f"transit/{op}/{key}"
        for key in ("a", "b")
        for op in ("datakey/plaintext", "datakey/wrapped", "encrypt", "decrypt", "rewrap")
    ]
    assert policy.count('capabilities = ["update"]') == len(paths)
    for forbidden in ("keys/", "export", "backup", "restore", "config", "delete", "read"):
        assert forbidden not in policy


def test_the_role_binds_only_the_namespace_gateway() -> None:
    role = gateway_role("team-a")
    assert role["bound_service_account_names"] == ["privatellm-gateway"]
    assert role["bound_service_account_namespaces"] == ["team-a"]
    assert role["token_policies"] == ["privatellm-gateway-team-a"]


@pytest.mark.parametrize(
    ("text", "seconds"), [("720h", 2_592_000), ("1h30m", 5400), ("90s", 90), ("1.5h", 5400)]
)
def test_durations_convert_to_seconds(text: str, seconds: int) -> None:
    assert duration_seconds(text) == seconds


@pytest.mark.parametrize("text", ["", "forever", "10d", "5h junk"])
def test_bad_durations_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="not a duration"):
        duration_seconds(text)


def test_the_operator_policy_manages_keys_but_cannot_delete_or_trim_them() -> None:
    policy = operator_policy()
    rules = dict(
        (line.split('"')[1], next_line.split("= ")[1])
        for line, next_line in zip(policy.splitlines(), policy.splitlines()[1:], strict=False)
        if line.startswith("path")
    )
    assert rules["transit/keys/+"] == '["create", "read", "update"]'
    assert rules["transit/keys/+/config"] == '["update"]'
    assert not [path for path in rules if path.endswith(("/trim", "/rotate", "/export/+"))]
    assert all("delete" not in caps for path, caps in rules.items() if path.startswith("transit"))
    assert "sys/policies/acl/privatellm-gateway-*" in rules


def test_vault_configuration_comes_from_the_environment() -> None:
    assert vault_client_from_env({}) is None
    static = vault_client_from_env({"VAULT_ADDR": "http://v:8200", "VAULT_TOKEN": "t"})
    assert static is not None and not isinstance(static, KubernetesAuthVaultClient)
    login = vault_client_from_env(
        {"BAO_ADDR": "http://v:8200", "PRIVATELLM_VAULT_ROLE": "privatellm-operator"}
    )
    assert isinstance(login, KubernetesAuthVaultClient)
    assert (login.role, str(login.jwt_file)) == (
        "privatellm-operator",
        "/var/run/secrets/kubernetes.io/serviceaccount/token",
    )
