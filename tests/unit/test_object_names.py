"""Every spec field that names a Kubernetes object carries Kubernetes' own name rule.

The rule that keeps this true as the API grows: every free string under a spec (enums
aside) is either in OBJECT_NAME_FIELDS (tests/support/object_names.py), where the
generated schema must carry the name rule of the kind it names, or in NOT_OBJECT_NAMES
below with the reason it names no Kubernetes object. A new string field fails
`test_every_spec_string_is_classified` until someone decides which it is; a field that
names an object then uses a type from privatellm.api.base (SubdomainName, NamespaceName,
InferenceDeploymentName) and gets an integration case for free.
"""

from __future__ import annotations

import re
from typing import Any

import pytest

from privatellm.api.base import DNS_SUBDOMAIN, MAX_DNS_SUBDOMAIN, unanchored
from tests.support.object_names import (
    OBJECT_NAME_FIELDS,
    NameField,
    spec_schemas,
    spec_string_fields,
)

ID, AP, DC, CB = "InferenceDeployment", "AccessPolicy", "DataConnector", "CostBudget"

NOT_OBJECT_NAMES: dict[str, tuple[tuple[str, str], ...]] = {
    "a model name clients send (vLLM --served-model-name)": ((ID, ".spec.model.name"),),
    "a URL or host outside the cluster": (
        (ID, ".spec.model.source.s3Endpoint"),
        (DC, ".spec.endpoint"),
        (DC, ".spec.egress[].host"),
        (DC, ".spec.egress[].cidr"),
    ),
    "a container image": ((ID, ".spec.engine.image"), (DC, ".spec.image")),
    "a revision of the weights": ((ID, ".spec.model.revision"),),
    "a quantity": (
        (ID, ".spec.weightCache.size"),
        (ID, ".spec.resources.cpu"),
        (ID, ".spec.resources.memory"),
    ),
    "a duration": (
        (ID, ".spec.autoscaling.scaleToZeroAfter"),
        (ID, ".spec.governance.biasMetrics[].window"),
        (ID, ".spec.encryption.rotationPeriod"),
        (AP, ".spec.misuse.baselineWindow"),
        (AP, ".spec.misuse.suspendFor"),
        (CB, ".spec.idleTimeout"),
    ),
    "a node label value, matched by the scheduler, never used as a name": (
        (ID, ".spec.resources.gpuProduct"),
        (CB, ".spec.gpuPrices[].gpuProduct"),
        (CB, ".spec.selector.matchLabels{}"),
    ),
    # Zones are also parts of child names: the API server refuses a zone that cannot be
    # one, and the operator checks again before it renders (render.inference.spec_errors).
    "a zone (topology.kubernetes.io/zone label value)": ((ID, ".spec.zones[]"),),
    "an argument, prompt or term for the model or the filters": (
        (ID, ".spec.engine.extraArgs[]"),
        (ID, ".spec.health.probePrompt"),
        (AP, ".spec.outbound.internalTerms[]"),
    ),
    "a field or value of decision records": (
        (ID, ".spec.governance.decisionFields[]"),
        (ID, ".spec.governance.biasMetrics[].protectedAttribute"),
        (ID, ".spec.governance.biasMetrics[].privilegedValue"),
        (ID, ".spec.governance.biasMetrics[].favorableOutcome"),
        (DC, ".spec.filters.customerIdField"),
    ),
    "an OIDC group": (
        (ID, ".spec.governance.review.reviewersGroup"),
        (CB, ".spec.breakGlassGroups[]"),
        (CB, ".spec.throttle.priorityGroups[]"),
    ),
    "a Vault Transit key name (escaped in Vault paths by keys.transit)": (
        (ID, ".spec.encryption.transitKey"),
    ),
    "a data class": ((AP, ".spec.dataClasses[].name"), (DC, ".spec.dataClasses[]")),
    "a MIME type": ((DC, ".spec.filters.allowedFileTypes[]"),),
    "a currency, time zone or clock time": (
        (CB, ".spec.currency"),
        (CB, ".spec.businessHours.timezone"),
        (CB, ".spec.businessHours.start"),
        (CB, ".spec.businessHours.end"),
    ),
}


def _schemas() -> dict[tuple[str, str], dict[str, Any]]:
    return {(kind, path): node for kind, path, node in spec_schemas()}


def _parent_rules(field: NameField) -> list[dict[str, str]]:
    """CEL rules of the object holding `field`, aimed at it by fieldPath."""
    parent, leaf = field.path.rsplit(".", 1)
    node = _schemas()[(field.kind, parent.removesuffix("[]"))]
    if parent.endswith("[]"):
        node = node["items"]
    rules: list[dict[str, str]] = node.get("x-kubernetes-validations", [])
    return [r for r in rules if r.get("fieldPath") == f".{leaf}"]


def test_every_spec_string_is_classified() -> None:
    names = {(f.kind, f.path) for f in OBJECT_NAME_FIELDS}
    others = {field for fields in NOT_OBJECT_NAMES.values() for field in fields}
    strings = {(kind, path) for kind, path, _ in spec_string_fields()}
    assert not names & others, "a field is listed both as a name and as not a name"
    unclassified = sorted(strings - names - others)
    assert unclassified == [], (
        "classify each new string field: if it names a Kubernetes object, give it a name"
        " type from privatellm.api.base and list it in tests/support/object_names.py;"
        " otherwise add it to NOT_OBJECT_NAMES with the reason"
    )
    assert sorted((names | others) - strings) == [], "the tables list fields that do not exist"


@pytest.mark.parametrize(
    "field",
    [f for f in OBJECT_NAME_FIELDS if f.checked_by == "pattern"],
    ids=lambda f: f"{f.kind}{f.path}",
)
def test_name_field_carries_the_pattern_and_length_of_its_kind(field: NameField) -> None:
    node = _schemas()[(field.kind, field.path)]
    assert node.get("pattern") == field.rule.pattern, f"{field.path} names a {field.names}"
    assert node.get("maxLength") == field.rule.max_length
    assert node.get("minLength") == 1


def test_service_account_subject_name_is_checked_by_cel() -> None:
    (field,) = [f for f in OBJECT_NAME_FIELDS if f.checked_by == "cel"]
    (rule,) = _parent_rules(field)
    assert "self.kind != 'ServiceAccount'" in rule["rule"]
    assert DNS_SUBDOMAIN in rule["rule"]
    assert "ServiceAccount" in rule["message"]
    assert _schemas()[(field.kind, field.path)]["maxLength"] == MAX_DNS_SUBDOMAIN


def test_pvc_claim_in_model_uri_is_a_subdomain_of_bounded_length() -> None:
    (field,) = [f for f in OBJECT_NAME_FIELDS if f.checked_by == "embedded"]
    pattern = _schemas()[(field.kind, field.path)]["pattern"]
    assert f"pvc://{unanchored(DNS_SUBDOMAIN)}(/.*)?" in pattern
    (rule,) = _parent_rules(field)
    assert f"{{1,{MAX_DNS_SUBDOMAIN}}}" in rule["rule"]


@pytest.mark.parametrize("field", OBJECT_NAME_FIELDS, ids=lambda f: f"{f.kind}{f.path}")
def test_refused_values_break_the_rule_and_a_plain_name_keeps_it(field: NameField) -> None:
    """The table's bad values really are bad, so the integration cases test the rule."""
    rule = field.rule
    assert re.fullmatch(rule.pattern, "model-store")
    for case, value in rule.refused:
        too_long = len(value) > rule.max_length
        assert too_long or not re.fullmatch(rule.pattern, value), case
