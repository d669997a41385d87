"""Keep each namespace's gateway in line with its models, AccessPolicies and DataConnectors.

Reads the namespace's InferenceDeployments, AccessPolicies and DataConnectors and
the Secrets the policies name (API-key digests, protected-entity lists), renders
the gateway, applies it, and reports on each AccessPolicy whether everything it
names exists.
"""

from __future__ import annotations

import base64
import datetime
import json
import logging
import os
import secrets
import ssl
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from privatellm.api import DataConnector, InferenceDeployment
from privatellm.api.access import AccessPolicy
from privatellm.audit import Signer
from privatellm.audit.records import policy_change_record
from privatellm.gateway.config import OIDCSettings
from privatellm.kube.client import KINDS, Kube, namespace_and_name
from privatellm.render.access_policy import (
    missing_source_namespaces,
    policy_problems,
    resolved_models,
)
from privatellm.render.budget_actions import (
    action_signature,
    budget_blocks,
    budget_throttles,
    idle_timeouts,
    usage_time_zones,
)
from privatellm.render.conditions import ConditionState, merge_conditions, validation_messages
from privatellm.render.gateway import (
    AUDIT_KEY_KEY,
    CONFIG_SECRET,
    DEFAULT_GATEWAY_RESOURCES,
    GATEWAY_NAME,
    GATEWAY_TLS_SECRET,
    HASH_KEY_KEY,
    AuditShipping,
    GatewayInputs,
    GatewayKeys,
    render_gateway,
    render_gateway_certificate,
    render_gateway_tls_secret,
    render_token_review_binding,
    token_review_subjects,
)
from privatellm.render.tls import secret_bytes

from .builder import (
    Context,
    Controller,
    For,
    Key,
    Watches,
    WatchEvent,
    always,
    namespace_key,
    namespace_keys,
    on_new_generation,
)
from .events import event_for, now
from .inference import namespace_terminating
from .network import NetworkSettings, gateway_network, network_settings_from_env
from .tls import ensure_certificate

log = logging.getLogger(__name__)
R = TypeVar("R", bound=BaseModel)
# A stored object that does not validate, and why, in the API server's words.
Stored = tuple[dict[str, Any], str]

INFERENCE = KINDS["InferenceDeployment"]
DEPLOYMENT = KINDS["Deployment"]
ACCESS_POLICY = KINDS["AccessPolicy"]
NAMESPACE = KINDS["Namespace"]
# Whether every namespace spec.sourceNamespaces names exists (a warning, not a failure).
SOURCES_CONDITION = "SourceNamespacesFound"
DATA_CONNECTOR = KINDS["DataConnector"]
COST_BUDGET = KINDS["CostBudget"]
SECRET = KINDS["Secret"]
CLUSTER_ROLE_BINDING = KINDS["ClusterRoleBinding"]
# Set by the chart: the ClusterRoleBinding that lets gateways call TokenReview.
TOKEN_REVIEW_BINDING_ENV = "PRIVATELLM_GATEWAY_TOKENREVIEW_BINDING"
# Set by the chart: where gateways ship sealed audit segments (empty bucket: nowhere).
AUDIT_BUCKET_ENV = "PRIVATELLM_AUDIT_WORM_BUCKET"
AUDIT_PREFIX_ENV = "PRIVATELLM_AUDIT_WORM_PREFIX"
AUDIT_ENDPOINT_ENV = "PRIVATELLM_AUDIT_WORM_ENDPOINT"
# Set by the chart (values vault.*): the operator logs in to Vault with them (runtime.py)
# and every gateway is rendered to do the same.
VAULT_AUTH_MOUNT_ENV = "PRIVATELLM_VAULT_AUTH_MOUNT"
VAULT_CA_FILE_ENV = "PRIVATELLM_VAULT_CA_FILE"
# Set by the chart (values gateway.*): every namespace's gateway.
GATEWAY_IMAGE_ENV = "PRIVATELLM_GATEWAY_IMAGE"
GATEWAY_RESOURCES_ENV = "PRIVATELLM_GATEWAY_RESOURCES"
OIDC_ISSUER_ENV = "PRIVATELLM_OIDC_ISSUER_URL"
OIDC_AUDIENCE_ENV = "PRIVATELLM_OIDC_AUDIENCE"
OIDC_USERNAME_CLAIM_ENV = "PRIVATELLM_OIDC_USERNAME_CLAIM"
OIDC_GROUPS_CLAIM_ENV = "PRIVATELLM_OIDC_GROUPS_CLAIM"
OIDC_JWKS_URL_ENV = "PRIVATELLM_OIDC_JWKS_URL"
OIDC_CA_FILE_ENV = "PRIVATELLM_OIDC_CA_FILE"


