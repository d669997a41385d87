"""One gateway per namespace: its configuration, rendered from the namespace's resources.

Pure. The controller reads the namespace's InferenceDeployments, AccessPolicies and
the Secrets they name, and passes them in as `GatewayInputs`.

The gateway's objects are owned by every InferenceDeployment of the namespace
(owner references without `controller`), so the garbage collector removes the
gateway together with the last model, and no other object has to be invented to
own it.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from privatellm.api import DataConnector, InferenceDeployment
from privatellm.api.access import AccessPolicy
from privatellm.gateway.config import (
    AuthSettings,
    BudgetBlock,
    BudgetThrottle,
    ConnectorRoute,
    DiscoverySettings,
    EncryptionSettings,
    GatewayConfig,
    HoldSettings,
    ModelRoute,
    NamedPolicy,
    OIDCSettings,
    QuotaSharing,
    TokenReviewSettings,
    UpstreamTLS,
)
from privatellm.keys.tenancy import gateway_policy_name, key_name
from privatellm.keys.tls import service_names

from .audit import render_public_key_configmap
from .certmanager import render_certificate
from .engine import SERVING_PORT
from .meta import (
    COMPONENT_LABEL,
    GATEWAY_COMPONENT,
    INSTANCE_LABEL,
    MANAGED_BY,
    MANAGED_BY_LABEL,
    NAME_LABEL,
    PART_OF,
    PART_OF_LABEL,
    ZONE_LABEL,
    operator_pods,
)
from .network import (
    Endpoint,
    dns_egress,
    metrics_readers,
    namespace_peer,
    network_policy,
    render_default_deny,
    render_fqdn_policy,
    tcp,
)
from .tls import tls_secret
from .weights import estimated_restore_seconds
from .workload import (
    SERVER_COMPONENT,
    Manifest,
    container_security_context,
    empty_dir,
    pod_security_context,
    service_name,
)

GATEWAY_NAME = "privatellm-gateway"
CONFIG_SECRET = "privatellm-gateway-config"
CONFIG_KEY = "gateway.yaml"
HASH_KEY_KEY = "hash.key"
AUDIT_KEY_KEY = "audit.pem"
# CA certificates the platform names in the chart, copied in so the gateway needs no
# access to the operator's namespace.
VAULT_CA_KEY = "vault-ca.crt"
OIDC_CA_KEY = "oidc-ca.crt"
# Auditors read the public key here to verify the gateways' logs; they need no Secret.
AUDIT_PUBLIC_KEY_CONFIGMAP = "privatellm-audit-public-key"
# A sealed segment can be shipped to WORM storage; the open one is at most this old.
AUDIT_SEGMENT_SECONDS = 300
AUDIT_VOLUME_SIZE = "10Gi"
# Credentials for the WORM bucket, made by the namespace's owners (AWS_* variables).
AUDIT_SHIPPING_SECRET = "privatellm-audit-shipping"
GATEWAY_TLS_SECRET = "privatellm-gateway-tls"
GATEWAY_PORT = 8443
METRICS_PORT = 9090
# Replicas read each other's quota counts here, found through a headless Service, and
# the operator reads their demand; only gateway and operator Pods may connect.
PEER_PORT = 8444
PEERS_SERVICE = f"{GATEWAY_NAME}-peers"
CONFIG_DIR = "/etc/privatellm/gateway"
TLS_DIR = "/etc/privatellm/tls"
AUDIT_DIR = "/var/lib/privatellm/audit"
# On the Pod template: which start-only settings the replicas run with.
START_SETTINGS_ANNOTATION = "privatellm.io/start-settings-revision"
# Two replicas over zones keep the door open through a zone outage and a rollout.
GATEWAY_REPLICAS = 2
# The gateway container's requests when the operator is given none (the chart's default).
DEFAULT_GATEWAY_RESOURCES: Mapping[str, Mapping[str, str]] = {
    "requests": {"cpu": "500m", "memory": "256Mi"}
}


@dataclass(frozen=True)
class GatewayKeys:
    """Keys the operator makes once per namespace and keeps across reconciles."""

    # The filters' hash key (base64): the same value hashes alike in every replica.
    hash_key_b64: str
    # Ed25519 key (PEM, base64) signing the audit log's checkpoints, and its public half.
    audit_key_b64: str
    audit_public_pem: str


@dataclass(frozen=True)
class AuditShipping:
    """Where gateways ship sealed audit segments (S3 with Object Lock); the platform's choice."""

    bucket: str
    prefix: str = "audit"
    # S3 endpoint URL; empty: the AWS default for the credentials' region.
    endpoint: str = ""


