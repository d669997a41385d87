"""AccessPolicy: who may query which model with which data classes (layers 5, 6, 7)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from .base import (
    DNS_1035_LABEL,
    DNS_LABEL,
    DNS_SUBDOMAIN,
    DURATION,
    MAX_DNS_LABEL,
    MAX_LIST,
    MAX_NAME,
    ApiModel,
    CommonStatus,
    CRDInfo,
    NamespaceName,
    PrinterColumn,
    Resource,
    Rule,
    SubdomainName,
    age_column,
    map_list,
    ready_column,
    set_list,
    unanchored,
)

FilterAction = Literal["allow", "redact", "mask", "hash", "block"]
PII_ENTITIES = Literal[
    "email",
    "phone",
    "iban",
    "paymentCard",
    "usSSN",
    "ukNINO",
    "nlBSN",
    "deTaxID",
    "ipAddress",
    "dateOfBirth",
    "secret",
]

# A data class, as AccessPolicies allow them and DataConnectors declare them.
DataClassName = Annotated[str, Field(min_length=1, max_length=MAX_DNS_LABEL, pattern=DNS_LABEL)]
# A term matched in responses; internal codes and names are short.
InternalTerm = Annotated[str, Field(min_length=1, max_length=256)]

# An InferenceDeployment name, or "*" for all of them in the namespace.
ModelReference = Annotated[
    str,
    Field(
        min_length=1,
        max_length=MAX_DNS_LABEL,
        pattern=rf"^(\*|{unanchored(DNS_1035_LABEL)})$",
    ),
]


class Subject(ApiModel):
    """An authenticated identity the policy applies to."""

    kind: Literal["User", "Group", "ServiceAccount", "APIKey"] = Field(
        description="User or Group (from OIDC claims), ServiceAccount (TokenReview) or APIKey."
    )
    name: str = Field(
        description="User name, group name, ServiceAccount name or API key name.",
        min_length=1,
        max_length=MAX_NAME,
    )
    namespace: NamespaceName | None = Field(
        default=None, description="Namespace of the ServiceAccount."
    )
    secret_name: SubdomainName | None = Field(
        default=None, description="Secret holding the SHA-256 hash of the API key (kind APIKey)."
    )

    cel_rules = (
        Rule(
            "self.kind != 'ServiceAccount' || has(self.namespace)",
            "namespace is required for a ServiceAccount subject",
            field_path=".namespace",
            reason="FieldValueRequired",
        ),
        Rule(
            "self.kind != 'APIKey' || has(self.secretName)",
            "secretName is required for an APIKey subject",
            field_path=".secretName",
            reason="FieldValueRequired",
        ),
        # User and group names come from OIDC and are free-form; a ServiceAccount's is not.
        Rule(
            f"self.kind != 'ServiceAccount' || self.name.matches(r'{DNS_SUBDOMAIN}')",
            "the name of a ServiceAccount subject must be a ServiceAccount name: lowercase"
            " letters, digits, '-' and '.', starting and ending with a letter or digit",
            field_path=".name",
        ),
    )


class DataClassRule(ApiModel):
    """What happens to content of one data class in prompts and responses."""

    name: DataClassName = Field(
        description="Data class, e.g. public, internal, confidential, pii, financial, health."
    )
    action: FilterAction = Field(description="allow, redact, mask, hash or block.")


class PIIRule(ApiModel):
    """Action for one kind of personal data or secret."""

    entity: PII_ENTITIES = Field(description="Entity type the detector recognises.")
    action: FilterAction = Field(description="allow, redact, mask, hash or block.")


class InboundFilters(ApiModel):
    """Filters every prompt passes before it reaches a model."""

    pii: list[PIIRule] = Field(
        default_factory=list,
        description="Per-entity actions; entities not listed are redacted.",
        max_length=32,
        json_schema_extra=map_list("entity"),
    )
    injection: Literal["off", "flag", "block"] = Field(
        default="block", description="What to do when prompt-injection heuristics match."
    )
    max_prompt_bytes: int = Field(
        default=262144, description="Largest prompt accepted.", ge=1, le=64 * 1024 * 1024
    )


class OutboundFilters(ApiModel):
    """Filters every response passes before it reaches the client, streamed ones too."""

    pii: list[PIIRule] = Field(
        default_factory=list,
        description="Per-entity actions on responses.",
        max_length=32,
        json_schema_extra=map_list("entity"),
    )
    protected_entities_secret: SubdomainName | None = Field(
        default=None,
        description="Secret listing names and identifiers of other customers; they never pass.",
    )
    internal_terms: list[InternalTerm] = Field(
        default_factory=list,
        description="Internal-only terms (e.g. price-list codes) that must not leave.",
        max_length=1024,
    )
    action: Literal["redact", "block"] = Field(
        default="redact", description="What to do when a protected entity or internal term matches."
    )


class Quotas(ApiModel):
    """Per-subject limits."""

    requests_per_minute: int | None = Field(
        default=None, description="Requests per minute per subject.", ge=1, le=1_000_000
    )
    tokens_per_minute: int | None = Field(
        default=None, description="Prompt plus completion tokens per minute.", ge=1
    )
    tokens_per_day: int | None = Field(default=None, description="Tokens per day.", ge=1)

    cel_rules = (
        Rule(
            "!has(self.tokensPerMinute) || !has(self.tokensPerDay)"
            " || self.tokensPerMinute <= self.tokensPerDay",
            "tokensPerMinute must not exceed tokensPerDay",
            field_path=".tokensPerMinute",
        ),
    )


class MisuseDetection(ApiModel):
    """Per-subject baselines and the patterns that raise alerts (layer 7)."""

    baseline_window: str = Field(
        default="168h",
        description="History a subject's baseline is computed over.",
        pattern=DURATION,
        max_length=32,
    )
    spike_factor: float = Field(
        default=5.0,
        description="Alert when usage exceeds the baseline by this factor.",
        gt=1,
        le=1000,
    )
    enumeration_threshold: int = Field(
        default=50,
        description="Distinct identifiers asked about within an hour that count as enumeration.",
        ge=1,
    )
    probing_threshold: int = Field(
        default=10,
        description="Denied or blocked requests within an hour that count as probing.",
        ge=1,
    )
    action: Literal["alert", "throttle", "suspend"] = Field(
        default="alert", description="What happens when misuse is detected."
    )
    suspend_for: str = Field(
        default="1h", description="How long a suspension lasts.", pattern=DURATION, max_length=32
    )


class AccessPolicySpec(ApiModel):
    """Who may query which models with which data classes, within which limits. Deny by default."""

    subjects: list[Subject] = Field(
        description="Identities the policy grants access to.", min_length=1, max_length=MAX_LIST
    )
    models: list[ModelReference] = Field(
        description='InferenceDeployments the subjects may use; "*" means all in the namespace.',
        min_length=1,
        max_length=MAX_LIST,
        json_schema_extra=set_list(),
    )
    data_classes: list[DataClassRule] = Field(
        default_factory=list,
        description="Data classes and what happens to each; classes not listed are blocked.",
        max_length=32,
        json_schema_extra=map_list("name"),
    )
    inbound: InboundFilters = Field(default_factory=InboundFilters, description="Prompt filters.")
    outbound: OutboundFilters = Field(
        default_factory=OutboundFilters, description="Response filters."
    )
    quotas: Quotas = Field(default_factory=Quotas, description="Rate limits and token quotas.")
    source_namespaces: list[NamespaceName] = Field(
        default_factory=list,
        description="Namespaces requests may come from; empty means the policy's own namespace.",
        max_length=MAX_LIST,
        json_schema_extra=set_list(),
    )
    misuse: MisuseDetection = Field(
        default_factory=MisuseDetection, description="Misuse detection."
    )

    cel_rules = (
        Rule(
            "!self.models.exists(m, m == '*') || size(self.models) == 1",
            'models: "*" cannot be combined with named models',
            field_path=".models",
        ),
    )


class AccessPolicyStatus(CommonStatus):
    """Observed state of an AccessPolicy."""

    resolved_models: list[str] = Field(
        default_factory=list, description="Models the policy currently resolves to."
    )


class AccessPolicy(Resource):
    """Access control for the gateway: subjects, models, data classes, quotas, misuse."""

    crd_info = CRDInfo(
        kind="AccessPolicy",
        plural="accesspolicies",
        short_names=("ap", "llmpolicy"),
        printer_columns=(
            ready_column(),
            PrinterColumn("Models", ".spec.models"),
            age_column(),
        ),
    )

    kind: str = "AccessPolicy"
    spec: AccessPolicySpec = Field(description="Desired state.")
    status: AccessPolicyStatus | None = Field(default=None, description="Observed state.")
