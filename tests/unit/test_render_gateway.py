"""The namespace gateway's objects and configuration, rendered from its resources."""

from __future__ import annotations

import base64
import dataclasses
import re
from typing import Any

import yaml

from privatellm.api import DataConnector, InferenceDeployment
from privatellm.api.access import AccessPolicy
from privatellm.api.base import DNS_SUBDOMAIN, MAX_DNS_SUBDOMAIN
from privatellm.api.connector import MAX_DATA_CONNECTOR_NAME
from privatellm.gateway.config import GatewayConfig
from privatellm.render.access_policy import policy_problems, resolved_models
from privatellm.render.gateway import (
    HOLD_MAX_QUEUE,
    HOLD_MAX_WAIT_SECONDS,
    HOLD_START_MARGIN_SECONDS,
    AuditShipping,
    GatewayInputs,
    GatewayKeys,
    config_text,
    connector_service_account,
    render_gateway,
    render_gateway_config,
    token_review_subjects,
)


def model(name: str, uid: str, fallback: str | None = None) -> InferenceDeployment:
    spec: dict[str, Any] = {
        "model": {"name": f"org/{name}", "source": {"uri": f"pvc://weights/{name}", "sizeGiB": 16}},
        "zones": ["zone-a", "zone-b"],
    }
    if fallback:
        spec["fallback"] = {"model": fallback}
    return InferenceDeployment.model_validate(
        {"metadata": {"name": name, "namespace": "team", "uid": uid}, "spec": spec}
    )


def access_policy(name: str, models: list[str]) -> AccessPolicy:
    return AccessPolicy.model_validate(
        {
            "metadata": {"name": name, "namespace": "team"},
            "spec": {"subjects": [{"kind": "Group", "name": "analysts"}], "models": models},
        }
    )


INPUTS = GatewayInputs(
    namespace="team",
    image="registry.example/privatellm:1",
    models=[model("small", "u2"), model("big", "u1", fallback="small")],
    policies=[access_policy("b", ["big"]), access_policy("a", ["*"])],
    api_keys={"f" * 64: "ci"},
    protected_entities=["Globex", "Acme Corp", "Globex"],
)


def test_config_routes_every_model_to_its_service_with_its_fallback() -> None:
    config = render_gateway_config(INPUTS)
    assert [(m.name, m.served_name, m.fallback) for m in config.models] == [
        ("big", "org/big", "small"),
        ("small", "org/small", None),
    ]
    assert config.models[0].endpoints == ["https://big.team.svc:8000"]
    assert [m.service for m in config.models] == ["big", "small"]
    assert config.discovery is not None and config.discovery.zone is None
    assert [p.name for p in config.policies] == ["a", "b"]
    assert config.protected_entities == ["Acme Corp", "Globex"]
    assert config.auth.api_keys == {"f" * 64: "ci"}
    assert config.upstream_tls is not None and config.upstream_tls.cert_file


def test_each_data_connector_becomes_an_account_with_its_classes_and_models() -> None:
    crm = DataConnector.model_validate(
        {
            "metadata": {"name": "crm", "namespace": "team"},
            "spec": {
                "type": "crm",
                "direction": "inbound",
                "endpoint": "https://crm.example",
                "models": ["small"],
                "dataClasses": ["customer", "pii"],
            },
        }
    )
    config = render_gateway_config(dataclasses.replace(INPUTS, connectors=[crm]))
    [route] = config.connectors
    assert route.name == "crm"
    assert route.service_account == "privatellm-connector-crm"
    assert (route.models, route.data_classes) == (["small"], ["customer", "pii"])
    assert render_gateway_config(INPUTS).connectors == []


def test_the_longest_connector_name_the_api_server_accepts_names_a_service_account() -> None:
    account = connector_service_account("c" * MAX_DATA_CONNECTOR_NAME)
    assert len(account) == MAX_DNS_SUBDOMAIN
    assert re.fullmatch(DNS_SUBDOMAIN, account)


def test_config_text_round_trips_and_is_stable() -> None:
    text = config_text(render_gateway_config(INPUTS))
    assert GatewayConfig.model_validate(yaml.safe_load(text)) == render_gateway_config(INPUTS)
    reordered = dataclasses.replace(INPUTS, models=list(reversed(INPUTS.models)))
    assert config_text(render_gateway_config(reordered)) == text


