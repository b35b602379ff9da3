"""CustomResourceDefinitions generated from the API models.

pydantic's JSON Schema becomes a structural OpenAPI v3 schema: references inlined, titles dropped,
optional fields without a null type (the API server prunes nulls), JSON Schema 2020 exclusive
bounds turned into OpenAPI 3.0 ones, and `default: {}` on nested objects so that the API server
applies the defaults inside them even when the user leaves the whole object out.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from pretrain_operator import API_GROUP, API_VERSION
from pretrain_operator.api.base import cel
from pretrain_operator.api.resources import KINDS, Kind
from pretrain_operator.api.status import JobStatus

Schema = dict[str, Any]

# Pods are named <job>-node-<i> and Services <job>-rdzv: both must stay valid DNS-1035 labels.
MAX_JOB_NAME = 40
# Schema keywords a structural schema keeps, in the order they are written out.
KEPT_KEYS = (
    "type", "description", "default", "enum", "format", "pattern", "minimum", "maximum",
    "minLength", "maxLength", "minItems", "maxItems", "required", "nullable",
    "x-kubernetes-int-or-string", "x-kubernetes-preserve-unknown-fields",
    "x-kubernetes-validations",
)  # fmt: skip


def structural_schema(model: type[BaseModel]) -> Schema:
    """The structural OpenAPI v3 schema of a pydantic model (wire names: camelCase)."""
    schema = model.model_json_schema(by_alias=True, mode="validation")
    return _convert(schema, schema.get("$defs", {}))


def _resolve(node: Schema, defs: dict[str, Schema]) -> Schema:
    """Inline a $ref (siblings such as description and default win over the target's)."""
    while "$ref" in node:
        target = defs[node["$ref"].rsplit("/", 1)[-1]]
        node = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
    return node


def _convert(node: Schema, defs: dict[str, Schema]) -> Schema:
    node = _resolve(node, defs)
    if "anyOf" in node:
        choices = [c for c in node["anyOf"] if c.get("type") != "null"]
        if len(choices) != 1:
            raise ValueError(f"a union is not structural: {node}")
        merged = {**_resolve(choices[0], defs), **{k: v for k, v in node.items() if k != "anyOf"}}
        return _convert(merged, defs)

    out: Schema = {k: node[k] for k in KEPT_KEYS if k in node}
    if out.get("default", ...) is None:
        del out["default"]
    for bound, inclusive in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        if bound in node:  # JSON Schema 2020 number form -> OpenAPI 3.0 boolean form
            out[inclusive] = node[bound]
            out[bound] = True
    if "items" in node:
        out["items"] = _convert(node["items"], defs)
    if isinstance(node.get("additionalProperties"), dict):
        out["additionalProperties"] = _convert(node["additionalProperties"], defs)
    if "properties" in node:
        required = set(node.get("required", []))
        out["properties"] = {}
        for name, prop in node["properties"].items():
            converted = _convert(prop, defs)
            explicit_default = "default" in _resolve(prop, defs) or "default" in prop
            if (
                name not in required
                and converted.get("type") == "object"
                and "properties" in converted
                and not explicit_default
            ):
                # The API server validates a default as written (CEL rules included) and applies
                # nested defaults only inside objects that exist: spell them all out.
                converted["default"] = _defaults_of(converted)
            out["properties"][name] = converted
    return out


def _defaults_of(schema: Schema) -> dict[str, Any]:
    defaults: dict[str, Any] = {}
    for name, prop in schema.get("properties", {}).items():
        if "default" in prop:
            defaults[name] = prop["default"]
    return defaults


def _immutable_after_start(kind: Kind) -> dict[str, str]:
    unchanged = " && ".join(f"self.spec.{f} == oldSelf.spec.{f}" for f in kind.immutable_fields)
    fields = ", ".join(f"spec.{f}" for f in kind.immutable_fields)
    return cel(
        f"!has(oldSelf.status) || !has(oldSelf.status.startTime) || ({unchanged})",
        f"{fields} cannot change once the job has started (status.startTime is set); "
        "create a new job instead",
        ".spec",
        "FieldValueForbidden",
    )


def _name_rule() -> dict[str, str]:
    return cel(
        f"self.metadata.name.size() <= {MAX_JOB_NAME} && "
        "self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$')",
        f"metadata.name must be at most {MAX_JOB_NAME} characters, start with a letter and "
        "hold only lowercase letters, digits and '-' (it names Services and pod hostnames)",
    )


def root_schema(kind: Kind) -> Schema:
    return {
        "type": "object",
        "description": (kind.spec.__doc__ or "").strip(),
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string", "description": "pretrain.dev/v1alpha1"},
            "kind": {"type": "string", "description": kind.kind},
            "metadata": {"type": "object"},
            "spec": structural_schema(kind.spec),
            "status": structural_schema(JobStatus),
        },
        "x-kubernetes-validations": [_name_rule(), _immutable_after_start(kind)],
    }


def printer_columns(kind: Kind) -> list[dict[str, Any]]:
    columns: list[dict[str, Any]] = [
        {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
        {"name": "Nodes", "type": "string", "jsonPath": ".status.nodes",
         "description": "ready/desired node pods"},
        {"name": "Step", "type": "integer", "jsonPath": ".status.progress.step"},
        {"name": "Loss", "type": "number", "jsonPath": ".status.progress.loss"},
        {"name": "Tokens/s", "type": "number", "jsonPath": ".status.progress.tokensPerSecond"},
        {"name": "Restarts", "type": "integer", "jsonPath": ".status.restarts", "priority": 1},
        {"name": "Disruptions", "type": "integer", "jsonPath": ".status.disruptions",
         "priority": 1},
        {"name": "Checkpoint", "type": "integer", "jsonPath": ".status.checkpoint.step",
         "priority": 1},
    ]  # fmt: skip
    if kind.kind == "PretrainJob":
        columns.append({"name": "Objective", "type": "string", "priority": 1,
                        "jsonPath": ".spec.objective.type"})  # fmt: skip
    else:
        columns.append({"name": "Method", "type": "string", "priority": 1,
                        "jsonPath": ".spec.method.type"})  # fmt: skip
    columns.append({"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"})
    return columns


def custom_resource_definition(kind: Kind) -> dict[str, Any]:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": kind.crd_name,
            "labels": {"app.kubernetes.io/part-of": "pretrain-operator"},
        },
        "spec": {
            "group": API_GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": kind.kind,
                "listKind": f"{kind.kind}List",
                "plural": kind.plural,
                "singular": kind.singular,
                "shortNames": [kind.short_name],
                "categories": ["training"],
            },
            "versions": [
                {
                    "name": API_VERSION,
                    "served": True,
                    "storage": True,
                    "schema": {"openAPIV3Schema": root_schema(kind)},
                    "subresources": {
                        "status": {},
                        "scale": {
                            "specReplicasPath": ".spec.replicas.max",
                            "statusReplicasPath": ".status.replicas.ready",
                            "labelSelectorPath": ".status.selector",
                        },
                    },
                    "additionalPrinterColumns": printer_columns(kind),
                }
            ],
        },
    }


def all_crds() -> list[dict[str, Any]]:
    return [custom_resource_definition(kind) for kind in KINDS]
