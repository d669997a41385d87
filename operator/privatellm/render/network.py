"""Network isolation of a managed namespace (layer 3 of DESIGN.md): the pieces every
NetworkPolicy of the stack is made of, and how a configured URL becomes an egress rule.

A default-deny policy selects every Pod the operator runs in the namespace; each
component's own policy then opens exactly what it needs (render/gateway.py,
render/inference.py, render/weights.py, render/connector.py). docs/network.md has the
resulting matrix.

A NetworkPolicy names addresses and Pods, never host names. A destination given as a URL
is therefore resolved: an IP literal is one address; a cluster Service
(`name.namespace.svc`) is the Pods it selects, or the addresses of its EndpointSlices when it
selects none; any other host is an address range the platform declares for it
(`networkPolicy.egressCIDRs`), or an FQDN rule where Cilium is installed. A host none of
these covers is reported, never widened to "anywhere".
"""

from __future__ import annotations

import ipaddress
import urllib.parse
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .meta import MANAGED_BY, MANAGED_BY_LABEL, NAMESPACE_NAME_LABEL, operator_pods

Manifest = dict[str, Any]

DEFAULT_DENY_NAME = "privatellm-default-deny"
# Cluster DNS runs in kube-system (CoreDNS or kube-dns) in the clusters the operator
# supports; DNS to anywhere else would be a channel out of the allow-list.
DNS_NAMESPACE = "kube-system"
# Cilium's policy kind, and the CRD whose presence says Cilium enforces it.
CILIUM_POLICY_CRD = "ciliumnetworkpolicies.cilium.io"
CLUSTER_DOMAIN_SUFFIXES = (".svc", ".svc.cluster.local")
DEFAULT_PORTS = {"http": 80, "https": 443}


def stack_pods() -> Manifest:
    """The label selector of every Pod the operator renders (never the operator's own,
    which Helm manages, should it run in a managed namespace)."""
    return {"matchLabels": {MANAGED_BY_LABEL: MANAGED_BY}}


def network_policy(
    metadata: Manifest,
    pod_selector: Manifest,
    ingress: Sequence[Manifest] = (),
    egress: Sequence[Manifest] = (),
) -> Manifest:
    """A NetworkPolicy that governs both directions of the selected Pods: what `ingress`
    and `egress` allow, and nothing else."""
    spec: Manifest = {"podSelector": pod_selector, "policyTypes": ["Ingress", "Egress"]}
    # The API server drops an empty list: left in, an apply would never match what it stored.
    if ingress:
        spec["ingress"] = list(ingress)
    if egress:
        spec["egress"] = list(egress)
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": metadata,
        "spec": spec,
    }


def render_default_deny(namespace: str, owner_references: Sequence[Manifest]) -> Manifest:
    """Nothing in or out for the stack's Pods unless another policy opens it."""
    metadata = {
        "name": DEFAULT_DENY_NAME,
        "namespace": namespace,
        "labels": {MANAGED_BY_LABEL: MANAGED_BY},
        "ownerReferences": list(owner_references),
    }
    return network_policy(metadata, stack_pods())


def tcp(*ports: int | str) -> list[Manifest]:
    """NetworkPolicy ports: TCP, by number or by the container port's name."""
    return [{"protocol": "TCP", "port": port} for port in ports]


def namespace_peer(namespace: str) -> Manifest:
    """Every Pod of one namespace."""
    return {"namespaceSelector": {"matchLabels": {NAMESPACE_NAME_LABEL: namespace}}}


def metrics_readers(operator_namespace: str | None, monitoring: str | None) -> list[Manifest]:
    """NetworkPolicy peers that may read metrics ports: the operator's Pods and Prometheus's
    namespace, where there are any."""
    readers = [operator_pods(operator_namespace)] if operator_namespace else []
    return readers + ([namespace_peer(monitoring)] if monitoring else [])


def dns_egress() -> Manifest:
    """Name lookups: cluster DNS, UDP and TCP port 53."""
    ports = [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}]
    return {"to": [namespace_peer(DNS_NAMESPACE)], "ports": ports}


