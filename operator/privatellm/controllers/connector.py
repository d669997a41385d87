"""DataConnector controller: read -> render -> apply -> status.

The decisions live in `privatellm.render.connector`; this module reads what they need
(the connector, the namespace's AccessPolicies and models, the namespace CA, the keys
of the namespace's gateway, the connector's Pods and their sidecars' counts), applies
the children, and writes status and Events only when something changed.

The connector's ConfigMap and Secret are not watched: the operator may read Secrets
and ConfigMaps by name only (charts/privatellm), so one of them deleted or changed by
hand is put back by the next resync rather than at once.
"""

from __future__ import annotations

import logging
import os
import urllib.request
from collections.abc import Callable, Collection, Hashable, Mapping, Sequence
from typing import Any
from urllib.error import HTTPError, URLError

from pydantic import ValidationError

from privatellm.api import DataConnector
from privatellm.api.access import AccessPolicy
from privatellm.keys.transit import VaultClient, VaultError
from privatellm.kube.client import KINDS, LOOKUP, ApiError, Kube, Obj, namespace_and_name
from privatellm.render.conditions import (
    merge_conditions,
    transition_events,
    validation_messages,
)
from privatellm.render.connector import (
    CONNECTOR_COMPONENT,
    DATA_CONNECTOR_LABEL,
    QUARANTINE_ON,
    SIDECAR_METRICS_PORT,
    ConnectorInputs,
    CounterReading,
    ItemCounts,
    SidecarVault,
    WorkloadView,
    connector_conditions,
    connector_label_value,
    connector_status,
    counter_reading,
    parse_sidecar_metrics,
    protected_entity_lines,
    quarantine_off,
    reference_problems,
    render_connector,
    spec_problems,
    workload_name,
)
from privatellm.render.gateway import AUDIT_KEY_KEY, HASH_KEY_KEY, connector_service_account
from privatellm.render.gateway import CONFIG_SECRET as GATEWAY_CONFIG_SECRET
from privatellm.render.inference_status import ChildFailure, Problem, invalid_spec_conditions
from privatellm.render.meta import COMPONENT_LABEL, MANAGED_BY, MANAGED_BY_LABEL
from privatellm.render.network import endpoint_of, metrics_readers
from privatellm.render.tls import CA_CERT_KEY, NAMESPACE_CA_SECRET, secret_bytes

from .builder import Context, Controller, For, Key, Labels, Owns, Watches, WatchEvent
from .events import ReportedError, event_for, now
from .gateway import (
    PROTECTED_ENTITIES_KEY,
    gateway_image,
    gateway_settings_from_env,
    parse_stored,
)
from .inference import TRANSIENT_STATUSES, namespace_terminating
from .keys import auth_mount, ensure_connector_keys
from .network import (
    NetworkSettings,
    fqdn_rules_enforced,
    network_settings_from_env,
    resolve_endpoint,
)

log = logging.getLogger(__name__)

DATA_CONNECTOR = KINDS["DataConnector"]
DEPLOYMENT = KINDS["Deployment"]
SERVICE = KINDS["Service"]
SECRET = KINDS["Secret"]
POD = KINDS["Pod"]
ACCESS_POLICY = KINDS["AccessPolicy"]
INFERENCE = KINDS["InferenceDeployment"]

# Returns a sidecar's /metrics text, given its Pod's IP; raises when it cannot.
MetricsReader = Callable[[str], str]
# A reconcile waits at most this long for each sidecar: counts are not worth holding
# up the rest of the status for.
METRICS_TIMEOUT_SECONDS = 2.0
METRICS_MAX_BYTES = 1024 * 1024


def read_sidecar_metrics(pod_ip: str) -> str:
    """GET http://<pod_ip>:9090/metrics, without any proxy the environment names."""
    host = f"[{pod_ip}]" if ":" in pod_ip else pod_ip
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    url = f"http://{host}:{SIDECAR_METRICS_PORT}/metrics"
    with opener.open(url, timeout=METRICS_TIMEOUT_SECONDS) as response:
        body: bytes = response.read(METRICS_MAX_BYTES + 1)
    if len(body) > METRICS_MAX_BYTES:
        raise ValueError(f"the metrics are larger than {METRICS_MAX_BYTES} bytes")
    return body.decode("utf-8", errors="replace")