def audit_shipping_from_env(environ: Mapping[str, str]) -> AuditShipping | None:
    bucket = environ.get(AUDIT_BUCKET_ENV, "")
    if not bucket:
        return None
    prefix = environ.get(AUDIT_PREFIX_ENV) or "audit"
    return AuditShipping(bucket, prefix, environ.get(AUDIT_ENDPOINT_ENV, ""))


API_KEY_DIGEST = "sha256"
PROTECTED_ENTITIES_KEY = "entities"
DEFAULT_IMAGE = "ghcr.io/privatellm/privatellm:0.1.0"


def gateway_image() -> str:
    """The gateway runs the operator's own image unless PRIVATELLM_GATEWAY_IMAGE says otherwise."""
    return os.environ.get(GATEWAY_IMAGE_ENV) or DEFAULT_IMAGE


@dataclass(frozen=True)
class GatewaySettings:
    """What the platform sets for every namespace's gateway (the chart's values)."""

    image: str = DEFAULT_IMAGE
    resources: Mapping[str, Mapping[str, str]] = field(
        default_factory=lambda: DEFAULT_GATEWAY_RESOURCES
    )
    # The chart's ClusterRoleBinding to system:auth-delegator, which lists the gateways
    # allowed to review tokens.
    token_review_binding: str | None = None
    audit_shipping: AuditShipping | None = None
    oidc: OIDCSettings | None = None
    oidc_ca_pem: str = ""
    vault_auth_mount: str = "kubernetes"
    vault_ca_pem: str = ""


def gateway_settings_from_env(environ: Mapping[str, str]) -> GatewaySettings:
    """The settings the chart puts in the operator's environment; ValueError names a wrong one.

    The CA files are read on every call, so that a renewed CA reaches the gateways with
    the next reconcile.
    """
    return GatewaySettings(
        image=environ.get(GATEWAY_IMAGE_ENV) or DEFAULT_IMAGE,
        resources=_resources(environ.get(GATEWAY_RESOURCES_ENV, "")),
        token_review_binding=environ.get(TOKEN_REVIEW_BINDING_ENV) or None,
        audit_shipping=audit_shipping_from_env(environ),
        oidc=_oidc_settings(environ),
        oidc_ca_pem=_ca_pem(environ, OIDC_CA_FILE_ENV) if environ.get(OIDC_ISSUER_ENV) else "",
        vault_auth_mount=environ.get(VAULT_AUTH_MOUNT_ENV) or "kubernetes",
        vault_ca_pem=_ca_pem(environ, VAULT_CA_FILE_ENV),
    )


def _resources(text: str) -> Mapping[str, Mapping[str, str]]:
    """Requests and limits as JSON (`{"requests": {"cpu": "500m"}}`); empty: the default."""
    if not text:
        return DEFAULT_GATEWAY_RESOURCES
    wrong = ValueError(
        f"{GATEWAY_RESOURCES_ENV} must be a JSON object of requests and limits, "
        f"each mapping resource names to quantities: {text!r}"
    )
    try:
        parsed = json.loads(text)
    except ValueError:
        raise wrong from None
    if not isinstance(parsed, dict) or not set(parsed) <= {"requests", "limits"}:
        raise wrong
    resources: dict[str, dict[str, str]] = {}
    for kind, amounts in sorted(parsed.items()):
        if not isinstance(amounts, dict) or not all(
            isinstance(a, str | int | float) and not isinstance(a, bool) for a in amounts.values()
        ):
            raise wrong
        if amounts:
            resources[kind] = {name: str(amount) for name, amount in sorted(amounts.items())}
    return resources


def _oidc_settings(environ: Mapping[str, str]) -> OIDCSettings | None:
    issuer = environ.get(OIDC_ISSUER_ENV)
    if not issuer:
        return None
    audience = environ.get(OIDC_AUDIENCE_ENV)
    if not audience:
        raise ValueError(f"{OIDC_AUDIENCE_ENV} must be set with {OIDC_ISSUER_ENV}")
    # Unset claims keep the gateway's defaults.
    optional = {
        "jwks_uri": environ.get(OIDC_JWKS_URL_ENV),
        "username_claim": environ.get(OIDC_USERNAME_CLAIM_ENV),
        "groups_claim": environ.get(OIDC_GROUPS_CLAIM_ENV),
    }
    given = {name: value for name, value in optional.items() if value}
    return OIDCSettings(issuer=issuer, audience=audience, **given)