@dataclass(frozen=True)
class GatewayNetwork:
    """Who may reach the gateway and what it may reach, beyond its namespace's models:
    the platform's settings (the chart's networkPolicy values), resolved by the controller."""

    # Namespaces clients come from whatever the policies say, such as the ingress
    # controller's for users outside the cluster.
    client_namespaces: tuple[str, ...] = ()
    # Prometheus's namespace: it may read the metrics port.
    monitoring_namespace: str | None = None
    # Egress rules to the API server, Vault, the WORM bucket and the OIDC provider.
    egress: tuple[Manifest, ...] = ()
    # Hosts only an FQDN rule can name (the cluster runs Cilium).
    fqdn: tuple[Endpoint, ...] = ()


@dataclass(frozen=True)
class GatewayInputs:
    """What the namespace's gateway is rendered from."""

    namespace: str
    image: str
    models: Sequence[InferenceDeployment]
    policies: Sequence[AccessPolicy]
    api_keys: Mapping[str, str] = field(default_factory=dict)
    protected_entities: Sequence[str] = ()
    oidc: OIDCSettings | None = None
    # The CA (PEM) the OIDC provider's certificate chains to; empty: the system's CAs.
    oidc_ca_pem: str = ""
    # The operator's Vault, when it has one: the gateway then seals every payload.
    vault_addr: str | None = None
    # Where Vault's Kubernetes auth is mounted, and the CA (PEM) of Vault's certificate.
    vault_auth_mount: str = "kubernetes"
    vault_ca_pem: str = ""
    audit_shipping: AuditShipping | None = None
    connectors: Sequence[DataConnector] = ()
    # Where the operator runs (its POD_NAMESPACE): its Pods there may read the replicas'
    # demand on the peer port. None when it runs outside the cluster.
    operator_namespace: str | None = None
    # Requests and limits of the gateway container.
    resources: Mapping[str, Mapping[str, str]] = field(
        default_factory=lambda: DEFAULT_GATEWAY_RESOURCES
    )
    network: GatewayNetwork = field(default_factory=GatewayNetwork)
    # Models a CostBudget's block threshold stops, by name.
    budget_blocks: Mapping[str, BudgetBlock] = field(default_factory=dict)
    # Models a CostBudget's throttle threshold slows, by name.
    budget_throttles: Mapping[str, BudgetThrottle] = field(default_factory=dict)
    # Models a CostBudget's idleTimeout sends to zero when idle, whatever their minimum.
    idle_timeouts: Collection[str] = frozenset()
    # The CostBudgets' time zones: the gateway tallies usage by their calendar months.
    usage_time_zones: Sequence[str] = ("UTC",)


def connector_service_account(connector: str) -> str:
    """The ServiceAccount a DataConnector's Pods run as, and call the gateway with."""
    return f"privatellm-connector-{connector}"


def gateway_labels() -> dict[str, str]:
    """Labels of the gateway's objects; the models' NetworkPolicies admit Pods with these."""
    return {
        NAME_LABEL: "privatellm-gateway",
        INSTANCE_LABEL: GATEWAY_NAME,
        COMPONENT_LABEL: GATEWAY_COMPONENT,
        PART_OF_LABEL: PART_OF,
        MANAGED_BY_LABEL: MANAGED_BY,
    }


def _selector() -> dict[str, str]:
    return {COMPONENT_LABEL: GATEWAY_COMPONENT, INSTANCE_LABEL: GATEWAY_NAME}