KEYS = GatewayKeys(hash_key_b64="a2V5", audit_key_b64="YXVkaXQ=", audit_public_pem="PUBLIC")


def test_gateway_objects_are_owned_by_every_model_and_spread_over_zones() -> None:
    objects = {o["kind"]: o for o in render_gateway(INPUTS, KEYS, "abc")}
    assert set(objects) == {
        "Secret",
        "ConfigMap",
        "ServiceAccount",
        "StatefulSet",
        "Service",
        "PodDisruptionBudget",
        "NetworkPolicy",
        "Role",
        "RoleBinding",
    }
    for obj in objects.values():
        owners = obj["metadata"]["ownerReferences"]
        assert [o["uid"] for o in owners] == ["u1", "u2"]
        assert not any(o.get("controller") for o in owners)
    workload = objects["StatefulSet"]["spec"]
    assert workload["replicas"] >= 2
    pod = workload["template"]["spec"]
    [spread] = pod["topologySpreadConstraints"]
    assert spread["topologyKey"] == "topology.kubernetes.io/zone"
    assert pod["securityContext"]["runAsNonRoot"] is True
    container = pod["containers"][0]
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert container["args"][0] == "gateway"
    secret = objects["Secret"]
    text = base64.b64decode(secret["data"]["gateway.yaml"]).decode()
    assert text == config_text(render_gateway_config(INPUTS))
    assert secret["data"]["hash.key"] == "a2V5"
    # The audit log: each worker's records signed with the kept key, its public half
    # published for auditors.
    assert secret["data"]["audit.pem"] == KEYS.audit_key_b64
    assert objects["ConfigMap"]["data"] == {"audit.pem.pub": "PUBLIC"}
    args = container["args"]
    assert "--audit-dir=/var/lib/privatellm/audit" in args
    assert "--audit-signing-key=/etc/privatellm/gateway/audit.pem" in args
    # Each replica's log is on a volume of its own, kept when the set goes.
    [claim] = workload["volumeClaimTemplates"]
    assert claim["metadata"]["name"] == "audit"
    assert {"name": "audit", "mountPath": "/var/lib/privatellm/audit"} in container["volumeMounts"]
    assert "audit" not in [v["name"] for v in pod["volumes"]]
    assert workload["persistentVolumeClaimRetentionPolicy"]["whenDeleted"] == "Retain"


def test_replicas_count_quotas_together_over_a_port_only_gateways_reach() -> None:
    rendered = render_gateway(INPUTS, KEYS, "abc")
    objects = {o["kind"]: o for o in rendered}
    services = {o["metadata"]["name"]: o for o in rendered if o["kind"] == "Service"}
    sharing = render_gateway_config(INPUTS).quota_sharing
    assert sharing is not None and sharing.service is not None
    # Peers are the ready endpoints of a headless Service on the peer port, checked
    # by the name in their certificates.
    peers = services[sharing.service]["spec"]
    assert peers["clusterIP"] == "None"
    assert peers["selector"] == objects["StatefulSet"]["spec"]["selector"]["matchLabels"]
    ports = {port["name"]: port["targetPort"] for port in peers["ports"]}
    assert ports == {"https": "peers", "metrics": "metrics"}
    port = next(port for port in peers["ports"] if port["name"] == "https")
    assert sharing.server_name == "privatellm-gateway.team.svc"
    container = objects["StatefulSet"]["spec"]["template"]["spec"]["containers"][0]
    assert f"--peer-port={port['port']}" in container["args"]
    assert {"name": "peers", "containerPort": port["port"], "protocol": "TCP"} in container["ports"]
    pod_ip = {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}
    assert pod_ip in container["env"]
    rules = objects["NetworkPolicy"]["spec"]["ingress"]
    [peer_rule] = [r for r in rules if r["ports"][0]["port"] == port["port"]]
    selector = objects["StatefulSet"]["spec"]["selector"]
    # An operator outside the cluster (no POD_NAMESPACE) has no Pods to admit.
    assert peer_rule["from"] == [{"podSelector": selector}]


