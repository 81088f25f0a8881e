"""Generate the llmfleet CRDs from the pydantic models.

``python -m llmfleet.api.crd`` (or ``llmfleet crds``), run from the repository root,
writes ``crds/*.yaml`` and the Helm chart's copy in ``charts/llmfleet/crds/``;
``--check`` exits 1 when the files there differ from what the models generate (a unit
test does the same comparison).

The OpenAPI schema is made structural the way the API server requires: every
``$ref`` inlined, optional fields as plain (non-nullable) types, no titles, no
``additionalProperties: false``, and JSON-Schema 2020 exclusive bounds turned
into OpenAPI v3.0's boolean form.
"""

from __future__ import annotations

import argparse
import difflib
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from llmfleet.api import models

HEADER = "# Generated from llmfleet.api.models by `python -m llmfleet.api.crd`. Do not edit.\n"
CATEGORIES = ["llmfleet"]

# Key order in the emitted schema, for a readable YAML file.
_KEY_ORDER = [
    "description",
    "type",
    "format",
    "enum",
    "default",
    "minimum",
    "exclusiveMinimum",
    "maximum",
    "exclusiveMaximum",
    "minLength",
    "maxLength",
    "pattern",
    "minItems",
    "maxItems",
    "minProperties",
    "maxProperties",
    "required",
    "properties",
    "additionalProperties",
    "items",
    "x-kubernetes-list-type",
    "x-kubernetes-list-map-keys",
    "x-kubernetes-validations",
]
_RULE_KEY_ORDER = ["rule", "message", "messageExpression", "fieldPath", "reason"]
_DROPPED_KEYS = {"title", "examples"}
_VALIDATIONS = "x-kubernetes-validations"


class SchemaError(ValueError):
    """The pydantic schema has a shape a structural CRD schema cannot express."""


def _is_null(node: dict[str, Any]) -> bool:
    return node == {"type": "null"}


def _merge(target: dict[str, Any], siblings: dict[str, Any]) -> dict[str, Any]:
    """``target`` with the keys written next to its ``$ref``/``anyOf``; siblings win, rules add up."""
    out = dict(target)
    for key, value in siblings.items():
        if key == _VALIDATIONS and key in out:
            out[key] = out[key] + value
        else:
            out[key] = value
    return out


def _structural(node: dict[str, Any], defs: dict[str, Any], where: str) -> dict[str, Any]:
    node = dict(node)
    if "$ref" in node:
        name = node.pop("$ref").rsplit("/", 1)[-1]
        return _merge(_structural(defs[name], defs, name), _structural(node, defs, where))
    if "allOf" in node:
        parts = node.pop("allOf")
        if len(parts) != 1:
            raise SchemaError(f"{where}: allOf with {len(parts)} members")
        return _merge(_structural(parts[0], defs, where), _structural(node, defs, where))
    if "anyOf" in node:
        options = [o for o in node.pop("anyOf") if not _is_null(o)]
        if len(options) != 1:
            raise SchemaError(f"{where}: unions other than Optional[X] are not structural")
        if node.get("default", ...) is None:
            del node["default"]
        return _merge(_structural(options[0], defs, where), _structural(node, defs, where))

    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _DROPPED_KEYS:
            continue
        if key == "default" and value is None:
            continue
        if key == "additionalProperties":
            if value is False:
                continue  # structural schemas prune unknown fields instead
            if isinstance(value, dict):
                out[key] = _structural(value, defs, f"{where}.*")
                continue
        if key == "properties":
            out[key] = {name: _structural(prop, defs, f"{where}.{name}") for name, prop in value.items()}
            continue
        if key == "items":
            out[key] = _structural(value, defs, f"{where}[]")
            continue
        if key in ("exclusiveMinimum", "exclusiveMaximum") and not isinstance(value, bool):
            out["minimum" if key == "exclusiveMinimum" else "maximum"] = value
            out[key] = True
            continue
        if key == "const":
            out["enum"] = [value]
            continue
        if key == "uniqueItems":
            raise SchemaError(f"{where}: uniqueItems is not allowed; use x-kubernetes-list-type: set")
        out[key] = value
    if "enum" in out and "type" not in out:
        out["type"] = "string"
    return out


def _ordered(node: Any) -> Any:
    if isinstance(node, list):
        return [_ordered(v) for v in node]
    if not isinstance(node, dict):
        return node
    keys = sorted(node, key=lambda k: (_KEY_ORDER.index(k) if k in _KEY_ORDER else len(_KEY_ORDER), k))
    out: dict[str, Any] = {}
    for key in keys:
        value = node[key]
        if key == "properties":
            out[key] = {name: _ordered(prop) for name, prop in value.items()}
        elif key in ("default", "enum", "required", "x-kubernetes-list-map-keys"):
            out[key] = value
        elif key == _VALIDATIONS:
            out[key] = [
                {k: rule[k] for k in sorted(rule, key=lambda k: ([*_RULE_KEY_ORDER, k]).index(k))}
                for rule in value
            ]
        else:
            out[key] = _ordered(value)
    return out


