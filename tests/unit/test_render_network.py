"""The pieces of the stack's NetworkPolicies: URL resolution, default-deny, the gateway's
rules, and the platform's settings as the chart passes them."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from privatellm.api import DataConnector
from privatellm.api.access import AccessPolicy
from privatellm.controllers.network import NetworkSettings, network_settings_from_env
from privatellm.render.connector import ConnectorInputs, render_connector
from privatellm.render.gateway import (
    GatewayInputs,
    GatewayKeys,
    GatewayNetwork,
    client_namespaces,
    render_gateway,
)
from privatellm.render.inference import render_children
from privatellm.render.network import (
    DEFAULT_DENY_NAME,
    Endpoint,
    cluster_service,
    endpoint_of,
    resolve,
)
from tests.unit.test_render_inference import example

Manifest = dict[str, Any]
KEYS = GatewayKeys("aGFzaA==", "a2V5", "PEM")
VAULT = Endpoint("10.9.0.10", 8200)


def test_urls_give_host_and_port_with_the_schemes_default() -> None:
    assert endpoint_of("https://vault.example.com") == Endpoint("vault.example.com", 443)
    assert endpoint_of("http://10.0.0.1:9000/bucket") == Endpoint("10.0.0.1", 9000)
    assert endpoint_of("https://[fd00::1]:8200") == Endpoint("fd00::1", 8200)
    for wrong in ("vault:8200", "ftp://host", "https://"):
        with pytest.raises(ValueError, match="http"):
            endpoint_of(wrong)


def test_cluster_service_names_are_recognised_in_both_forms() -> None:
    assert cluster_service("vault.vault.svc") == ("vault", "vault")
    assert cluster_service("minio.storage.svc.cluster.local") == ("storage", "minio")
    assert cluster_service("vault.example.com") is None
    assert cluster_service("a.b.c.svc") is None


def test_an_ip_is_one_address() -> None:
    rule = resolve(VAULT).rule
    assert rule == {
        "to": [{"ipBlock": {"cidr": "10.9.0.10/32"}}],
        "ports": [{"protocol": "TCP", "port": 8200}],
    }
    assert resolve(Endpoint("fd00::1", 443)).rule["to"] == [{"ipBlock": {"cidr": "fd00::1/128"}}]  # type: ignore[index]


def test_a_service_with_a_selector_is_its_pods_on_the_target_port() -> None:
    service = {
        "spec": {
            "selector": {"app": "vault"},
            "ports": [{"port": 8200, "targetPort": "api"}, {"port": 8201, "targetPort": 8201}],
        }
    }
    resolution = resolve(Endpoint("vault.vault.svc", 8200), service=service)
    assert resolution.rule == {
        "to": [
            {
                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "vault"}},
                "podSelector": {"matchLabels": {"app": "vault"}},
            }
        ],
        "ports": [{"protocol": "TCP", "port": "api"}],
    }


def test_a_service_without_a_selector_is_its_ready_endpoint_addresses() -> None:
    # The API server's own Service: no selector, endpoints on 6443.
    service = {"spec": {"ports": [{"name": "https", "port": 443, "targetPort": 6443}]}}
    slices = [
        {
            "endpoints": [
                {"addresses": ["10.0.0.2"], "conditions": {"ready": True}},
                {"addresses": ["10.0.0.3"], "conditions": {"ready": False}},
                {"addresses": ["10.0.0.1"]},
            ],
            "ports": [{"name": "https", "port": 6443}],
        }
    ]
    resolution = resolve(Endpoint("kubernetes.default.svc", 443), service=service, slices=slices)
    assert resolution.rule == {
        "to": [{"ipBlock": {"cidr": "10.0.0.1/32"}}, {"ipBlock": {"cidr": "10.0.0.2/32"}}],
        "ports": [{"protocol": "TCP", "port": 6443}],
    }
    named = {"spec": {"ports": [{"port": 443, "targetPort": "https"}]}}
    by_name = resolve(Endpoint("kubernetes.default.svc", 443), service=named, slices=slices)
    assert by_name.rule is not None and by_name.rule["ports"] == [{"protocol": "TCP", "port": 6443}]


def test_a_service_not_there_yet_is_its_namespace_on_the_port_the_url_gives() -> None:
    missing = resolve(Endpoint("minio.storage.svc", 9000))
    assert missing.rule == {
        "to": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "storage"}}}],
        "ports": [{"protocol": "TCP", "port": 9000}],
    }


def test_a_service_without_selector_or_endpoints_is_a_problem_not_a_rule() -> None:
    empty = resolve(Endpoint("vault.vault.svc", 8200), service={"spec": {"ports": []}})
    assert (empty.rule, empty.problem) == (
        None,
        "vault.vault.svc:8200: Service vault.vault has no endpoints",
    )


def test_a_host_outside_the_cluster_needs_declared_ranges_or_fqdn_rules_never_anywhere() -> None:
    host = Endpoint("login.example.com", 443)
    refused = resolve(host)
    assert refused.rule is None and refused.fqdn is None
    assert refused.problem.startswith("login.example.com:443: a NetworkPolicy cannot name a host")
    declared = resolve(host, declared_cidrs={"login.example.com": ["203.0.113.0/24"]})
    assert declared.rule == {
        "to": [{"ipBlock": {"cidr": "203.0.113.0/24"}}],
        "ports": [{"protocol": "TCP", "port": 443}],
    }
    assert resolve(host, fqdn_rules=True).fqdn == host


def policy(name: str, **spec: Any) -> AccessPolicy:
    return AccessPolicy.model_validate(
        {
            "metadata": {"name": name, "namespace": "team", "uid": "u"},
            "spec": {"subjects": [{"kind": "User", "name": "ann"}], "models": ["llama-8b"], **spec},
        }
    )


def gateway_inputs(**fields: Any) -> GatewayInputs:
    model = example("llama-8b")
    return GatewayInputs(
        **{"namespace": "team", "image": "img", "models": [model], "policies": [], **fields}
    )


def by_name(manifests: list[Manifest]) -> dict[str, Manifest]:
    return {f"{m['kind']}/{m['metadata']['name']}": m for m in manifests}


def test_clients_come_from_the_policies_namespaces_and_the_platforms() -> None:
    sa = {"kind": "ServiceAccount", "name": "bot", "namespace": "support"}
    inputs = gateway_inputs(
        policies=[policy("a", sourceNamespaces=["apps"]), policy("b", subjects=[sa])],
        network=GatewayNetwork(client_namespaces=("ingress",)),
    )
    assert client_namespaces(inputs) == ["apps", "ingress", "support", "team"]


def test_the_gateway_policy_opens_each_port_to_its_callers_and_egress_to_what_is_configured() -> (
    None
):
    vault_rule = resolve(VAULT).rule
    assert vault_rule is not None
    inputs = gateway_inputs(
        operator_namespace="privatellm-system",
        network=GatewayNetwork(monitoring_namespace="monitoring", egress=(vault_rule,)),
    )
    objects = by_name(render_gateway(inputs, KEYS, "rev"))
    spec = objects["NetworkPolicy/privatellm-gateway"]["spec"]
    assert spec["policyTypes"] == ["Ingress", "Egress"]
    api, metrics, peer = spec["ingress"]
    assert api["from"] == [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "team"}}}
    ]
    assert [p["namespaceSelector"]["matchLabels"] for p in metrics["from"]] == [
        {"kubernetes.io/metadata.name": "privatellm-system"},
        {"kubernetes.io/metadata.name": "monitoring"},
    ]
    assert [p["port"] for p in peer["ports"]] == [8444]
    dns, models, peers, vault = spec["egress"]
    assert [p["port"] for p in dns["ports"]] == [53, 53]
    assert [p["port"] for p in peers["ports"]] == [8444]
    assert models["to"] == [
        {"podSelector": {"matchLabels": {"app.kubernetes.io/component": "inference-server"}}}
    ]
    assert vault == vault_rule
    assert "CiliumNetworkPolicy/privatellm-gateway" not in objects


def test_without_monitoring_or_operator_the_metrics_port_stays_closed() -> None:
    objects = by_name(render_gateway(gateway_inputs(), KEYS, "rev"))
    ports = [
        r["ports"][0]["port"]
        for r in objects["NetworkPolicy/privatellm-gateway"]["spec"]["ingress"]
    ]
    assert ports == [8443, 8444]


def test_hosts_only_cilium_can_name_get_an_fqdn_policy_for_the_gateway() -> None:
    issuer = Endpoint("login.example.com", 443)
    objects = by_name(
        render_gateway(gateway_inputs(network=GatewayNetwork(fqdn=(issuer,))), KEYS, "rev")
    )
    cilium = objects["CiliumNetworkPolicy/privatellm-gateway"]["spec"]
    assert (
        cilium["endpointSelector"] == objects["StatefulSet/privatellm-gateway"]["spec"]["selector"]
    )
    assert cilium["egress"][1] == {
        "toFQDNs": [{"matchName": "login.example.com"}],
        "toPorts": [{"ports": [{"port": "443", "protocol": "TCP"}]}],
    }


def pod_templates(manifests: list[Manifest]) -> dict[str, dict[str, str]]:
    """The Pod labels of every workload among `manifests`."""
    return {
        f"{m['kind']}/{m['metadata']['name']}": m["spec"]["template"]["metadata"]["labels"]
        for m in manifests
        if m["kind"] in ("Deployment", "StatefulSet", "Job")
    }


def test_default_deny_selects_every_pod_the_operator_renders() -> None:
    model = example("llama-70b")  # weight cache on: pre-staging Jobs too
    gateway = render_gateway(dataclasses.replace(gateway_inputs(), models=[model]), KEYS, "r")
    connector = DataConnector.model_validate(
        {
            "metadata": {"name": "crm", "namespace": "team", "uid": "c"},
            "spec": {"type": "crm", "direction": "inbound", "endpoint": "https://crm.example"},
        }
    )
    workloads = [
        *gateway,
        *render_children(model, {zone: 1 for zone in model.spec.zones}),
        *render_connector(ConnectorInputs(connector, "img")),
    ]
    [deny] = [m for m in gateway if m["metadata"]["name"] == DEFAULT_DENY_NAME]
    assert deny["spec"]["policyTypes"] == ["Ingress", "Egress"]
    assert "ingress" not in deny["spec"] and "egress" not in deny["spec"]
    selector = deny["spec"]["podSelector"]["matchLabels"]
    templates = pod_templates(workloads)
    assert {name.split("/")[0] for name in templates} == {"StatefulSet", "Deployment", "Job"}
    for name, pod_labels in templates.items():
        assert selector.items() <= pod_labels.items(), f"{name} escapes the default-deny"
    # The chart's operator Pods are Helm's: never caught by it.
    operator = {"app.kubernetes.io/component": "operator", "app.kubernetes.io/managed-by": "Helm"}
    assert not selector.items() <= operator.items()


def test_the_chart_settings_are_read_and_a_malformed_one_is_named() -> None:
    settings = network_settings_from_env(
        {
            "PRIVATELLM_NETWORK_CLIENT_NAMESPACES": "ingress, web,",
            "PRIVATELLM_NETWORK_MONITORING_NAMESPACE": "monitoring",
            "PRIVATELLM_NETWORK_EGRESS_CIDRS": '{"vault.example.com": ["10.0.0.1/32"]}',
        }
    )
    assert settings == NetworkSettings(
        ("ingress", "web"), "monitoring", {"vault.example.com": ["10.0.0.1/32"]}
    )
    assert network_settings_from_env({}) == NetworkSettings()
    with pytest.raises(ValueError, match="PRIVATELLM_NETWORK_EGRESS_CIDRS"):
        network_settings_from_env({"PRIVATELLM_NETWORK_EGRESS_CIDRS": '{"h": "10.0.0.1/32"}'})
