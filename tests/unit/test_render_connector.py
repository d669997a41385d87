"""A DataConnector's workload, its sidecar's counts and its status, rendered without a cluster."""

from __future__ import annotations

import base64
import json
import re
from typing import Any

import pytest

from privatellm.api import DataConnector
from privatellm.api.base import DNS_1035_LABEL
from privatellm.api.connector import MAX_DATA_CONNECTOR_NAME
from privatellm.connectors.sidecar import SidecarConfig, Terms
from privatellm.controllers import connector as controller
from privatellm.controllers.builder import KnownKeys, WatchEvent
from privatellm.controllers.runtime import CONTROLLERS
from privatellm.render.conditions import ConditionState, transition_events
from privatellm.render.connector import (
    COUNTERS_CONDITION,
    ConnectorInputs,
    CounterReading,
    ItemCounts,
    LastError,
    SidecarVault,
    WorkloadView,
    config_text,
    connector_conditions,
    connector_config,
    connector_label_value,
    connector_status,
    counter_reading,
    parse_sidecar_metrics,
    quarantine_off,
    reference_problems,
    render_config_map,
    render_connector,
    spec_problems,
    sum_counts,
    workload_name,
)
from privatellm.render.inference_status import ChildFailure, Problem

IMAGE = "registry.example/privatellm:1"
CA = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"


def connector(name: str = "crm", **spec: Any) -> DataConnector:
    base: dict[str, Any] = {
        "type": "crm",
        "direction": "inbound",
        "endpoint": "https://crm.example.com",
    }
    return DataConnector.model_validate(
        {
            "metadata": {"name": name, "namespace": "team", "uid": "uid-1", "generation": 3},
            "spec": {**base, **spec},
        }
    )


def children(obj: DataConnector, **inputs: Any) -> dict[str, dict[str, Any]]:
    rendered = render_connector(ConnectorInputs(obj, IMAGE, **inputs))
    by_kind = {o["kind"]: o for o in rendered}
    assert len(by_kind) == len(rendered), "one object of each kind"
    return by_kind


def pod_spec(obj: DataConnector, **inputs: Any) -> dict[str, Any]:
    spec: dict[str, Any] = children(obj, **inputs)["Deployment"]["spec"]["template"]["spec"]
    return spec


def container(obj: DataConnector, name: str) -> dict[str, Any]:
    return next(c for c in pod_spec(obj)["containers"] if c["name"] == name)


def mounts(obj: DataConnector, name: str) -> dict[str, str]:
    return {m["name"]: m["mountPath"] for m in container(obj, name)["volumeMounts"]}


# --- the workload -----------------------------------------------------------------------


