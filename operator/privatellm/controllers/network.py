"""What the NetworkPolicies need from the cluster: the platform's network settings, whether
FQDN rules are enforced, and the Services and EndpointSlices a configured URL names.

The rules themselves are rendered purely (render/network.py); this module only reads.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from privatellm.kube.client import KINDS, Kube
from privatellm.render.gateway import GatewayNetwork
from privatellm.render.meta import crd_installed
from privatellm.render.network import (
    CILIUM_POLICY_CRD,
    Endpoint,
    Resolution,
    cluster_service,
    endpoint_of,
    resolve,
)

log = logging.getLogger(__name__)

CRD = KINDS["CustomResourceDefinition"]
SERVICE = KINDS["Service"]
ENDPOINT_SLICE = KINDS["EndpointSlice"]
# Set by the chart (values networkPolicy.*).
CLIENT_NAMESPACES_ENV = "PRIVATELLM_NETWORK_CLIENT_NAMESPACES"
MONITORING_NAMESPACE_ENV = "PRIVATELLM_NETWORK_MONITORING_NAMESPACE"
EGRESS_CIDRS_ENV = "PRIVATELLM_NETWORK_EGRESS_CIDRS"
# Gateways call the API server (TokenReview, EndpointSlices) through this Service.
API_SERVER = Endpoint("kubernetes.default.svc", 443)


@dataclass(frozen=True)
class NetworkSettings:
    """The platform's network settings, the same for every managed namespace."""

    client_namespaces: tuple[str, ...] = ()
    monitoring_namespace: str | None = None
    # Hosts outside the cluster, and the address ranges each lives in.
    egress_cidrs: Mapping[str, Sequence[str]] = field(default_factory=dict)


def network_settings_from_env(environ: Mapping[str, str]) -> NetworkSettings:
    """The chart's networkPolicy values; ValueError names a malformed one."""
    text = environ.get(EGRESS_CIDRS_ENV) or "{}"
    try:
        cidrs = json.loads(text)
    except ValueError:
        cidrs = None
    if not isinstance(cidrs, dict) or not all(
        isinstance(v, list) and all(isinstance(c, str) for c in v) for v in cidrs.values()
    ):
        raise ValueError(f"{EGRESS_CIDRS_ENV} must map host names to lists of CIDRs: {text!r}")
    clients = environ.get(CLIENT_NAMESPACES_ENV, "")
    return NetworkSettings(
        client_namespaces=tuple(n.strip() for n in clients.split(",") if n.strip()),
        monitoring_namespace=environ.get(MONITORING_NAMESPACE_ENV) or None,
        egress_cidrs=cidrs,
    )


def fqdn_rules_enforced(kube: Kube) -> bool:
    """Whether Cilium's policy kind is served, so that egress rules may name hosts."""
    return crd_installed(kube.get(CRD, None, CILIUM_POLICY_CRD))


def resolve_endpoint(
    kube: Kube, endpoint: Endpoint, settings: NetworkSettings, fqdn_rules: bool
) -> Resolution:
    """The egress rule for `endpoint`, reading the Service and EndpointSlices it names."""
    service, slices = None, []
    named = cluster_service(endpoint.host)
    if named is not None:
        namespace, name = named
        service = kube.get(SERVICE, namespace, name)
        if service is not None and not (service.get("spec") or {}).get("selector"):
            slices = kube.list(ENDPOINT_SLICE, namespace, f"kubernetes.io/service-name={name}")
    return resolve(
        endpoint,
        service=service,
        slices=slices,
        declared_cidrs=settings.egress_cidrs,
        fqdn_rules=fqdn_rules,
    )


def gateway_network(
    kube: Kube, settings: NetworkSettings, urls: Mapping[str, str]
) -> tuple[GatewayNetwork, list[str]]:
    """The gateway's network: who may call it, and rules to the API server and to each
    configured destination (`urls`: what it is, such as "Vault", to its URL); with the
    destinations no rule can be written for, each said in words."""
    fqdn_rules = fqdn_rules_enforced(kube)
    egress, fqdn, problems = [], [], []
    destinations = {"the API server": API_SERVER}
    for what, url in urls.items():
        try:
            destinations[what] = endpoint_of(url)
        except ValueError as error:
            problems.append(f"{what}: {error}")
    for what, endpoint in destinations.items():
        resolution = resolve_endpoint(kube, endpoint, settings, fqdn_rules)
        if endpoint is API_SERVER and resolution.problem:
            # An API server that publishes no address (one advertising loopback, as a
            # single-machine control plane does) is out of every Pod's reach anyway.
            log.debug("no rule to the API server: %s", resolution.problem)
            continue
        if resolution.rule is not None:
            egress.append(resolution.rule)
        elif resolution.fqdn is not None:
            fqdn.append(resolution.fqdn)
        else:
            problems.append(f"{what}: {resolution.problem}")
    network = GatewayNetwork(
        client_namespaces=settings.client_namespaces,
        monitoring_namespace=settings.monitoring_namespace,
        egress=tuple(egress),
        fqdn=tuple(fqdn),
    )
    return network, problems
