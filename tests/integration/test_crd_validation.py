"""The API server itself accepts the examples and rejects bad specs, naming the field."""

from __future__ import annotations

import copy
import json
import re
import zoneinfo
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes.client.exceptions import ApiException

from privatellm.api import GROUP, KINDS, VERSION
from tests.support.object_names import OBJECT_NAME_FIELDS, NameField

from .conftest import ROOT, Cluster

Spec = dict[str, Any]


def examples() -> list[tuple[Path, dict[str, Any]]]:
    out = []
    for path in sorted((ROOT / "examples").glob("*.yaml")):
        docs = yaml.safe_load_all(path.read_text())
        out += [(path, d) for d in docs if d and d["apiVersion"] == f"{GROUP}/{VERSION}"]
    return out


def example(kind: str, name: str) -> dict[str, Any]:
    return copy.deepcopy(
        next(d for _, d in examples() if d["kind"] == kind and d["metadata"]["name"] == name)
    )


def create(
    cluster: Cluster, namespace: str, body: dict[str, Any], dry_run: bool = False
) -> dict[str, Any]:
    plural = KINDS[body["kind"]].crd_info.plural
    created: dict[str, Any] = cluster.custom.create_namespaced_custom_object(
        GROUP,
        VERSION,
        namespace,
        plural,
        body,
        field_validation="Strict",
        **({"dry_run": "All"} if dry_run else {}),
    )
    return created


def test_every_example_is_accepted(crds: Cluster, namespace: str) -> None:
    for path, doc in examples():
        created = create(crds, namespace, doc)
        assert created["metadata"]["uid"], path.name


def test_server_fills_nested_defaults(crds: Cluster, namespace: str) -> None:
    created = create(crds, namespace, example("InferenceDeployment", "llama-8b"))
    assert created["spec"]["engine"]["gpuMemoryUtilization"] == 0.9
    assert created["spec"]["health"]["failoverSeconds"] == 120
    assert created["spec"]["encryption"]["tls"] == "mutual"


@dataclass(frozen=True)
class Invalid:
    """A valid example, broken in one place; the rejection must name `field`."""

    case: str
    kind: str
    name: str
    mutate: Callable[[Spec], None]
    field: str
    says: str


def _parent(obj: Spec, path: str) -> tuple[Any, str]:
    """The container holding the last element of a dotted path (digits index lists)."""
    *parents, leaf = path.split(".")
    node: Any = obj
    for part in parents:
        node = node[int(part)] if part.isdigit() else node.setdefault(part, {})
    return node, leaf


def put(path: str, value: Any) -> Callable[[Spec], None]:
    def mutate(obj: Spec) -> None:
        node, leaf = _parent(obj, path)
        node[int(leaf) if leaf.isdigit() else leaf] = value

    return mutate


def drop(path: str) -> Callable[[Spec], None]:
    def mutate(obj: Spec) -> None:
        node, leaf = _parent(obj, path)
        del node[leaf]

    return mutate


def in_turn(*mutations: Callable[[Spec], None]) -> Callable[[Spec], None]:
    def mutate(obj: Spec) -> None:
        for change in mutations:
            change(obj)

    return mutate


ID, AP, DC, CB = "InferenceDeployment", "AccessPolicy", "DataConnector", "CostBudget"