def test_every_child_is_named_labelled_and_owned_by_the_connector() -> None:
    rendered = render_connector(ConnectorInputs(connector(), IMAGE))
    assert [o["kind"] for o in rendered] == [
        "ServiceAccount",
        "ConfigMap",
        "Secret",
        "NetworkPolicy",
        "Deployment",
    ]
    for obj in rendered:
        meta = obj["metadata"]
        assert meta["name"] == "privatellm-connector-crm"
        assert meta["namespace"] == "team"
        assert meta["labels"]["app.kubernetes.io/part-of"] == "privatellm"
        assert meta["labels"]["app.kubernetes.io/component"] == "connector"
        assert meta["labels"]["privatellm.io/data-connector"] == "crm"
        assert meta["ownerReferences"] == [
            {
                "apiVersion": "privatellm.io/v1alpha1",
                "kind": "DataConnector",
                "name": "crm",
                "uid": "uid-1",
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ]


def test_the_pod_is_restricted_in_both_containers() -> None:
    spec = pod_spec(connector(credentialsSecret="crm-login"))
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert [c["name"] for c in spec["containers"]] == ["connector", "sidecar"]
    for each in spec["containers"]:
        assert each["securityContext"] == {
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
            "readOnlyRootFilesystem": True,
        }
    # Only these volume types: what the restricted Pod Security Standard allows.
    kinds = {key for volume in spec["volumes"] for key in volume if key != "name"}
    assert kinds <= {"configMap", "secret", "emptyDir", "projected"}


def test_credentials_reach_the_connector_only_and_the_token_the_sidecar_only() -> None:
    obj = connector(credentialsSecret="crm-login")
    spec = pod_spec(obj)
    assert spec["serviceAccountName"] == "privatellm-connector-crm"
    assert spec["automountServiceAccountToken"] is False
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["credentials"]["secret"]["secretName"] == "crm-login"
    credentials = next(
        m for m in container(obj, "connector")["volumeMounts"] if m["name"] == "credentials"
    )
    assert credentials == {
        "name": "credentials",
        "mountPath": "/var/run/secrets/privatellm/credentials",
        "readOnly": True,
    }
    assert "credentials" not in mounts(obj, "sidecar")
    assert set(mounts(obj, "connector")) == {"config", "connector-tmp", "credentials"}
    assert set(mounts(obj, "sidecar")) == {
        "config",
        "sidecar-secret",
        "token",
        "state",
        "sidecar-tmp",
    }
    token = volumes["token"]["projected"]["sources"]
    # No audience: the API server's own, which the gateway's TokenReview asks for.
    assert token == [{"serviceAccountToken": {"path": "token", "expirationSeconds": 3600}}]
    assert volumes["state"] == {"name": "state", "emptyDir": {"sizeLimit": "2Gi"}}
    assert mounts(obj, "sidecar")["state"] == "/var/lib/privatellm/connector"
    assert all(m.get("readOnly") for m in container(obj, "sidecar")["volumeMounts"][:3])


def test_without_credentials_nothing_is_mounted_for_them() -> None:
    obj = connector()
    assert "credentials" not in {v["name"] for v in pod_spec(obj)["volumes"]}
    assert (
        json.loads(children(obj)["ConfigMap"]["data"]["connector.json"])["credentialsDir"] is None
    )


def test_the_built_in_connector_runs_the_project_image_with_its_config() -> None:
    built_in = container(connector(), "connector")
    assert built_in["image"] == IMAGE
    assert built_in["args"] == [
        "connector",
        "run",
        "--config",
        "/etc/privatellm/connector/connector.json",
    ]


def test_a_users_connector_image_runs_as_built_beside_the_project_sidecar() -> None:
    obj = connector(image="registry.example/acme-crm:7")
    own = container(obj, "connector")
    assert own["image"] == "registry.example/acme-crm:7"
    assert "args" not in own and "command" not in own
    sidecar = container(obj, "sidecar")
    assert sidecar["image"] == IMAGE
    assert sidecar["args"] == ["sidecar", "--config", "/etc/privatellm/connector/connector.json"]


def test_the_sidecar_knows_its_connector_and_is_probed_on_its_metrics_port() -> None:
    sidecar = container(connector(), "sidecar")
    assert sidecar["env"] == [
        {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
        {"name": "CONNECTOR_NAME", "value": "crm"},
    ]
    assert sidecar["ports"] == [{"name": "metrics", "containerPort": 9090, "protocol": "TCP"}]
    assert sidecar["readinessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}


def test_one_replica_replaced_not_rolled() -> None:
    deployment = children(connector())["Deployment"]
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert selector.items() <= deployment["spec"]["template"]["metadata"]["labels"].items()


def test_only_a_webhook_connector_gets_a_service_and_a_webhook_port() -> None:
    assert "Service" not in children(connector())
    assert "ports" not in container(connector(), "connector")
    hook = connector("hook", type="webhook")
    service = children(hook)["Service"]
    assert service["metadata"]["name"] == "privatellm-connector-hook"
    assert service["spec"]["ports"] == [
        {"name": "webhook", "protocol": "TCP", "port": 8080, "targetPort": "webhook"}
    ]
    assert service["spec"]["selector"] == {
        "app.kubernetes.io/component": "connector",
        "privatellm.io/data-connector": "hook",
    }
    assert container(hook, "connector")["ports"] == [
        {"name": "webhook", "containerPort": 8080, "protocol": "TCP"}
    ]


def test_the_config_document_carries_the_spec_and_where_everything_is() -> None:
    obj = connector(
        direction="both",
        models=["llama", "chat"],
        dataClasses=["pii", "customer"],
        credentialsSecret="crm-login",
        filters={
            "allowedFileTypes": ["text/plain", "application/pdf"],
            "maxItemBytes": 2048,
            "pii": [{"entity": "iban", "action": "block"}, {"entity": "email", "action": "mask"}],
            "injection": "flag",
            "customerIdField": "accountId",
            "dlpAction": "redact",
        },
        egress=[
            {"host": "crm.example.com", "ports": [443]},
            {"cidr": "10.2.0.0/16", "ports": [25]},
        ],
    )
    assert connector_config(obj) == {
        "name": "crm",
        "namespace": "team",
        "type": "crm",
        "direction": "both",
        "endpoint": "https://crm.example.com",
        "models": ["chat", "llama"],
        "dataClasses": ["customer", "pii"],
        "filters": {
            "allowedFileTypes": ["application/pdf", "text/plain"],
            "maxItemBytes": 2048,
            "pii": [{"entity": "email", "action": "mask"}, {"entity": "iban", "action": "block"}],
            "injection": "flag",
            "customerIdField": "accountId",
            "dlpAction": "redact",
        },
        "egress": [
            {"host": "crm.example.com", "ports": [443]},
            {"cidr": "10.2.0.0/16", "ports": [25]},
        ],
        "gateway": "https://privatellm-gateway.team.svc",
        "gatewayCaFile": "/etc/privatellm/connector/ca.crt",
        "tokenFile": "/var/run/secrets/privatellm/token/token",
        "termsFile": "/etc/privatellm/sidecar/terms.json",
        "credentialsDir": "/var/run/secrets/privatellm/credentials",
        "sidecar": "http://127.0.0.1:8480",
        "metricsPort": 9090,
        "stateDir": "/var/lib/privatellm/connector",
    }
    data = children(obj, gateway_ca_pem=CA)["ConfigMap"]["data"]
    assert json.loads(data["connector.json"]) == connector_config(obj)
    assert data["ca.crt"] == CA
    assert connector_config(connector(type="webhook"))["webhookPort"] == 8080


def test_the_gateways_keys_are_named_in_the_config_once_the_sidecar_has_them() -> None:
    obj = connector()
    keyed = json.loads(
        children(obj, hash_key=b"k" * 32, audit_signing_key=b"PEM")["ConfigMap"]["data"][
            "connector.json"
        ]
    )
    assert keyed["hashKeyFile"] == "/etc/privatellm/sidecar/hash.key"
    assert keyed["auditSigningKeyFile"] == "/etc/privatellm/sidecar/audit.pem"
    assert "hashKeyFile" not in connector_config(obj)
    assert "auditSigningKeyFile" not in connector_config(obj)


def test_the_sidecar_and_the_built_in_connector_read_every_key_of_the_config() -> None:
    config = connector_config(
        connector(type="webhook", credentialsSecret="tls"), hash_key=True, audit_signing_key=True
    )
    sidecar = SidecarConfig.model_validate_json(config_text(config))
    assert sidecar.gateway_ca_file == "/etc/privatellm/connector/ca.crt"
    assert sidecar.hash_key_file and sidecar.audit_signing_key_file and sidecar.terms_file
    assert sidecar.encryption is None  # without Vault; see the test after the next
    read_by_sidecar = {field.alias or name for name, field in SidecarConfig.model_fields.items()}
    # The built-in connector's own keys (cli/connector_cmd.py); dataClasses is there for
    # connectors' own images, as the gateway applies the classes itself.
    read_by_connector = {"credentialsDir", "webhookPort", "dataClasses"}
    assert set(config) <= read_by_sidecar | read_by_connector


def test_the_ca_is_left_out_until_the_namespace_has_one() -> None:
    assert set(children(connector())["ConfigMap"]["data"]) == {"connector.json"}


def test_protected_entities_and_internal_terms_go_to_the_sidecar_in_a_secret() -> None:
    secret = children(
        connector(), protected_entities=["Globex", "Acme", "Globex"], internal_terms={"PL-7"}
    )["Secret"]
    text = base64.b64decode(secret["data"]["terms.json"]).decode()
    assert json.loads(text) == {"protectedEntities": ["Acme", "Globex"], "internalTerms": ["PL-7"]}
    assert Terms.from_file(None) == Terms()
    assert secret["type"] == "Opaque"
    assert set(secret["data"]) == {"terms.json"}
    keyed = children(connector(), hash_key=b"\x01" * 32, audit_signing_key=b"PEM")["Secret"]
    assert base64.b64decode(keyed["data"]["hash.key"]) == b"\x01" * 32
    assert base64.b64decode(keyed["data"]["audit.pem"]) == b"PEM"


def test_rendering_is_byte_for_byte_stable_and_a_new_term_rolls_the_pod() -> None:
    obj = connector()
    first = render_connector(ConnectorInputs(obj, IMAGE, ["Acme", "Globex"], ["PL-7"], CA))
    again = render_connector(ConnectorInputs(obj, IMAGE, ["Globex", "Acme"], ["PL-7"], CA))
    assert json.dumps(first) == json.dumps(again)

    def config_hash(**inputs: Any) -> str:
        template = children(obj, **inputs)["Deployment"]["spec"]["template"]
        return str(template["metadata"]["annotations"]["privatellm.io/config-hash"])

    assert config_hash() != config_hash(internal_terms=["PL-8"])
    assert config_hash() != config_hash(hash_key=b"k" * 32)
    assert config_hash() != config_hash(gateway_ca_pem=CA)


def test_the_network_policy_admits_the_gateway_dns_and_the_declared_egress_only() -> None:
    obj = connector(
        direction="outbound",
        egress=[{"cidr": "10.2.0.0/16", "ports": [587, 25]}, {"host": "mx.example", "ports": [25]}],
    )
    rendered = children(obj)
    assert "CiliumNetworkPolicy" not in rendered, "no FQDN rules without Cilium"
    policy = rendered["NetworkPolicy"]["spec"]
    assert policy["policyTypes"] == ["Ingress", "Egress"]
    assert policy["podSelector"]["matchLabels"]["privatellm.io/data-connector"] == "crm"
    # The host entry opens nothing: a NetworkPolicy cannot name it.
    gateway, dns, cidr = policy["egress"]
    assert gateway == {
        "to": [
            {
                "podSelector": {
                    "matchLabels": {
                        "app.kubernetes.io/component": "gateway",
                        "app.kubernetes.io/instance": "privatellm-gateway",
                    }
                }
            }
        ],
        "ports": [{"protocol": "TCP", "port": 8443}],
    }
    assert dns["to"] == [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}}}
    ]
    assert cidr == {
        "to": [{"ipBlock": {"cidr": "10.2.0.0/16"}}],
        "ports": [{"protocol": "TCP", "port": 25}, {"protocol": "TCP", "port": 587}],
    }
    # Nobody named to read the metrics: the port stays closed.
    assert "ingress" not in policy
    readers = [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "mon"}}}]
    read = children(obj, metrics_readers=readers)["NetworkPolicy"]["spec"]
    assert read["ingress"] == [{"from": readers, "ports": [{"protocol": "TCP", "port": 9090}]}]
    hook = children(connector("hook", type="webhook"))["NetworkPolicy"]["spec"]
    assert {"ports": [{"protocol": "TCP", "port": 8080}]} in hook["ingress"]