# Holding requests while a model scales from zero (gateway/holding.py): a request waits
# for the weights to load (estimatedRestoreSeconds) plus this, for scheduling, the
# container's start and vLLM's warm-up on a node that is already there.
HOLD_START_MARGIN_SECONDS = 120
# Past a wait that long a client is better told to come back.
HOLD_MAX_WAIT_SECONDS = 1800
HOLD_MAX_QUEUE = 256


def render_hold(model: InferenceDeployment, idles_to_zero: bool = False) -> HoldSettings | None:
    """Hold settings for a model that may have no replica by design: one that scales to zero
    (autoscaling.minReplicas 0, or `idles_to_zero`: a CostBudget's idleTimeout covers it)
    or a batch model; None for the others (503 at once)."""
    spec = model.spec
    scales_to_zero = idles_to_zero or (
        spec.autoscaling is not None and spec.autoscaling.min_replicas == 0
    )
    if not scales_to_zero and spec.workload_class != "batch":
        return None
    wait = min(HOLD_MAX_WAIT_SECONDS, estimated_restore_seconds(spec) + HOLD_START_MARGIN_SECONDS)
    return HoldSettings(max_queue=HOLD_MAX_QUEUE, max_wait_seconds=wait)


def render_gateway_config(inputs: GatewayInputs) -> GatewayConfig:
    """The gateway's configuration file, as a model."""
    ns = inputs.namespace
    models = sorted(inputs.models, key=lambda m: m.metadata.name)
    routes = [
        ModelRoute(
            name=m.metadata.name,
            served_name=m.spec.model.name,
            # The gateway finds the Service's ready Pods through EndpointSlices; the
            # Service's own address is the last resort until it has listed them once.
            endpoints=[f"https://{service_name(m)}.{ns}.svc:{SERVING_PORT}"],
            service=service_name(m),
            fallback=m.spec.fallback.model if m.spec.fallback else None,
            max_model_len=m.spec.engine.max_model_len,
            transit_key=key_name(m) if inputs.vault_addr else None,
            hold=render_hold(m, m.metadata.name in inputs.idle_timeouts),
            budget_block=inputs.budget_blocks.get(m.metadata.name),
            budget_throttle=inputs.budget_throttles.get(m.metadata.name),
        )
        for m in models
    ]
    policies = [
        NamedPolicy(name=p.metadata.name, spec=p.spec)
        for p in sorted(inputs.policies, key=lambda p: p.metadata.name)
    ]
    connectors = [
        ConnectorRoute(
            name=c.metadata.name,
            service_account=connector_service_account(c.metadata.name),
            models=sorted(c.spec.models),
            data_classes=sorted(c.spec.data_classes),
        )
        for c in sorted(inputs.connectors, key=lambda c: c.metadata.name)
    ]
    return GatewayConfig(
        namespace=ns,
        models=routes,
        policies=policies,
        connectors=connectors,
        protected_entities=sorted(set(inputs.protected_entities)),
        auth=AuthSettings(
            api_keys=dict(sorted(inputs.api_keys.items())),
            oidc=_oidc(inputs),
            token_review=TokenReviewSettings(),
        ),
        encryption=_encryption(inputs),
        discovery=DiscoverySettings(),
        # Replicas count quotas together: a subject's limit holds for the gateway as a whole.
        quota_sharing=QuotaSharing(service=PEERS_SERVICE, server_name=f"{GATEWAY_NAME}.{ns}.svc"),
        upstream_tls=UpstreamTLS(
            ca_file=f"{TLS_DIR}/ca.crt",
            cert_file=f"{TLS_DIR}/tls.crt",
            key_file=f"{TLS_DIR}/tls.key",
        ),
        # Sorted: the same zones give the same file, and no reload.
        usage_time_zones=sorted(set(inputs.usage_time_zones)),
    )