def openapi_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The structural OpenAPI v3 schema of ``model`` (camelCase field names)."""
    raw = model.model_json_schema(by_alias=True, mode="validation")
    defs = raw.pop("$defs", {})
    return _ordered(_structural(raw, defs, model.__name__))


def _without_defaults(node: Any) -> Any:
    """Status is written whole by the operator; schema defaults there would only mislead."""
    if isinstance(node, list):
        return [_without_defaults(v) for v in node]
    if not isinstance(node, dict):
        return node
    return {k: (v if k in ("enum", "required") else _without_defaults(v)) for k, v in node.items() if k != "default"}


def _check_structural(node: dict[str, Any], where: str) -> None:
    """Every node must carry a type, as the API server requires of structural schemas."""
    if "type" not in node:
        raise SchemaError(f"{where}: no type")
    for name, prop in node.get("properties", {}).items():
        _check_structural(prop, f"{where}.{name}")
    if isinstance(node.get("items"), dict):
        _check_structural(node["items"], f"{where}[]")
    if isinstance(node.get("additionalProperties"), dict):
        _check_structural(node["additionalProperties"], f"{where}.*")


def _root_schema(
    description: str,
    spec: type[BaseModel],
    status: type[BaseModel],
    name_rule: bool,
) -> dict[str, Any]:
    metadata: dict[str, Any] = {"type": "object"}
    if name_rule:
        # Only metadata.name and generateName may be constrained; bounding the name also
        # bounds the cost of the CEL rule that checks it.
        metadata["properties"] = {"name": {"type": "string", "maxLength": 63}}
    schema: dict[str, Any] = {
        "description": description,
        "type": "object",
        "required": ["spec"],
        "properties": {
            "apiVersion": {
                "description": "Versioned schema of this object: llmfleet.io/v1alpha1.",
                "type": "string",
            },
            "kind": {"description": "Kind of this object.", "type": "string"},
            "metadata": metadata,
            "spec": openapi_schema(spec),
            "status": _without_defaults(openapi_schema(status)),
        },
    }
    if name_rule:
        schema[_VALIDATIONS] = [models.NAME_RULE.to_openapi()]
    _check_structural(schema, "root")
    return schema


def _crd(
    *,
    kind: str,
    plural: str,
    short_name: str,
    schema: dict[str, Any],
    printer_columns: list[dict[str, Any]],
    scale: bool,
) -> dict[str, Any]:
    subresources: dict[str, Any] = {"status": {}}
    if scale:
        subresources["scale"] = {
            "specReplicasPath": ".spec.replicas",
            "statusReplicasPath": ".status.replicas",
            "labelSelectorPath": ".status.selector",
        }
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{plural}.{models.GROUP}",
            "labels": {"app.kubernetes.io/part-of": "llmfleet"},
        },
        "spec": {
            "group": models.GROUP,
            "names": {
                "kind": kind,
                "listKind": f"{kind}List",
                "plural": plural,
                "singular": kind.lower(),
                "shortNames": [short_name],
                "categories": list(CATEGORIES),
            },
            "scope": "Namespaced",
            "versions": [
                {
                    "name": models.VERSION,
                    "served": True,
                    "storage": True,
                    "schema": {"openAPIV3Schema": schema},
                    "subresources": subresources,
                    "additionalPrinterColumns": printer_columns,
                }
            ],
        },
    }


def _age_column() -> dict[str, Any]:
    return {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}


def model_deployment_crd() -> dict[str, Any]:
    """The ModelDeployment CRD.

    The READY column reads ``.status.readyText``, which the operator writes as
    "ready/desired" (e.g. "2/3"): a printer column is a single JSONPath and cannot
    join two fields.
    """
    schema = _root_schema(
        "ModelDeployment: one model served by one engine, as a set of identical replicas.",
        models.ModelDeploymentSpec,
        models.ModelDeploymentStatus,
        name_rule=True,
    )
    columns: list[dict[str, Any]] = [
        {"name": "Engine", "type": "string", "jsonPath": ".spec.engine.kind"},
        {"name": "Model", "type": "string", "jsonPath": ".spec.model.uri"},
        {"name": "Ready", "type": "string", "jsonPath": ".status.readyText"},
        {
            "name": "Desired",
            "type": "integer",
            "jsonPath": ".status.desiredReplicas",
            "description": "Replicas the autoscaler wants.",
        },
        {
            "name": "Queue",
            "type": "number",
            "jsonPath": ".status.load.queueDepth",
            "description": "Requests waiting per replica.",
        },
        {"name": "Served", "type": "string", "jsonPath": ".spec.model.servedName", "priority": 1},
        _age_column(),
    ]
    return _crd(
        kind=models.MODEL_DEPLOYMENT_KIND,
        plural=models.MODEL_DEPLOYMENT_PLURAL,
        short_name="md",
        schema=schema,
        printer_columns=columns,
        scale=True,
    )


def route_policy_crd() -> dict[str, Any]:
    """The RoutePolicy CRD."""
    schema = _root_schema(
        "RoutePolicy: one public model name and how its traffic is split across ModelDeployments.",
        models.RoutePolicySpec,
        models.RoutePolicyStatus,
        name_rule=False,
    )
    columns = [
        {"name": "Model", "type": "string", "jsonPath": ".spec.model"},
        {"name": "Strategy", "type": "string", "jsonPath": ".spec.strategy"},
        {
            "name": "Programmed",
            "type": "string",
            "jsonPath": '.status.conditions[?(@.type=="Programmed")].status',
            "description": "Whether Envoy serves the policy's current routes.",
        },
        _age_column(),
    ]
    return _crd(
        kind=models.ROUTE_POLICY_KIND,
        plural=models.ROUTE_POLICY_PLURAL,
        short_name="rp",
        schema=schema,
        printer_columns=columns,
        scale=False,
    )


def tenant_crd() -> dict[str, Any]:
    """The Tenant CRD."""
    schema = _root_schema(
        "Tenant: a team calling the fleet's public models with its API keys, within its rate limits.",
        models.TenantSpec,
        models.TenantStatus,
        name_rule=False,
    )
    columns = [
        {"name": "Keys", "type": "integer", "jsonPath": ".status.keys",
         "description": "API keys the ingress accepts for the tenant."},
        {"name": "Models", "type": "string", "jsonPath": ".spec.models"},
        {"name": "Ready", "type": "string", "jsonPath": '.status.conditions[?(@.type=="Ready")].status'},
        _age_column(),
    ]
    return _crd(
        kind=models.TENANT_KIND,
        plural=models.TENANT_PLURAL,
        short_name="tn",
        schema=schema,
        printer_columns=columns,
        scale=False,
    )


def build_crds() -> list[dict[str, Any]]:
    """Every CRD: ModelDeployment, RoutePolicy, Tenant."""
    return [model_deployment_crd(), route_policy_crd(), tenant_crd()]


def crd_filename(crd: dict[str, Any]) -> str:
    return f"{crd['metadata']['name']}.yaml"


class _Dumper(yaml.SafeDumper):
    """Never writes YAML anchors and aliases for repeated values."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def to_yaml(crd: dict[str, Any]) -> str:
    """The file content for ``crd``: a header comment and stable YAML."""
    body = yaml.dump(crd, Dumper=_Dumper, sort_keys=False, width=100, allow_unicode=True)
    return HEADER + body