def test_the_operators_pods_in_its_namespace_may_read_demand_on_the_peer_port_only() -> None:
    inputs = dataclasses.replace(INPUTS, operator_namespace="privatellm-system")
    objects = {o["kind"]: o for o in render_gateway(inputs, KEYS, "abc")}
    rules = objects["NetworkPolicy"]["spec"]["ingress"]
    [peer_rule] = [r for r in rules if r["ports"] == [{"protocol": "TCP", "port": 8444}]]
    gateways = {"podSelector": objects["StatefulSet"]["spec"]["selector"]}
    operator = {
        # Both selectors in one peer: those Pods, in that namespace only.
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "privatellm-system"}},
        "podSelector": {
            "matchLabels": {
                "app.kubernetes.io/component": "operator",
                "app.kubernetes.io/part-of": "privatellm",
            }
        },
    }
    assert peer_rule["from"] == [gateways, operator]
    # The API and metrics ports are open as before; nothing else names the operator.
    assert [r["ports"][0]["port"] for r in rules if r is not peer_rule] == [8443, 9090]


def test_the_gateway_may_only_read_its_namespaces_endpoint_slices() -> None:
    objects = {o["kind"]: o for o in render_gateway(INPUTS, KEYS, "abc")}
    role, binding = objects["Role"], objects["RoleBinding"]
    assert role["metadata"]["namespace"] == "team"
    assert role["rules"] == [
        {
            "apiGroups": ["discovery.k8s.io"],
            "resources": ["endpointslices"],
            "verbs": ["get", "list", "watch"],
        }
    ]
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "privatellm-gateway", "namespace": "team"}
    ]


def test_a_policy_change_does_not_touch_the_pod_template() -> None:
    changed = dataclasses.replace(INPUTS, policies=[access_policy("a", ["big"])])
    before = {o["kind"]: o for o in render_gateway(INPUTS, KEYS, "abc")}
    after = {o["kind"]: o for o in render_gateway(changed, KEYS, "abc")}
    assert before["StatefulSet"] == after["StatefulSet"]
    assert before["Secret"] != after["Secret"]


def test_policy_references_are_checked() -> None:
    names = ["big", "small"]
    assert policy_problems(access_policy("p", ["big", "gone"]), names) == [
        "spec.models[1]: no InferenceDeployment 'gone' in this namespace"
    ]
    assert policy_problems(access_policy("p", ["*"]), names) == []
    assert resolved_models(access_policy("p", ["*"]), names) == names
    assert resolved_models(access_policy("p", ["big", "gone"]), names) == ["big"]


def test_with_a_vault_every_payload_is_sealed_with_the_models_key() -> None:
    assert render_gateway_config(INPUTS).encryption is None
    config = render_gateway_config(dataclasses.replace(INPUTS, vault_addr="https://vault:8200"))
    assert config.encryption is not None
    assert config.encryption.role == "privatellm-gateway-team"
    assert config.encryption.vault_addr == "https://vault:8200"
    assert {m.transit_key for m in config.models} == {"privatellm-team"}


def test_token_review_subjects_add_and_remove_only_this_namespace() -> None:
    other = {"kind": "ServiceAccount", "name": "privatellm-gateway", "namespace": "a"}
    added = token_review_subjects([other], "team", wanted=True)
    mine = {"kind": "ServiceAccount", "name": "privatellm-gateway", "namespace": "team"}
    assert added == [other, mine]
    assert token_review_subjects(added, "team", wanted=True) == added
    assert token_review_subjects(added, "team", wanted=False) == [other]


def test_gateways_ship_sealed_audit_segments_where_the_platform_says() -> None:
    shipping = AuditShipping("audit-worm", "team-logs", "https://s3.example.com")
    shipped = dataclasses.replace(INPUTS, audit_shipping=shipping)
    container = {o["kind"]: o for o in render_gateway(shipped, KEYS, "abc")}["StatefulSet"]["spec"][
        "template"
    ]["spec"]["containers"][0]
    assert "--audit-worm-bucket=audit-worm" in container["args"]
    assert "--audit-worm-prefix=team-logs" in container["args"]
    assert {"name": "AWS_ENDPOINT_URL_S3", "value": "https://s3.example.com"} in container["env"]
    assert container["envFrom"] == [
        {"secretRef": {"name": "privatellm-audit-shipping", "optional": True}}
    ]
    plain = {o["kind"]: o for o in render_gateway(INPUTS, KEYS, "abc")}["StatefulSet"]
    container = plain["spec"]["template"]["spec"]["containers"][0]
    assert "envFrom" not in container
    assert not any(e["name"].startswith("AWS_") for e in container["env"])
    assert not [a for a in container["args"] if a.startswith("--audit-worm")]