INVALID = [
    Invalid(
        "min-above-max",
        ID,
        "llama-70b",
        put("spec.autoscaling.minReplicas", 9),
        "spec.autoscaling.minReplicas",
        "less than or equal to maxReplicas",
    ),
    Invalid(
        "no-zones",
        ID,
        "llama-70b",
        put("spec.zones", []),
        "spec.zones",
        "should have at least 1 items",
    ),
    Invalid(
        "duplicate-zone",
        ID,
        "llama-70b",
        put("spec.zones", ["zone-a", "zone-a"]),
        "spec.zones[1]",
        "Duplicate value",
    ),
    Invalid(
        "gpu-model-without-gpus",
        ID,
        "llama-8b",
        put("spec.resources.gpusPerReplica", 0),
        "spec.resources.gpusPerReplica",
        "at least 1 when accelerator is gpu",
    ),
    Invalid(
        "fallback-to-itself",
        ID,
        "llama-70b",
        put("spec.fallback.model", "llama-70b"),
        "spec.fallback.model",
        "must name another InferenceDeployment",
    ),
    Invalid(
        "tensor-parallel-mismatch",
        ID,
        "llama-70b",
        put("spec.engine.tensorParallelSize", 2),
        "spec.engine.tensorParallelSize",
        "must equal resources.gpusPerReplica",
    ),
    Invalid(
        "gpu-memory-over-one",
        ID,
        "llama-8b",
        put("spec.engine.gpuMemoryUtilization", 1.5),
        "spec.engine.gpuMemoryUtilization",
        "less than or equal to 1",
    ),
    Invalid(
        "unknown-dtype",
        ID,
        "llama-8b",
        put("spec.engine.dtype", "int3"),
        "spec.engine.dtype",
        "Unsupported value",
    ),
    Invalid(
        "weights-from-the-internet",
        ID,
        "llama-8b",
        put("spec.model.source.uri", "https://huggingface.example/llama"),
        "spec.model.source.uri",
        "should match",
    ),
    Invalid(
        "s3-without-endpoint",
        ID,
        "llama-70b",
        drop("spec.model.source.s3Endpoint"),
        "spec.model.source.s3Endpoint",
        "required when uri is an s3:// URL",
    ),
    Invalid(
        "spot-for-interactive",
        ID,
        "llama-8b",
        put("spec.capacityType", "spot"),
        "spec.capacityType",
        "only allowed for workloadClass batch",
    ),
    Invalid(
        "high-risk-without-review",
        ID,
        "claims-classifier",
        put("spec.governance.review", {"required": False}),
        "spec.governance.review",
        "riskClass high requires review.required",
    ),
    Invalid(
        "scale-to-zero-with-min-replicas",
        ID,
        "claims-classifier",
        put("spec.autoscaling.minReplicas", 1),
        "spec.autoscaling.scaleToZeroAfter",
        "needs minReplicas 0",
    ),
    Invalid(
        "misspelled-field",
        ID,
        "llama-8b",
        put("spec.replicaz", 3),
        "spec.replicaz",
        "unknown field",
    ),
    Invalid("missing-model", ID, "llama-8b", drop("spec.model"), "spec.model", "Required value"),
    Invalid(
        "no-subjects",
        AP,
        "support-agents",
        put("spec.subjects", []),
        "spec.subjects",
        "should have at least 1 items",
    ),
    Invalid(
        "service-account-without-namespace",
        AP,
        "support-agents",
        drop("spec.subjects.1.namespace"),
        "spec.subjects[1].namespace",
        "namespace is required for a ServiceAccount",
    ),
    Invalid(
        "wildcard-mixed-with-models",
        AP,
        "support-agents",
        put("spec.models", ["*", "llama-8b"]),
        "spec.models",
        "cannot be combined",
    ),
    Invalid(
        "unknown-filter-action",
        AP,
        "support-agents",
        put("spec.dataClasses.2.action", "shred"),
        "spec.dataClasses[2].action",
        "Unsupported value",
    ),
    Invalid(
        "minute-quota-above-daily",
        AP,
        "support-agents",
        put("spec.quotas.tokensPerMinute", 5_000_000),
        "spec.quotas.tokensPerMinute",
        "must not exceed tokensPerDay",
    ),
    Invalid(
        "outbound-without-egress",
        DC,
        "crm-writeback",
        put("spec.egress", []),
        "spec.egress",
        "egress must list the destination",
    ),
    Invalid(
        "port-out-of-range",
        DC,
        "crm-writeback",
        put("spec.egress.0.ports", [70000]),
        "spec.egress[0].ports",
        "between 1 and 65535",
    ),
    Invalid(
        "host-and-cidr",
        DC,
        "crm-writeback",
        put("spec.egress.0.cidr", "10.0.0.0/8"),
        "spec.egress[0]",
        "exactly one of host or cidr",
    ),
    Invalid(
        "zero-budget",
        CB,
        "support",
        put("spec.monthlyLimit", 0),
        "spec.monthlyLimit",
        "greater than 0",
    ),
    Invalid(
        "currency-not-iso",
        CB,
        "support",
        put("spec.currency", "eur"),
        "spec.currency",
        "should match",
    ),
    Invalid(
        "office-hours-backwards",
        CB,
        "support",
        put("spec.businessHours.start", "20:00"),
        "spec.businessHours.start",
        "start must be earlier than end",
    ),
    Invalid(
        "bad-clock-time",
        CB,
        "support",
        put("spec.businessHours.end", "25:00"),
        "spec.businessHours.end",
        "should match",
    ),
    Invalid(
        "spot-dearer-than-on-demand",
        CB,
        "support",
        put("spec.gpuPrices.0.spotPerHour", 9.0),
        "spec.gpuPrices[0].spotPerHour",
        "must not exceed onDemandPerHour",
    ),
    Invalid(
        "bad-duration",
        CB,
        "support",
        put("spec.idleTimeout", "forever"),
        "spec.idleTimeout",
        "should match",
    ),
    # Specs the API server used to accept and the operator could not honour.
    Invalid(
        "cidr-octet-out-of-range",
        DC,
        "crm-writeback",
        put("spec.egress.0", {"cidr": "10.0.0.300/8", "ports": [443]}),
        "spec.egress[0].cidr",
        "cidr must be an IPv4 or IPv6 block such as 10.20.0.0/16",
    ),
    Invalid(
        "cidr-prefix-too-long",
        DC,
        "crm-writeback",
        put("spec.egress.0", {"cidr": "10.0.0.0/33", "ports": [443]}),
        "spec.egress[0].cidr",
        "cidr must be an IPv4 or IPv6 block such as 10.20.0.0/16",
    ),
    Invalid(
        "cidr-with-host-bits",
        DC,
        "crm-writeback",
        put("spec.egress.0", {"cidr": "10.0.0.1/8", "ports": [443]}),
        "spec.egress[0].cidr",
        "cidr must start at its block's network address",
    ),
    Invalid(
        "cidr-the-whole-internet",
        DC,
        "crm-writeback",
        put("spec.egress.0", {"cidr": "0.0.0.0/0", "ports": [443]}),
        "spec.egress[0].cidr",
        "cidr must not be wider than /8 (IPv4) or /32 (IPv6)",
    ),
    Invalid(
        "cidr-all-of-ipv6",
        DC,
        "crm-writeback",
        put("spec.egress.0", {"cidr": "::/0", "ports": [443]}),
        "spec.egress[0].cidr",
        "cidr must not be wider than /8 (IPv4) or /32 (IPv6)",
    ),
    Invalid(
        "unknown-time-zone",
        CB,
        "support",
        put("spec.businessHours.timezone", "Mars/Olympus"),
        "spec.businessHours.timezone",
        "timezone must be an IANA time zone name such as Europe/Amsterdam",
    ),
    Invalid(
        "negative-cpu",
        ID,
        "llama-70b",
        put("spec.resources.cpu", "-1"),
        "spec.resources.cpu",
        "cpu must be a positive Kubernetes quantity such as 500m or 4",
    ),
    Invalid(
        "cpu-two-decimal-points",
        ID,
        "llama-70b",
        put("spec.resources.cpu", "1..5"),
        "spec.resources.cpu",
        "cpu must be a positive Kubernetes quantity such as 500m or 4",
    ),
    Invalid(
        "memory-unknown-suffix",
        ID,
        "llama-70b",
        put("spec.resources.memory", "1Qi"),
        "spec.resources.memory",
        "memory must be a positive Kubernetes quantity such as 512Mi or 32Gi",
    ),
    Invalid(
        "empty-weight-cache",
        ID,
        "llama-70b",
        put("spec.weightCache.size", "0"),
        "spec.weightCache.size",
        "size must be a positive Kubernetes quantity such as 200Gi",
    ),
    Invalid(
        "megabyte-engine-argument",
        ID,
        "llama-70b",
        put("spec.engine.extraArgs", ["--seed=" + "1" * 1024 * 1024]),
        "spec.engine.extraArgs[0]",
        "Too long: may not be more than 1024 bytes",
    ),
    Invalid(
        "dotted-model-name",
        ID,
        "llama-8b",
        put("metadata.name", "llama-3.1-8b"),
        "metadata.name",
        "metadata.name must start with a letter and contain only lowercase letters, digits"
        " and '-' (no '.'): it also names the model's Service",
    ),
    Invalid(
        "model-name-too-long",
        ID,
        "llama-8b",
        put("metadata.name", "m" * 53),
        "metadata.name",
        "metadata.name must be at most 52 characters: the operator names each zone's weight"
        " pre-staging Job <name>-prestage-<zone>",
    ),
    Invalid(
        "model-name-and-zone-too-long",
        ID,
        "llama-8b",
        put("spec.zones", ["zone-a", "z" * 46]),
        "spec.zones",
        "metadata.name and each zone together must be at most 53 characters",
    ),
    Invalid(
        "zone-not-a-name-part",
        ID,
        "llama-8b",
        put("spec.zones", ["zone-a", "Zone_B"]),
        "spec.zones[1]",
        "a zone must be lowercase letters, digits and '-'",
    ),
    Invalid(
        "connector-name-too-long",
        DC,
        "crm-writeback",
        put("metadata.name", "c" * 233),
        "metadata.name",
        "metadata.name must be at most 232 characters: the connector's Pods run as the"
        " ServiceAccount privatellm-connector-<name>",
    ),
    Invalid(
        "label-value-too-long",
        CB,
        "support",
        put("spec.selector.matchLabels", {"privatellm.io/team": "s" * 64}),
        "spec.selector.matchLabels",
        "Too long: may not be more than 63 bytes",
    ),
    Invalid(
        "label-value-not-a-label",
        CB,
        "support",
        put("spec.selector.matchLabels", {"privatellm.io/team": "-support"}),
        "spec.selector.matchLabels",
        "a label value must be empty or letters, digits, '-', '_' and '.'",
    ),
    Invalid(
        "label-key-with-two-slashes",
        CB,
        "support",
        put("spec.selector.matchLabels", {"privatellm.io/team/x": "support"}),
        "spec.selector.matchLabels",
        "each key must be a label key",
    ),
    Invalid(
        "limitless-budget",
        CB,
        "support",
        put("spec.monthlyLimit", 1e300),
        "spec.monthlyLimit",
        "less than or equal to 1e+12",
    ),
    Invalid(
        "limitless-price",
        CB,
        "support",
        put("spec.gpuPrices.0.onDemandPerHour", 1e300),
        "spec.gpuPrices[0].onDemandPerHour",
        "less than or equal to 1e+09",
    ),
]