def _oidc(inputs: GatewayInputs) -> OIDCSettings | None:
    if inputs.oidc is None or not inputs.oidc_ca_pem:
        return inputs.oidc
    return inputs.oidc.model_copy(update={"ca_file": f"{CONFIG_DIR}/{OIDC_CA_KEY}"})


def _encryption(inputs: GatewayInputs) -> EncryptionSettings | None:
    if not inputs.vault_addr:
        return None
    return EncryptionSettings(
        vault_addr=inputs.vault_addr,
        role=gateway_policy_name(inputs.namespace),
        auth_mount=inputs.vault_auth_mount,
        ca_file=f"{CONFIG_DIR}/{VAULT_CA_KEY}" if inputs.vault_ca_pem else None,
    )


def config_text(config: GatewayConfig) -> str:
    """The configuration file's text: JSON (a subset of YAML), keys in a stable order."""
    return json.dumps(config.model_dump(by_alias=True, exclude_none=True), indent=1) + "\n"


def _owner_references(models: Sequence[InferenceDeployment]) -> list[Manifest]:
    return [
        {
            "apiVersion": m.api_version,
            "kind": m.kind,
            "name": m.metadata.name,
            "uid": m.metadata.uid,
        }
        for m in sorted(models, key=lambda m: m.metadata.name)
        if m.metadata.uid
    ]


def _metadata(inputs: GatewayInputs, name: str) -> Manifest:
    return {
        "name": name,
        "namespace": inputs.namespace,
        "labels": gateway_labels(),
        "ownerReferences": _owner_references(inputs.models),
    }


def render_config_secret(inputs: GatewayInputs, keys: GatewayKeys) -> Manifest:
    """The configuration Secret: API-key digests, protected customers, the kept keys, and
    the CAs of Vault and the OIDC provider when the platform names them."""
    text = config_text(render_gateway_config(inputs))
    data = {
        CONFIG_KEY: base64.b64encode(text.encode()).decode(),
        HASH_KEY_KEY: keys.hash_key_b64,
        AUDIT_KEY_KEY: keys.audit_key_b64,
    }
    # Only where the configuration names them: Vault's CA is of no use without Vault.
    if inputs.vault_addr and inputs.vault_ca_pem:
        data[VAULT_CA_KEY] = base64.b64encode(inputs.vault_ca_pem.encode()).decode()
    if inputs.oidc is not None and inputs.oidc_ca_pem:
        data[OIDC_CA_KEY] = base64.b64encode(inputs.oidc_ca_pem.encode()).decode()
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": _metadata(inputs, CONFIG_SECRET),
        "type": "Opaque",
        "data": data,
    }


def render_audit_public_key(inputs: GatewayInputs, keys: GatewayKeys) -> Manifest:
    """The key that verifies the namespace's audit logs, readable without Secret access."""
    metadata = _metadata(inputs, AUDIT_PUBLIC_KEY_CONFIGMAP)
    return render_public_key_configmap(metadata, keys.audit_public_pem)


def render_gateway_service_account(inputs: GatewayInputs) -> Manifest:
    """The gateway's identity: TokenReview and Vault's Kubernetes auth both need its token."""
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": _metadata(inputs, GATEWAY_NAME),
    }