def _ca_pem(environ: Mapping[str, str], variable: str) -> str:
    """The PEM certificates in the file `variable` names; empty when it names none."""
    path = environ.get(variable)
    if not path:
        return ""
    try:
        pem = Path(path).read_text()
        # Refused here rather than by every gateway that would load it.
        ssl.create_default_context(cadata=pem)
    except (OSError, ValueError) as error:
        raise ValueError(f"{variable}: {path} holds no CA certificate: {error}") from None
    return pem


def reconcile_gateway(
    kube: Kube,
    namespace: str,
    vault_addr: str | None = None,
    settings: GatewaySettings | None = None,
    operator_namespace: str | None = None,
    network_settings: NetworkSettings | None = None,
) -> None:
    """Render and apply the namespace's gateway; write each AccessPolicy's status.

    With `vault_addr` (the operator's Vault) the gateway seals every prompt and
    response with the namespace's Transit keys, logging in with its own role.
    `settings` and `network_settings` are the platform's, the same for every namespace.
    `operator_namespace`, where the operator runs, lets its Pods read the gateway's demand.
    A destination of the gateway its NetworkPolicy cannot name leaves every policy
    Degraded, saying which: the gateway would fail to reach it.
    """
    settings = settings or GatewaySettings()
    token_review_binding = settings.token_review_binding
    if namespace_terminating(kube, namespace):
        # Re-creating what the namespace controller removes would only fight it.
        if token_review_binding:
            _keep_token_review_access(kube, token_review_binding, namespace, wanted=False)
        return
    models = [m for _, m in parse_stored(InferenceDeployment, kube.list(INFERENCE, namespace))[0]]
    live_models = [m for m in models if not (m.metadata.model_extra or {}).get("deletionTimestamp")]
    stored_policies, invalid_policies = parse_stored(
        AccessPolicy, kube.list(ACCESS_POLICY, namespace)
    )
    policies = [p for _, p in stored_policies]
    problems: dict[str, list[str]] = {p.metadata.name: [] for p in policies}
    api_keys = _api_key_digests(kube, namespace, policies, problems)
    protected = _protected_entities(kube, namespace, policies, problems)
    names = [m.metadata.name for m in live_models]
    budgets = kube.list(COST_BUDGET, namespace)
    for policy in policies:
        problems[policy.metadata.name] += policy_problems(policy, names)
    unreachable: list[str] = []
    if live_models:
        network, unreachable = gateway_network(
            kube, network_settings or NetworkSettings(), _destinations(settings, vault_addr)
        )
        inputs = GatewayInputs(
            namespace=namespace,
            image=settings.image,
            models=live_models,
            policies=policies,
            api_keys=api_keys,
            protected_entities=protected,
            oidc=settings.oidc,
            oidc_ca_pem=settings.oidc_ca_pem,
            vault_addr=vault_addr,
            vault_auth_mount=settings.vault_auth_mount,
            vault_ca_pem=settings.vault_ca_pem,
            audit_shipping=settings.audit_shipping,
            connectors=[
                c for _, c in parse_stored(DataConnector, kube.list(DATA_CONNECTOR, namespace))[0]
            ],
            operator_namespace=operator_namespace,
            resources=settings.resources,
            network=network,
            budget_blocks=budget_blocks(budgets),
            budget_throttles=budget_throttles(budgets),
            idle_timeouts=idle_timeouts(budgets),
            usage_time_zones=usage_time_zones(budgets),
        )
        tls_revision = ensure_certificate(
            kube,
            namespace,
            GATEWAY_NAME,
            GATEWAY_TLS_SECRET,
            lambda cert, key, ca: render_gateway_tls_secret(inputs, cert, key, ca),
            lambda: render_gateway_certificate(inputs),
            datetime.datetime.now(datetime.UTC),
        )
        wrote = {
            manifest["kind"]: kube.apply(manifest)
            for manifest in render_gateway(inputs, _gateway_keys(kube, namespace), tls_revision)
        }
        # Earlier releases ran the gateway as a Deployment, without audit volumes; it goes
        # when its StatefulSet is written, so steady reconciles do not look for it.
        if wrote["StatefulSet"] and kube.get(DEPLOYMENT, namespace, GATEWAY_NAME) is not None:
            kube.delete(DEPLOYMENT, namespace, GATEWAY_NAME)
    if token_review_binding:
        _keep_token_review_access(kube, token_review_binding, namespace, bool(live_models))
    # Each namespace any policy names is looked up once per reconcile.
    named = {n for _, p in stored_policies for n in p.spec.source_namespaces}
    existing = {n for n in named if kube.get(NAMESPACE, None, n) is not None}
    for raw, policy in stored_policies:
        reasons = problems[policy.metadata.name]
        reason = "InvalidReference" if reasons or not unreachable else "EgressNotExpressible"
        warnings = missing_source_namespaces(policy, existing)
        resolved = resolved_models(policy, names)
        _write_policy_status(kube, raw, resolved, reasons + unreachable, reason, warnings)
    for raw, reason in invalid_policies:
        _write_policy_status(kube, raw, [], [reason], "InvalidSpec")


