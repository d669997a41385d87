"""The gateway's configuration: one file per namespace, rendered by the operator.

The operator renders it from the namespace's InferenceDeployments, AccessPolicies
and DataConnectors into a Secret (it names API-key digests and protected
customer entities, so it is not a ConfigMap). The gateway reads it at start and
again whenever the mounted file changes; a file that does not validate is
refused and the previous configuration stays in force.
"""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import Field

from privatellm.api.access import AccessPolicySpec
from privatellm.api.base import ApiModel


class HoldSettings(ApiModel):
    """How long, and how many, requests wait for a model that is scaling from zero."""

    max_queue: int = Field(
        default=256,
        ge=1,
        le=100_000,
        description="Requests held at once for the model; more get 503 hold_queue_full.",
    )
    max_wait_seconds: float = Field(
        gt=0,
        le=3600,
        description="How long one request is held; then it gets 503 "
        "model_scaling_from_zero_timeout.",
    )


class BudgetBlock(ApiModel):
    """A CostBudget covering the model has reached a block threshold."""

    budget: str = Field(description="The CostBudget whose threshold blocks the model.")
    break_glass_groups: list[str] = Field(
        default_factory=list, description="Groups whose members are still served."
    )


class BudgetThrottle(ApiModel):
    """A CostBudget covering the model has reached a throttle threshold: subjects other
    than its priority ones get lowered quotas (quotas.throttled)."""

    budget: str = Field(description="The CostBudget whose threshold throttles the model.")
    quota_percent: int = Field(
        ge=1,
        le=100,
        description="Percent of each AccessPolicy quota a non-priority subject keeps.",
    )
    requests_per_minute: int = Field(
        ge=1,
        description="Requests per minute a non-priority subject whose policy sets no "
        "requestsPerMinute is held to.",
    )
    priority_groups: list[str] = Field(
        default_factory=list, description="Groups whose members are not throttled."
    )
    priority_policies: list[str] = Field(
        default_factory=list, description="AccessPolicy names whose subjects are not throttled."
    )


class ModelRoute(ApiModel):
    """A model clients can ask for and the replicas that serve it."""

    name: str = Field(description="Model id clients send: the InferenceDeployment's name.")
    served_name: str = Field(description="Model name the vLLM server answers to.")
    endpoints: list[str] = Field(
        default_factory=list,
        description=(
            "Base URLs of the replicas, preferred first. With `service` and discovery, "
            "used only until the gateway has listed the Service's endpoints once."
        ),
    )
    service: str | None = Field(
        default=None,
        description="Service whose ready endpoints are the replicas, found through EndpointSlices.",
    )
    fallback: str | None = Field(default=None, description="Model used while none is ready.")
    max_model_len: int | None = Field(
        default=None, description="The model's context length: larger max_tokens get 400."
    )
    transit_key: str | None = Field(
        default=None, description="Transit key sealing this model's prompts and responses."
    )
    hold: HoldSettings | None = Field(
        default=None,
        description="Hold requests while the Service has no ready replica (scale from zero), "
        "instead of answering 503 at once.",
    )
    budget_block: BudgetBlock | None = Field(
        default=None,
        description="New requests get 429 budget_exhausted, except from break-glass groups.",
    )
    budget_throttle: BudgetThrottle | None = Field(
        default=None, description="A CostBudget covering the model is at a throttle threshold."
    )


class ConnectorRoute(ApiModel):
    """A DataConnector as the gateway sees it: the account its Pods call with, what
    their items carry and which models they reach."""

    name: str = Field(description="The DataConnector's name.")
    service_account: str = Field(description="ServiceAccount of the connector's Pods.")
    models: list[str] = Field(
        default_factory=list, description="Models its items may go to; empty: any."
    )
    data_classes: list[str] = Field(
        default_factory=list,
        description="Classes every item carries, whatever the request declares.",
    )


class NamedPolicy(ApiModel):
    """An AccessPolicy as the gateway enforces it."""

    name: str
    spec: AccessPolicySpec


class OIDCSettings(ApiModel):
    """An OpenID Connect issuer whose tokens the gateway accepts."""

    issuer: str
    audience: str
    jwks_uri: str | None = None
    username_claim: str = "email"
    groups_claim: str = "groups"
    leeway_seconds: int = Field(default=60, ge=0, le=600)
    ca_file: str | None = None


class TokenReviewSettings(ApiModel):
    """Kubernetes ServiceAccount tokens, checked by TokenReview."""

    api_server: str = "https://kubernetes.default.svc"
    token_file: str = "/var/run/secrets/kubernetes.io/serviceaccount/token"
    ca_file: str | None = "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt"
    audiences: list[str] = Field(default_factory=list)


class DiscoverySettings(ApiModel):
    """How the gateway finds the ready replicas of each model's Service: EndpointSlices."""

    api_server: str = "https://kubernetes.default.svc"
    token_file: str = "/var/run/secrets/kubernetes.io/serviceaccount/token"
    ca_file: str | None = "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt"
    zone: str | None = Field(
        default=None, description="The gateway's own zone: its replicas there are tried first."
    )


