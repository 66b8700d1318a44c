"""Generate CustomResourceDefinitions from the pydantic models (the models are the source of truth)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from ferry.api import GROUP
from ferry.api.base import ApiModel, rule
from ferry.api.kinds import KindDef

Schema = dict[str, Any]

# JSON-Schema keywords that structural OpenAPI v3 schemas in CRDs do not accept (map keys cannot be bounded).
_DROPPED = ("title", "$defs", "discriminator", "const", "propertyNames")


def openapi_schema(model: type[ApiModel]) -> Schema:
    """The model's JSON schema as a structural OpenAPI v3 schema: refs inlined, nulls dropped."""
    schema = model.model_json_schema(by_alias=True, mode="validation")
    structural: Schema = _structural(schema, schema.get("$defs", {}))
    return structural


def _structural(node: Any, defs: dict[str, Schema]) -> Any:
    if isinstance(node, list):
        return [_structural(item, defs) for item in node]
    if not isinstance(node, dict):
        return node
    node = dict(node)
    while "$ref" in node or "anyOf" in node:
        if "$ref" in node:
            target = copy.deepcopy(defs[node.pop("$ref").rsplit("/", 1)[-1]])
            node = _merge(target, node)
        if "anyOf" in node:
            node = _collapse_any_of(node)
    out: Schema = {}
    for key, value in node.items():
        if key in _DROPPED:
            continue
        if key == "properties":
            out[key] = {name: _structural(prop, defs) for name, prop in value.items()}
        elif key == "additionalProperties" and value is False:
            continue  # structural schemas prune unknown fields instead
        else:
            out[key] = _structural(value, defs)
    if out.get("default", 0) is None:
        del out["default"]
    return out


def _merge(target: Schema, siblings: Schema) -> Schema:
    """A $ref's siblings (description, default, validations) override or extend the referenced schema."""
    rules = target.get("x-kubernetes-validations", []) + siblings.get("x-kubernetes-validations", [])
    merged = {**target, **siblings}
    if rules:
        merged["x-kubernetes-validations"] = rules
    return merged


def _collapse_any_of(node: Schema) -> Schema:
    options = [o for o in node.pop("anyOf") if o.get("type") != "null"]
    types = {o.get("type") for o in options}
    if len(options) == 1:
        return _merge(options[0], node)
    if types == {"integer", "string"}:
        return {**node, "x-kubernetes-int-or-string": True}
    raise ValueError(f"cannot express anyOf {options} in a structural schema")


def immutability_rules(kind: KindDef, spec_schema: Schema) -> list[dict[str, str]]:
    """Transition rules on spec: each field but the mutable ones keeps its value, presence included."""
    if kind.mutable_fields is None:
        return []
    required = set(spec_schema.get("required", []))
    rules = []
    for field in spec_schema["properties"]:
        if field in kind.mutable_fields:
            continue
        message = (
            f"spec.{field} cannot change after creation; only spec.state can. Create a new {kind.kind} to change it."
        )
        if field in required or "default" in spec_schema["properties"][field]:
            expression = f"self.{field} == oldSelf.{field}"
        else:
            expression = (
                f"has(self.{field}) == has(oldSelf.{field}) && (!has(self.{field}) || self.{field} == oldSelf.{field})"
            )
        rules.append(rule(expression, message))
    return rules


def crd_for(kind: KindDef) -> dict[str, Any]:
    spec = openapi_schema(kind.spec_model)
    spec["description"] = f"Desired state of the {kind.kind}."
    spec.setdefault("x-kubernetes-validations", []).extend(immutability_rules(kind, spec))
    status = openapi_schema(kind.status_model)
    status["description"] = f"Observed state of the {kind.kind}, written by the operator and its workers."
    root = {
        "type": "object",
        "description": kind.description,
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object"},
            "spec": spec,
            "status": status,
        },
    }
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": kind.crd_name, "labels": {"app.kubernetes.io/part-of": "ferry"}},
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": kind.kind,
                "listKind": f"{kind.kind}List",
                "plural": kind.plural,
                "singular": kind.singular,
                "shortNames": list(kind.short_names),
                "categories": list(kind.categories),
            },
            "versions": [
                {
                    "name": kind.version,
                    "served": True,
                    "storage": True,
                    "subresources": subresources(kind),
                    "additionalPrinterColumns": [c.wire() for c in kind.printer_columns],
                    "schema": {"openAPIV3Schema": root},
                }
            ],
        },
    }


# Where the scale subresource reads and writes: the worker count asked for, the workers reporting, and the
# selector of their pods (status fields the operator fills), so `kubectl scale` and an autoscaler work.
SCALE = {
    "specReplicasPath": ".spec.replicas",
    "statusReplicasPath": ".status.replicas",
    "labelSelectorPath": ".status.labelSelector",
}


def subresources(kind: KindDef) -> dict[str, Any]:
    return {"status": {}, **({"scale": dict(SCALE)} if kind.scalable else {})}


def render_crd_yaml(kind: KindDef) -> str:
    header = "# Generated by `ferry crds` from the pydantic models in operator/ferry. Do not edit.\n"
    body: str = yaml.safe_dump(crd_for(kind), sort_keys=False, width=100)
    return header + body


def write_crds(kinds: list[KindDef], directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for kind in kinds:
        path = directory / f"{GROUP}_{kind.plural}.yaml"
        path.write_text(render_crd_yaml(kind))
        paths.append(path)
    return paths
