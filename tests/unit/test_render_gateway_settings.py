"""The platform's settings for every gateway: from the operator's environment (set by the
chart) into each namespace's rendered gateway."""

from __future__ import annotations

import base64
import dataclasses
import datetime
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from privatellm.controllers.gateway import (
    DEFAULT_IMAGE,
    GatewaySettings,
    gateway_settings_from_env,
)
from privatellm.controllers.keys import auth_mount
from privatellm.controllers.runtime import check_settings, operator_vault
from privatellm.gateway.config import GatewayConfig
from privatellm.keys.tls import issue_ca
from privatellm.keys.transit import KubernetesAuthVaultClient, VaultClient
from privatellm.render.gateway import (
    CONFIG_DIR,
    CONFIG_KEY,
    DEFAULT_GATEWAY_RESOURCES,
    OIDC_CA_KEY,
    START_SETTINGS_ANNOTATION,
    VAULT_CA_KEY,
    GatewayInputs,
    GatewayKeys,
    render_gateway,
)

from .test_render_gateway import INPUTS

KEYS = GatewayKeys(hash_key_b64="aGFzaA==", audit_key_b64="cGVt", audit_public_pem="pub")
NOW = datetime.datetime(2025, 1, 1, tzinfo=datetime.UTC)


def ca_file(tmp_path: Path, name: str) -> tuple[str, str]:
    """A CA certificate written to a file: its path and its PEM."""
    pem = issue_ca(name, NOW).cert_pem.decode()
    path = tmp_path / f"{name}.crt"
    path.write_text(pem)
    return str(path), pem


def rendered(settings: GatewaySettings, vault_addr: str | None) -> dict[str, Any]:
    """The namespace's gateway objects by kind, rendered as the controller does."""
    inputs = GatewayInputs(
        namespace=INPUTS.namespace,
        image=settings.image,
        models=INPUTS.models,
        policies=INPUTS.policies,
        oidc=settings.oidc,
        oidc_ca_pem=settings.oidc_ca_pem,
        vault_addr=vault_addr,
        vault_auth_mount=settings.vault_auth_mount,
        vault_ca_pem=settings.vault_ca_pem,
        resources=settings.resources,
    )
    return {o["kind"]: o for o in render_gateway(inputs, KEYS)}


def config_of(secret: dict[str, Any]) -> GatewayConfig:
    text = base64.b64decode(secret["data"][CONFIG_KEY]).decode()
    return GatewayConfig.model_validate(yaml.safe_load(text))