class QuotaSharing(ApiModel):
    """Gateway replicas that add each other's quota counts to their own (see quotas.py)."""

    service: str | None = Field(
        default=None,
        description="Find the replicas as the ready endpoints of this Service's https port "
        "(needs discovery).",
    )
    peers: list[str] = Field(
        default_factory=list, description="Without a Service: the other replicas' base URLs."
    )
    server_name: str | None = Field(
        default=None, description="The name in the replicas' certificates, checked over TLS."
    )
    interval_seconds: float = Field(
        default=1.0, gt=0, le=60, description="How often each replica asks the others."
    )


class AuthSettings(ApiModel):
    """Which credentials the gateway accepts."""

    api_keys: dict[str, str] = Field(
        default_factory=dict, description="SHA-256 hex digest of a key -> the key's name."
    )
    oidc: OIDCSettings | None = None
    token_review: TokenReviewSettings | None = None


class UpstreamTLS(ApiModel):
    """The client certificate the gateway presents to vLLM, and the CA it trusts."""

    ca_file: str
    cert_file: str | None = None
    key_file: str | None = None


class EncryptionSettings(ApiModel):
    """Where the gateway gets data keys to seal prompts and responses before they are kept."""

    vault_addr: str
    transit_mount: str = "transit"
    role: str | None = Field(
        default=None,
        description="Kubernetes-auth role to log in with; without one, VAULT_TOKEN/BAO_TOKEN.",
    )
    auth_mount: str = "kubernetes"
    jwt_file: str = "/var/run/secrets/kubernetes.io/serviceaccount/token"
    ca_file: str | None = Field(
        default=None,
        description="CA certificate (PEM) that Vault's certificate must chain to; "
        "without it, the system's CAs.",
    )
    data_key_seconds: float = Field(
        default=300.0,
        gt=0,
        description="How long one data key is used; after that a Vault outage stops requests.",
    )


class Limits(ApiModel):
    """Bounds that protect the gateway itself."""

    max_body_bytes: int = Field(
        default=1024 * 1024,
        ge=1024,
        # A sealed prompt and its answer, base64, must fit one audit record (16 MiB).
        le=4 * 1024 * 1024,
        description="Larger request bodies get 413.",
    )
    upstream_connect_seconds: float = Field(default=2.0, gt=0)
    upstream_total_seconds: float = Field(default=600.0, gt=0)
    client_read_seconds: float = Field(
        default=30.0, gt=0, description="A client that takes longer to send its body gets 408."
    )
    # The HTTP listener's bounds below apply to connections opened after a reload.
    # The gateway's paths are short; 8 KiB is what most servers and proxies allow.
    max_line_bytes: int = Field(
        default=8192, ge=256, le=65536, description="Longer request URLs get 414."
    )
    # Credentials are capped at 8 KiB (auth.py); no other header the gateway reads comes near.
    max_header_bytes: int = Field(
        default=8192,
        ge=1024,
        le=65536,
        description="A header line (name and value) longer than this gets 431.",
    )
    # 64 x 8 KiB bounds one request's headers to 512 KiB; clients and proxies send ~20.
    max_headers: int = Field(
        default=64, ge=8, le=256, description="Requests with more headers get 431."
    )
    # A slow mobile link needs a few retransmissions (1 + 2 + 4 + 8 s) for a request head
    # of one or two segments; a slowloris client is cut off after this.
    header_read_seconds: float = Field(
        default=20.0,
        gt=0,
        le=300,
        description="From connection open, or from the first byte after a response, until the "
        "request's headers are complete; a slower client gets 408 and is disconnected.",
    )
    # Longer than the 60 s idle timeout of common cloud load balancers, so that the gateway
    # is not the side that closes a connection a balancer is about to reuse.
    idle_keepalive_seconds: float = Field(
        default=75.0,
        gt=0,
        le=3600,
        description="An idle connection between requests is closed after this long.",
    )
    # A browser opens 6 connections per host and SDK pools a few dozen; one address (an
    # office behind NAT too) fits, and cannot hold the gateway's sockets by itself.
    max_connections_per_client: int = Field(
        default=64,
        ge=1,
        description="Connections one source address may hold open; more get 429 and are closed. "
        "Raise it when the gateway sits behind a proxy that pools its clients' requests.",
    )


class GatewayConfig(ApiModel):
    """Everything one namespace's gateway needs to know."""

    namespace: str
    models: list[ModelRoute] = Field(default_factory=list)
    policies: list[NamedPolicy] = Field(default_factory=list)
    connectors: list[ConnectorRoute] = Field(default_factory=list)
    protected_entities: list[str] = Field(
        default_factory=list, description="Names and identifiers of customers that never leave."
    )
    auth: AuthSettings = Field(default_factory=AuthSettings)
    upstream_tls: UpstreamTLS | None = None
    encryption: EncryptionSettings | None = None
    discovery: DiscoverySettings | None = None
    quota_sharing: QuotaSharing | None = None
    limits: Limits = Field(default_factory=Limits)
    usage_time_zones: list[str] = Field(
        default_factory=lambda: ["UTC"],
        description="IANA zones whose calendar months the usage tally is bucketed by "
        "(the CostBudgets' time zones).",
    )

    def route(self, model: str) -> ModelRoute | None:
        """The route for a model id, or None when the namespace has no such model."""
        return next((m for m in self.models if m.name == model), None)


def load_config(path: Path) -> GatewayConfig:
    """Read and validate a configuration file (YAML or JSON)."""
    return GatewayConfig.model_validate(yaml.safe_load(path.read_text()))