@dataclass(frozen=True)
class Endpoint:
    """A destination as configuration gives it: a host and a TCP port."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


def endpoint_of(url: str) -> Endpoint:
    """The host and port of an http(s) URL (the scheme's port when none is given).

    Raises ValueError for a URL without a host or with another scheme.
    """
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in DEFAULT_PORTS or not parts.hostname:
        raise ValueError(f"{url!r} is not an http(s) URL with a host")
    return Endpoint(parts.hostname, parts.port or DEFAULT_PORTS[parts.scheme])


def ip_cidr(host: str) -> str | None:
    """The one-address CIDR of an IP literal; None for a name."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return None
    return f"{address}/{address.max_prefixlen}"


def cluster_service(host: str) -> tuple[str, str] | None:
    """(namespace, name) of a cluster Service's DNS name; None for any other host."""
    for suffix in CLUSTER_DOMAIN_SUFFIXES:
        if host.endswith(suffix):
            labels = host.removesuffix(suffix).split(".")
            if len(labels) == 2 and all(labels):
                return labels[1], labels[0]
    return None


@dataclass(frozen=True)
class Resolution:
    """An egress rule for a destination, or why none can be written."""

    rule: Manifest | None = None
    # A host only an FQDN rule can name (set when `rule` is None and FQDN rules exist).
    fqdn: Endpoint | None = None
    problem: str = ""


def _service_target_port(service: Manifest, port: int) -> int | str:
    for entry in (service.get("spec") or {}).get("ports") or []:
        if entry.get("port") == port:
            target: int | str = entry.get("targetPort", port)
            return target
    return port


def slice_addresses(slices: Iterable[Manifest]) -> list[str]:
    """The ready endpoint addresses of EndpointSlices, as one-address CIDRs."""
    cidrs: set[str] = set()
    for endpoint_slice in slices:
        for endpoint in endpoint_slice.get("endpoints") or []:
            if (endpoint.get("conditions") or {}).get("ready") is False:
                continue
            cidrs.update(c for c in map(ip_cidr, endpoint.get("addresses") or []) if c)
    return sorted(cidrs)


def slice_port(slices: Iterable[Manifest], service_port_name: str | None) -> int | None:
    """The port the EndpointSlices give for the Service port of that name."""
    for endpoint_slice in slices:
        for entry in endpoint_slice.get("ports") or []:
            if entry.get("name", "") == (service_port_name or "") and entry.get("port"):
                port: int = entry["port"]
                return port
    return None


def resolve(
    endpoint: Endpoint,
    *,
    service: Manifest | None = None,
    slices: Sequence[Manifest] = (),
    declared_cidrs: Mapping[str, Sequence[str]] | None = None,
    fqdn_rules: bool = False,
) -> Resolution:
    """The egress rule that lets a Pod reach `endpoint` and nothing more.

    `service` and `slices` are the cluster Service the host names and its EndpointSlices,
    when it names one; `declared_cidrs` maps hosts outside the cluster to the ranges they
    live in; `fqdn_rules` says whether the cluster enforces FQDN rules (Cilium).
    """
    cidr = ip_cidr(endpoint.host)
    if cidr:
        return Resolution({"to": [{"ipBlock": {"cidr": cidr}}], "ports": tcp(endpoint.port)})
    named = cluster_service(endpoint.host)
    if named is not None:
        if service is None:
            # Not there yet: the namespace the name gives, on the port it gives; the next
            # reconcile after the Service appears narrows this to its Pods.
            return Resolution({"to": [namespace_peer(named[0])], "ports": tcp(endpoint.port)})
        spec = service.get("spec") or {}
        selector = spec.get("selector")
        target = _service_target_port(service, endpoint.port)
        if selector:
            peer = {**namespace_peer(named[0]), "podSelector": {"matchLabels": selector}}
            return Resolution({"to": [peer], "ports": tcp(target)})
        # A Service without a selector (Vault outside the cluster behind one, say): the
        # addresses its EndpointSlices list.
        addresses = slice_addresses(slices)
        port = target if isinstance(target, int) else slice_port(slices, target)
        if not addresses or port is None:
            return Resolution(problem=f"{endpoint}: Service {named[1]}.{named[0]} has no endpoints")
        to = [{"ipBlock": {"cidr": c}} for c in addresses]
        return Resolution({"to": to, "ports": tcp(port)})
    declared = (declared_cidrs or {}).get(endpoint.host)
    if declared:
        to = [{"ipBlock": {"cidr": c}} for c in declared]
        return Resolution({"to": to, "ports": tcp(endpoint.port)})
    if fqdn_rules:
        return Resolution(fqdn=endpoint)
    return Resolution(
        problem=(
            f"{endpoint}: a NetworkPolicy cannot name a host; give its address ranges in"
            " the chart's networkPolicy.egressCIDRs, use an IP or a cluster Service, or run"
            " Cilium for FQDN rules"
        )
    )


def render_fqdn_policy(
    metadata: Manifest, pod_labels: Mapping[str, str], endpoints: Sequence[Endpoint]
) -> Manifest:
    """A CiliumNetworkPolicy letting the Pods reach these hosts by name.

    Cilium learns a name's addresses from the Pods' own lookups, so the same policy sends
    DNS through its proxy (the rule with `dns` patterns); the addresses then open only
    to the listed names, on the listed ports.
    """
    dns_peer = {"k8s:io.kubernetes.pod.namespace": DNS_NAMESPACE}
    dns_ports = [{"port": "53", "protocol": p} for p in ("UDP", "TCP")]
    hosts = dict.fromkeys(e.host for e in endpoints)
    egress: list[Manifest] = [
        {
            "toEndpoints": [{"matchLabels": dns_peer}],
            "toPorts": [{"ports": dns_ports, "rules": {"dns": [{"matchName": h} for h in hosts]}}],
        }
    ]
    for endpoint in endpoints:
        egress.append(
            {
                "toFQDNs": [{"matchName": endpoint.host}],
                "toPorts": [{"ports": [{"port": str(endpoint.port), "protocol": "TCP"}]}],
            }
        )
    return {
        "apiVersion": "cilium.io/v2",
        "kind": "CiliumNetworkPolicy",
        "metadata": metadata,
        "spec": {"endpointSelector": {"matchLabels": dict(pod_labels)}, "egress": egress},
    }