@pytest.mark.parametrize(
    "name",
    [
        "a" * MAX_DATA_CONNECTOR_NAME,
        "a" * 43,
        "crm.eu",
        "crm.eu." + "b" * 60,
        "9-lives",
    ],
)
def test_any_valid_connector_name_gives_valid_child_names_and_labels(name: str) -> None:
    workload = workload_name(name)
    assert len(workload) <= 63 and re.fullmatch(DNS_1035_LABEL, workload), workload
    label = connector_label_value(name)
    assert len(label) <= 63 and re.fullmatch(r"[a-z0-9]([-a-z0-9_.]*[a-z0-9])?", label)
    rendered = render_connector(ConnectorInputs(connector(name, type="webhook"), IMAGE))
    account = next(o for o in rendered if o["kind"] == "ServiceAccount")
    assert account["metadata"]["name"] == f"privatellm-connector-{name}"


def test_long_names_that_share_a_beginning_stay_apart() -> None:
    one, two = "a" * 100 + "x", "a" * 100 + "y"
    assert workload_name(one) != workload_name(two)
    assert connector_label_value(one) != connector_label_value(two)
    assert workload_name("crm") == "privatellm-connector-crm"
    assert connector_label_value("crm") == "crm"


# --- what the operator cannot do, or finds missing --------------------------------------


