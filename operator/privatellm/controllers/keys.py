"""Provision the Vault side of a namespace: its Transit key, its gateway's policy and role,
and its connector sidecars' (seal only).

Reads what Vault has and writes only what differs, so a resync of an unchanged
namespace writes nothing to Vault either. Keys are created, never deleted here:
audit records must stay decryptable for their retention period.
"""

from __future__ import annotations

from collections.abc import Sequence

from privatellm.api import InferenceDeployment
from privatellm.keys.tenancy import (
    connector_policy,
    connector_policy_name,
    connector_role,
    duration_seconds,
    gateway_policy,
    gateway_policy_name,
    gateway_role,
    key_name,
    namespace_key_name,
)
from privatellm.keys.transit import (
    KubernetesAuthVaultClient,
    TransitClient,
    VaultClient,
    VaultError,
)

KUBERNETES_AUTH = "kubernetes"


def auth_mount(vault: VaultClient) -> str:
    """Where the gateways' and sidecars' roles go: the Kubernetes auth the operator logs in
    through (one per cluster), else the default mount."""
    return vault.mount if isinstance(vault, KubernetesAuthVaultClient) else KUBERNETES_AUTH


def ensure_tenant_keys(
    vault: VaultClient, obj: InferenceDeployment, namespace_models: Sequence[InferenceDeployment]
) -> tuple[str, int]:
    """Key, policy and role for `obj`'s namespace; returns the key and its latest version.

    Raises VaultUnavailableError when Vault cannot be reached (the caller reports it).
    """
    transit = TransitClient(vault)
    name = key_name(obj)
    period = duration_seconds(obj.spec.encryption.rotation_period)
    try:
        key = transit.read_key(name)
    except VaultError as error:
        if error.status != 404:
            raise
        transit.create_key(name, auto_rotate_period=period)
        key = transit.read_key(name)
    if key.auto_rotate_period_seconds != period:
        transit.set_auto_rotate_period(name, period)

    namespace = obj.metadata.namespace or ""
    policy_name = gateway_policy_name(namespace)
    policy = gateway_policy([key_name(m) for m in namespace_models] or [name])
    if _read(vault, f"sys/policies/acl/{policy_name}").get("policy") != policy:
        vault.request("PUT", f"sys/policies/acl/{policy_name}", {"policy": policy})

    mount = auth_mount(vault)
    if f"{mount}/" in vault.request("GET", "sys/auth").get("data", {}):
        path = f"auth/{mount}/role/{policy_name}"
        role = gateway_role(namespace)
        if not _role_matches(_read(vault, path), role):
            vault.request("POST", path, role)
    return name, key.latest_version


def ensure_connector_keys(
    vault: VaultClient, namespace: str, service_accounts: Sequence[str]
) -> str:
    """The namespace key, and the policy and role its connector sidecars seal with;
    with no connector left, the role and policy go. Returns the key's name.

    Raises VaultUnavailableError when Vault cannot be reached (the caller reports it).
    """
    name = namespace_key_name(namespace)
    transit = TransitClient(vault)
    try:
        transit.read_key(name)
    except VaultError as error:
        if error.status != 404:
            raise
        transit.create_key(name)
    policy_name = connector_policy_name(namespace)
    mount = auth_mount(vault)
    path = f"auth/{mount}/role/{policy_name}"
    kubernetes_auth = f"{mount}/" in vault.request("GET", "sys/auth").get("data", {})
    if not service_accounts:
        if kubernetes_auth:
            _delete(vault, path)
        _delete(vault, f"sys/policies/acl/{policy_name}")
        return name
    policy = connector_policy(namespace)
    if _read(vault, f"sys/policies/acl/{policy_name}").get("policy") != policy:
        vault.request("PUT", f"sys/policies/acl/{policy_name}", {"policy": policy})
    if kubernetes_auth:
        role = connector_role(namespace, service_accounts)
        if not _role_matches(_read(vault, path), role):
            vault.request("POST", path, role)
    return name


def release_tenant_keys(
    vault: VaultClient, obj: InferenceDeployment, remaining: Sequence[InferenceDeployment]
) -> str:
    """Before `obj` goes: narrow or revoke its namespace gateway's access; say what was done.

    `remaining` are the namespace's other models. The key is never deleted.
    """
    namespace = obj.metadata.namespace or ""
    policy_name = gateway_policy_name(namespace)
    name = key_name(obj)
    still_used = {key_name(m) for m in remaining}
    if name in still_used:
        return f"Transit key {name} is still used by other models"
    if obj.spec.encryption.on_delete == "Retain":
        return f"Transit key {name} and the gateway's access to it are retained"
    if still_used:
        vault.request(
            "PUT", f"sys/policies/acl/{policy_name}", {"policy": gateway_policy(sorted(still_used))}
        )
        return f"gateway access to Transit key {name} revoked; the key is kept"
    mount = auth_mount(vault)
    if f"{mount}/" in vault.request("GET", "sys/auth").get("data", {}):
        _delete(vault, f"auth/{mount}/role/{policy_name}")
    _delete(vault, f"sys/policies/acl/{policy_name}")
    return f"gateway policy and role of {namespace} revoked; Transit key {name} is kept"


def _delete(vault: VaultClient, path: str) -> None:
    try:
        vault.request("DELETE", path)
    except VaultError as error:
        if error.status != 404:
            raise


def _read(vault: VaultClient, path: str) -> dict[str, object]:
    try:
        data = vault.request("GET", path).get("data") or {}
    except VaultError as error:
        if error.status == 404:
            return {}
        raise
    return dict(data)


def _role_matches(current: dict[str, object], desired: dict[str, object]) -> bool:
    """Vault reports TTLs in seconds; compare the bindings and policies that grant access."""
    keys = ("bound_service_account_names", "bound_service_account_namespaces", "token_policies")
    return all(current.get(k) == desired[k] for k in keys)