def test_the_shipping_settings_come_from_the_operators_environment() -> None:
    from privatellm.controllers.gateway import audit_shipping_from_env

    assert audit_shipping_from_env({}) is None
    assert audit_shipping_from_env({"PRIVATELLM_AUDIT_WORM_BUCKET": ""}) is None
    assert audit_shipping_from_env({"PRIVATELLM_AUDIT_WORM_BUCKET": "b"}) == AuditShipping("b")
    assert audit_shipping_from_env(
        {
            "PRIVATELLM_AUDIT_WORM_BUCKET": "b",
            "PRIVATELLM_AUDIT_WORM_PREFIX": "p",
            "PRIVATELLM_AUDIT_WORM_ENDPOINT": "http://s3:9000",
        }
    ) == AuditShipping("b", "p", "http://s3:9000")


def scaling_model(name: str, size_gib: float, **spec: Any) -> InferenceDeployment:
    body: dict[str, Any] = {
        "model": {"name": f"org/{name}", "source": {"uri": f"pvc://w/{name}", "sizeGiB": size_gib}},
        "zones": ["zone-a"],
        **spec,
    }
    return InferenceDeployment.model_validate(
        {"metadata": {"name": name, "namespace": "team", "uid": name}, "spec": body}
    )


def test_models_that_may_scale_to_zero_hold_requests_for_their_restore_time() -> None:
    to_zero = scaling_model(
        "to-zero",
        16,
        autoscaling={"minReplicas": 0, "maxReplicas": 2},
        weightCache={"bandwidthMiBps": 200},
    )
    batch = scaling_model("batch", 140, workloadClass="batch")
    always = scaling_model("always", 16, autoscaling={"minReplicas": 1})
    fixed = scaling_model("fixed", 16, replicas=0)
    config = render_gateway_config(
        dataclasses.replace(INPUTS, models=[to_zero, batch, always, fixed])
    )
    holds = {m.name: m.hold for m in config.models}
    # 16 GiB at 200 MiB/s: 82 s to read, plus the start margin.
    assert holds["to-zero"] is not None
    assert holds["to-zero"].max_wait_seconds == 82 + HOLD_START_MARGIN_SECONDS
    assert holds["to-zero"].max_queue == HOLD_MAX_QUEUE == 256
    # 140 GiB at the default 500 MiB/s: 287 s.
    assert holds["batch"] is not None
    assert holds["batch"].max_wait_seconds == 287 + HOLD_START_MARGIN_SECONDS
    # Models meant to have a replica answer 503 at once when none is ready;
    # replicas: 0 without autoscaling is off on purpose, and nothing scales it up.
    assert holds["always"] is None and holds["fixed"] is None
    text = config_text(config)
    assert '"hold": {\n    "maxQueue": 256,\n    "maxWaitSeconds": 202' in text


def test_a_model_a_budget_idles_to_zero_holds_requests_whatever_its_minimum() -> None:
    always = scaling_model("always", 16, autoscaling={"minReplicas": 2})
    fixed = scaling_model("fixed", 16, replicas=2)
    inputs = dataclasses.replace(
        INPUTS, models=[always, fixed], idle_timeouts=frozenset({"always", "fixed"})
    )
    holds = {m.name: m.hold for m in render_gateway_config(inputs).models}
    assert holds["always"] is not None, "its idle timeout may leave it at zero"
    assert holds["fixed"] is not None, "a fixed count goes to zero when idle too"
    plain = {
        m.name: m.hold
        for m in render_gateway_config(
            dataclasses.replace(inputs, idle_timeouts=frozenset())
        ).models
    }
    assert plain == {"always": None, "fixed": None}


def test_a_hold_never_waits_longer_than_the_cap() -> None:
    huge = scaling_model(
        "huge", 4000, autoscaling={"minReplicas": 0}, weightCache={"bandwidthMiBps": 100}
    )
    [route] = render_gateway_config(dataclasses.replace(INPUTS, models=[huge])).models
    assert route.hold is not None and route.hold.max_wait_seconds == HOLD_MAX_WAIT_SECONDS