HOSTS = [
    {"cidr": "10.2.0.0/16", "ports": [25]},
    {"host": "mx.example", "ports": [587, 25]},
    {"host": "s3.example", "ports": [443]},
]


def test_egress_named_by_host_is_refused_without_fqdn_rules_and_says_so() -> None:
    obj = connector(type="objectStore", direction="outbound", egress=HOSTS)
    assert spec_problems(obj) == [
        Problem(
            "EgressHostNotExpressible",
            "spec.egress[1].host: a NetworkPolicy cannot name a host and this cluster enforces"
            " no FQDN rules (Cilium), so nothing is opened to mx.example; give the"
            " destination's cidr instead",
        ),
        Problem(
            "EgressHostNotExpressible",
            "spec.egress[2].host: a NetworkPolicy cannot name a host and this cluster enforces"
            " no FQDN rules (Cilium), so nothing is opened to s3.example; give the"
            " destination's cidr instead",
        ),
    ]
    assert spec_problems(obj, fqdn_rules=True) == []
    confined = connector(type="objectStore", egress=[{"cidr": "10.2.0.0/16", "ports": [443]}])
    assert spec_problems(confined) == []


def test_with_cilium_hosts_become_fqdn_rules_for_the_connectors_pods_only() -> None:
    obj = connector(type="objectStore", direction="outbound", egress=HOSTS)
    rendered = children(obj, fqdn_rules=True)
    policy = rendered["CiliumNetworkPolicy"]
    assert policy["spec"]["endpointSelector"] == rendered["NetworkPolicy"]["spec"]["podSelector"]
    dns, *hosts = policy["spec"]["egress"]
    assert [r["matchName"] for r in dns["toPorts"][0]["rules"]["dns"]] == [
        "mx.example",
        "s3.example",
    ]
    assert [(h["toFQDNs"], h["toPorts"][0]["ports"]) for h in hosts] == [
        ([{"matchName": "mx.example"}], [{"port": "587", "protocol": "TCP"}]),
        ([{"matchName": "mx.example"}], [{"port": "25", "protocol": "TCP"}]),
        ([{"matchName": "s3.example"}], [{"port": "443", "protocol": "TCP"}]),
    ]