def render_gateway_statefulset(inputs: GatewayInputs, tls_revision: str = "") -> Manifest:
    """The gateway's Pods: spread over zones, restricted, reading their config from a Secret.

    A StatefulSet, so that each replica's audit log lives on a volume of its own that
    outlives the Pod and its node: an acknowledged record is never lost with them.
    The volumes are kept when the set is deleted or scaled down. The configuration is
    not part of the Pod template: the gateway reloads it when the mounted Secret
    changes, so a policy change never restarts the door.
    """
    args = [
        "gateway",
        f"--config={CONFIG_DIR}/{CONFIG_KEY}",
        f"--port={GATEWAY_PORT}",
        f"--metrics-port={METRICS_PORT}",
        f"--peer-port={PEER_PORT}",
        f"--hash-key-file={CONFIG_DIR}/{HASH_KEY_KEY}",
        f"--tls-cert={TLS_DIR}/tls.crt",
        f"--tls-key={TLS_DIR}/tls.key",
        # Each answer waits until its record is on disk (fdatasync, group commit).
        f"--audit-dir={AUDIT_DIR}",
        f"--audit-signing-key={CONFIG_DIR}/{AUDIT_KEY_KEY}",
        f"--audit-segment-seconds={AUDIT_SEGMENT_SECONDS}",
        "--audit-prune-expired",
    ]
    probe = {"httpGet": {"path": "/healthz", "port": "https", "scheme": "HTTPS"}}
    container: Manifest = {
        "name": "gateway",
        "image": inputs.image,
        "args": args,
        "ports": [
            {"name": "https", "containerPort": GATEWAY_PORT, "protocol": "TCP"},
            {"name": "metrics", "containerPort": METRICS_PORT, "protocol": "TCP"},
            {"name": "peers", "containerPort": PEER_PORT, "protocol": "TCP"},
        ],
        # A replica leaves its own address out of its quota peers.
        "env": [{"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}],
        "readinessProbe": {**probe, "periodSeconds": 5},
        "livenessProbe": {**probe, "periodSeconds": 10, "failureThreshold": 6},
        "resources": {kind: dict(amounts) for kind, amounts in inputs.resources.items()},
        "securityContext": container_security_context(),
        "volumeMounts": [
            {"name": "config", "mountPath": CONFIG_DIR, "readOnly": True},
            {"name": "tls", "mountPath": TLS_DIR, "readOnly": True},
            {"name": "audit", "mountPath": AUDIT_DIR},
            {"name": "tmp", "mountPath": "/tmp"},
        ],
    }
    if inputs.audit_shipping is not None:
        _ship_audit(container, inputs.audit_shipping)
    template_meta: Manifest = {"labels": gateway_labels()}
    annotations = {}
    if tls_revision:
        # The listener reads its certificate at start; a new one needs new Pods.
        annotations["privatellm.io/tls-revision"] = tls_revision
    if revision := start_settings_revision(inputs):
        annotations[START_SETTINGS_ANNOTATION] = revision
    if annotations:
        template_meta["annotations"] = annotations
    return {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": _metadata(inputs, GATEWAY_NAME),
        "spec": {
            "replicas": GATEWAY_REPLICAS,
            "serviceName": GATEWAY_NAME,
            # Replicas are peers: start and replace them together, not one by one.
            "podManagementPolicy": "Parallel",
            "selector": {"matchLabels": _selector()},
            "updateStrategy": {"type": "RollingUpdate"},
            "persistentVolumeClaimRetentionPolicy": {
                "whenDeleted": "Retain",
                "whenScaled": "Retain",
            },
            "volumeClaimTemplates": [
                {
                    "metadata": {"name": "audit", "labels": gateway_labels()},
                    "spec": {
                        "accessModes": ["ReadWriteOnce"],
                        "resources": {"requests": {"storage": AUDIT_VOLUME_SIZE}},
                    },
                }
            ],
            "template": {
                "metadata": template_meta,
                "spec": {
                    "serviceAccountName": GATEWAY_NAME,
                    "securityContext": pod_security_context(),
                    "topologySpreadConstraints": [
                        {
                            "maxSkew": 1,
                            "topologyKey": ZONE_LABEL,
                            "whenUnsatisfiable": "DoNotSchedule",
                            "labelSelector": {"matchLabels": _selector()},
                        }
                    ],
                    "containers": [container],
                    "volumes": [
                        {"name": "config", "secret": {"secretName": CONFIG_SECRET}},
                        {"name": "tls", "secret": {"secretName": GATEWAY_TLS_SECRET}},
                        empty_dir("tmp"),
                    ],
                },
            },
        },
    }


def start_settings_revision(inputs: GatewayInputs) -> str:
    """A digest of the settings the gateway reads only at start (its OIDC verifier and its
    Vault client, with their CAs); empty when it has neither. A reload of the
    configuration leaves those clients as they are, so a change needs new Pods."""
    config = render_gateway_config(inputs)
    if config.auth.oidc is None and config.encryption is None:
        return ""
    settings = {
        "oidc": config.auth.oidc.model_dump() if config.auth.oidc else None,
        "oidcCA": inputs.oidc_ca_pem if config.auth.oidc else "",
        "encryption": config.encryption.model_dump() if config.encryption else None,
        "vaultCA": inputs.vault_ca_pem if config.encryption else "",
    }
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def _ship_audit(container: Manifest, shipping: AuditShipping) -> None:
    container["args"] += [
        f"--audit-worm-bucket={shipping.bucket}",
        f"--audit-worm-prefix={shipping.prefix}",
    ]
    if shipping.endpoint:
        container["env"].append({"name": "AWS_ENDPOINT_URL_S3", "value": shipping.endpoint})
    # The namespace's own credentials for the bucket (AWS_ACCESS_KEY_ID, ...). Without
    # them the gateway still serves; its sealed segments wait on its volume.
    container["envFrom"] = [{"secretRef": {"name": AUDIT_SHIPPING_SECRET, "optional": True}}]


def render_gateway_service(inputs: GatewayInputs) -> Manifest:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(inputs, GATEWAY_NAME),
        "spec": {
            "type": "ClusterIP",
            "selector": _selector(),
            "ports": [
                {
                    "name": "https",
                    "protocol": "TCP",
                    "appProtocol": "https",
                    "port": 443,
                    "targetPort": "https",
                }
            ],
        },
    }


def render_gateway_peers_service(inputs: GatewayInputs) -> Manifest:
    """Headless: its EndpointSlices list each ready replica's peer port for the others."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(inputs, PEERS_SERVICE),
        "spec": {
            "clusterIP": "None",
            "selector": _selector(),
            # Named https: the port the gateway's EndpointSlice reader takes. The metrics
            # port lets KEDA read every replica's figures (render/keda.py).
            "ports": [
                {"name": "https", "protocol": "TCP", "port": PEER_PORT, "targetPort": "peers"},
                {
                    "name": "metrics",
                    "protocol": "TCP",
                    "port": METRICS_PORT,
                    "targetPort": "metrics",
                },
            ],
        },
    }


def render_gateway_pdb(inputs: GatewayInputs) -> Manifest:
    """A drain takes at most one gateway Pod at a time."""
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": _metadata(inputs, GATEWAY_NAME),
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": _selector()}},
    }


def client_namespaces(inputs: GatewayInputs) -> list[str]:
    """Namespaces whose Pods may call the gateway's API port: its own (connectors, local
    clients), each policy's sourceNamespaces, the namespaces of the ServiceAccounts the
    policies name, and the platform's client namespaces."""
    names = {inputs.namespace, *inputs.network.client_namespaces}
    for policy in inputs.policies:
        names.update(policy.spec.source_namespaces)
        names.update(s.namespace for s in policy.spec.subjects if s.namespace)
    return sorted(names)


