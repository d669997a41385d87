"""A DataConnector's workload and status: the connector, its filter sidecar, and their counts.

Pure. The controller reads the DataConnector, the namespace's AccessPolicies (for the
protected entities and internal terms the sidecar's outbound filter needs), the
namespace CA, the gateway's keys and the connector's Pods, and passes them in.

Each connector runs as one Pod of two containers. The connector talks to the external
system and holds its credentials; it has no ServiceAccount token, so it cannot reach
the gateway except through the sidecar, which filters every item, holds the
ServiceAccount token the gateway checks with TokenReview, and counts what it passed,
blocked and quarantined.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import json
import math
import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from privatellm.api import DataConnector
from privatellm.keys.tenancy import connector_policy_name

from .conditions import ConditionState, merge_conditions
from .gateway import (
    AUDIT_KEY_KEY,
    GATEWAY_NAME,
    GATEWAY_PORT,
    HASH_KEY_KEY,
    connector_service_account,
)
from .inference_status import FAILED_CREATE, ChildFailure, Problem, deployment_failed_create
from .meta import (
    COMPONENT_LABEL,
    GATEWAY_COMPONENT,
    INSTANCE_LABEL,
    MANAGED_BY,
    MANAGED_BY_LABEL,
    NAME_LABEL,
    PART_OF,
    PART_OF_LABEL,
    owner_reference,
)
from .network import Endpoint, dns_egress, network_policy, render_fqdn_policy, tcp
from .workload import Manifest, container_security_context, empty_dir, pod_security_context

CONNECTOR_COMPONENT = "connector"
# Which DataConnector a child belongs to (see connector_label_value).
DATA_CONNECTOR_LABEL = "privatellm.io/data-connector"
CONFIG_HASH_ANNOTATION = "privatellm.io/config-hash"

CONFIG_DIR = "/etc/privatellm/connector"
CONFIG_KEY = "connector.json"
CONFIG_FILE = f"{CONFIG_DIR}/{CONFIG_KEY}"
# The namespace CA's certificate, next to the configuration: the gateway's TLS is
# signed by it. A certificate is public, so it travels in the ConfigMap.
CA_KEY = "ca.crt"
VAULT_CA_KEY = "vault-ca.crt"
# The sidecar's Secret: the namespace's protected entities and internal terms, and the
# keys of the namespace's gateway (render/gateway.py): the filters' hash key, so that a
# value hashes alike in the sidecar and the gateway, and the audit signing key, so that
# the sidecar's checkpoints verify with the namespace's published public key.
SIDECAR_SECRET_DIR = "/etc/privatellm/sidecar"
TERMS_KEY = "terms.json"
CREDENTIALS_DIR = "/var/run/secrets/privatellm/credentials"
TOKEN_DIR = "/var/run/secrets/privatellm/token"
TOKEN_PATH = "token"
# The kubelet renews a projected token at 80% of its life; an hour is the usual choice.
TOKEN_SECONDS = 3600
STATE_DIR = "/var/lib/privatellm/connector"
# The sidecar's spool holds at most 1 GiB by default (connectors/spool.py) and refuses
# more with 503, which the connector retries; quarantined items and counts sit beside
# it. The limit leaves room for those, so the spool's back-pressure comes first: past
# the limit the kubelet evicts the Pod, and an emptyDir goes with its Pod.
STATE_SIZE = "2Gi"
SIDECAR_URL = "http://127.0.0.1:8480"
SIDECAR_METRICS_PORT = 9090
WEBHOOK_PORT = 8080

# Restricts the file modes of mounted Secrets to the owner and the Pod's fsGroup.
SECRET_MODE = 0o440
# Label values, and Service names (DNS-1035 labels), are at most 63 characters.
_MAX_LABEL = 63
_NAME_PREFIX = "privatellm-connector-"
_HASH_CHARS = 10
_DNS_1035 = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")

ITEMS_METRIC = "privatellm_connector_items_total"
LAST_ERROR_METRIC = "privatellm_connector_last_error_timestamp_seconds"
OUTCOMES = ("passed", "blocked", "quarantined")
COUNTERS_CONDITION = "CountersCurrent"
# The types `privatellm connector run` has a connector for (connectors/builtin.py).
BUILT_IN_TYPES = ("webhook", "objectStore")
# The sidecar seals quarantined items with data keys of the namespace's Transit key,
# logging in to Vault with its ServiceAccount token (keys/tenancy.connector_role).
QUARANTINE_CONDITION = "Quarantine"
QUARANTINE_ON = ConditionState(
    QUARANTINE_CONDITION,
    "True",
    "Sealed",
    "an item that fails a filter is sealed with the namespace's Transit key and kept",
)


def quarantine_off(why: str) -> ConditionState:
    """Without a Transit key to seal with, the sidecar keeps nothing: it refuses."""
    return ConditionState(
        QUARANTINE_CONDITION,
        "False",
        "NotSealed",
        f"{why}: an item that fails a filter is refused and stays with the connector"
        " instead of being quarantined",
    )


def _short_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:_HASH_CHARS]


def workload_name(connector: str) -> str:
    """Name of the connector's Deployment, ConfigMap, Secret, Service and NetworkPolicy.

    `privatellm-connector-<name>` when that is a DNS-1035 label, as a Service name must
    be; a longer or dotted name is cut and ends with a hash of the whole, so that two
    connectors never share a name. The ServiceAccount always has the full name
    (`connector_service_account`): the gateway knows the connector by it.
    """
    full = f"{_NAME_PREFIX}{connector}"
    if len(full) <= _MAX_LABEL and _DNS_1035.fullmatch(full):
        return full
    room = _MAX_LABEL - len(_NAME_PREFIX) - _HASH_CHARS - 1
    stem = re.sub(r"[^a-z0-9]+", "-", connector[:room]).strip("-")
    return _NAME_PREFIX + "-".join(part for part in (stem, _short_hash(connector)) if part)


def connector_label_value(connector: str) -> str:
    """The DATA_CONNECTOR_LABEL value: the name, or a cut of it and a hash when it is
    longer than a label value may be."""
    if len(connector) <= _MAX_LABEL:
        return connector
    room = _MAX_LABEL - _HASH_CHARS - 1
    return f"{connector[:room].rstrip('-.')}-{_short_hash(connector)}"


def selector_labels(connector: str) -> dict[str, str]:
    """Labels that select the connector's Pods."""
    return {
        COMPONENT_LABEL: CONNECTOR_COMPONENT,
        DATA_CONNECTOR_LABEL: connector_label_value(connector),
    }