def test_a_type_without_a_built_in_connector_needs_an_image() -> None:
    egress = [{"cidr": "10.2.0.0/16", "ports": [443]}]
    assert [p.reason for p in spec_problems(connector(egress=egress))] == ["NoBuiltInConnector"]
    assert spec_problems(connector(egress=egress))[0].message.startswith(
        "spec.image: the project image has no built-in connector for type 'crm'"
    )
    assert spec_problems(connector(egress=egress, image="registry.example/crm:1")) == []
    assert spec_problems(connector(type="webhook", credentialsSecret="hook-tls")) == []


def test_the_built_in_webhook_needs_its_tls_credentials() -> None:
    assert [p.reason for p in spec_problems(connector(type="webhook"))] == ["CredentialsMissing"]
    own = connector(type="webhook", image="registry.example/hook:1")
    assert spec_problems(own) == []


def test_a_connector_that_fetches_needs_an_egress_entry() -> None:
    fetching = connector(type="objectStore")
    assert [p.reason for p in spec_problems(fetching)] == ["EgressMissing"]


def test_missing_models_gateway_and_credentials_are_named_by_field() -> None:
    obj = connector(models=["chat", "gone"], credentialsSecret="crm-login")
    assert reference_problems(obj, {"chat"}, credentials_found=True) == [
        Problem("InvalidReference", "spec.models[1]: InferenceDeployment 'gone' not found")
    ]
    assert [p.reason for p in reference_problems(obj, set(), credentials_found=False)] == [
        "NoGateway",
        "InvalidReference",
    ]
    assert reference_problems(connector(), {"chat"}, credentials_found=False) == []


# --- the sidecar's counts ---------------------------------------------------------------

METRICS = """\
# HELP privatellm_connector_items_total Items by outcome.
# TYPE privatellm_connector_items_total counter
privatellm_connector_items_total{outcome="passed",direction="inbound"} 7
privatellm_connector_items_total{outcome="passed",direction="outbound"} 3
privatellm_connector_items_total{outcome="blocked",direction="inbound"} 2
privatellm_connector_items_total{outcome="quarantined",direction="inbound"} 1
privatellm_connector_items_created{outcome="passed",direction="inbound"} 1.7e9
# TYPE privatellm_connector_last_error_timestamp_seconds gauge
privatellm_connector_last_error_timestamp_seconds{reason="GatewayUnavailable"} 1700000000
privatellm_connector_last_error_timestamp_seconds{reason="ItemTooLarge"} 1700000100
# TYPE process_cpu_seconds_total counter
process_cpu_seconds_total 12.5
"""


def test_the_counts_are_summed_per_outcome_and_the_latest_error_kept() -> None:
    counts = parse_sidecar_metrics(METRICS, "crm-abc")
    assert (counts.passed, counts.blocked, counts.quarantined) == (10, 2, 1)
    assert counts.last_error == LastError(1700000100, "ItemTooLarge", "reported by Pod crm-abc")
    assert counts.last_error.status() == {
        "time": "2023-11-14T22:15:00Z",
        "reason": "ItemTooLarge",
        "message": "reported by Pod crm-abc",
    }