@dataclass(frozen=True)
class Accepted:
    """A valid example, changed to the edge of a rule; the API server must still accept it."""

    case: str
    kind: str
    name: str
    mutate: Callable[[Spec], None]


ACCEPTED = [
    Accepted(
        "cidr-one-address",
        DC,
        "crm-writeback",
        put("spec.egress.0", {"cidr": "10.0.0.1/32", "ports": [443]}),
    ),
    Accepted(
        "cidr-ipv6",
        DC,
        "crm-writeback",
        put("spec.egress.0", {"cidr": "fd00:10::/64", "ports": [443]}),
    ),
    Accepted("cpu-fraction", ID, "llama-70b", put("spec.resources.cpu", "0.5")),
    Accepted("cpu-millicores", ID, "llama-70b", put("spec.resources.cpu", "500m")),
    Accepted("memory-exponent", ID, "llama-70b", put("spec.resources.memory", "128e9")),
    Accepted("cache-in-terabytes", ID, "llama-70b", put("spec.weightCache.size", "1T")),
    Accepted(
        "longest-engine-argument",
        ID,
        "llama-70b",
        put("spec.engine.extraArgs", ["--seed=" + "1" * 1017]),
    ),
    Accepted(
        "longest-model-name",
        ID,
        "llama-8b",
        in_turn(put("metadata.name", "m" * 52), put("spec.zones", ["a"])),
    ),
    Accepted("longest-name-and-zone", ID, "llama-8b", put("spec.zones", ["z" * 45])),
    Accepted("longest-connector-name", DC, "crm-writeback", put("metadata.name", "c" * 232)),
    Accepted(
        "empty-label-value",
        CB,
        "support",
        put("spec.selector.matchLabels", {"privatellm.io/team": ""}),
    ),
    Accepted(
        "label-value-with-dots",
        CB,
        "support",
        put("spec.selector.matchLabels", {"team": "s" * 60 + "_.x"}),
    ),
]