def connector_labels(connector: str) -> dict[str, str]:
    """Labels on every child of a DataConnector."""
    return {
        NAME_LABEL: "privatellm-connector",
        INSTANCE_LABEL: connector_label_value(connector),
        PART_OF_LABEL: PART_OF,
        MANAGED_BY_LABEL: MANAGED_BY,
        **selector_labels(connector),
    }


def gateway_url(namespace: str) -> str:
    """The namespace gateway's Service (render.gateway: port 443 to the gateway's https)."""
    return f"https://{GATEWAY_NAME}.{namespace}.svc"


@dataclass(frozen=True)
class SidecarVault:
    """Where the sidecars seal: the operator's Vault, the auth mount it writes their role
    under, and the CA that signs Vault's certificate (PEM; empty: the system's)."""

    addr: str
    auth_mount: str = "kubernetes"
    ca_pem: str = ""


def connector_config(
    connector: DataConnector,
    hash_key: bool = False,
    audit_signing_key: bool = False,
    vault: SidecarVault | None = None,
) -> dict[str, Any]:
    """The document the sidecar and the built-in connector read (CONFIG_FILE).

    `hash_key` and `audit_signing_key`: whether the sidecar's Secret holds the
    namespace gateway's keys (it does once the gateway has them). With `vault`,
    the sidecar seals quarantined items, logging in with its projected token.
    """
    spec = connector.spec
    filters = spec.filters
    config: dict[str, Any] = {
        "name": connector.metadata.name,
        "namespace": connector.metadata.namespace,
        "type": spec.type,
        "direction": spec.direction,
        "endpoint": spec.endpoint,
        "models": sorted(spec.models),
        "dataClasses": sorted(spec.data_classes),
        "filters": {
            "allowedFileTypes": sorted(filters.allowed_file_types),
            "maxItemBytes": filters.max_item_bytes,
            "pii": [
                {"entity": rule.entity, "action": rule.action}
                for rule in sorted(filters.pii, key=lambda rule: rule.entity)
            ],
            "injection": filters.injection,
            "customerIdField": filters.customer_id_field,
            "dlpAction": filters.dlp_action,
        },
        # Not a set in the API: kept in the order given.
        "egress": [e.model_dump(by_alias=True, exclude_none=True) for e in spec.egress],
        "gateway": gateway_url(connector.metadata.namespace or ""),
        "gatewayCaFile": f"{CONFIG_DIR}/{CA_KEY}",
        "tokenFile": f"{TOKEN_DIR}/{TOKEN_PATH}",
        "termsFile": f"{SIDECAR_SECRET_DIR}/{TERMS_KEY}",
        "credentialsDir": CREDENTIALS_DIR if spec.credentials_secret else None,
        "sidecar": SIDECAR_URL,
        "metricsPort": SIDECAR_METRICS_PORT,
        "stateDir": STATE_DIR,
    }
    if hash_key:
        config["hashKeyFile"] = f"{SIDECAR_SECRET_DIR}/{HASH_KEY_KEY}"
    if audit_signing_key:
        config["auditSigningKeyFile"] = f"{SIDECAR_SECRET_DIR}/{AUDIT_KEY_KEY}"
    if vault is not None:
        config["encryption"] = {
            "vaultAddr": vault.addr,
            "role": connector_policy_name(connector.metadata.namespace or ""),
            "authMount": vault.auth_mount,
            "jwtFile": f"{TOKEN_DIR}/{TOKEN_PATH}",
        }
        if vault.ca_pem:
            config["encryption"]["caFile"] = f"{CONFIG_DIR}/{VAULT_CA_KEY}"
    if spec.type == "webhook":
        config["webhookPort"] = WEBHOOK_PORT
    return config