def test_a_sidecar_that_counted_nothing_yet_reports_zeros() -> None:
    assert parse_sidecar_metrics("") == ItemCounts()
    assert parse_sidecar_metrics("# TYPE process_cpu_seconds_total counter\n") == ItemCounts()
    never = 'privatellm_connector_last_error_timestamp_seconds{reason="None"} 0\n'
    assert parse_sidecar_metrics(never).last_error is None


def test_a_message_label_is_taken_as_the_errors_message() -> None:
    text = (
        "privatellm_connector_last_error_timestamp_seconds"
        '{reason="GatewayRefused",message="403 connector_model_not_allowed"} 1700000000\n'
    )
    error = parse_sidecar_metrics(text, "p").last_error
    assert error is not None and error.message == "403 connector_model_not_allowed"


@pytest.mark.parametrize(
    "text",
    [
        "<html><body>502 Bad Gateway</body></html>",
        "privatellm_connector_items_total{outcome=passed} 1\n",
        'privatellm_connector_items_total{outcome="passed"} many\n',
        'privatellm_connector_items_total{outcome="passed"} -4\n',
        'privatellm_connector_items_total{outcome="passed"} NaN\n',
        "\x00\x01{{{",
    ],
)
def test_anything_else_than_metrics_is_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_sidecar_metrics(text)


def test_the_connectors_counts_are_the_sums_over_its_pods() -> None:
    early, late = LastError(100, "A"), LastError(200, "B")
    total = sum_counts([ItemCounts(1, 2, 3, late), ItemCounts(10, 20, 30, early), ItemCounts()])
    assert total == ItemCounts(11, 22, 33, late)
    assert sum_counts([]) == ItemCounts()


def test_a_failed_read_keeps_the_counts_and_says_why() -> None:
    failed = counter_reading(2, [ItemCounts(5)], ["Pod b: timed out"])
    assert failed.counts is None
    assert failed.condition == ConditionState(
        COUNTERS_CONDITION, "False", "Unreadable", "Pod b: timed out; the counts are as last read"
    )
    idle = counter_reading(0, [], [])
    assert idle.counts is None and idle.condition.status == "Unknown"
    read = counter_reading(1, [ItemCounts(5)], [])
    assert read.counts == ItemCounts(5)
    assert read.condition == ConditionState(COUNTERS_CONDITION, "True", "Read", "read from 1 Pod")


# --- status -----------------------------------------------------------------------------

SERVING = WorkloadView(exists=True, current=True, updated=1, ready=1)
NOW, LATER = "2030-01-01T00:00:00Z", "2030-01-01T00:05:00Z"


def states(conditions: list[ConditionState]) -> dict[str, tuple[str, str]]:
    """Ready, Progressing and Degraded, each as (status, reason)."""
    return {c.type: (c.status, c.reason) for c in conditions if c.type != "Quarantine"}


def test_the_quarantine_condition_says_whether_items_are_sealed_whatever_else_holds() -> None:
    for workload in (SERVING, WorkloadView()):
        sealed = connector_conditions("crm", workload, [], [])[-1]
        assert (sealed.type, sealed.status, sealed.reason) == ("Quarantine", "True", "Sealed")
        off = quarantine_off("the operator runs without Vault")
        quarantine = connector_conditions("crm", workload, [], [], off)[-1]
        assert (quarantine.type, quarantine.status, quarantine.reason) == (
            "Quarantine",
            "False",
            "NotSealed",
        )
        assert "refused and stays with the connector" in quarantine.message


def test_with_vault_the_sidecar_logs_in_with_its_token_to_seal() -> None:
    obj = connector(type="webhook", credentialsSecret="tls")
    assert "encryption" not in connector_config(obj)
    config = connector_config(obj, vault=SidecarVault("https://vault.vault.svc:8200"))
    sidecar = SidecarConfig.model_validate_json(config_text(config))
    assert sidecar.encryption is not None
    assert sidecar.encryption.vault_addr == "https://vault.vault.svc:8200"
    assert sidecar.encryption.role == f"privatellm-connector-{obj.metadata.namespace}"
    assert sidecar.encryption.jwt_file == sidecar.token_file
    assert (sidecar.encryption.auth_mount, sidecar.encryption.ca_file) == ("kubernetes", None)


