"""The data-flow map of a namespace: where data comes from, which filters it passes,
where it goes and where it rests, with the Transit key that protects each place.

Pure: built from parsed objects and a view of the gateway's StatefulSet, so the map
shows what the operator renders from those objects, not what a document claims.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, Field

from privatellm.api import AccessPolicy, DataConnector, InferenceDeployment
from privatellm.api.access import InboundFilters, OutboundFilters, PIIRule, Subject
from privatellm.api.connector import ConnectorFilters
from privatellm.keys.tenancy import key_name, namespace_key_name

from .connector import QUARANTINE_CONDITION, STATE_DIR, workload_name
from .gateway import AUDIT_DIR, GATEWAY_NAME, GATEWAY_REPLICAS
from .workload import weight_cache_pvc_name

FORMATS = ("table", "json", "mermaid")
NOT_ENCRYPTED = "not encrypted"

NodeKind = Literal["external", "connector", "subject", "policy", "model", "gateway", "store"]


@dataclass(frozen=True)
class GatewayView:
    """What the namespace's gateway StatefulSet and configuration say about stored data."""

    # Whether the operator has made the gateway yet; without it nothing is stored.
    present: bool = False
    replicas: int = GATEWAY_REPLICAS
    # The volumeClaimTemplate holding each replica's audit log.
    audit_claim: str = "audit"
    worm_bucket: str | None = None
    worm_prefix: str = "audit"
    # Whether the gateway seals prompts and responses (the operator has a Vault); None: unknown.
    seals_payloads: bool | None = None


class Node(BaseModel):
    id: str
    kind: NodeKind
    label: str


class Edge(BaseModel):
    source: str
    target: str
    label: str = ""


class ConnectorFlow(BaseModel):
    name: str
    type: str
    direction: str
    endpoint: str
    models: list[str]
    data_classes: list[str]
    filters: list[str]
    egress: list[str]


class AccessFlow(BaseModel):
    policy: str
    subjects: list[str]
    models: list[str]
    source_namespaces: list[str]
    data_classes: dict[str, str]
    inbound: list[str]
    outbound: list[str]


class ModelFlow(BaseModel):
    name: str
    served_name: str
    zones: list[str]
    transit_key: str
    found: bool = True


class Output(BaseModel):
    source: str
    destination: str
    via: str
    filters: list[str]


class Store(BaseModel):
    name: str
    kind: str
    owner: str
    holds: str
    keys: list[str] = Field(description="Transit keys protecting what it holds; empty: none.")
    protection: str


class DataFlow(BaseModel):
    namespace: str
    namespace_key: str
    models: list[ModelFlow]
    connectors: list[ConnectorFlow]
    access: list[AccessFlow]
    outputs: list[Output]
    stores: list[Store]
    nodes: list[Node]
    edges: list[Edge]


def _pii(rules: Sequence[PIIRule]) -> list[str]:
    return [f"pii {r.entity}:{r.action}" for r in rules]


def connector_filters(filters: ConnectorFilters, direction: str) -> list[str]:
    """The sidecar's filters in the order an item meets them."""
    out: list[str] = []
    if direction != "outbound":
        if filters.allowed_file_types:
            out.append("types " + ",".join(sorted(filters.allowed_file_types)))
        out.append(f"maxItemBytes {filters.max_item_bytes}")
        out += _pii(filters.pii)
        out.append(f"injection:{filters.injection}")
    if filters.customer_id_field:
        out.append(f"one customer per item ({filters.customer_id_field})")
    if direction != "inbound":
        out.append(f"dlp:{filters.dlp_action}")
    return out


def inbound_filters(inbound: InboundFilters) -> list[str]:
    return [
        *_pii(inbound.pii),
        "pii others:redact",
        f"injection:{inbound.injection}",
        f"maxPromptBytes {inbound.max_prompt_bytes}",
    ]


def outbound_filters(outbound: OutboundFilters) -> list[str]:
    out = _pii(outbound.pii)
    if outbound.protected_entities_secret:
        out.append(f"protected entities ({outbound.protected_entities_secret}):{outbound.action}")
    if outbound.internal_terms:
        out.append(f"{len(outbound.internal_terms)} internal terms:{outbound.action}")
    return out


def subject_name(subject: Subject) -> str:
    if subject.kind == "ServiceAccount":
        return f"ServiceAccount:{subject.namespace}/{subject.name}"
    return f"{subject.kind}:{subject.name}"