@pytest.mark.parametrize("edge", ACCEPTED, ids=lambda c: c.case)
def test_the_edge_of_each_rule_is_accepted(crds: Cluster, edge: Accepted) -> None:
    body = example(edge.kind, edge.name)
    edge.mutate(body)
    assert create(crds, "default", body, dry_run=True)["metadata"]["name"]


# IANA names and look-alikes: the API server judges each as Python's tz database does.
TIME_ZONES = [
    "Europe/Amsterdam",
    "America/Argentina/Buenos_Aires",
    "Etc/GMT+5",
    "US/Pacific",
    "UTC",
    "EST5EDT",
    "GMT+0",
    "Mars/Olympus",
    "Europe/Amsterdan",
    "europe/amsterdam",
    "Local",
    "posixrules",
    "right/UTC",
    "+01:00",
]


@pytest.mark.parametrize("zone", TIME_ZONES)
def test_the_api_server_knows_the_time_zones_python_knows(crds: Cluster, zone: str) -> None:
    body = example(CB, "support")
    put("spec.businessHours.timezone", zone)(body)
    if zone in zoneinfo.available_timezones():
        assert create(crds, "default", body, dry_run=True)["metadata"]["name"]
        return
    with pytest.raises(ApiException) as rejected:
        create(crds, "default", body, dry_run=True)
    message = json.loads(rejected.value.body)["message"]
    assert "spec.businessHours.timezone" in message, message
    assert "timezone must be an IANA time zone name" in message, message