def test_the_sidecar_logs_in_where_the_operator_does_and_trusts_the_charts_vault_ca() -> None:
    vault = SidecarVault("https://vault:8200", "k8s-prod", "-----BEGIN CERTIFICATE-----\n")
    inputs = ConnectorInputs(connector(type="webhook", credentialsSecret="tls"), "img", vault=vault)
    data = render_config_map(inputs)["data"]
    sidecar = SidecarConfig.model_validate_json(data["connector.json"])
    assert sidecar.encryption is not None
    assert sidecar.encryption.auth_mount == "k8s-prod"
    assert sidecar.encryption.ca_file == "/etc/privatellm/connector/vault-ca.crt"
    assert data["vault-ca.crt"] == vault.ca_pem


def test_ready_only_when_the_current_pod_is_ready_and_nothing_is_left_undone() -> None:
    assert states(connector_conditions("crm", SERVING, [], [])) == {
        "Ready": ("True", "Running"),
        "Progressing": ("False", "Complete"),
        "Degraded": ("False", "AsExpected"),
    }
    stale = WorkloadView(exists=True, current=False, updated=1, ready=1)
    assert states(connector_conditions("crm", stale, [], []))["Ready"] == ("False", "PodNotReady")
    assert states(connector_conditions("crm", WorkloadView(), [], []))["Progressing"] == (
        "True",
        "RollingOut",
    )
    undone = [Problem("EgressNotConfined", "spec.egress[0].host: ...")]
    found = connector_conditions("crm", SERVING, [], undone)
    assert states(found) == {
        "Ready": ("False", "EgressNotConfined"),
        "Progressing": ("False", "Complete"),
        "Degraded": ("True", "EgressNotConfined"),
    }
    assert found[0].message == "spec.egress[0].host: ..."


def test_a_refused_child_is_degraded_with_the_api_servers_message() -> None:
    refused = [ChildFailure("Deployment", "privatellm-connector-crm", "denied by policy X")]
    found = connector_conditions("crm", SERVING, refused, [Problem("NoGateway", "no gateway")])
    assert states(found) == {
        "Ready": ("False", "ApplyFailed"),
        "Progressing": ("False", "ApplyFailed"),
        "Degraded": ("True", "ApplyFailed"),
    }
    degraded = found[2].message
    assert degraded == "Deployment/privatellm-connector-crm: denied by policy X; no gateway"


def test_pods_that_cannot_be_created_are_degraded_with_failed_create() -> None:
    starved = WorkloadView(exists=True, current=True, failed_create="pods is forbidden: quota")
    found = connector_conditions("crm", starved, [], [])
    assert states(found)["Degraded"] == ("True", "FailedCreate")
    assert found[2].message == "Deployment/privatellm-connector-crm: pods is forbidden: quota"


def test_the_workload_view_reads_the_deployments_status() -> None:
    deployment = {
        "metadata": {"generation": 2},
        "status": {"observedGeneration": 2, "updatedReplicas": 1, "readyReplicas": 1},
    }
    assert WorkloadView.from_deployment(deployment).serving
    deployment["metadata"]["generation"] = 3
    assert not WorkloadView.from_deployment(deployment).serving
    assert WorkloadView.from_deployment(None) == WorkloadView()


def read(counts: ItemCounts) -> CounterReading:
    return counter_reading(1, [counts], [])


def test_status_carries_the_counts_and_is_stable_when_nothing_changed() -> None:
    obj = connector()
    conditions = connector_conditions("crm", SERVING, [], [])
    first = connector_status(obj, conditions, read(ItemCounts(4, 1, 2)), {}, NOW)
    assert first["observedGeneration"] == 3
    assert (first["itemsPassed"], first["itemsBlocked"], first["itemsQuarantined"]) == (4, 1, 2)
    assert "lastError" not in first
    assert {c["type"] for c in first["conditions"]} == {
        "Ready",
        "Progressing",
        "Degraded",
        "Quarantine",
        COUNTERS_CONDITION,
    }
    again = connector_status(obj, conditions, read(ItemCounts(4, 1, 2)), first, LATER)
    assert again == first