class _Graph:
    """Nodes keyed by (kind, name), with Mermaid-safe ids that never collide."""

    def __init__(self) -> None:
        self.nodes: dict[tuple[str, str], Node] = {}
        self.edges: list[Edge] = []
        self._ids: set[str] = set()

    def node(self, kind: NodeKind, name: str, label: str | None = None) -> str:
        found = self.nodes.get((kind, name))
        if found is not None:
            return found.id
        base = f"{kind}_" + re.sub(r"[^A-Za-z0-9_]", "_", name)
        node_id, n = base, 1
        while node_id in self._ids:
            n += 1
            node_id = f"{base}_{n}"
        self._ids.add(node_id)
        self.nodes[(kind, name)] = Node(id=node_id, kind=kind, label=label or name)
        return node_id

    def edge(self, source: str, target: str, label: str = "") -> None:
        self.edges.append(Edge(source=source, target=target, label=label))


def _quarantine(connector: DataConnector, namespace_key: str) -> tuple[list[str], str]:
    conditions = connector.status.conditions if connector.status else []
    state = next((c for c in conditions if c.type == QUARANTINE_CONDITION), None)
    spool = "spool and counts " + NOT_ENCRYPTED
    if state is not None and state.status == "False":
        return [], f"{spool}; no quarantine (failing items are refused)"
    reported = "" if state is not None else " (quarantine not yet reported)"
    return [namespace_key], f"{spool}; quarantined items sealed with {namespace_key}{reported}"


def build_dataflow(
    namespace: str,
    models: Sequence[InferenceDeployment],
    policies: Sequence[AccessPolicy],
    connectors: Sequence[DataConnector],
    gateway: GatewayView | None = None,
) -> DataFlow:
    """The namespace's data-flow map from its objects."""
    gateway = gateway or GatewayView()
    ns_key = namespace_key_name(namespace)
    graph = _Graph()
    by_name = {m.metadata.name: m for m in sorted(models, key=lambda m: m.metadata.name)}

    model_flows = [
        ModelFlow(
            name=n, served_name=m.spec.model.name, zones=list(m.spec.zones), transit_key=key_name(m)
        )
        for n, m in by_name.items()
    ]

    def model_node(name: str) -> str:
        if name not in by_name and all(f.name != name for f in model_flows):
            model_flows.append(
                ModelFlow(name=name, served_name="", zones=[], transit_key="", found=False)
            )
        label = name if name in by_name else f"{name} (not found)"
        return graph.node("model", name, label)

    for name in by_name:
        model_node(name)
    gateway_id = graph.node("gateway", GATEWAY_NAME, f"gateway {GATEWAY_NAME}")

    connector_flows: list[ConnectorFlow] = []
    outputs: list[Output] = []
    for c in sorted(connectors, key=lambda c: c.metadata.name):
        spec = c.spec
        filters = connector_filters(spec.filters, spec.direction)
        egress = [
            f"{e.host or e.cidr}:{','.join(str(p) for p in sorted(e.ports))}" for e in spec.egress
        ]
        connector_flows.append(
            ConnectorFlow(
                name=c.metadata.name,
                type=spec.type,
                direction=spec.direction,
                endpoint=spec.endpoint,
                models=sorted(spec.models),
                data_classes=sorted(spec.data_classes),
                filters=filters,
                egress=egress,
            )
        )
        cid = graph.node("connector", c.metadata.name, f"connector {c.metadata.name} ({spec.type})")
        if spec.direction in ("inbound", "both"):
            graph.edge(graph.node("external", spec.endpoint), cid, "items")
            for m in sorted(spec.models):
                inbound = [f for f in filters if not f.startswith("dlp:")]
                graph.edge(cid, model_node(m), "via gateway; " + ", ".join(inbound))
        if spec.direction in ("outbound", "both"):
            for m in sorted(spec.models):
                graph.edge(model_node(m), cid, f"results; dlp:{spec.filters.dlp_action}")
            for dest in egress:
                graph.edge(cid, graph.node("external", dest), "egress")
                outputs.append(
                    Output(
                        source=c.metadata.name,
                        destination=dest,
                        via=f"connector {c.metadata.name}",
                        filters=[f"dlp:{spec.filters.dlp_action}"],
                    )
                )

    access_flows: list[AccessFlow] = []
    for p in sorted(policies, key=lambda p: p.metadata.name):
        spec_p = p.spec
        targets = sorted(by_name) if spec_p.models == ["*"] else sorted(spec_p.models)
        subjects = [subject_name(s) for s in spec_p.subjects]
        inbound, outbound = inbound_filters(spec_p.inbound), outbound_filters(spec_p.outbound)
        classes = {r.name: r.action for r in spec_p.data_classes}
        access_flows.append(
            AccessFlow(
                policy=p.metadata.name,
                subjects=subjects,
                models=targets,
                source_namespaces=list(spec_p.source_namespaces) or [namespace],
                data_classes=classes,
                inbound=inbound,
                outbound=outbound,
            )
        )
        pid = graph.node("policy", p.metadata.name, f"AccessPolicy {p.metadata.name}")
        for s in subjects:
            graph.edge(graph.node("subject", s), pid, "prompts")
        class_text = ", ".join(f"{k}:{v}" for k, v in classes.items())
        for m in targets:
            mid = model_node(m)
            graph.edge(pid, mid, "; ".join(x for x in (", ".join(inbound), class_text) if x))
            graph.edge(mid, pid, "responses; " + (", ".join(outbound) or "no outbound filters"))
        outputs.append(
            Output(
                source=",".join(targets),
                destination=", ".join(subjects),
                via=f"gateway {GATEWAY_NAME} under AccessPolicy {p.metadata.name}",
                filters=outbound,
            )
        )

    stores = _stores(namespace, ns_key, by_name, connectors, gateway, graph, gateway_id)
    return DataFlow(
        namespace=namespace,
        namespace_key=ns_key,
        models=model_flows,
        connectors=connector_flows,
        access=access_flows,
        outputs=outputs,
        stores=stores,
        nodes=list(graph.nodes.values()),
        edges=graph.edges,
    )