def test_table_is_large_and_distinct() -> None:
    assert len(INVALID) >= 15
    assert len({c.case for c in INVALID}) == len(INVALID)
    assert len({c.field for c in INVALID}) >= 15


# Where each object-name field is in an example: (example name, the field as the API
# server's message names it). The fields themselves come from tests/support/object_names.py,
# which a unit test keeps complete against the models.
NAME_FIELD_PLACES: dict[tuple[str, str], tuple[str, str]] = {
    (ID, ".spec.model.source.uri"): ("llama-8b", "spec.model.source.uri"),
    (ID, ".spec.model.source.credentials.name"): (
        "llama-70b",
        "spec.model.source.credentials.name",
    ),
    (ID, ".spec.model.source.credentials.key"): ("llama-70b", "spec.model.source.credentials.key"),
    (ID, ".spec.weightCache.storageClassName"): ("llama-70b", "spec.weightCache.storageClassName"),
    (ID, ".spec.fallback.model"): ("llama-70b", "spec.fallback.model"),
    (ID, ".spec.priorityClassName"): ("llama-8b", "spec.priorityClassName"),
    (AP, ".spec.subjects[].name"): ("support-agents", "spec.subjects[1].name"),
    (AP, ".spec.subjects[].namespace"): ("support-agents", "spec.subjects[1].namespace"),
    (AP, ".spec.subjects[].secretName"): ("support-agents", "spec.subjects[2].secretName"),
    (AP, ".spec.models[]"): ("support-agents", "spec.models[0]"),
    (AP, ".spec.outbound.protectedEntitiesSecret"): (
        "support-agents",
        "spec.outbound.protectedEntitiesSecret",
    ),
    (AP, ".spec.sourceNamespaces[]"): ("support-agents", "spec.sourceNamespaces[0]"),
    (DC, ".spec.credentialsSecret"): ("crm-writeback", "spec.credentialsSecret"),
    (DC, ".spec.models[]"): ("crm-writeback", "spec.models[0]"),
    (CB, ".spec.throttle.priorityPolicies[]"): ("support", "spec.throttle.priorityPolicies[0]"),
}


def _expected_message(field: NameField, case: str) -> str:
    """What the API server says: the pattern, the CEL rule's message, or the length bound."""
    if case == "too-long":
        return "at most 253 characters" if field.checked_by == "embedded" else "Too long"
    return "must be a ServiceAccount name" if field.checked_by == "cel" else "should match"


def _name_cases() -> list[Invalid]:
    cases = []
    for field in OBJECT_NAME_FIELDS:
        example_name, where = NAME_FIELD_PLACES[(field.kind, field.path)]
        for case, value in field.rule.refused:
            cases.append(
                Invalid(
                    f"{field.kind}-{where}-{case}",
                    field.kind,
                    example_name,
                    put(re.sub(r"\[(\d+)\]", r".\1", where), field.template.format(value)),
                    where,
                    _expected_message(field, case),
                )
            )
    return cases


NAME_CASES = _name_cases()


def test_every_object_name_field_has_a_place_in_an_example() -> None:
    assert sorted(NAME_FIELD_PLACES) == sorted((f.kind, f.path) for f in OBJECT_NAME_FIELDS)
    assert len(NAME_CASES) == sum(len(f.rule.refused) for f in OBJECT_NAME_FIELDS)


def _assert_rejected_naming_the_field(cluster: Cluster, bad: Invalid) -> None:
    body = example(bad.kind, bad.name)
    bad.mutate(body)
    with pytest.raises(ApiException) as rejected:
        create(cluster, "default", body)
    error = rejected.value
    message = json.loads(error.body)["message"]
    assert error.status in (400, 422), message
    assert bad.field in message, message
    assert bad.says in message, message


@pytest.mark.parametrize("bad", INVALID, ids=lambda c: c.case)
def test_bad_spec_is_rejected_naming_the_field(crds: Cluster, bad: Invalid) -> None:
    _assert_rejected_naming_the_field(crds, bad)


@pytest.mark.parametrize("bad", NAME_CASES, ids=lambda c: c.case)
def test_bad_object_name_is_rejected_naming_the_field(crds: Cluster, bad: Invalid) -> None:
    """A name that is not Kubernetes' own (a path, uppercase, too long) never gets stored."""
    _assert_rejected_naming_the_field(crds, bad)
