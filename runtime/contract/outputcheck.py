"""Checking a job's output options (``runtime.contract.formats``) in any pipeline's inputs, with errors that name
the field. Apart from ``formats`` because the errors module imports the inputs, which import the formats."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from runtime.contract.errors import raise_contract_error
from runtime.contract.formats import OUTPUT_FIELDS, OutputOptions


def output_options(inputs: Mapping[str, Any]) -> OutputOptions:
    """The output options of a job's inputs (any pipeline's), or a ``ContractError`` naming ``inputs.format``,
    ``inputs.quality`` or ``inputs.lossless``."""
    picked = {name: inputs[name] for name in OUTPUT_FIELDS if name in inputs}
    try:
        return OutputOptions.model_validate(picked, strict=True)
    except ValidationError as exc:
        raise_contract_error(exc, "inputs")
        raise  # unreachable