def _stores(
    namespace: str,
    ns_key: str,
    by_name: dict[str, InferenceDeployment],
    connectors: Sequence[DataConnector],
    gateway: GatewayView,
    graph: _Graph,
    gateway_id: str,
) -> list[Store]:
    stores: list[Store] = []

    def add(store: Store, source: str, label: str) -> str:
        stores.append(store)
        sid = graph.node("store", store.name, f"{store.name}: {store.protection}")
        graph.edge(source, sid, label)
        return sid

    model_keys = sorted({key_name(m) for m in by_name.values()})
    records = "records signed and hash-chained, " + NOT_ENCRYPTED
    if gateway.seals_payloads:
        payload_keys = model_keys
        payloads = (
            f"; prompts and responses sealed with {', '.join(model_keys)} and per-subject keys"
        )
    elif gateway.seals_payloads is None:
        payload_keys = model_keys
        payloads = "; prompts and responses sealed with the model's key when the operator has Vault"
    else:
        payload_keys = []
        payloads = "; prompts and responses not kept (no Vault)"
    audit_ids = []
    for i in range(gateway.replicas):
        claim = f"{gateway.audit_claim}-{GATEWAY_NAME}-{i}"
        audit_ids.append(
            add(
                Store(
                    name=claim if gateway.present else f"{claim} (not yet created)",
                    kind="PersistentVolumeClaim",
                    owner=f"gateway {GATEWAY_NAME}",
                    holds=f"audit log ({AUDIT_DIR})",
                    keys=payload_keys,
                    protection=records + payloads,
                ),
                gateway_id,
                "audit records",
            )
        )
    if gateway.worm_bucket:
        worm = Store(
            name=f"s3://{gateway.worm_bucket}/{gateway.worm_prefix}",
            kind="WORM bucket (S3 Object Lock)",
            owner=f"gateway {GATEWAY_NAME}",
            holds="sealed audit segments",
            keys=payload_keys,
            protection="write once; " + records + payloads,
        )
        stores.append(worm)
        wid = graph.node("store", worm.name, f"{worm.name}: WORM")
        for aid in audit_ids:
            graph.edge(aid, wid, "sealed segments")
    for name, m in by_name.items():
        mid = graph.node("model", name)
        storage = m.spec.weight_cache.storage_class_name or "default storage class"
        for zone in m.spec.zones:
            claim = weight_cache_pvc_name(m, zone)
            stores.append(
                Store(
                    name=claim,
                    kind="PersistentVolumeClaim",
                    owner=f"model {name}",
                    holds=f"weights of {m.spec.model.name}, zone {zone}",
                    keys=[],
                    protection=f"{NOT_ENCRYPTED} by the operator (at rest as {storage} keeps it)",
                )
            )
            sid = graph.node("store", claim, f"{claim}: {NOT_ENCRYPTED}")
            graph.edge(sid, mid, "weights")
    for c in sorted(connectors, key=lambda c: c.metadata.name):
        keys, protection = _quarantine(c, ns_key)
        add(
            Store(
                name=f"{workload_name(c.metadata.name)} state",
                kind="emptyDir (lives with the Pod)",
                owner=f"connector {c.metadata.name}",
                holds=f"spool, counts, quarantine ({STATE_DIR})",
                keys=keys,
                protection=protection,
            ),
            graph.node("connector", c.metadata.name),
            "spool, quarantine",
        )
    return stores


