"""AccessPolicy decisions: deny by default, and every decision says why.

Pure: the caller passes the identity, the model, the data classes and the
clock; nothing here does I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import get_args

from privatellm.api.access import (
    PII_ENTITIES,
    AccessPolicySpec,
    FilterAction,
    InboundFilters,
    OutboundFilters,
    PIIRule,
    Subject,
)
from privatellm.filters import DATA_CLASS_OF

from .auth import Identity
from .config import ConnectorRoute, NamedPolicy


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome of authorization; `reason` is machine-readable."""

    allowed: bool
    reason: str
    policy: NamedPolicy | None = None


def subject_matches(subject: Subject, identity: Identity) -> bool:
    """Whether a policy subject names this identity."""
    if subject.kind == "Group":
        return subject.name in identity.groups
    if subject.kind != identity.kind:
        return False
    if subject.kind == "ServiceAccount":
        return subject.name == identity.name and subject.namespace == identity.namespace
    return subject.name == identity.name


def _models_allow(spec: AccessPolicySpec, model: str) -> bool:
    return spec.models == ["*"] or model in spec.models


def _source_allowed(spec: AccessPolicySpec, identity: Identity, own_namespace: str) -> bool:
    # Only a ServiceAccount's namespace is known for certain; users and API keys
    # arrive through the ingress and carry no source namespace.
    if identity.kind != "ServiceAccount":
        return True
    allowed = spec.source_namespaces or [own_namespace]
    return identity.namespace in allowed


def _class_denial(spec: AccessPolicySpec, data_classes: Iterable[str]) -> str | None:
    actions = {rule.name: rule.action for rule in spec.data_classes}
    for data_class in sorted(data_classes):
        action = actions.get(data_class)
        if action is None:
            return f"data_class_not_allowed:{data_class}"
        if action == "block":
            return f"data_class_blocked:{data_class}"
    return None


def authorize(
    policies: Sequence[NamedPolicy],
    identity: Identity,
    model: str,
    declared_classes: Iterable[str],
    namespace: str,
) -> Decision:
    """Find the first policy (by name) that lets `identity` use `model` with these classes.

    When none does, the reason is the one of the policy that came closest: it
    names the identity but not the model, or the model but not the classes.
    """
    classes = frozenset(declared_classes)
    closest = "no_policy_for_subject"
    for policy in sorted(policies, key=lambda p: p.name):
        spec = policy.spec
        if not any(subject_matches(s, identity) for s in spec.subjects):
            continue
        if not _models_allow(spec, model):
            closest = _prefer(closest, "model_not_allowed")
            continue
        if not _source_allowed(spec, identity, namespace):
            closest = _prefer(closest, "source_namespace_not_allowed")
            continue
        denial = _class_denial(spec, classes)
        if denial:
            closest = _prefer(closest, denial)
            continue
        return Decision(True, "allowed", policy)
    return Decision(False, closest)


_SPECIFICITY = ("no_policy_for_subject", "model_not_allowed", "source_namespace_not_allowed")


def _prefer(current: str, new: str) -> str:
    """Keep the most specific denial: data-class reasons beat source, source beats model."""

    def rank(reason: str) -> int:
        return _SPECIFICITY.index(reason) if reason in _SPECIFICITY else len(_SPECIFICITY)

    return new if rank(new) > rank(current) else current


def connector_claims(
    connectors: Sequence[ConnectorRoute],
    identity: Identity,
    namespace: str,
    model: str,
    declared_classes: Sequence[str],
) -> tuple[list[str], str | None]:
    """The classes a request carries, and a denial when a connector may not use `model`.

    A DataConnector's Pods call as its ServiceAccount in the gateway's namespace;
    their items carry the connector's data classes whatever the request declares,
    so an AccessPolicy must allow those, and they reach only the connector's models.
    """
    if identity.kind != "ServiceAccount" or identity.namespace != namespace:
        return list(declared_classes), None
    for connector in connectors:
        if connector.service_account == identity.name:
            if connector.models and model not in connector.models:
                return list(declared_classes), "connector_model_not_allowed"
            return sorted({*declared_classes, *connector.data_classes}), None
    return list(declared_classes), None


def quota_key(policy: NamedPolicy, identity: Identity) -> str:
    """Quotas count per subject within the policy that granted access."""
    return f"{policy.name}/{identity.kind}/{identity.namespace or ''}/{identity.name}"


def _entity_actions(spec: AccessPolicySpec, listed: Sequence[PIIRule]) -> list[PIIRule]:
    """Every entity's action: its own rule, else its data class's action, else redact.

    An entity the policy does not name inherits the action of its data class
    (an email is "pii"), so "dataClasses: [{name: pii, action: mask}]" masks
    every kind of personal data at once. Redacting content of an unlisted class
    keeps it from the model, which is what "classes not listed are blocked" asks.
    """
    own = {rule.entity: rule.action for rule in listed}
    by_class = {rule.name: rule.action for rule in spec.data_classes}
    rules = []
    for entity in get_args(PII_ENTITIES):
        action: FilterAction = own.get(entity) or by_class.get(DATA_CLASS_OF[entity], "redact")
        rules.append(PIIRule(entity=entity, action=action))
    return rules


def effective_inbound(spec: AccessPolicySpec) -> InboundFilters:
    """Inbound filters with every entity's action spelled out."""
    pii = _entity_actions(spec, spec.inbound.pii)
    return spec.inbound.model_copy(update={"pii": pii})


def effective_outbound(spec: AccessPolicySpec) -> OutboundFilters:
    """Outbound filters with every entity's action spelled out."""
    pii = _entity_actions(spec, spec.outbound.pii)
    return spec.outbound.model_copy(update={"pii": pii})