def render_gateway_network_policy(inputs: GatewayInputs) -> Manifest:
    """The gateway is the namespace's door: clients of the namespaces its policies name
    reach the API port; Prometheus and the operator the metrics port; the other replicas
    and the operator the peer port. It reaches its models, the other replicas, DNS and
    what the platform configured (API server, Vault, WORM bucket, OIDC provider)."""
    network = inputs.network
    operators = [operator_pods(inputs.operator_namespace)] if inputs.operator_namespace else []
    clients = [namespace_peer(name) for name in client_namespaces(inputs)]
    readers = metrics_readers(inputs.operator_namespace, network.monitoring_namespace)
    peers = [{"podSelector": {"matchLabels": _selector()}}]
    models = {"podSelector": {"matchLabels": {COMPONENT_LABEL: SERVER_COMPONENT}}}
    ingress: list[Manifest] = [{"from": clients, "ports": tcp(GATEWAY_PORT)}]
    if readers:
        ingress.append({"from": readers, "ports": tcp(METRICS_PORT)})
    ingress.append({"from": peers + operators, "ports": tcp(PEER_PORT)})
    egress: list[Manifest] = [
        dns_egress(),
        {"to": [models], "ports": tcp(SERVING_PORT)},
        {"to": peers, "ports": tcp(PEER_PORT)},
        *network.egress,
    ]
    metadata = _metadata(inputs, GATEWAY_NAME)
    return network_policy(metadata, {"matchLabels": _selector()}, ingress, egress)