def config_text(config: Mapping[str, Any]) -> str:
    """A configuration document's text: JSON, keys sorted, so equal inputs give equal bytes."""
    return json.dumps(config, indent=1, sort_keys=True) + "\n"


def terms_text(protected_entities: Collection[str], internal_terms: Collection[str]) -> str:
    """What the sidecar's outbound filter must never let out (TERMS_KEY)."""
    terms = {
        "protectedEntities": sorted(set(protected_entities)),
        "internalTerms": sorted(set(internal_terms)),
    }
    return config_text(terms)


def protected_entity_lines(text: str) -> list[str]:
    """The entries of a protected-entities list: one per line, blank lines skipped."""
    return [line.strip() for line in text.splitlines() if line.strip()]


@dataclass(frozen=True)
class ConnectorInputs:
    """What one DataConnector's children are rendered from."""

    connector: DataConnector
    # The project image: the built-in connector (without spec.image) and every sidecar.
    image: str
    # Of every AccessPolicy of the namespace: the sidecar's outbound filter, like the
    # gateway's, must hold back what any of them protects.
    protected_entities: Collection[str] = ()
    internal_terms: Collection[str] = ()
    # The namespace CA's certificate (PEM); empty until the namespace has one.
    gateway_ca_pem: str = ""
    # The namespace gateway's hash key and audit signing key (PEM); empty until it has them.
    hash_key: bytes = b""
    audit_signing_key: bytes = b""
    # The operator's Vault, once the namespace's connector role exists there.
    vault: SidecarVault | None = None
    # Egress rules to what the platform runs for the sidecar (Vault), resolved.
    platform_egress: Sequence[Manifest] = ()
    # Whether the cluster enforces FQDN rules (Cilium): spec.egress hosts become those.
    fqdn_rules: bool = False
    # Who may read the sidecar's metrics (NetworkPolicy peers): the operator, Prometheus.
    metrics_readers: Sequence[Manifest] = ()


