"""What an AccessPolicy's status says: the models it resolves to, and what it names that is missing.

Pure: the controller passes the names of the namespace's InferenceDeployments.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

from privatellm.api.access import AccessPolicy


def policy_problems(policy: AccessPolicy, models: Sequence[str]) -> list[str]:
    """What in an AccessPolicy points at nothing: models that do not exist in the namespace."""
    if policy.spec.models == ["*"]:
        return []
    known = set(models)
    return [
        f"spec.models[{i}]: no InferenceDeployment {name!r} in this namespace"
        for i, name in enumerate(policy.spec.models)
        if name not in known
    ]


def resolved_models(policy: AccessPolicy, models: Sequence[str]) -> list[str]:
    """The models a policy grants access to, of those that exist."""
    if policy.spec.models == ["*"]:
        return sorted(models)
    return sorted(set(policy.spec.models) & set(models))


def missing_source_namespaces(policy: AccessPolicy, existing: Collection[str]) -> list[str]:
    """Warnings for spec.sourceNamespaces that name no namespace: the rule admits nobody
    from it, which is safe, but likely a typo; the policy is enforced all the same."""
    return [
        f"spec.sourceNamespaces[{i}]: namespace {name!r} does not exist; no request comes"
        " from it until it is created"
        for i, name in enumerate(policy.spec.source_namespaces)
        if name not in existing
    ]
