"""CEL validation rules shared by the CRD schema and the pydantic models.

A :class:`CelRule` is written once next to the model it guards. The CRD generator
emits it as an ``x-kubernetes-validations`` entry, and the model's pydantic
validator raises :func:`rule_error` with the same message text, so a spec refused
by the API server and a spec refused by the operator read the same.

Messages never start with the field path: the API server prefixes ``fieldPath``
itself, and :func:`llmfleet.api.models.format_validation_error` prefixes the
pydantic location.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from pydantic_core import PydanticCustomError

RULE_ERROR_TYPE = "llmfleet_rule"


@dataclass(frozen=True)
class CelRule:
    """One ``x-kubernetes-validations`` entry.

    ``message`` is static; ``message_expression`` (a CEL expression yielding a
    string) lets the message quote the offending value. ``field_path`` is relative
    to the schema node the rule sits on, e.g. ``.maxReplicas``.
    """

    rule: str
    message: str
    message_expression: str | None = None
    field_path: str | None = None
    reason: str | None = None

    def to_openapi(self) -> dict[str, Any]:
        out: dict[str, Any] = {"rule": self.rule, "message": self.message}
        if self.message_expression:
            out["messageExpression"] = self.message_expression
        if self.field_path:
            out["fieldPath"] = self.field_path
        if self.reason:
            out["reason"] = self.reason
        return out


def x_validations(*rules: CelRule) -> dict[str, Any]:
    """``json_schema_extra`` carrying CEL rules, for a model config or a Field."""
    return {"x-kubernetes-validations": [r.to_openapi() for r in rules]}


def cel_string(value: str) -> str:
    """A single-quoted CEL string literal for ``value``."""
    escaped = value.replace("\\", "\\\\").replace("'", "\\'")
    return f"'{escaped}'"


def cel_list(values: Iterable[str]) -> str:
    return "[" + ", ".join(cel_string(v) for v in values) + "]"


def rule_error(message: str, field: str | None = None) -> PydanticCustomError:
    """A pydantic error carrying a CEL rule's message.

    ``field`` (dotted, relative to the model that raises) names the field the
    message is about when the validator sits on a parent model, the way
    ``fieldPath`` does for the CEL rule.
    """
    return PydanticCustomError(RULE_ERROR_TYPE, "{message}", {"message": message, "field": field or ""})