# Formatters


def to_json(flow: DataFlow) -> str:
    return json.dumps(flow.model_dump(), indent=2)


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows, strict=False)]
    return [
        "  ".join(str(cell).ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in (headers, *rows)
    ]


def to_table(flow: DataFlow) -> str:
    lines = [f"Data flow of namespace {flow.namespace} (namespace key {flow.namespace_key})", ""]
    lines.append("Connectors (filters run in each connector's sidecar, then the gateway's)")
    lines += _table(
        ("CONNECTOR", "TYPE", "DIRECTION", "SYSTEM", "MODELS", "CLASSES", "FILTERS", "EGRESS"),
        [
            (
                c.name,
                c.type,
                c.direction,
                c.endpoint,
                ",".join(c.models),
                ",".join(c.data_classes),
                "; ".join(c.filters),
                ",".join(c.egress) or "-",
            )
            for c in flow.connectors
        ]
        or [("-",) * 8],
    )
    lines += ["", "Access (through the gateway)"]
    lines += _table(
        ("POLICY", "SUBJECTS", "MODELS", "DATA CLASSES", "INBOUND", "OUTBOUND"),
        [
            (
                a.policy,
                ", ".join(a.subjects),
                ",".join(a.models),
                ", ".join(f"{k}:{v}" for k, v in a.data_classes.items()) or "all blocked",
                "; ".join(a.inbound),
                "; ".join(a.outbound) or "-",
            )
            for a in flow.access
        ]
        or [("-",) * 6],
    )
    lines += ["", "Models"]
    lines += _table(
        ("MODEL", "SERVES", "ZONES", "TRANSIT KEY"),
        [
            (m.name, m.served_name or "(not found)", ",".join(m.zones), m.transit_key or "-")
            for m in flow.models
        ],
    )
    lines += ["", "Outputs"]
    lines += _table(
        ("FROM", "TO", "VIA", "FILTERS"),
        [(o.source, o.destination, o.via, "; ".join(o.filters) or "-") for o in flow.outputs]
        or [("-",) * 4],
    )
    lines += ["", "Data at rest"]
    lines += _table(
        ("STORE", "KIND", "OWNER", "HOLDS", "TRANSIT KEYS", "PROTECTION"),
        [
            (s.name, s.kind, s.owner, s.holds, ",".join(s.keys) or NOT_ENCRYPTED, s.protection)
            for s in flow.stores
        ],
    )
    return "\n".join(lines)


def mermaid_text(text: str) -> str:
    """Text safe inside a quoted Mermaid label: no quote, bar, bracket or newline ends it."""
    replacements = {'"': "#quot;", "|": "#124;", "<": "#lt;", ">": "#gt;", "\n": " "}
    return "".join(replacements.get(ch, ch) for ch in text)


_SHAPES: dict[str, tuple[str, str]] = {
    "external": ("{{", "}}"),
    "subject": ("([", "])"),
    "store": ("[(", ")]"),
}


def to_mermaid(flow: DataFlow) -> str:
    lines = ["flowchart LR"]
    for node in flow.nodes:
        start, end = _SHAPES.get(node.kind, ("[", "]"))
        lines.append(f'  {node.id}{start}"{mermaid_text(node.label)}"{end}')
    for edge in flow.edges:
        label = f'|"{mermaid_text(edge.label)}"|' if edge.label else ""
        lines.append(f"  {edge.source} -->{label} {edge.target}")
    return "\n".join(lines)


def format_dataflow(flow: DataFlow, output: str) -> str:
    if output == "json":
        return to_json(flow)
    if output == "mermaid":
        return to_mermaid(flow)
    return to_table(flow)