def _metadata(connector: DataConnector, name: str) -> Manifest:
    return {
        "name": name,
        "namespace": connector.metadata.namespace,
        "labels": connector_labels(connector.metadata.name),
        "ownerReferences": [owner_reference(connector)],
    }


def render_service_account(connector: DataConnector) -> Manifest:
    """The identity the sidecar calls the gateway with; no token is mounted by default."""
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": _metadata(connector, connector_service_account(connector.metadata.name)),
        "automountServiceAccountToken": False,
    }


def _config_data(inputs: ConnectorInputs) -> dict[str, str]:
    config = connector_config(
        inputs.connector, bool(inputs.hash_key), bool(inputs.audit_signing_key), inputs.vault
    )
    data = {CONFIG_KEY: config_text(config)}
    if inputs.gateway_ca_pem:
        data[CA_KEY] = inputs.gateway_ca_pem
    if inputs.vault is not None and inputs.vault.ca_pem:
        # A certificate is public: it travels in the ConfigMap, like the namespace CA's.
        data[VAULT_CA_KEY] = inputs.vault.ca_pem
    return data


def render_config_map(inputs: ConnectorInputs) -> Manifest:
    """The configuration, and the CA that signs the gateway's certificate."""
    name = workload_name(inputs.connector.metadata.name)
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _metadata(inputs.connector, name),
        "data": _config_data(inputs),
    }


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _secret_data(inputs: ConnectorInputs) -> dict[str, str]:
    terms = terms_text(inputs.protected_entities, inputs.internal_terms)
    data = {TERMS_KEY: _b64(terms.encode())}
    if inputs.hash_key:
        data[HASH_KEY_KEY] = _b64(inputs.hash_key)
    if inputs.audit_signing_key:
        data[AUDIT_KEY_KEY] = _b64(inputs.audit_signing_key)
    return data