def test_without_settings_the_gateway_runs_the_default_image_and_requests() -> None:
    settings = gateway_settings_from_env({})
    assert settings == GatewaySettings()
    objects = rendered(settings, None)
    container = objects["StatefulSet"]["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == DEFAULT_IMAGE
    assert container["resources"] == {"requests": {"cpu": "500m", "memory": "256Mi"}}
    config = config_of(objects["Secret"])
    assert config.auth.oidc is None and config.encryption is None
    assert set(objects["Secret"]["data"]) == {CONFIG_KEY, "hash.key", "audit.pem"}


def test_every_setting_the_chart_passes_reaches_the_gateway(tmp_path: Path) -> None:
    vault_ca, vault_pem = ca_file(tmp_path, "vault")
    oidc_ca, oidc_pem = ca_file(tmp_path, "idp")
    env = {
        "PRIVATELLM_GATEWAY_IMAGE": "mirror.example/pllm:2",
        # As Helm's toJson writes the values: sorted keys, numbers as numbers, empty maps.
        "PRIVATELLM_GATEWAY_RESOURCES": json.dumps(
            {"limits": {"memory": "1Gi"}, "requests": {"cpu": 1, "memory": "512Mi"}}
        ),
        "PRIVATELLM_OIDC_ISSUER_URL": "https://idp.example/realms/corp",
        "PRIVATELLM_OIDC_AUDIENCE": "privatellm",
        "PRIVATELLM_OIDC_USERNAME_CLAIM": "preferred_username",
        "PRIVATELLM_OIDC_GROUPS_CLAIM": "roles",
        "PRIVATELLM_OIDC_JWKS_URL": "https://idp.example/keys",
        "PRIVATELLM_OIDC_CA_FILE": oidc_ca,
        "PRIVATELLM_VAULT_AUTH_MOUNT": "k8s/prod",
        "PRIVATELLM_VAULT_CA_FILE": vault_ca,
    }
    objects = rendered(gateway_settings_from_env(env), "https://vault.example:8200")

    container = objects["StatefulSet"]["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == "mirror.example/pllm:2"
    assert container["resources"] == {
        "limits": {"memory": "1Gi"},
        "requests": {"cpu": "1", "memory": "512Mi"},
    }
    secret = objects["Secret"]
    config = config_of(secret)
    oidc = config.auth.oidc
    assert oidc is not None
    assert (oidc.issuer, oidc.audience, oidc.jwks_uri) == (
        "https://idp.example/realms/corp",
        "privatellm",
        "https://idp.example/keys",
    )
    assert (oidc.username_claim, oidc.groups_claim) == ("preferred_username", "roles")
    # The CAs travel in the configuration Secret, which the gateway mounts at CONFIG_DIR.
    assert oidc.ca_file == f"{CONFIG_DIR}/{OIDC_CA_KEY}"
    assert base64.b64decode(secret["data"][OIDC_CA_KEY]).decode() == oidc_pem
    encryption = config.encryption
    assert encryption is not None
    assert encryption.vault_addr == "https://vault.example:8200"
    assert encryption.role == f"privatellm-gateway-{INPUTS.namespace}"
    assert encryption.auth_mount == "k8s/prod"
    assert encryption.ca_file == f"{CONFIG_DIR}/{VAULT_CA_KEY}"
    assert base64.b64decode(secret["data"][VAULT_CA_KEY]).decode() == vault_pem
    volumes = objects["StatefulSet"]["spec"]["template"]["spec"]["volumes"]
    assert {"name": "config", "secret": {"secretName": secret["metadata"]["name"]}} in volumes


def test_unset_claims_keep_the_gateways_defaults_and_a_ca_without_its_use_is_left_out(
    tmp_path: Path,
) -> None:
    vault_ca, _ = ca_file(tmp_path, "vault")
    env = {
        "PRIVATELLM_OIDC_ISSUER_URL": "https://idp.example",
        "PRIVATELLM_OIDC_AUDIENCE": "privatellm",
        "PRIVATELLM_VAULT_CA_FILE": vault_ca,
    }
    objects = rendered(gateway_settings_from_env(env), None)
    config = config_of(objects["Secret"])
    assert config.auth.oidc is not None
    assert (config.auth.oidc.username_claim, config.auth.oidc.groups_claim) == ("email", "groups")
    assert config.auth.oidc.ca_file is None and config.auth.oidc.jwks_uri is None
    # No Vault: neither encryption settings nor a copy of its CA.
    assert config.encryption is None
    assert set(objects["Secret"]["data"]) == {CONFIG_KEY, "hash.key", "audit.pem"}


def test_a_renewed_ca_is_read_again(tmp_path: Path) -> None:
    path, first = ca_file(tmp_path, "vault")
    env = {"PRIVATELLM_VAULT_CA_FILE": path}
    assert gateway_settings_from_env(env).vault_ca_pem == first
    second = issue_ca("vault", NOW).cert_pem.decode()
    Path(path).write_text(second)
    assert gateway_settings_from_env(env).vault_ca_pem == second


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"PRIVATELLM_OIDC_ISSUER_URL": "https://idp.example"}, "PRIVATELLM_OIDC_AUDIENCE"),
        ({"PRIVATELLM_GATEWAY_RESOURCES": "cpu=1"}, "PRIVATELLM_GATEWAY_RESOURCES"),
        ({"PRIVATELLM_GATEWAY_RESOURCES": '{"request": {}}'}, "PRIVATELLM_GATEWAY_RESOURCES"),
        (
            {"PRIVATELLM_GATEWAY_RESOURCES": '{"requests": {"cpu": {"n": 1}}}'},
            "PRIVATELLM_GATEWAY_RESOURCES",
        ),
        (
            {"PRIVATELLM_GATEWAY_RESOURCES": '{"requests": {"cpu": true}}'},
            "PRIVATELLM_GATEWAY_RESOURCES",
        ),
        ({"PRIVATELLM_VAULT_CA_FILE": "/nonexistent/ca.crt"}, "PRIVATELLM_VAULT_CA_FILE"),
    ],
)
def test_a_wrong_setting_is_refused_naming_the_variable(env: dict[str, str], named: str) -> None:
    with pytest.raises(ValueError, match=named):
        gateway_settings_from_env(env)