def reconcile(
    kube: Kube,
    namespace: str,
    name: str,
    read_metrics: MetricsReader = read_sidecar_metrics,
    image: str | None = None,
    vault: VaultClient | None = None,
    vault_ca_pem: str = "",
    operator_namespace: str | None = None,
    network_settings: NetworkSettings | None = None,
) -> None:
    """Bring one DataConnector's children and status in line with its spec.

    `read_metrics` reads a sidecar's counts by its Pod's IP; `image` is the project
    image the built-in connector and the sidecars run (by default the gateway's);
    with `vault`, the sidecars may seal quarantined items under the namespace key,
    trusting `vault_ca_pem` (the chart's Vault CA) for its certificate. The operator's
    Pods in `operator_namespace` and Prometheus (`network_settings`) may read the counts.
    """
    raw = kube.get(DATA_CONNECTOR, namespace, name)
    if raw is None or raw["metadata"].get("deletionTimestamp"):
        if vault is not None:
            _connector_keys(kube, vault, namespace)  # its ServiceAccount loses the role
        return  # the children carry owner references: the garbage collector removes them
    if namespace_terminating(kube, namespace):
        return  # re-creating what the namespace controller removes would only fight it
    previous = raw.get("status") or {}
    try:
        connector = DataConnector.model_validate(raw)
    except ValidationError as error:
        # Stored before a stricter schema: say why at once; nothing is rendered.
        generation = raw["metadata"].get("generation")
        merged = merge_conditions(
            previous.get("conditions") or [],
            invalid_spec_conditions(validation_messages(error)),
            generation,
            now(),
        )
        status = {**previous, "observedGeneration": generation, "conditions": merged}
        _write_status(kube, raw, previous, status)
        return
    entities, terms = _outbound_terms(kube, namespace)
    ca = secret_bytes(kube.get(SECRET, namespace, NAMESPACE_CA_SECRET), CA_CERT_KEY)
    gateway_keys = kube.get(SECRET, namespace, GATEWAY_CONFIG_SECRET)
    quarantine = quarantine_off("the operator runs without Vault")
    if vault is not None:
        try:
            _connector_keys(kube, vault, namespace)
            quarantine = QUARANTINE_ON
        except VaultError as error:
            quarantine = quarantine_off(f"Vault cannot give the connectors a role: {error}")
    fqdn_rules = fqdn_rules_enforced(kube)
    settings = network_settings or NetworkSettings()
    platform_egress, unreachable = [], []
    if vault is not None:
        # The sidecar seals quarantined items with Vault.
        vault_egress = resolve_endpoint(kube, endpoint_of(vault.addr), settings, fqdn_rules)
        if vault_egress.rule is not None:
            platform_egress.append(vault_egress.rule)
        elif vault_egress.problem:
            unreachable.append(Problem("EgressNotExpressible", f"Vault: {vault_egress.problem}"))
    inputs = ConnectorInputs(
        connector,
        image or gateway_image(),
        entities,
        terms,
        ca.decode(),
        secret_bytes(gateway_keys, HASH_KEY_KEY),
        secret_bytes(gateway_keys, AUDIT_KEY_KEY),
        SidecarVault(vault.addr, auth_mount(vault), vault_ca_pem)
        if quarantine is QUARANTINE_ON and vault is not None
        else None,
        platform_egress,
        fqdn_rules,
        metrics_readers(operator_namespace, settings.monitoring_namespace),
    )
    refused, deployment = _apply_children(kube, connector, render_connector(inputs))
    problems = [
        *reference_problems(
            connector, _models(kube, namespace), _credentials_found(kube, connector)
        ),
        *spec_problems(connector, fqdn_rules),
        *unreachable,
    ]
    workload = WorkloadView.from_deployment(deployment)
    conditions = connector_conditions(name, workload, refused, problems, quarantine)
    reading = _read_counters(kube, connector, read_metrics)
    status = connector_status(connector, conditions, reading, previous, now())
    _write_status(kube, raw, previous, status)
    if refused:
        # Reported in status; raising makes the runtime retry with backoff.
        raise ReportedError("; ".join(map(str, refused)))