def render_sidecar_secret(inputs: ConnectorInputs) -> Manifest:
    """What only the sidecar reads: a Secret, as the gateway's copy is, because the
    entities name the company's other customers and the keys are the gateway's."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": _metadata(inputs.connector, workload_name(inputs.connector.metadata.name)),
        "type": "Opaque",
        "data": _secret_data(inputs),
    }


def _config_hash(inputs: ConnectorInputs) -> str:
    """Changes with anything the containers read at start, so that a change rolls the Pod."""
    return _short_hash(json.dumps([_config_data(inputs), _secret_data(inputs)], sort_keys=True))


def _connector_container(inputs: ConnectorInputs) -> Manifest:
    spec = inputs.connector.spec
    mounts: list[Manifest] = [
        {"name": "config", "mountPath": CONFIG_DIR, "readOnly": True},
        {"name": "connector-tmp", "mountPath": "/tmp"},
    ]
    if spec.credentials_secret:
        # Only here: the sidecar, which talks to the gateway, never holds them.
        mounts.append({"name": "credentials", "mountPath": CREDENTIALS_DIR, "readOnly": True})
    container: Manifest = {"name": "connector"}
    if spec.image:
        # The user's image runs as built: its entrypoint reads CONFIG_FILE.
        container["image"] = spec.image
    else:
        container["image"] = inputs.image
        container["args"] = ["connector", "run", "--config", CONFIG_FILE]
    if spec.type == "webhook":
        container["ports"] = [{"name": "webhook", "containerPort": WEBHOOK_PORT, "protocol": "TCP"}]
    container |= {
        "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}},
        "securityContext": container_security_context(),
        "volumeMounts": mounts,
    }
    return container


def _sidecar_container(inputs: ConnectorInputs) -> Manifest:
    namespace = {"fieldRef": {"fieldPath": "metadata.namespace"}}
    return {
        "name": "sidecar",
        "image": inputs.image,
        "args": ["sidecar", "--config", CONFIG_FILE],
        "env": [
            {"name": "POD_NAMESPACE", "valueFrom": namespace},
            {"name": "CONNECTOR_NAME", "value": inputs.connector.metadata.name},
        ],
        "ports": [{"name": "metrics", "containerPort": SIDECAR_METRICS_PORT, "protocol": "TCP"}],
        # The kubelet probes the Pod's address, so /healthz is served beside /metrics.
        "readinessProbe": {
            "httpGet": {"path": "/healthz", "port": "metrics"},
            "periodSeconds": 5,
        },
        "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}},
        "securityContext": container_security_context(),
        "volumeMounts": [
            {"name": "config", "mountPath": CONFIG_DIR, "readOnly": True},
            {"name": "sidecar-secret", "mountPath": SIDECAR_SECRET_DIR, "readOnly": True},
            {"name": "token", "mountPath": TOKEN_DIR, "readOnly": True},
            {"name": "state", "mountPath": STATE_DIR},
            {"name": "sidecar-tmp", "mountPath": "/tmp"},
        ],
    }


def _volumes(inputs: ConnectorInputs) -> list[Manifest]:
    name = workload_name(inputs.connector.metadata.name)
    volumes: list[Manifest] = [
        {"name": "config", "configMap": {"name": name}},
        {"name": "sidecar-secret", "secret": {"secretName": name, "defaultMode": SECRET_MODE}},
        {
            "name": "token",
            "projected": {
                "sources": [
                    {
                        # No audience: the API server's own, which the gateway's
                        # TokenReview asks for (gateway.config.TokenReviewSettings).
                        "serviceAccountToken": {
                            "path": TOKEN_PATH,
                            "expirationSeconds": TOKEN_SECONDS,
                        }
                    }
                ]
            },
        },
        {"name": "state", "emptyDir": {"sizeLimit": STATE_SIZE}},
        empty_dir("connector-tmp"),
        empty_dir("sidecar-tmp"),
    ]
    secret = inputs.connector.spec.credentials_secret
    if secret:
        volumes.append(
            {"name": "credentials", "secret": {"secretName": secret, "defaultMode": SECRET_MODE}}
        )
    return volumes


def render_deployment(inputs: ConnectorInputs) -> Manifest:
    """One Pod: the connector and its filter sidecar, under restricted Pod security."""
    connector = inputs.connector
    name = connector.metadata.name
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _metadata(connector, workload_name(name)),
        "spec": {
            "replicas": 1,
            # One connector at a time: two would pull the same items from the system.
            "strategy": {"type": "Recreate"},
            "selector": {"matchLabels": selector_labels(name)},
            "template": {
                "metadata": {
                    "labels": connector_labels(name),
                    "annotations": {CONFIG_HASH_ANNOTATION: _config_hash(inputs)},
                },
                "spec": {
                    "serviceAccountName": connector_service_account(name),
                    # The token is projected into the sidecar alone (see _volumes).
                    "automountServiceAccountToken": False,
                    "securityContext": pod_security_context(),
                    "containers": [_connector_container(inputs), _sidecar_container(inputs)],
                    "volumes": _volumes(inputs),
                },
            },
        },
    }


def render_webhook_service(connector: DataConnector) -> Manifest:
    """Where external systems push items to a webhook connector."""
    name = connector.metadata.name
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(connector, workload_name(name)),
        "spec": {
            "type": "ClusterIP",
            "selector": selector_labels(name),
            "ports": [
                {
                    "name": "webhook",
                    "protocol": "TCP",
                    "port": WEBHOOK_PORT,
                    "targetPort": "webhook",
                }
            ],
        },
    }


def egress_hosts(connector: DataConnector) -> list[Endpoint]:
    """The spec.egress entries given by host name, one per port."""
    return [Endpoint(e.host, port) for e in connector.spec.egress if e.host for port in e.ports]


def render_network_policy(inputs: ConnectorInputs) -> Manifest:
    """The Pod reaches the gateway, cluster DNS, the platform's Vault and the spec.egress
    CIDRs, nothing else; it admits pushes on the webhook port (webhook connectors) and
    the operator's and Prometheus's reads of its metrics. Hosts are left to an FQDN
    policy (render_fqdn_policy): a NetworkPolicy cannot name one."""
    connector = inputs.connector
    name = connector.metadata.name
    gateway_pods = {COMPONENT_LABEL: GATEWAY_COMPONENT, INSTANCE_LABEL: GATEWAY_NAME}
    egress: list[Manifest] = [
        {"to": [{"podSelector": {"matchLabels": gateway_pods}}], "ports": tcp(GATEWAY_PORT)},
        dns_egress(),
        *inputs.platform_egress,
    ]
    for entry in connector.spec.egress:
        if entry.cidr:
            egress.append(
                {"to": [{"ipBlock": {"cidr": entry.cidr}}], "ports": tcp(*sorted(entry.ports))}
            )
    # The operator and Prometheus read the counts there.
    ingress: list[Manifest] = []
    if inputs.metrics_readers:
        ingress.append({"from": list(inputs.metrics_readers), "ports": tcp(SIDECAR_METRICS_PORT)})
    if connector.spec.type == "webhook":
        ingress.append({"ports": tcp(WEBHOOK_PORT)})
    metadata = _metadata(connector, workload_name(name))
    return network_policy(metadata, {"matchLabels": selector_labels(name)}, ingress, egress)


def render_connector(inputs: ConnectorInputs) -> list[Manifest]:
    """Every child of the DataConnector; the webhook Service only for a webhook connector."""
    children = [
        render_service_account(inputs.connector),
        render_config_map(inputs),
        render_sidecar_secret(inputs),
        render_network_policy(inputs),
        render_deployment(inputs),
    ]
    hosts = egress_hosts(inputs.connector)
    if hosts and inputs.fqdn_rules:
        metadata = _metadata(inputs.connector, workload_name(inputs.connector.metadata.name))
        children.append(
            render_fqdn_policy(metadata, selector_labels(inputs.connector.metadata.name), hosts)
        )
    if inputs.connector.spec.type == "webhook":
        children.append(render_webhook_service(inputs.connector))
    return children


# --- status -------------------------------------------------------------------------


def spec_problems(connector: DataConnector, fqdn_rules: bool = False) -> list[Problem]:
    """What the spec asks for that cannot work as given: a built-in connector the image
    lacks or one without what it needs, a system the egress list does not open, egress
    by host name where no FQDN rule can confine it."""
    spec = connector.spec
    problems = []
    if not spec.image and spec.type not in BUILT_IN_TYPES:
        problems.append(
            Problem(
                "NoBuiltInConnector",
                f"spec.image: the project image has no built-in connector for type"
                f" {spec.type!r} (only {' and '.join(BUILT_IN_TYPES)}); give the connector's"
                " own image",
            )
        )
    if not spec.image and spec.type == "webhook" and not spec.credentials_secret:
        problems.append(
            Problem(
                "CredentialsMissing",
                "spec.credentialsSecret: the built-in webhook connector serves HTTPS with the"
                " tls.crt and tls.key of its credentials Secret; name one",
            )
        )
    if spec.type != "webhook" and not spec.egress:
        problems.append(
            Problem(
                "EgressMissing",
                "spec.egress: no entry admits the system at spec.endpoint, so the connector"
                " cannot reach it; list its destination",
            )
        )
    for i, entry in enumerate(spec.egress):
        if entry.host and not fqdn_rules:
            problems.append(
                Problem(
                    "EgressHostNotExpressible",
                    f"spec.egress[{i}].host: a NetworkPolicy cannot name a host and this"
                    " cluster enforces no FQDN rules (Cilium), so nothing is opened to"
                    f" {entry.host}; give the destination's cidr instead",
                )
            )
    return problems


def reference_problems(
    connector: DataConnector, models: Collection[str], credentials_found: bool
) -> list[Problem]:
    """What the connector names and the namespace lacks: its models, the gateway (there
    is one while the namespace has a model), its credentials Secret."""
    problems = []
    if not models:
        message = "the namespace has no InferenceDeployment, so no gateway to carry items"
        problems.append(Problem("NoGateway", message))
    for i, model in enumerate(connector.spec.models):
        if models and model not in models:
            message = f"spec.models[{i}]: InferenceDeployment {model!r} not found"
            problems.append(Problem("InvalidReference", message))
    secret = connector.spec.credentials_secret
    if secret and not credentials_found:
        message = f"spec.credentialsSecret: Secret {secret!r} does not exist"
        problems.append(Problem("InvalidReference", message))
    return problems


@dataclass(frozen=True)
class WorkloadView:
    """The connector's Deployment as the API server shows it."""

    exists: bool = False
    # Its controller has seen its latest spec: the counts below are of that spec.
    current: bool = False
    updated: int = 0
    ready: int = 0
    # Why its ReplicaSet cannot create the Pod, if it cannot.
    failed_create: str | None = None

    @classmethod
    def from_deployment(cls, deployment: Mapping[str, Any] | None) -> WorkloadView:
        if deployment is None:
            return cls()
        status = deployment.get("status") or {}
        generation = deployment["metadata"].get("generation") or 0
        return cls(
            exists=True,
            current=int(status.get("observedGeneration") or 0) >= int(generation),
            updated=int(status.get("updatedReplicas") or 0),
            ready=int(status.get("readyReplicas") or 0),
            failed_create=deployment_failed_create(deployment),
        )

    @property
    def serving(self) -> bool:
        """A Pod of the current spec is ready (with Recreate, the only Pod there is)."""
        return self.current and self.updated >= 1 and self.ready >= 1


