"""Who may use which Transit key: one key per namespace, usable only by its gateway.

The desired Vault state for a namespace, as plain data: the key name, the ACL policy
the namespace's gateway gets, and the Kubernetes-auth role that hands that policy to
the gateway's ServiceAccount. Pure, so the operator can compare it with what Vault
has and write only the difference.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from privatellm.api import InferenceDeployment
from privatellm.api.base import duration_seconds as api_duration_seconds

# The ServiceAccount the gateway of every namespace runs as.
GATEWAY_SERVICE_ACCOUNT = "privatellm-gateway"
# Data keys, never the key itself: no read of key material, export, backup,
# deletion or configuration. Rewrap re-protects stored data keys without revealing them.
GATEWAY_OPERATIONS = ("datakey/plaintext", "datakey/wrapped", "encrypt", "decrypt", "rewrap")
TOKEN_TTL = "1h"
TOKEN_MAX_TTL = "4h"


def namespace_key_name(namespace: str) -> str:
    """The Transit key of a namespace's data."""
    return f"privatellm-{namespace}"


def key_name(obj: InferenceDeployment) -> str:
    """The Transit key protecting a model's data: its own when named, else its namespace's."""
    return obj.spec.encryption.transit_key or namespace_key_name(obj.metadata.namespace or "")


def gateway_policy_name(namespace: str) -> str:
    """The Vault ACL policy of a namespace's gateway."""
    return f"privatellm-gateway-{namespace}"


def gateway_policy(key_names: Sequence[str], mount: str = "transit") -> str:
    """HCL granting the data-key operations on exactly `key_names`, in a stable order."""
    rules = [
        f'path "{mount}/{operation}/{name}" {{\n  capabilities = {_hcl_list(["update"])}\n}}\n'
        for name in sorted(set(key_names))
        for operation in GATEWAY_OPERATIONS
    ]
    return "".join(rules)


def gateway_role(namespace: str) -> dict[str, Any]:
    """Kubernetes-auth role: the namespace's gateway ServiceAccount gets its policy."""
    return {
        "bound_service_account_names": [GATEWAY_SERVICE_ACCOUNT],
        "bound_service_account_namespaces": [namespace],
        "token_policies": [gateway_policy_name(namespace)],
        "token_ttl": TOKEN_TTL,
        "token_max_ttl": TOKEN_MAX_TTL,
    }


def connector_policy_name(namespace: str) -> str:
    """The Vault ACL policy of a namespace's connector sidecars."""
    return f"privatellm-connector-{namespace}"


def connector_policy(namespace: str, mount: str = "transit") -> str:
    """HCL letting a sidecar seal quarantined items under the namespace key, and nothing
    more: it asks for new data keys, never decrypts, so it cannot read what it sealed,
    nor the gateway's sealed payloads. Reading an item back is a reviewer's right."""
    key = namespace_key_name(namespace)
    return (
        f'path "{mount}/datakey/plaintext/{key}" {{\n  capabilities = {_hcl_list(["update"])}\n}}\n'
    )


def connector_role(namespace: str, service_accounts: Sequence[str]) -> dict[str, Any]:
    """Kubernetes-auth role: the namespace's connector ServiceAccounts get their policy."""
    return {
        "bound_service_account_names": sorted(set(service_accounts)),
        "bound_service_account_namespaces": [namespace],
        "token_policies": [connector_policy_name(namespace)],
        "token_ttl": TOKEN_TTL,
        "token_max_ttl": TOKEN_MAX_TTL,
    }


def duration_seconds(duration: str) -> int:
    """Whole seconds in a duration such as "720h" or "1h30m" (the API's DURATION pattern)."""
    return round(api_duration_seconds(duration))


def operator_policy(mount: str = "transit", auth_mount: str = "kubernetes") -> str:
    """HCL for the operator: manage keys, the gateways' and connectors' policies and roles;
    never delete a key.

    `+` matches one path segment, so rotate and trim (which drops key versions) are not
    covered by the key rules; deleting a key needs the delete capability, not granted.
    """
    rules = [
        (f"{mount}/keys/+", ["create", "read", "update"]),
        (f"{mount}/keys/+/config", ["update"]),
        ("sys/policies/acl/privatellm-gateway-*", ["create", "read", "update", "delete"]),
        (f"auth/{auth_mount}/role/privatellm-gateway-*", ["create", "read", "update", "delete"]),
        # The connector sidecars' seal-only policy and role, one of each per namespace.
        ("sys/policies/acl/privatellm-connector-*", ["create", "read", "update", "delete"]),
        (f"auth/{auth_mount}/role/privatellm-connector-*", ["create", "read", "update", "delete"]),
        ("sys/auth", ["read"]),
    ]
    return "".join(
        f'path "{path}" {{\n  capabilities = {_hcl_list(caps)}\n}}\n' for path, caps in rules
    )


def _hcl_list(items: Sequence[str]) -> str:
    return "[" + ", ".join(f'"{item}"' for item in items) + "]"
