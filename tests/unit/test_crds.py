"""The CRDs are generated from the models, structural, and documented field by field."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from privatellm.api import KINDS
from privatellm.api.crd import RESOURCES, crd_files, openapi_schema, render_crd

ROOT = Path(__file__).resolve().parents[2]
CRD_DIRS = [ROOT / "crds", ROOT / "charts/privatellm/crds"]
NON_STRUCTURAL_KEYS = {"$ref", "$defs", "anyOf", "allOf", "oneOf", "title", "const"}


def walk(schema: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    yield path, schema
    for name, sub in schema.get("properties", {}).items():
        yield from walk(sub, f"{path}.{name}")
    if isinstance(schema.get("items"), dict):
        yield from walk(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        yield from walk(schema["additionalProperties"], f"{path}{{}}")


def root_schema(resource: type) -> dict[str, Any]:
    crd = render_crd(resource)  # type: ignore[arg-type]
    schema: dict[str, Any] = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema


@pytest.mark.parametrize("directory", CRD_DIRS, ids=lambda d: str(d.relative_to(ROOT)))
def test_committed_crds_match_the_models(directory: Path) -> None:
    generated = crd_files()
    on_disk = {p.name: p.read_text() for p in directory.glob("*.yaml")}
    assert sorted(on_disk) == sorted(generated), "run `make crds`"
    for name, text in generated.items():
        assert on_disk[name] == text, f"{directory.name}/{name} is stale: run `make crds`"


@pytest.mark.parametrize("resource", RESOURCES, ids=lambda r: r.__name__)
def test_schema_is_structural(resource: type) -> None:
    for path, node in walk(root_schema(resource)):
        assert not NON_STRUCTURAL_KEYS & node.keys(), f"{path}: {NON_STRUCTURAL_KEYS & node.keys()}"
        assert "type" in node, f"{path} has no type"
        assert node.get("additionalProperties") is not False, path


@pytest.mark.parametrize("resource", RESOURCES, ids=lambda r: r.__name__)
def test_every_field_has_a_description(resource: type) -> None:
    undocumented = [
        path
        for path, node in walk(root_schema(resource))
        if path
        and path != ".metadata"
        and not node.get("description")
        and not path.endswith(("[]", "{}"))
    ]
    assert undocumented == []


# Formats whose values have a bounded length.
BOUNDED_FORMATS = {"date", "date-time"}


def unbounded(schema: dict[str, Any], path: str) -> list[str]:
    """Every node under `schema` whose size or value the schema leaves open, and what it lacks.

    A string needs maxLength (or an enum or a bounded format), a list maxItems, a map
    maxProperties, a floating-point number a minimum and a maximum.
    """
    found = []
    for where, node in walk(schema, path):
        kind = node.get("type")
        if kind == "string" and not (
            "maxLength" in node or "enum" in node or node.get("format") in BOUNDED_FORMATS
        ):
            found.append(f"{where}: string without maxLength")
        elif kind == "array" and "maxItems" not in node:
            found.append(f"{where}: list without maxItems")
        elif kind == "object" and "additionalProperties" in node and "maxProperties" not in node:
            found.append(f"{where}: map without maxProperties")
        elif kind == "number" and not {"minimum", "maximum"} <= node.keys():
            found.append(f"{where}: number without minimum and maximum")
    return found


@pytest.mark.parametrize("resource", RESOURCES, ids=lambda r: r.__name__)
def test_every_value_in_a_spec_is_bounded(resource: type) -> None:
    """Nothing a user writes is unbounded: no 1 MB argument is stored, no CEL rule over an
    unbounded list or string makes the API server's cost estimate refuse the CRD, and no
    amount is too large to compute with.

    Status is left out: only the operator writes it, from values the spec and the cluster
    bound, and a limit there could only make the operator's status write fail.
    """
    spec = root_schema(resource)["properties"]["spec"]
    assert unbounded(spec, ".spec") == []


def test_the_bounds_check_finds_every_kind_of_unbounded_value() -> None:
    schema = {
        "type": "object",
        "properties": {
            "text": {"type": "string"},
            "args": {"type": "array", "items": {"type": "string", "maxLength": 8}},
            "labels": {"type": "object", "additionalProperties": {"type": "string"}},
            "price": {"type": "number", "minimum": 0},
            "mode": {"type": "string", "enum": ["a", "b"]},
            "since": {"type": "string", "format": "date-time"},
            "name": {"type": "string", "maxLength": 63},
            "share": {"type": "number", "minimum": 0, "maximum": 1},
        },
    }
    assert unbounded(schema, ".spec") == [
        ".spec.text: string without maxLength",
        ".spec.args: list without maxItems",
        ".spec.labels: map without maxProperties",
        ".spec.labels{}: string without maxLength",
        ".spec.price: number without minimum and maximum",
    ]


def test_nested_objects_carry_their_full_defaults() -> None:
    spec = openapi_schema(KINDS["InferenceDeployment"].model_fields["spec"].annotation)  # type: ignore[arg-type]
    assert spec["properties"]["resources"]["default"]["accelerator"] == "gpu"
    assert spec["properties"]["governance"]["default"]["review"]["required"] is False
    assert spec["properties"]["engine"]["properties"]["gpuMemoryUtilization"]["default"] == 0.9
    assert "default" not in spec["properties"]["autoscaling"], "optional objects stay absent"


def test_exclusive_bounds_use_the_openapi_v3_form() -> None:
    budget = openapi_schema(KINDS["CostBudget"].model_fields["spec"].annotation)  # type: ignore[arg-type]
    limit = budget["properties"]["monthlyLimit"]
    assert limit["minimum"] == 0 and limit["exclusiveMinimum"] is True


def test_crd_names_columns_and_status_subresource() -> None:
    crd = render_crd(KINDS["InferenceDeployment"])
    version = crd["spec"]["versions"][0]
    assert crd["metadata"]["name"] == "inferencedeployments.privatellm.io"
    assert crd["spec"]["names"]["shortNames"] == ["infd", "llm"]
    assert version["subresources"] == {"status": {}}
    assert [c["name"] for c in version["additionalPrinterColumns"]][:3] == [
        "Ready",
        "Model",
        "Replicas",
    ]
    rules = version["schema"]["openAPIV3Schema"]["x-kubernetes-validations"]
    assert any("metadata.name" in r["rule"] for r in rules)


def test_status_carries_observed_generation_and_conditions() -> None:
    for resource in RESOURCES:
        status = root_schema(resource)["properties"]["status"]["properties"]
        assert status["observedGeneration"]["type"] == "integer"
        conditions = status["conditions"]
        assert conditions["x-kubernetes-list-map-keys"] == ["type"]
        assert {"type", "status", "reason", "message", "lastTransitionTime"} <= set(
            conditions["items"]["properties"]
        )


def example_documents() -> list[dict[str, Any]]:
    docs = []
    for path in sorted((ROOT / "examples").glob("*.yaml")):
        docs.extend(d for d in yaml.safe_load_all(path.read_text()) if d)
    return docs


def test_examples_cover_every_kind_and_parse_with_the_models() -> None:
    docs = [d for d in example_documents() if d["apiVersion"].startswith("privatellm.io/")]
    assert {d["kind"] for d in docs} == set(KINDS)
    for doc in docs:
        KINDS[doc["kind"]].model_validate(doc)