@dataclass(frozen=True)
class LastError:
    """The latest error a sidecar reported: when (Unix seconds), why, and where."""

    timestamp: float
    reason: str
    message: str = ""

    def status(self) -> dict[str, str]:
        when = datetime.datetime.fromtimestamp(self.timestamp, datetime.UTC)
        return {
            "time": when.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "reason": self.reason,
            "message": self.message,
        }


@dataclass(frozen=True)
class ItemCounts:
    """What one sidecar, or all of a connector's, reported."""

    passed: int = 0
    blocked: int = 0
    quarantined: int = 0
    last_error: LastError | None = None


def _later(a: LastError | None, b: LastError | None) -> LastError | None:
    if a is None or b is None:
        return a or b
    return b if b.timestamp > a.timestamp else a


def parse_sidecar_metrics(text: str, pod: str = "") -> ItemCounts:
    """The counts in a sidecar's /metrics (Prometheus text format); absent series count 0.

    Raises ValueError for text that is not Prometheus' format or a count that is not a
    finite number of at least 0. `pod` names the Pod in the last error's message when
    the sidecar gives none.
    """
    counts = dict.fromkeys(OUTCOMES, 0)
    last: LastError | None = None
    try:
        samples = [s for family in text_string_to_metric_families(text) for s in family.samples]
    except (ValueError, IndexError, KeyError, TypeError) as error:
        raise ValueError(f"not Prometheus text format: {error}") from error
    for sample in samples:
        if sample.name == ITEMS_METRIC and sample.labels.get("outcome") in counts:
            if not math.isfinite(sample.value) or sample.value < 0:
                raise ValueError(f"{ITEMS_METRIC} is {sample.value}, not a count")
            counts[sample.labels["outcome"]] += int(sample.value)
        elif sample.name == LAST_ERROR_METRIC and sample.value > 0:
            if not math.isfinite(sample.value):
                raise ValueError(f"{LAST_ERROR_METRIC} is {sample.value}, not a time")
            message = sample.labels.get("message") or (f"reported by Pod {pod}" if pod else "")
            reported = LastError(sample.value, sample.labels.get("reason") or "Unknown", message)
            last = _later(last, reported)
    return ItemCounts(counts["passed"], counts["blocked"], counts["quarantined"], last)