def _destinations(settings: GatewaySettings, vault_addr: str | None) -> dict[str, str]:
    """What the gateway calls outside its namespace, by URL, as the platform configured it."""
    urls = {}
    if vault_addr:
        urls["Vault"] = vault_addr
    if settings.audit_shipping is not None:
        # An empty endpoint is AWS's regional default, which the gateway resolves itself.
        urls["the WORM bucket"] = settings.audit_shipping.endpoint or "https://s3.amazonaws.com"
    if settings.oidc is not None:
        urls["the OIDC issuer"] = settings.oidc.issuer
        if settings.oidc.jwks_uri:
            urls["the OIDC key set"] = settings.oidc.jwks_uri
    return urls


def parse_stored(
    cls: type[R], raws: list[dict[str, Any]]
) -> tuple[list[tuple[dict[str, Any], R]], list[Stored]]:
    """The objects that validate, and those that do not with the reason.

    An object stored before a stricter schema (a name that is now refused, say) is left
    out of what the gateway enforces instead of stopping the whole namespace's gateway.
    """
    valid: list[tuple[dict[str, Any], R]] = []
    invalid: list[Stored] = []
    for raw in raws:
        try:
            valid.append((raw, cls.model_validate(raw)))
        except ValidationError as error:
            log.warning("%s %s/%s does not validate", raw["kind"], *namespace_and_name(raw))
            invalid.append((raw, "; ".join(validation_messages(error)) + "; it is not enforced"))
    return valid, invalid


def _api_key_digests(
    kube: Kube, namespace: str, policies: list[AccessPolicy], problems: dict[str, list[str]]
) -> dict[str, str]:
    digests: dict[str, str] = {}
    for policy in policies:
        for i, subject in enumerate(policy.spec.subjects):
            if subject.kind != "APIKey" or not subject.secret_name:
                continue
            secret = kube.get(SECRET, namespace, subject.secret_name)
            digest = secret_bytes(secret, API_KEY_DIGEST).decode(errors="replace").strip()
            if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
                problems[policy.metadata.name].append(
                    f"spec.subjects[{i}].secretName: Secret {subject.secret_name!r} has no "
                    f"'{API_KEY_DIGEST}' key holding a hex SHA-256 digest"
                )
                continue
            digests[digest] = subject.name
    return digests


def _protected_entities(
    kube: Kube, namespace: str, policies: list[AccessPolicy], problems: dict[str, list[str]]
) -> list[str]:
    entities: set[str] = set()
    for policy in policies:
        name = policy.spec.outbound.protected_entities_secret
        if not name:
            continue
        secret = kube.get(SECRET, namespace, name)
        if secret is None:
            problems[policy.metadata.name].append(
                f"spec.outbound.protectedEntitiesSecret: Secret {name!r} does not exist"
            )
            continue
        text = secret_bytes(secret, PROTECTED_ENTITIES_KEY).decode(errors="replace")
        entities.update(line.strip() for line in text.splitlines() if line.strip())
    return sorted(entities)


def _keep_token_review_access(kube: Kube, binding: str, namespace: str, wanted: bool) -> None:
    live = kube.get(CLUSTER_ROLE_BINDING, None, binding)
    if live is None:
        log.warning("ClusterRoleBinding %s is missing: gateways cannot check tokens", binding)
        return
    subjects = token_review_subjects(live.get("subjects") or [], namespace, wanted)
    if subjects != (live.get("subjects") or []):
        kube.apply(render_token_review_binding(binding, subjects), live=live)