def render_gateway_role(inputs: GatewayInputs) -> Manifest:
    """The gateway may read its namespace's EndpointSlices: that is how it finds replicas."""
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": _metadata(inputs, GATEWAY_NAME),
        "rules": [
            {
                "apiGroups": ["discovery.k8s.io"],
                "resources": ["endpointslices"],
                "verbs": ["get", "list", "watch"],
            }
        ],
    }


def render_gateway_role_binding(inputs: GatewayInputs) -> Manifest:
    """Grants the gateway's Role to its ServiceAccount."""
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": _metadata(inputs, GATEWAY_NAME),
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": GATEWAY_NAME},
        "subjects": [
            {"kind": "ServiceAccount", "name": GATEWAY_NAME, "namespace": inputs.namespace}
        ],
    }


def render_gateway(inputs: GatewayInputs, keys: GatewayKeys, tls_revision: str = "") -> list[Any]:
    """Every object of the namespace's gateway except its TLS Secret (issued separately)."""
    objects = [
        render_config_secret(inputs, keys),
        render_audit_public_key(inputs, keys),
        render_gateway_service_account(inputs),
        render_gateway_role(inputs),
        render_gateway_role_binding(inputs),
        render_gateway_statefulset(inputs, tls_revision),
        render_gateway_service(inputs),
        render_gateway_peers_service(inputs),
        render_gateway_pdb(inputs),
        render_default_deny(inputs.namespace, _owner_references(inputs.models)),
        render_gateway_network_policy(inputs),
    ]
    if inputs.network.fqdn:
        metadata = _metadata(inputs, GATEWAY_NAME)
        objects.append(render_fqdn_policy(metadata, _selector(), inputs.network.fqdn))
    return objects


def render_gateway_tls_secret(
    inputs: GatewayInputs, cert_pem: bytes, key_pem: bytes, ca_cert_pem: bytes
) -> Manifest:
    """The gateway's certificate: it serves clients and is its client certificate towards vLLM."""
    return tls_secret(_metadata(inputs, GATEWAY_TLS_SECRET), cert_pem, key_pem, ca_cert_pem)


def render_gateway_certificate(inputs: GatewayInputs) -> Manifest:
    """The gateway's cert-manager Certificate: the same Secret, names and owners as above."""
    return render_certificate(
        GATEWAY_TLS_SECRET,
        inputs.namespace,
        GATEWAY_NAME,
        service_names(GATEWAY_NAME, inputs.namespace),
        gateway_labels(),
        _owner_references(inputs.models),
    )


def token_review_subjects(
    live_subjects: Sequence[Manifest], namespace: str, wanted: bool
) -> list[Manifest]:
    """The binding's subjects with this namespace's gateway added or removed, in a stable order."""
    others = [
        s
        for s in live_subjects
        if not (s.get("namespace") == namespace and s.get("name") == GATEWAY_NAME)
    ]
    if wanted:
        others.append({"kind": "ServiceAccount", "name": GATEWAY_NAME, "namespace": namespace})
    return sorted(others, key=lambda s: (s.get("namespace", ""), s.get("name", "")))


def render_token_review_binding(name: str, subjects: Sequence[Manifest]) -> Manifest:
    """The one binding that lets every namespace's gateway call TokenReview.

    The chart creates it empty; the operator keeps its subjects, so that no
    gateway can review tokens once its namespace has no model.
    """
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding",
        "metadata": {"name": name},
        "roleRef": {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "ClusterRole",
            "name": "system:auth-delegator",
        },
        "subjects": list(subjects),
    }
