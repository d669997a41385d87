"""Building blocks shared by the four custom resources.

The pydantic models in this package are the single source of truth for the API:
the CRD YAML is generated from them (see `privatellm.api.crd`). Cross-field rules
are declared next to the model they constrain as CEL rules, so that the API server
itself rejects a bad spec with a message that names the field.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

GROUP = "privatellm.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

# Upper bounds on lists and strings keep the API server's CEL cost estimate
# within budget; they are generous for real use.
MAX_LIST = 64
MAX_NAME = 253
MAX_TEXT = 4096

# Kubernetes' own name rules (k8s.io/apimachinery/pkg/util/validation). A field that
# names an object carries the rule of that kind, so that a name can never be a path
# ("../../kube-system/secrets/x") and the API server rejects it, naming the field.
DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
DNS_1035_LABEL = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"
MAX_DNS_LABEL = 63
MAX_DNS_SUBDOMAIN = 253
SECRET_KEY = r"^[-._a-zA-Z0-9]+$"
DURATION = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"


_DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def duration_seconds(text: str) -> float:
    """Seconds in a duration of the DURATION grammar, such as "30m" or "1h30m"."""
    if not re.fullmatch(DURATION, text):
        raise ValueError(f"not a duration: {text!r}")
    return sum(float(n) * _UNIT_SECONDS[unit] for n, unit in _DURATION_PART.findall(text))


def unanchored(pattern: str) -> str:
    """A name pattern without its ^ and $, to embed in a larger pattern."""
    return pattern.removeprefix("^").removesuffix("$")


# Every field that names an object uses one of these, never a plain str.
# Secrets, PVCs, StorageClasses, PriorityClasses and ServiceAccounts: a DNS-1123 subdomain.
SubdomainName = Annotated[
    str, Field(min_length=1, max_length=MAX_DNS_SUBDOMAIN, pattern=DNS_SUBDOMAIN)
]
# Namespaces: a DNS-1123 label.
NamespaceName = Annotated[str, Field(min_length=1, max_length=MAX_DNS_LABEL, pattern=DNS_LABEL)]
# InferenceDeployments: a DNS-1035 label, because the name is also the model's Service name.
InferenceDeploymentName = Annotated[
    str, Field(min_length=1, max_length=MAX_DNS_LABEL, pattern=DNS_1035_LABEL)
]
# A key inside a Secret.
SecretKey = Annotated[str, Field(min_length=1, max_length=MAX_DNS_SUBDOMAIN, pattern=SECRET_KEY)]

ValidationReason = Literal[
    "FieldValueInvalid", "FieldValueForbidden", "FieldValueRequired", "FieldValueDuplicate"
]


@dataclass(frozen=True)
class Rule:
    """A CEL rule the API server evaluates on the object it is attached to."""

    rule: str
    message: str
    field_path: str | None = None
    reason: ValidationReason = "FieldValueInvalid"
    # The rule also runs on create, with `oldSelf` an optional that is empty there. A rule
    # on the root sees every write, status and finalizers included, and the API server's
    # ratcheting cannot spare an object stored before the rule: such a rule uses `oldSelf`
    # to judge only what changed.
    optional_old_self: bool = False

    def as_schema(self) -> dict[str, Any]:
        out: dict[str, Any] = {"rule": self.rule, "message": self.message, "reason": self.reason}
        if self.field_path:
            out["fieldPath"] = self.field_path
        if self.optional_old_self:
            out["optionalOldSelf"] = True
        return out


def cel(*rules: Rule) -> dict[str, Any]:
    """Schema extra for a field or list item: CEL rules on its value.

    A rule's message says in words what a pattern error would only show as a regex.
    """
    return {"x-kubernetes-validations": [r.as_schema() for r in rules]}


def positive_quantity(field: str, examples: str) -> dict[str, Any]:
    """Schema extra for a resource amount: a Kubernetes quantity greater than zero.

    isQuantity parses with Kubernetes' own grammar (resource.ParseQuantity), so the API
    server refuses what a Pod or PVC would refuse (-1, 1..5, 1Qi) before the operator
    renders it.
    """
    return cel(
        Rule(
            "isQuantity(self) && quantity(self).isGreaterThan(quantity('0'))",
            f"{field} must be a positive Kubernetes quantity such as {examples}",
        )
    )


def _attach_rules(schema: dict[str, Any], cls: type[BaseModel]) -> None:
    rules: tuple[Rule, ...] = getattr(cls, "cel_rules", ())
    if rules:
        schema["x-kubernetes-validations"] = [r.as_schema() for r in rules]


class ApiModel(BaseModel):
    """Base of every API object: camelCase on the wire, unknown fields rejected."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        json_schema_extra=_attach_rules,
    )
    cel_rules: ClassVar[tuple[Rule, ...]] = ()


