"""Contract errors: one code, one message and the field at fault, whatever rule was broken.

pydantic's own errors are turned into a ``ContractError`` here, so the API's 400 answers and a worker's
``failed`` status name a field the same way.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from runtime.contract.inputs import SCHEDULERS


class ContractError(ValueError):
    """A request or message that breaks the contract: a code, a message and the field at fault."""

    def __init__(self, code: str, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.code, self.message, self.field = code, message, field

    def as_dict(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "field": self.field}


#: pydantic's strict type errors, and the JSON type each field wants.
_JSON_TYPES = {"int_type": "an integer", "float_type": "a number", "string_type": "a string", "bool_type": "a boolean"}


def json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    return {str: "a string", list: "an array", dict: "an object", type(None): "null"}.get(type(value), "another type")


def _field_path(prefix: str, loc: tuple[Any, ...]) -> str:
    parts = [prefix] if prefix else []
    parts += [str(p) for p in loc if p != "__root__"]
    return ".".join(parts) or "body"


def raise_contract_error(exc: ValidationError, prefix: str = "") -> None:
    """Turn pydantic's first error into a ContractError naming the field."""
    err = exc.errors(include_url=False)[0]
    loc = err.get("loc", ())
    field = _field_path(prefix, loc)
    if err["type"] == "extra_forbidden":
        raise ContractError("unknown_field", f"unknown field {field!r}", field) from None
    if err["type"] == "missing":
        raise ContractError("missing_field", f"{field!r} is required", field) from None
    message = err["msg"].removeprefix("Value error, ")
    if err["type"] in _JSON_TYPES:  # requests are strict JSON: "64" is not 64, true is not 1
        message = f"must be {_JSON_TYPES[err['type']]}, not {json_type(err.get('input'))}"
    if err["type"] == "literal_error" and loc and loc[-1] == "scheduler":
        message = f"unknown scheduler; choose one of {', '.join(SCHEDULERS)}"
    raise ContractError("invalid_field", f"{field}: {message}", field) from None


def prefixed(exc: ContractError, prefix: str) -> ContractError:
    """``exc`` for a document nested at ``prefix`` (``task.content``): its field, and the field in its message."""
    field = f"{prefix}.{exc.field}"
    message = exc.message
    if message.startswith(f"{exc.field}:"):
        message = prefix + "." + message
    elif f"'{exc.field}'" in message:
        message = message.replace(f"'{exc.field}'", f"'{field}'", 1)
    return ContractError(exc.code, message, field)
