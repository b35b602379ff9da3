"""The base of every API model: camelCase on the wire, snake_case in Python, strict fields, and
cross-field rules declared once for both the API server (CEL) and Python.

These models are the one source of truth for the API. The CRD schemas are generated from them
(`pretrain_operator.api.crd`), the operator reads custom objects with them, and the trainer reads
the job spec (rendered as JSON into a ConfigMap, or a file for `pretrain run`) with them, so a
spec that never met an API server is held to the same rules. They import pydantic and nothing else.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Self

from pydantic import BaseModel, ConfigDict, model_validator
from pydantic.alias_generators import to_camel


def cel(
    rule: str, message: str, field_path: str | None = None, reason: str | None = None
) -> dict[str, str]:
    """One `x-kubernetes-validations` entry: a CEL rule the API server checks on every write."""
    validation = {"rule": rule, "message": message}
    if field_path:
        validation["fieldPath"] = field_path
    if reason:
        validation["reason"] = reason
    return validation


@dataclass(frozen=True, slots=True)
class Rule:
    """A rule across fields: `cel` for the API server, `holds` for Python, one message for both."""

    cel: str
    message: str
    holds: Callable[[Any], bool]
    field: str | None = None  # the wire name of the field to blame, relative to the object

    def validation(self) -> dict[str, str]:
        return cel(self.cel, self.message, f".{self.field}" if self.field else None)


def _schema_extra(schema: dict[str, Any], model: type[BaseModel]) -> None:
    rules: tuple[Rule, ...] = getattr(model, "RULES", ())
    if rules:
        schema["x-kubernetes-validations"] = [rule.validation() for rule in rules]


class ApiModel(BaseModel):
    """Fields are camelCase on the wire; unknown fields are refused, as the API server does."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        validate_default=True,
        json_schema_extra=_schema_extra,
    )
    RULES: ClassVar[tuple[Rule, ...]] = ()

    @model_validator(mode="after")
    def _check_rules(self) -> Self:
        for rule in self.RULES:
            if not rule.holds(self):
                raise ValueError(rule.message)
        return self

    def wire(self) -> dict[str, Any]:
        """The object as the API server stores it: camelCase, without unset optional fields."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)