def sum_counts(counts: Sequence[ItemCounts]) -> ItemCounts:
    """The connector's counts: the sums over its sidecars, and the latest error of any."""
    last: LastError | None = None
    for each in counts:
        last = _later(last, each.last_error)
    return ItemCounts(
        sum(c.passed for c in counts),
        sum(c.blocked for c in counts),
        sum(c.quarantined for c in counts),
        last,
    )


@dataclass(frozen=True)
class CounterReading:
    """The outcome of reading the sidecars: counts, or why there are none this time."""

    # None: nothing was read, or not every ready sidecar answered; the stored counts stay.
    counts: ItemCounts | None
    condition: ConditionState


def counter_reading(
    ready_pods: int, counts: Sequence[ItemCounts], failures: Sequence[str]
) -> CounterReading:
    """Counts only when every ready sidecar answered: a sum over some of them would
    make the counters go back."""
    kept = "; the counts are as last read"
    if failures:
        message = "; ".join(failures) + kept
        return CounterReading(
            None, ConditionState(COUNTERS_CONDITION, "False", "Unreadable", message)
        )
    if ready_pods == 0:
        message = "no ready Pod to read the counts from" + kept
        return CounterReading(
            None, ConditionState(COUNTERS_CONDITION, "Unknown", "NoReadyPod", message)
        )
    pods = "Pod" if ready_pods == 1 else "Pods"
    state = ConditionState(COUNTERS_CONDITION, "True", "Read", f"read from {ready_pods} {pods}")
    return CounterReading(sum_counts(counts), state)