def test_a_failed_read_leaves_the_counts_and_the_last_error_as_they_were() -> None:
    obj = connector()
    conditions = connector_conditions("crm", SERVING, [], [])
    before = connector_status(
        obj, conditions, read(ItemCounts(4, 1, 2, LastError(100, "A"))), {}, NOW
    )
    failed = counter_reading(1, [], ["Pod p: timed out"])
    after = connector_status(obj, conditions, failed, before, LATER)
    assert (after["itemsPassed"], after["itemsBlocked"], after["itemsQuarantined"]) == (4, 1, 2)
    assert after["lastError"] == before["lastError"]
    counters = next(c for c in after["conditions"] if c["type"] == COUNTERS_CONDITION)
    assert (counters["status"], counters["lastTransitionTime"]) == ("False", LATER)
    ready = next(c for c in after["conditions"] if c["type"] == "Ready")
    assert (ready["status"], ready["lastTransitionTime"]) == ("True", NOW)


def test_only_a_later_error_replaces_the_stored_one() -> None:
    obj = connector()
    conditions = connector_conditions("crm", SERVING, [], [])
    stored = connector_status(
        obj, conditions, read(ItemCounts(last_error=LastError(200, "B"))), {}, NOW
    )
    earlier = connector_status(
        obj, conditions, read(ItemCounts(last_error=LastError(100, "A"))), stored, NOW
    )
    assert earlier["lastError"]["reason"] == "B"
    later = connector_status(
        obj, conditions, read(ItemCounts(last_error=LastError(300, "C"))), stored, NOW
    )
    assert later["lastError"]["reason"] == "C"


def test_events_mark_each_change_of_ready_or_degraded_once() -> None:
    obj = connector()
    fine = connector_status(obj, connector_conditions("crm", SERVING, [], []), None, {}, NOW)
    assert transition_events([], fine["conditions"]) == []
    refused = [ChildFailure("Deployment", "privatellm-connector-crm", "denied")]
    bad = connector_status(
        obj, connector_conditions("crm", SERVING, refused, []), None, fine, LATER
    )
    assert transition_events(fine["conditions"], bad["conditions"]) == [
        ("Warning", "ApplyFailed", "Ready=False: Deployment/privatellm-connector-crm: denied"),
        ("Warning", "ApplyFailed", "Degraded=True: Deployment/privatellm-connector-crm: denied"),
    ]
    assert transition_events(bad["conditions"], bad["conditions"]) == []
    assert [e[:2] for e in transition_events(bad["conditions"], fine["conditions"])] == [
        ("Normal", "Running"),
        ("Normal", "AsExpected"),
    ]


# --- what the controller watches --------------------------------------------------------


def event(type_: str | None, kind: str, name: str, **meta: Any) -> WatchEvent:
    body = {"kind": kind, "metadata": {"namespace": "team", "name": name, **meta}}
    return WatchEvent(type_, body, new_generation=type_ != "MODIFIED")


def test_the_controller_is_registered_and_its_children_lead_back_to_it() -> None:
    assert controller.CONTROLLER in CONTROLLERS
    known = KnownKeys()
    known.observe(event("ADDED", "DataConnector", "crm"), ("team", "crm"))
    owned = {o.kind.kind: o for o in controller.CONTROLLER.owns}
    assert set(owned) == {"Deployment", "Service", "ServiceAccount", "NetworkPolicy"}
    child = event(
        "DELETED",
        "Deployment",
        "privatellm-connector-crm",
        ownerReferences=[{"kind": "DataConnector", "name": "crm", "uid": "u"}],
    )
    assert owned["Deployment"].requests(child, known) == [(("team", "crm"), True)]
    stranger = event("DELETED", "Deployment", "other")
    assert owned["Deployment"].requests(stranger, known) == []


def test_a_policy_or_model_concerns_every_connector_of_its_namespace() -> None:
    known = KnownKeys()
    for namespace, name in [("team", "a"), ("team", "b"), ("other", "c")]:
        body = {"kind": "DataConnector", "metadata": {"namespace": namespace, "name": name}}
        known.observe(WatchEvent("ADDED", body, True), (namespace, name))
    policy, model = controller.CONTROLLER.watches
    assert policy.requests(event("ADDED", "AccessPolicy", "p"), known) == [
        (("team", "a"), False),
        (("team", "b"), False),
    ]
    outbound = {"spec": {"outbound": {"internalTerms": ["PL-7"]}}}
    assert controller.outbound_signature(outbound) != controller.outbound_signature({"spec": {}})
    assert model.signature is not None
    alive = {"metadata": {"name": "chat"}}
    going = {"metadata": {"name": "chat", "deletionTimestamp": "2030-01-01T00:00:00Z"}}
    assert model.signature(alive) != model.signature(going)
