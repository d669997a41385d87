"""AccessPolicy decisions and quotas as the gateway applies them."""

from __future__ import annotations

from typing import Any

import pytest

from privatellm.api.access import AccessPolicySpec
from privatellm.gateway.auth import Identity
from privatellm.gateway.config import ConnectorRoute, NamedPolicy
from privatellm.gateway.policy import (
    authorize,
    connector_claims,
    effective_inbound,
    effective_outbound,
)
from privatellm.gateway.quotas import QuotaTracker

ALICE = Identity("User", "alice@example.com", frozenset({"analysts"}), "oidc")
ROBOT = Identity("ServiceAccount", "batch", frozenset(), "serviceAccount", "jobs")


def policy(name: str, **spec: Any) -> NamedPolicy:
    return NamedPolicy(name=name, spec=AccessPolicySpec.model_validate(spec))


def test_deny_by_default_and_the_reason_names_what_is_missing() -> None:
    analysts = policy(
        "analysts",
        subjects=[{"kind": "Group", "name": "analysts"}],
        models=["llama"],
        dataClasses=[
            {"name": "customer", "action": "allow"},
            {"name": "health", "action": "block"},
        ],
    )
    assert authorize([], ALICE, "llama", [], "team").reason == "no_policy_for_subject"
    assert authorize([analysts], ALICE, "llama", [], "team").allowed
    assert authorize([analysts], ALICE, "mixtral", [], "team").reason == "model_not_allowed"
    assert authorize([analysts], ALICE, "llama", ["customer"], "team").allowed
    assert (
        authorize([analysts], ALICE, "llama", ["health"], "team").reason
        == "data_class_blocked:health"
    )
    assert (
        authorize([analysts], ALICE, "llama", ["hr"], "team").reason == "data_class_not_allowed:hr"
    )
    # Someone not named is denied even with a model every policy allows.
    bob = Identity("User", "bob@example.com", frozenset(), "oidc")
    assert authorize([analysts], bob, "llama", [], "team").reason == "no_policy_for_subject"


def test_a_second_policy_can_grant_what_the_first_does_not() -> None:
    narrow = policy("a", subjects=[{"kind": "User", "name": "alice@example.com"}], models=["x"])
    broad = policy("b", subjects=[{"kind": "Group", "name": "analysts"}], models=["*"])
    decision = authorize([narrow, broad], ALICE, "llama", [], "team")
    assert decision.allowed and decision.policy is broad


def test_service_accounts_are_matched_by_namespace_and_source() -> None:
    own = policy(
        "jobs",
        subjects=[{"kind": "ServiceAccount", "name": "batch", "namespace": "jobs"}],
        models=["*"],
    )
    assert authorize([own], ROBOT, "llama", [], "team").reason == "source_namespace_not_allowed"
    opened = policy(
        "jobs",
        subjects=[{"kind": "ServiceAccount", "name": "batch", "namespace": "jobs"}],
        models=["*"],
        sourceNamespaces=["jobs"],
    )
    assert authorize([opened], ROBOT, "llama", [], "team").allowed
    other_ns = Identity("ServiceAccount", "batch", frozenset(), "serviceAccount", "elsewhere")
    assert not authorize([opened], other_ns, "llama", [], "team").allowed


def quotas_of(**quotas: int) -> Any:
    spec = {"subjects": [{"kind": "User", "name": "a"}], "models": ["*"], "quotas": quotas}
    return AccessPolicySpec.model_validate(spec).quotas


def test_request_rate_counts_per_subject_and_minute() -> None:
    quotas = quotas_of(requestsPerMinute=2)
    tracker = QuotaTracker()
    t = 1_000_020.0
    assert tracker.check("k", quotas, t) is None
    assert tracker.check("k", quotas, t + 1) is None
    assert tracker.check("k", quotas, t + 2) == "rate_limited:requests_per_minute"
    assert tracker.check("other", quotas, t + 2) is None  # per subject
    assert tracker.check("k", quotas, t + 60) is None  # a new minute