def expected_files() -> dict[str, str]:
    """File name -> content, as :func:`write_crds` writes them."""
    return {crd_filename(crd): to_yaml(crd) for crd in build_crds()}


def write_crds(directory: str | Path) -> list[Path]:
    """Write every CRD into ``directory`` (created if missing); return the paths."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, content in expected_files().items():
        path = out / name
        path.write_text(content, encoding="utf-8")
        paths.append(path)
    return paths


def stale_report(directory: str | Path) -> str:
    """A unified diff of ``directory`` against the generated CRDs; empty when up to date."""
    out = Path(directory)
    chunks: list[str] = []
    for name, expected in expected_files().items():
        path = out / name
        actual = path.read_text(encoding="utf-8") if path.exists() else ""
        if actual != expected:
            chunks.extend(
                difflib.unified_diff(
                    actual.splitlines(keepends=True),
                    expected.splitlines(keepends=True),
                    fromfile=str(path),
                    tofile=f"{path} (generated)",
                )
            )
    return "".join(chunks)


# Where the CRDs live, relative to the repository root: the top-level copy (kubectl
# apply, tests) and the Helm chart's (installed by `helm install`, never upgraded).
OUTPUT_DIRS = ("crds", "charts/llmfleet/crds")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="llmfleet crds", description="Generate the llmfleet CRDs from the API models."
    )
    parser.add_argument(
        "--output-dir", action="append", dest="output_dirs", metavar="DIR",
        help=f"directory for the CRD YAML files (repeatable; default: {' and '.join(OUTPUT_DIRS)})",
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="write nothing; exit 1 with a diff if the files in any output directory are stale",
    )
    args = parser.parse_args(argv)
    directories = args.output_dirs or list(OUTPUT_DIRS)
    if args.check:
        stale = []
        for directory in directories:
            report = stale_report(directory)
            if report:
                sys.stderr.write(report)
                stale.append(directory)
            else:
                print(f"CRDs in {directory}/ are up to date.")
        if stale:
            flags = " ".join(f"--output-dir {d}" for d in directories)
            command = "python -m llmfleet.api.crd" + ("" if directories == list(OUTPUT_DIRS) else f" {flags}")
            sys.stderr.write(f"\nCRDs in {', '.join(d + '/' for d in stale)} are stale; "
                             f"regenerate them with `{command}`.\n")
            return 1
        return 0
    for directory in directories:
        for path in write_crds(directory):
            print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