def connector_conditions(
    name: str,
    workload: WorkloadView,
    refused: Sequence[ChildFailure],
    problems: Sequence[Problem],
    quarantine: ConditionState = QUARANTINE_ON,
) -> list[ConditionState]:
    """Ready, Progressing and Degraded of a connector, and whether it quarantines.

    Ready only when the Pod of the current spec is ready and nothing the spec asks
    for is left undone; what is left undone is Degraded too, with the field it concerns.
    """
    deployment = f"Deployment/{workload_name(name)}"
    failures = [Problem("ApplyFailed", str(failure)) for failure in refused]
    if workload.failed_create:
        failures.append(Problem(FAILED_CREATE, f"{deployment}: {workload.failed_create}"))
    everything = [*failures, *problems]
    waiting = "the connector's Pod is not ready" if workload.exists else f"{deployment} is missing"
    if failures:
        ready = ConditionState("Ready", "False", failures[0].reason, failures[0].message)
    elif not workload.serving:
        ready = ConditionState("Ready", "False", "PodNotReady", waiting)
    elif problems:
        message = "; ".join(p.message for p in problems)
        ready = ConditionState("Ready", "False", problems[0].reason, message)
    else:
        ready = ConditionState("Ready", "True", "Running", "the connector's Pod is ready")
    if refused:
        kinds = ", ".join(f"{f.kind}/{f.name}" for f in refused)
        progressing = ConditionState(
            "Progressing", "False", "ApplyFailed", f"the API server refused {kinds}"
        )
    elif not workload.serving:
        progressing = ConditionState("Progressing", "True", "RollingOut", waiting)
    else:
        progressing = ConditionState(
            "Progressing", "False", "Complete", "the Pod runs the current spec"
        )
    if everything:
        message = "; ".join(p.message for p in everything)
        degraded = ConditionState("Degraded", "True", everything[0].reason, message)
    else:
        degraded = ConditionState("Degraded", "False", "AsExpected", "")
    return [ready, progressing, degraded, quarantine]


def connector_status(
    connector: DataConnector,
    conditions: Sequence[ConditionState],
    reading: CounterReading | None,
    previous: Mapping[str, Any],
    now: str,
) -> dict[str, Any]:
    """The status to store; equal to `previous` when nothing changed, whatever `now` is.

    Without counts in `reading` the stored counters stay as they were; a reported error
    replaces the stored one only when it is later.
    """
    generation = connector.metadata.generation
    states = [*conditions, reading.condition] if reading else list(conditions)
    status: dict[str, Any] = {
        "observedGeneration": generation,
        "conditions": merge_conditions(previous.get("conditions") or [], states, generation, now),
        "itemsPassed": int(previous.get("itemsPassed") or 0),
        "itemsBlocked": int(previous.get("itemsBlocked") or 0),
        "itemsQuarantined": int(previous.get("itemsQuarantined") or 0),
    }
    last_error = previous.get("lastError")
    if reading and reading.counts:
        counts = reading.counts
        status["itemsPassed"] = counts.passed
        status["itemsBlocked"] = counts.blocked
        status["itemsQuarantined"] = counts.quarantined
        if counts.last_error:
            reported = counts.last_error.status()
            # RFC 3339 in one format and zone: later sorts later.
            if not last_error or reported["time"] > str(last_error.get("time") or ""):
                last_error = reported
    if last_error:
        status["lastError"] = last_error
    return status