def test_token_quotas_count_what_finished_requests_used() -> None:
    quotas = quotas_of(tokensPerMinute=100, tokensPerDay=150)
    tracker = QuotaTracker()
    t = 1_000_020.0
    tracker.record_tokens("k", quotas, 100, t)
    assert tracker.check("k", quotas, t + 1) == "quota_exceeded:tokens_per_minute"
    assert tracker.check("k", quotas, t + 60) is None  # a new minute
    tracker.record_tokens("k", quotas, 60, t + 60)
    assert tracker.check("k", quotas, t + 120) == "quota_exceeded:tokens_per_day"
    assert tracker.check("k", quotas, t + 86400) is None  # a new day


CRM = ConnectorRoute(
    name="crm",
    service_account="privatellm-connector-crm",
    models=["llama"],
    data_classes=["customer"],
)


def test_a_connectors_items_carry_its_classes_and_reach_only_its_models() -> None:
    crm = Identity("ServiceAccount", "privatellm-connector-crm", frozenset(), "serviceAccount", "t")
    assert connector_claims([CRM], crm, "t", "llama", []) == (["customer"], None)
    assert connector_claims([CRM], crm, "t", "llama", ["public"]) == (["customer", "public"], None)
    assert connector_claims([CRM], crm, "t", "other", []) == ([], "connector_model_not_allowed")
    # The same account name in another namespace, or any other caller, declares for itself.
    elsewhere = Identity("ServiceAccount", crm.name, frozenset(), "serviceAccount", "other-ns")
    assert connector_claims([CRM], elsewhere, "t", "other", ["public"]) == (["public"], None)
    assert connector_claims([CRM], ROBOT, "jobs", "other", []) == ([], None)
    assert connector_claims([CRM], ALICE, "t", "other", []) == ([], None)
    # The policy must then allow the connector's classes.
    account = {"kind": "ServiceAccount", "name": crm.name, "namespace": "t"}
    granted = policy("crm", subjects=[account], models=["*"])
    classes, _ = connector_claims([CRM], crm, "t", "llama", [])
    assert authorize([granted], crm, "llama", classes, "t").reason == (
        "data_class_not_allowed:customer"
    )


def test_other_replicas_counts_add_to_this_ones_in_the_same_window() -> None:
    quotas = quotas_of(requestsPerMinute=3)
    tracker = QuotaTracker()
    t = 1_000_020.0
    minute = int(t // 60)
    tracker.set_others("b", [["k", "req", minute, 2], ["k", "req", minute - 1, 50]])
    assert tracker.check("k", quotas, t) is None  # 2 there + 0 here: the last one
    assert tracker.check("k", quotas, t) == "rate_limited:requests_per_minute"
    assert tracker.own_counts() == [("k", "req", minute, 1)]  # only what this one admitted
    tracker.keep_others(["c"])  # b left the set
    assert tracker.count(("k", "req", minute)) == 1
    with pytest.raises(ValueError):
        tracker.set_others("b", [["k", "req", "not a window", 1]])


def test_entities_inherit_their_data_class_action() -> None:
    spec = AccessPolicySpec.model_validate(
        {
            "subjects": [{"kind": "User", "name": "a"}],
            "models": ["*"],
            "dataClasses": [
                {"name": "financial", "action": "block"},
                {"name": "pii", "action": "mask"},
            ],
            "inbound": {"pii": [{"entity": "email", "action": "allow"}]},
        }
    )
    inbound = {rule.entity: rule.action for rule in effective_inbound(spec).pii}
    assert inbound["email"] == "allow"  # its own rule wins
    assert inbound["phone"] == "mask"  # from the pii class
    assert inbound["iban"] == "block"  # from the financial class
    assert inbound["secret"] == "redact"  # class not listed: kept from the model
    outbound = {rule.entity: rule.action for rule in effective_outbound(spec).pii}
    assert outbound["email"] == "mask"