def set_list() -> dict[str, Any]:
    """Schema extra for a list whose items must be unique (the API server checks)."""
    return {"x-kubernetes-list-type": "set"}


def map_list(*keys: str) -> dict[str, Any]:
    """Schema extra for a list of objects keyed by `keys` (unique, merged by key)."""
    return {"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": list(keys)}


class SecretKeyReference(ApiModel):
    """A key inside a Secret in the same namespace."""

    name: SubdomainName = Field(description="Name of the Secret.")
    key: SecretKey = Field(description="Key inside the Secret.")


ConditionType = Literal["Ready", "Progressing", "Degraded"]


class Condition(ApiModel):
    """A standard Kubernetes condition, readable by kubectl wait, Argo CD and kstatus."""

    type: str = Field(description="Condition type: Ready, Progressing or Degraded.", max_length=64)
    status: Literal["True", "False", "Unknown"] = Field(description="Condition status.")
    reason: str = Field(
        default="",
        description="Machine-readable CamelCase reason for the last transition.",
        max_length=128,
    )
    message: str = Field(default="", description="Human-readable explanation.", max_length=MAX_TEXT)
    last_transition_time: str | None = Field(
        default=None,
        description="When the status last changed (RFC 3339).",
        json_schema_extra={"format": "date-time"},
    )
    observed_generation: int | None = Field(
        default=None,
        description="The metadata.generation this condition was computed from.",
        ge=0,
    )


class CommonStatus(ApiModel):
    """Status fields every resource reports."""

    observed_generation: int | None = Field(
        default=None,
        description="The metadata.generation the operator last reconciled.",
        ge=0,
    )
    conditions: list[Condition] = Field(
        default_factory=list,
        description="Ready, Progressing and Degraded conditions.",
        max_length=8,
        json_schema_extra=map_list("type"),
    )


class ObjectMeta(ApiModel):
    """The subset of Kubernetes object metadata the models read."""

    model_config = ConfigDict(extra="allow")

    name: str = Field(default="", description="Object name.")
    namespace: str | None = Field(default=None, description="Object namespace.")
    uid: str | None = Field(
        default=None,
        description="Unique id the API server assigned; owner references of children name it.",
    )
    generation: int | None = Field(default=None, description="Spec generation.")
    labels: dict[str, str] = Field(default_factory=dict, description="Labels.")
    annotations: dict[str, str] = Field(default_factory=dict, description="Annotations.")


@dataclass(frozen=True)
class PrinterColumn:
    """A column `kubectl get` prints for a resource."""

    name: str
    json_path: str
    type: Literal["string", "integer", "number", "boolean", "date"] = "string"
    description: str = ""
    priority: int = 0


@dataclass(frozen=True)
class CRDInfo:
    """Names and presentation of a custom resource; the schema comes from the model."""

    kind: str
    plural: str
    short_names: tuple[str, ...]
    categories: tuple[str, ...] = ("privatellm",)
    printer_columns: tuple[PrinterColumn, ...] = ()
    root_rules: tuple[Rule, ...] = ()


def ready_column() -> PrinterColumn:
    return PrinterColumn(
        "Ready",
        '.status.conditions[?(@.type=="Ready")].status',
        description="Whether the resource is ready.",
    )


def age_column() -> PrinterColumn:
    return PrinterColumn("Age", ".metadata.creationTimestamp", type="date")


class Resource(ApiModel):
    """Envelope of a custom resource: apiVersion, kind, metadata, spec, status."""

    crd_info: ClassVar[CRDInfo]

    api_version: str = Field(default=API_VERSION, alias="apiVersion")
    kind: str
    metadata: ObjectMeta = Field(default_factory=ObjectMeta)
