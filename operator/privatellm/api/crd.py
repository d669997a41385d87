"""Generate CustomResourceDefinitions from the pydantic models.

pydantic emits JSON Schema 2020-12; the API server wants a *structural* OpenAPI v3
schema. The conversion inlines references, drops `null` alternatives (an optional
field is simply omitted), turns numeric exclusive bounds into the OpenAPI 3.0 form,
removes titles, and spells out the defaults of nested objects, so that the API
server fills them in and CEL rules can rely on them (the server checks a default
against the rules as it is written, without defaulting inside it first).
"""

from __future__ import annotations

from typing import Any

import yaml
from pydantic import BaseModel
from pydantic.json_schema import GenerateJsonSchema, JsonSchemaValue
from pydantic_core import core_schema

from .access import AccessPolicy
from .base import GROUP, VERSION, Resource
from .budget import CostBudget
from .connector import DataConnector
from .inference import InferenceDeployment

RESOURCES: tuple[type[Resource], ...] = (
    InferenceDeployment,
    AccessPolicy,
    DataConnector,
    CostBudget,
)


class _KubernetesSchema(GenerateJsonSchema):
    """pydantic's generator, with factory defaults made visible to the API server."""

    def default_schema(self, schema: core_schema.WithDefaultSchema) -> JsonSchemaValue:
        inner = super().default_schema(schema)
        factory = schema.get("default_factory")
        if factory is None or schema.get("default_factory_takes_data"):
            return inner
        value = factory()  # type: ignore[call-arg]
        if isinstance(value, BaseModel):
            default = value.model_dump(mode="json", by_alias=True, exclude_none=True)
            return {**inner, "default": default}
        if isinstance(value, list | dict) and value:
            return {**inner, "default": value}
        return inner


_DROPPED_KEYS = {"title", "$defs", "discriminator"}
_LEADING_KEYS = ("type", "description", "default")


def _key_order(key: str) -> tuple[int, str]:
    """type, description and default first, then the rest alphabetically."""
    return (_LEADING_KEYS.index(key), "") if key in _LEADING_KEYS else (len(_LEADING_KEYS), key)


def _structural(node: Any, defs: dict[str, Any]) -> Any:
    if isinstance(node, list):
        return [_structural(item, defs) for item in node]
    if not isinstance(node, dict):
        return node
    node = dict(node)
    ref = node.pop("$ref", None)
    if ref is None and len(node.get("allOf", [])) == 1:
        ref = node.pop("allOf")[0]["$ref"]
    if ref is not None:
        target = defs[ref.rsplit("/", 1)[-1]]
        # the field's own description and default win over the referenced model's
        node = {**target, **node}
    any_of = node.pop("anyOf", None)
    if any_of is not None:
        options = [o for o in any_of if o.get("type") != "null"]
        if len(options) != 1:
            raise ValueError(f"cannot express union {any_of!r} as a structural schema")
        option = options[0]
        node = {**_structural(option, defs), **{k: v for k, v in node.items() if k != "default"}}
    if "const" in node:
        node["enum"] = [node.pop("const")]
    if node.get("default", 0) is None:
        del node["default"]
    for bound, flag in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        if bound in node and not isinstance(node[bound], bool):
            node[flag] = node.pop(bound)
            node[bound] = True
    # pydantic's extra="forbid" becomes additionalProperties: false, which a structural
    # schema may not carry; the API server prunes or, with strict field validation,
    # rejects unknown fields on its own.
    if node.get("additionalProperties") is False:
        del node["additionalProperties"]
    out: dict[str, Any] = {}
    for key in sorted(node, key=_key_order):
        value = node[key]
        if key in _DROPPED_KEYS:
            continue
        if key in ("properties", "$defs"):
            out[key] = {name: _structural(sub, defs) for name, sub in value.items()}
        elif key in ("items", "additionalProperties"):
            out[key] = _structural(value, defs)
        else:
            out[key] = value
    if "enum" in out and "type" not in out:
        out["type"] = "string"
    return out


def openapi_schema(model: type[BaseModel]) -> dict[str, Any]:
    """Structural OpenAPI v3 schema of a model, as the API server accepts it."""
    raw = model.model_json_schema(by_alias=True, schema_generator=_KubernetesSchema)
    schema: dict[str, Any] = _structural(raw, raw.get("$defs", {}))
    return schema


def _field_model(resource: type[Resource], field: str) -> type[BaseModel]:
    annotation = resource.model_fields[field].annotation
    for candidate in (annotation, *getattr(annotation, "__args__", ())):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    raise TypeError(f"{resource.__name__}.{field} is not a model")


def render_crd(resource: type[Resource]) -> dict[str, Any]:
    """The CustomResourceDefinition of one resource model."""
    info = resource.crd_info
    spec_schema = openapi_schema(_field_model(resource, "spec"))
    status_schema = openapi_schema(_field_model(resource, "status"))
    root: dict[str, Any] = {
        "type": "object",
        "description": (resource.__doc__ or "").strip(),
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string", "description": "API version of this object."},
            "kind": {"type": "string", "description": "Kind of this object."},
            "metadata": {"type": "object"},
            "spec": {**spec_schema, "description": "Desired state."},
            "status": {**status_schema, "description": "Observed state, written by the operator."},
        },
    }
    if info.root_rules:
        root["x-kubernetes-validations"] = [r.as_schema() for r in info.root_rules]
    columns = [
        {
            "name": c.name,
            "type": c.type,
            "jsonPath": c.json_path,
            **({"description": c.description} if c.description else {}),
            **({"priority": c.priority} if c.priority else {}),
        }
        for c in info.printer_columns
    ]
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{info.plural}.{GROUP}"},
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": info.kind,
                "listKind": f"{info.kind}List",
                "plural": info.plural,
                "singular": info.kind.lower(),
                "shortNames": list(info.short_names),
                "categories": list(info.categories),
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": columns,
                    "schema": {"openAPIV3Schema": root},
                }
            ],
        },
    }


def crd_yaml(resource: type[Resource]) -> str:
    """The CRD of one resource as YAML, byte for byte stable."""
    header = "# Generated from operator/privatellm/api by `make crds`. Do not edit.\n"
    body = yaml.safe_dump(render_crd(resource), sort_keys=False, width=100)
    return header + body


def crd_files() -> dict[str, str]:
    """File name -> YAML text for every CRD."""
    return {f"{GROUP}_{r.crd_info.plural}.yaml": crd_yaml(r) for r in RESOURCES}
