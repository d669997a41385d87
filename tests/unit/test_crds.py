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


@pytest.mark.parametrize("resource", RESOURCES, ids=lambda r: r.__name__)
def test_lists_and_strings_in_cel_rules_are_bounded(resource: type) -> None:
    """Unbounded lists make the API server's CEL cost estimate reject the CRD."""
    for path, node in walk(root_schema(resource)):
        if node.get("type") == "array" and not path.startswith(".status"):
            assert "maxItems" in node, f"{path} needs maxItems"


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