def _connector_keys(kube: Kube, vault: VaultClient, namespace: str) -> None:
    """The namespace's connector role names the ServiceAccount of every connector there."""
    accounts = [
        connector_service_account(c["metadata"]["name"])
        for c in kube.list(DATA_CONNECTOR, namespace)
        if not c["metadata"].get("deletionTimestamp")
    ]
    ensure_connector_keys(vault, namespace, accounts)


def _outbound_terms(kube: Kube, namespace: str) -> tuple[set[str], set[str]]:
    """The protected entities and internal terms of every AccessPolicy of the namespace.

    A Secret a policy names and that is missing is reported on the policy by the
    gateway's controller; here it contributes nothing.
    """
    entities: set[str] = set()
    terms: set[str] = set()
    for _, policy in parse_stored(AccessPolicy, kube.list(ACCESS_POLICY, namespace))[0]:
        outbound = policy.spec.outbound
        terms.update(outbound.internal_terms)
        if outbound.protected_entities_secret:
            secret = kube.get(SECRET, namespace, outbound.protected_entities_secret)
            text = secret_bytes(secret, PROTECTED_ENTITIES_KEY).decode(errors="replace")
            entities.update(protected_entity_lines(text))
    return entities, terms


def _models(kube: Kube, namespace: str) -> set[str]:
    """The namespace's InferenceDeployments that are not being deleted."""
    return {
        item["metadata"]["name"]
        for item in kube.list(INFERENCE, namespace)
        if not item["metadata"].get("deletionTimestamp")
    }


def _credentials_found(kube: Kube, connector: DataConnector) -> bool:
    secret = connector.spec.credentials_secret
    return not secret or kube.get(SECRET, connector.metadata.namespace, secret) is not None


def _apply_children(
    kube: Kube, connector: DataConnector, children: Sequence[Obj]
) -> tuple[list[ChildFailure], Obj | None]:
    """Apply every child; the ones the API server refused, and the Deployment as it is.

    One refused child does not stop the others. A webhook Service left from an earlier
    type goes once everything else was applied.
    """
    namespace, name = connector.metadata.namespace, workload_name(connector.metadata.name)
    deployment = kube.get(DEPLOYMENT, namespace, name)
    refused = []
    for child in children:
        kind = child["kind"]
        try:
            wrote = kube.apply(child, deployment if kind == "Deployment" else LOOKUP)
        except ApiError as error:
            if error.status in TRANSIENT_STATUSES:
                raise
            refused.append(ChildFailure(kind, child["metadata"]["name"], error.message))
            continue
        if kind == "Deployment" and wrote:
            # What was read shows the previous spec's Pods; read what the apply made.
            deployment = kube.get(DEPLOYMENT, namespace, name)
    if not refused and not any(child["kind"] == "Service" for child in children):
        service = kube.get(SERVICE, namespace, name)
        if service is not None and _owned_by(service, connector.metadata.uid or ""):
            log.info("pruning Service %s/%s", namespace, name)
            kube.delete(SERVICE, namespace, name)
    return refused, deployment


def _owned_by(obj: Obj, uid: str) -> bool:
    return any(ref.get("uid") == uid for ref in obj["metadata"].get("ownerReferences") or [])


def _ready(pod: Mapping[str, Any]) -> bool:
    status = pod.get("status") or {}
    return bool(status.get("podIP")) and any(
        c.get("type") == "Ready" and c.get("status") == "True"
        for c in status.get("conditions") or []
    )