def test_a_file_without_a_certificate_is_no_ca(tmp_path: Path) -> None:
    not_pem = tmp_path / "ca.crt"
    not_pem.write_text("not a certificate\n")
    env = {
        "PRIVATELLM_OIDC_ISSUER_URL": "https://idp.example",
        "PRIVATELLM_OIDC_AUDIENCE": "a",
        "PRIVATELLM_OIDC_CA_FILE": str(not_pem),
    }
    with pytest.raises(ValueError, match="PRIVATELLM_OIDC_CA_FILE"):
        check_settings(env)


def test_the_operator_logs_in_at_the_charts_mount_trusting_its_ca(tmp_path: Path) -> None:
    vault_ca, _ = ca_file(tmp_path, "vault")
    env = {
        "VAULT_ADDR": "https://vault.example:8200",
        "PRIVATELLM_VAULT_ROLE": "privatellm-operator",
        "PRIVATELLM_VAULT_AUTH_MOUNT": "k8s/prod",
        "PRIVATELLM_VAULT_CA_FILE": vault_ca,
    }
    vault = operator_vault(env)
    assert isinstance(vault, KubernetesAuthVaultClient)
    assert (vault.addr, vault.role, vault.mount) == (
        "https://vault.example:8200",
        "privatellm-operator",
        "k8s/prod",
    )
    # The gateways' roles go where the operator logs in.
    assert auth_mount(vault) == "k8s/prod"
    default = operator_vault({"VAULT_ADDR": "https://v", "PRIVATELLM_VAULT_ROLE": "r"})
    assert isinstance(default, KubernetesAuthVaultClient) and default.mount == "kubernetes"
    token = operator_vault({"VAULT_ADDR": "http://v", "VAULT_TOKEN": "t"})
    assert type(token) is VaultClient and auth_mount(token) == "kubernetes"
    assert operator_vault({}) is None
    with pytest.raises(OSError):
        operator_vault({**env, "PRIVATELLM_VAULT_CA_FILE": str(tmp_path / "missing.crt")})


def start_revision(settings: GatewaySettings, vault_addr: str | None) -> str | None:
    template = rendered(settings, vault_addr)["StatefulSet"]["spec"]["template"]["metadata"]
    revision: str | None = (template.get("annotations") or {}).get(START_SETTINGS_ANNOTATION)
    return revision


def test_a_change_to_what_the_gateway_reads_only_at_start_rolls_it(tmp_path: Path) -> None:
    vault_ca, _ = ca_file(tmp_path, "vault")
    env = {
        "PRIVATELLM_OIDC_ISSUER_URL": "https://idp.example",
        "PRIVATELLM_OIDC_AUDIENCE": "privatellm",
        "PRIVATELLM_VAULT_CA_FILE": vault_ca,
    }
    vault = "https://vault.example:8200"
    settings = gateway_settings_from_env(env)
    revision = start_revision(settings, vault)
    assert revision and start_revision(settings, vault) == revision
    # The verifier and the Vault client are built at start: each change needs new Pods.
    other_audience = gateway_settings_from_env({**env, "PRIVATELLM_OIDC_AUDIENCE": "other"})
    renewed = dataclasses.replace(settings, vault_ca_pem=issue_ca("v2", NOW).cert_pem.decode())
    moved = dataclasses.replace(settings, vault_auth_mount="k8s")
    changed = {
        start_revision(other_audience, vault),
        start_revision(renewed, vault),
        start_revision(moved, vault),
        start_revision(settings, "https://vault2.example:8200"),
        start_revision(settings, None),
    }
    assert revision not in changed and len(changed) == 5
    # What the gateway reloads in place (images roll it anyway), and nothing to load.
    assert start_revision(dataclasses.replace(settings, image="other:1"), vault) == revision
    assert start_revision(GatewaySettings(), None) is None


def test_the_default_requests_are_the_charts() -> None:
    values = yaml.safe_load(
        (Path(__file__).parents[2] / "charts/privatellm/values.yaml").read_text()
    )
    assert values["gateway"]["resources"]["requests"] == DEFAULT_GATEWAY_RESOURCES["requests"]
