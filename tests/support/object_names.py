"""The API fields that name a Kubernetes object, and the name rule each must carry.

One table for the unit test that checks the generated schemas (tests/unit/test_object_names.py)
and for the integration test that has the real API server reject bad names in every one
of these fields (tests/integration/test_crd_validation.py). Paths are schema paths as
`spec_string_fields` spells them: `[]` for list items.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from privatellm.api.base import (
    DNS_1035_LABEL,
    DNS_LABEL,
    DNS_SUBDOMAIN,
    MAX_DNS_LABEL,
    MAX_DNS_SUBDOMAIN,
    SECRET_KEY,
    unanchored,
)
from privatellm.api.crd import RESOURCES, render_crd

TRAVERSAL = "../../kube-system/secrets/x"


@dataclass(frozen=True)
class NameRule:
    """A Kubernetes name rule and values it refuses: (case id, value)."""

    title: str
    pattern: str
    max_length: int
    refused: tuple[tuple[str, str], ...]


def _refused(max_length: int, *, uppercase: bool = True) -> tuple[tuple[str, str], ...]:
    cases = [("traversal", TRAVERSAL)]
    if uppercase:
        cases.append(("uppercase", "Model-Store"))
    cases.append(("too-long", "a" * (max_length + 1)))
    return tuple(cases)


SUBDOMAIN = NameRule(
    "DNS-1123 subdomain", DNS_SUBDOMAIN, MAX_DNS_SUBDOMAIN, _refused(MAX_DNS_SUBDOMAIN)
)
LABEL = NameRule("DNS-1123 label", DNS_LABEL, MAX_DNS_LABEL, _refused(MAX_DNS_LABEL))
DNS_1035 = NameRule("DNS-1035 label", DNS_1035_LABEL, MAX_DNS_LABEL, _refused(MAX_DNS_LABEL))
MODEL_REFERENCE = NameRule(
    'DNS-1035 label or "*"',
    rf"^(\*|{unanchored(DNS_1035_LABEL)})$",
    MAX_DNS_LABEL,
    DNS_1035.refused,
)
KEY = NameRule(
    "Secret key", SECRET_KEY, MAX_DNS_SUBDOMAIN, _refused(MAX_DNS_SUBDOMAIN, uppercase=False)
)


@dataclass(frozen=True)
class NameField:
    """A field naming an object of `names`, in `kind` at schema `path`.

    `checked_by` says how the API server applies the rule: "pattern" (the field's own
    pattern and maxLength), "cel" (a CEL rule on the parent, with this field as its
    fieldPath), or "embedded" (the field's pattern holds the name pattern after a prefix,
    and a CEL rule bounds the name's length). `template` puts a name into the field's
    value (a pvc:// URI holds a claim name).
    """

    kind: str
    path: str
    names: str
    rule: NameRule
    checked_by: str = "pattern"
    template: str = "{}"


ID, AP, DC, CB = "InferenceDeployment", "AccessPolicy", "DataConnector", "CostBudget"

OBJECT_NAME_FIELDS = (
    NameField(
        ID, ".spec.model.source.uri", "PersistentVolumeClaim", SUBDOMAIN, "embedded", "pvc://{}/w"
    ),
    NameField(ID, ".spec.model.source.credentials.name", "Secret", SUBDOMAIN),
    NameField(ID, ".spec.model.source.credentials.key", "key in a Secret", KEY),
    NameField(ID, ".spec.weightCache.storageClassName", "StorageClass", SUBDOMAIN),
    NameField(ID, ".spec.fallback.model", "InferenceDeployment", DNS_1035),
    NameField(ID, ".spec.priorityClassName", "PriorityClass", SUBDOMAIN),
    NameField(
        AP, ".spec.subjects[].name", "ServiceAccount (kind ServiceAccount)", SUBDOMAIN, "cel"
    ),
    NameField(AP, ".spec.subjects[].namespace", "Namespace", LABEL),
    NameField(AP, ".spec.subjects[].secretName", "Secret", SUBDOMAIN),
    NameField(AP, ".spec.models[]", "InferenceDeployment", MODEL_REFERENCE),
    NameField(AP, ".spec.outbound.protectedEntitiesSecret", "Secret", SUBDOMAIN),
    NameField(AP, ".spec.sourceNamespaces[]", "Namespace", LABEL),
    NameField(DC, ".spec.credentialsSecret", "Secret", SUBDOMAIN),
    NameField(DC, ".spec.models[]", "InferenceDeployment", DNS_1035),
    NameField(CB, ".spec.throttle.priorityPolicies[]", "AccessPolicy", SUBDOMAIN),
)


def _walk(schema: dict[str, Any], path: str) -> Iterator[tuple[str, dict[str, Any]]]:
    yield path, schema
    for name, sub in schema.get("properties", {}).items():
        yield from _walk(sub, f"{path}.{name}")
    if isinstance(schema.get("items"), dict):
        yield from _walk(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        yield from _walk(schema["additionalProperties"], f"{path}{{}}")


def spec_schemas() -> Iterator[tuple[str, str, dict[str, Any]]]:
    """(kind, path, schema) of every node under each resource's spec in the generated CRDs."""
    for resource in RESOURCES:
        crd = render_crd(resource)
        root = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
        for path, node in _walk(root["properties"]["spec"], ".spec"):
            yield resource.crd_info.kind, path, node


def spec_string_fields() -> Iterator[tuple[str, str, dict[str, Any]]]:
    """(kind, path, schema) of every free string under a spec: enums are left out."""
    for kind, path, node in spec_schemas():
        if node.get("type") == "string" and "enum" not in node:
            yield kind, path, node