def _read_counters(
    kube: Kube, connector: DataConnector, read_metrics: MetricsReader
) -> CounterReading:
    """Each ready Pod's sidecar counts. A sidecar that cannot be read, or answers with
    something else than its metrics, leaves the stored counts as they are and says why."""
    selector = (
        f"{DATA_CONNECTOR_LABEL}={connector_label_value(connector.metadata.name)},"
        f"{COMPONENT_LABEL}={CONNECTOR_COMPONENT}"
    )
    pods = [
        pod
        for pod in kube.list(POD, connector.metadata.namespace, selector)
        if _ready(pod) and not pod["metadata"].get("deletionTimestamp")
    ]
    counts: list[ItemCounts] = []
    failures: list[str] = []
    for pod in sorted(pods, key=lambda p: str(p["metadata"]["name"])):
        pod_name = pod["metadata"]["name"]
        try:
            text = read_metrics(pod["status"]["podIP"])
            counts.append(parse_sidecar_metrics(text, pod_name))
        # Whatever the reader raises (it is injectable), the status is still written.
        except Exception as error:
            failures.append(f"Pod {pod_name}: {_describe(error)}")
    return counter_reading(len(pods), counts, failures)


def _describe(error: Exception) -> str:
    """A short, stable account of a failed read: the same failure writes the same status."""
    if isinstance(error, URLError) and not isinstance(error, HTTPError):
        return str(error.reason)  # urlopen wraps what the socket said
    return str(error) or type(error).__name__


def _write_status(kube: Kube, raw: Obj, previous: Mapping[str, Any], status: Obj) -> None:
    """Patch the status when it differs; an Event for each change of Ready or Degraded."""
    if status == {k: previous.get(k) for k in status} and not set(previous) - set(status):
        return
    removed = {key: None for key in previous if key not in status}
    kube.patch_status(DATA_CONNECTOR, *namespace_and_name(raw), {**removed, **status})
    for type_, reason, message in transition_events(
        previous.get("conditions") or [], status["conditions"]
    ):
        kube.post_event(event_for(raw, type_, reason, message))


def _reconcile(context: Context, key: Key) -> None:
    vault_ca = gateway_settings_from_env(os.environ).vault_ca_pem if context.vault else ""
    reconcile(
        context.kube,
        *key,
        vault=context.vault,
        vault_ca_pem=vault_ca,
        operator_namespace=context.operator_namespace,
        network_settings=network_settings_from_env(os.environ),
    )


def _owner(event: WatchEvent) -> Key:
    """The DataConnector a child names in its owner references (its label may be a hash)."""
    for ref in event.body["metadata"].get("ownerReferences") or []:
        if ref.get("kind") == DATA_CONNECTOR.kind:
            return (event.namespace, str(ref.get("name")))
    return (event.namespace, "")  # no connector's key: queues nothing


def connectors_in_namespace(event: WatchEvent, known: Collection[Key]) -> list[Key]:
    """Every connector of the event's namespace."""
    return [key for key in known if key[0] == event.namespace]


def outbound_signature(policy: Mapping[str, Any]) -> Hashable:
    """What of an AccessPolicy the sidecars get: its protected entities and internal terms."""
    outbound = (policy.get("spec") or {}).get("outbound") or {}
    return (outbound.get("protectedEntitiesSecret"), tuple(outbound.get("internalTerms") or ()))


def model_presence(model: Mapping[str, Any]) -> Hashable:
    """Whether a model is going: its other changes do not concern the connectors."""
    return bool(model["metadata"].get("deletionTimestamp"))


CHILD_LABELS: Labels = {MANAGED_BY_LABEL: MANAGED_BY, COMPONENT_LABEL: CONNECTOR_COMPONENT}

CONTROLLER = Controller(
    name="DataConnector",
    for_=For(DATA_CONNECTOR),
    owns=tuple(
        Owns(KINDS[kind], _owner, CHILD_LABELS)
        for kind in ("Deployment", "Service", "ServiceAccount", "NetworkPolicy")
    ),
    watches=(
        # The sidecars' outbound filter holds back what the namespace's policies protect.
        Watches(ACCESS_POLICY, connectors_in_namespace, signature=outbound_signature),
        # Whether the connector's models, and so the namespace's gateway, exist.
        Watches(INFERENCE, connectors_in_namespace, signature=model_presence),
    ),
    reconcile=_reconcile,
)