def _gateway_keys(kube: Kube, namespace: str) -> GatewayKeys:
    """The hash key and the audit signing key: kept once made, so that tokens stay
    stable across reloads and one key signs every checkpoint of the namespace."""
    live = kube.get(SECRET, namespace, CONFIG_SECRET)
    hash_key = secret_bytes(live, HASH_KEY_KEY) or secrets.token_bytes(32)
    audit_pem = secret_bytes(live, AUDIT_KEY_KEY)
    signer = Signer.from_pem(audit_pem) if audit_pem else Signer.generate()
    return GatewayKeys(
        hash_key_b64=base64.b64encode(hash_key).decode(),
        audit_key_b64=base64.b64encode(signer.private_pem()).decode(),
        audit_public_pem=signer.public_pem().decode(),
    )


def _write_policy_status(
    kube: Kube,
    raw: dict[str, Any],
    resolved: list[str],
    problems: list[str],
    reason: str,
    warnings: Sequence[str] = (),
) -> None:
    """Ready when nothing is wrong; else Degraded for `reason` with the problems.
    `warnings` (names that match nothing yet) leave it Ready and are said in a condition
    of their own, with a Warning Event when they appear."""
    previous = raw.get("status") or {}
    if problems:
        states = [
            ConditionState("Ready", "False", reason, "; ".join(problems)),
            ConditionState("Degraded", "True", reason, "; ".join(problems)),
        ]
    else:
        message = "enforced by the namespace's gateway"
        states = [
            ConditionState("Ready", "True", "Enforced", message),
            ConditionState("Degraded", "False", "Enforced", ""),
        ]
    if warnings:
        states.append(
            ConditionState(SOURCES_CONDITION, "False", "NamespaceNotFound", "; ".join(warnings))
        )
    else:
        states.append(ConditionState(SOURCES_CONDITION, "True", "Found", ""))
    generation = raw["metadata"].get("generation")
    status = {
        "observedGeneration": generation,
        "resolvedModels": resolved,
        "conditions": merge_conditions(previous.get("conditions") or [], states, generation, now()),
    }
    if all(previous.get(k) == v for k, v in status.items()):
        return
    kube.patch_status(ACCESS_POLICY, *namespace_and_name(raw), status)
    conditions = {c.get("type"): c for c in previous.get("conditions") or []}
    before = conditions.get("Ready")
    if problems and (before is None or before.get("reason") != reason):
        kube.post_event(event_for(raw, "Warning", reason, "; ".join(problems)))
    sources = conditions.get(SOURCES_CONDITION) or {}
    if warnings and sources.get("message") != "; ".join(warnings):
        kube.post_event(event_for(raw, "Warning", "NamespaceNotFound", "; ".join(warnings)))


def _reconcile(context: Context, key: Key) -> None:
    """The namespace's gateway, with the settings the chart puts in the environment."""
    vault_addr = context.vault.addr if context.vault is not None else None
    reconcile_gateway(
        context.kube,
        key[0],
        vault_addr,
        gateway_settings_from_env(os.environ),
        context.operator_namespace,
        network_settings_from_env(os.environ),
    )


async def record_policy_version(context: Context, event: WatchEvent) -> None:
    """Each AccessPolicy version the operator sees goes on its own audit record, once."""
    if context.audit is not None and event.new_generation:
        # Durable before the handler returns: kopf then moves on to the next event.
        await context.audit.append_durable(policy_change_record(event.type, dict(event.body)))


CONTROLLER = Controller(
    name="Gateway",
    # A gateway serves its namespace's models: the namespaces that have any are resynced.
    for_=For(INFERENCE, key=namespace_key),
    # What the policies allow, and what connectors carry where, is in its configuration.
    watches=(
        Watches(
            ACCESS_POLICY, namespace_keys, urgent=on_new_generation, hook=record_policy_version
        ),
        Watches(DATA_CONNECTOR, namespace_keys, urgent=on_new_generation),
        # A block threshold reached or lifted changes what the gateway refuses, at once.
        Watches(COST_BUDGET, namespace_keys, urgent=always, signature=action_signature),
    ),
    reconcile=_reconcile,
    # One worker: a namespace's gateway is small, and changes to it are rare.
    workers=1,
)
