"""The data-flow map from hand-made objects: nodes, edges, keys and sane Mermaid."""

from __future__ import annotations

import json
import re
from typing import Any

from privatellm.api import AccessPolicy, DataConnector, InferenceDeployment
from privatellm.render.dataflow import (
    NOT_ENCRYPTED,
    GatewayView,
    build_dataflow,
    format_dataflow,
    mermaid_text,
    to_mermaid,
)

NS = "team-a"


def model(name: str, transit_key: str | None = None) -> InferenceDeployment:
    spec: dict[str, Any] = {
        "model": {"name": f"{name}-served", "source": {"uri": f"s3://models/{name}", "sizeGiB": 8}},
        "resources": {"gpusPerReplica": 1},
        "zones": ["zone-a", "zone-b"],
    }
    if transit_key:
        spec["encryption"] = {"transitKey": transit_key}
    return InferenceDeployment.model_validate(
        {"metadata": {"name": name, "namespace": NS}, "spec": spec}
    )


def policy(models: list[str]) -> AccessPolicy:
    return AccessPolicy.model_validate(
        {
            "metadata": {"name": "agents", "namespace": NS},
            "spec": {
                "subjects": [
                    {"kind": "Group", "name": 'say "hi" | <b>'},
                    {"kind": "ServiceAccount", "name": "bot", "namespace": "apps"},
                ],
                "models": models,
                "dataClasses": [{"name": "pii", "action": "redact"}],
                "inbound": {"pii": [{"entity": "email", "action": "mask"}]},
                "outbound": {"internalTerms": ["X-1"], "action": "block"},
            },
        }
    )


def connector(name: str, direction: str, quarantine: str | None = None) -> DataConnector:
    obj: dict[str, Any] = {
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "type": "webhook",
            "direction": direction,
            "endpoint": "https://sys.example/in",
            "models": ["small"],
            "filters": {"pii": [{"entity": "iban", "action": "redact"}], "dlpAction": "redact"},
            "egress": [{"host": "sys.example", "ports": [443]}],
        },
    }
    if quarantine:
        obj["status"] = {
            "conditions": [{"type": "Quarantine", "status": quarantine, "reason": "x"}]
        }
    return DataConnector.model_validate(obj)


def flow(gateway: GatewayView | None = None, quarantine: str | None = None) -> Any:
    return build_dataflow(
        NS,
        [model("small"), model("big", transit_key="big-key")],
        [policy(["*"])],
        [connector("mail", "inbound", quarantine), connector("crm", "outbound")],
        gateway,
    )


def edges_between(data: Any) -> set[tuple[str, str]]:
    kinds = {n.id: f"{n.kind}:{n.label}" for n in data.nodes}
    return {(kinds[e.source], kinds[e.target]) for e in data.edges}


def test_connectors_feed_models_and_write_back_through_egress() -> None:
    data = flow()
    edges = edges_between(data)
    assert ("external:https://sys.example/in", "connector:connector mail (webhook)") in edges
    assert ("connector:connector mail (webhook)", "model:small") in edges
    assert ("model:small", "connector:connector crm (webhook)") in edges
    assert ("connector:connector crm (webhook)", "external:sys.example:443") in edges
    mail = next(c for c in data.connectors if c.name == "mail")
    assert "pii iban:redact" in mail.filters and "dlp:redact" not in mail.filters
    assert [o.destination for o in data.outputs if o.source == "crm"] == ["sys.example:443"]


def test_subjects_reach_every_model_of_a_wildcard_policy_with_its_filters() -> None:
    data = flow()
    (access,) = data.access
    assert access.models == ["big", "small"]
    assert access.subjects == ['Group:say "hi" | <b>', "ServiceAccount:apps/bot"]
    assert access.data_classes == {"pii": "redact"}
    assert "pii email:mask" in access.inbound and "1 internal terms:block" in access.outbound
    assert access.source_namespaces == [NS]
    edges = edges_between(data)
    assert ("subject:ServiceAccount:apps/bot", "policy:AccessPolicy agents") in edges
    assert ("policy:AccessPolicy agents", "model:big") in edges
    assert ("model:big", "policy:AccessPolicy agents") in edges


def test_keys_are_named_and_weight_caches_are_not_encrypted() -> None:
    data = flow(
        GatewayView(present=True, replicas=2, worm_bucket="audit-worm", seals_payloads=True)
    )
    assert data.namespace_key == "privatellm-team-a"
    assert {m.name: m.transit_key for m in data.models} == {
        "big": "big-key",
        "small": "privatellm-team-a",
    }
    stores = {s.name: s for s in data.stores}
    assert stores["audit-privatellm-gateway-0"].keys == ["big-key", "privatellm-team-a"]
    assert "audit-privatellm-gateway-1" in stores
    assert stores["s3://audit-worm/audit"].kind.startswith("WORM")
    cache = stores["small-weights-zone-b"]
    assert cache.keys == [] and cache.protection.startswith(NOT_ENCRYPTED)
    assert stores["privatellm-connector-mail state"].keys == ["privatellm-team-a"]


def test_without_vault_the_audit_keeps_no_payloads_and_quarantine_can_be_off() -> None:
    data = flow(GatewayView(present=True, replicas=1, seals_payloads=False), quarantine="False")
    stores = {s.name: s for s in data.stores}
    audit = stores["audit-privatellm-gateway-0"]
    assert audit.keys == [] and "not kept" in audit.protection
    assert not any(s.kind.startswith("WORM") for s in data.stores)
    mail = stores["privatellm-connector-mail state"]
    assert mail.keys == [] and "refused" in mail.protection


def test_a_missing_gateway_is_shown_as_not_yet_created() -> None:
    names = [s.name for s in flow().stores if s.owner.startswith("gateway")]
    assert names and all(n.endswith("(not yet created)") for n in names)


def test_mermaid_ids_are_safe_and_each_edge_is_one_line() -> None:
    data = flow(GatewayView(present=True, replicas=2, worm_bucket="b", seals_payloads=True))
    text = to_mermaid(data)
    lines = text.splitlines()
    assert lines[0] == "flowchart LR"
    ids = [n.id for n in data.nodes]
    assert len(ids) == len(set(ids))
    assert all(re.fullmatch(r"[A-Za-z0-9_]+", i) for i in ids)
    edge_lines = [line for line in lines if "-->" in line]
    assert len(edge_lines) == len(data.edges)
    edge = re.compile(r'  ([A-Za-z0-9_]+) -->(\|"[^"|<>]*"\|)? ([A-Za-z0-9_]+)')
    assert all(edge.fullmatch(line) for line in edge_lines)
    node_lines = [line for line in lines[1:] if "-->" not in line]
    assert len(node_lines) == len(ids)
    for line in node_lines:
        label = line.split('"')[1:-1]
        assert len(label) == 1 and not set(label[0]) & set('"|<>\n')
    assert "#quot;hi#quot; #124; #lt;b#gt;" in text


def test_mermaid_text_escapes_what_ends_a_label() -> None:
    assert mermaid_text('a"b|c<d>\ne') == "a#quot;b#124;c#lt;d#gt; e"


def test_formats() -> None:
    data = flow()
    parsed = json.loads(format_dataflow(data, "json"))
    assert parsed["namespace_key"] == "privatellm-team-a"
    table = format_dataflow(data, "table")
    for heading in ("Connectors", "Access", "Models", "Outputs", "Data at rest"):
        assert heading in table
    assert format_dataflow(data, "mermaid").startswith("flowchart LR\n")
