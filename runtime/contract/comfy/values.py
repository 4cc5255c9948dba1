"""The check of one widget value of a node (``check_graph``), with ComfyUI's error types and texts.

ComfyUI converts a widget's value before it checks the range (``int()`` for INT, ``float()`` for FLOAT, ``str()``
for STRING), so a graph that ComfyUI runs with ``"steps": "20"`` runs here too, and the graph handed on holds the
converted value. Beyond ComfyUI: a value that is not finite, an object for a string, or a value where a link is
needed is refused here, where ComfyUI would fail while running the graph.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from runtime.contract.comfy.nodes import Input
from runtime.contract.comfy.objectinfo import CATALOG_FIELDS, choices_of, declaration
from runtime.contract.errors import ContractError
from runtime.contract.webui_rules import Names, _resolve

#: ComfyUI leaves out a choice list longer than this from a ``value_not_in_list`` error (a folder of models).
LONG_LIST = 20
_CONVERT = {"INT": int, "FLOAT": float, "STRING": str, "BOOLEAN": bool}
_WHAT = {"models": "model", "loras": "LoRA", "controlnets": "ControlNet", "upscalers": "upscaler"}


def node_error(kind: str, message: str, details: str, **extra: Any) -> dict[str, Any]:
    """One entry of a node's ``errors``, as ComfyUI's ``validate_inputs`` writes it."""
    return {"type": kind, "message": message, "details": details, "extra_info": extra}


def check_value(spec: Input, value: Any, names: Names | None) -> tuple[Any, dict[str, Any] | None]:
    """(the value as the node takes it, None) or (value, the error): converted, in range, in the choices; a model
    name resolved to its catalog id when ``names`` is given."""
    config = declaration(spec, names)
    if spec.is_link:
        return value, _not_converted(spec, value, config, f"a {spec.type} input takes a link [node_id, "
                                                          "output_index]")
    if isinstance(spec.type, str):
        return _typed(spec, value, config)
    if not isinstance(value, str):
        return value, _not_in_list(spec, value, config, choices_of(spec, names) or [])
    if spec.choices in CATALOG_FIELDS and names is not None:
        aliases = getattr(names, CATALOG_FIELDS[spec.choices])
        try:
            return _resolve(aliases, value, spec.name, _WHAT[spec.choices]), None
        except ContractError:
            return value, _not_in_list(spec, value, config, choices_of(spec, names) or [])
    options = choices_of(spec, names)
    if options is None:
        if value.strip():
            return value, None
        return value, _not_in_list(spec, value, config, [])
    if value not in options:
        return value, _not_in_list(spec, value, config, options)
    return value, None


def link_of(prompt: Mapping[str, Any], value: Any) -> tuple[str, int] | None:
    """(node id, output index) of a well-formed link to an existing node (a node id may be written as a number)."""
    if not (isinstance(value, list) and len(value) == 2):
        return None
    source, index = value
    if isinstance(source, int) and not isinstance(source, bool):
        source = str(source)
    if not isinstance(source, str) or source not in prompt or isinstance(index, bool) or not isinstance(index, int):
        return None
    return source, index


def _typed(spec: Input, value: Any, config: list[Any]) -> tuple[Any, dict[str, Any] | None]:
    kind = str(spec.type)
    if value is None or isinstance(value, dict):
        return value, _not_converted(spec, value, config, f"{type(value).__name__} is not a {kind} value")
    try:
        converted = _CONVERT[kind](value)
    except (TypeError, ValueError, OverflowError) as ex:
        return value, _not_converted(spec, value, config, str(ex))
    if isinstance(converted, float) and not math.isfinite(converted):
        return value, _not_converted(spec, value, config, "the value is not a finite number")
    low, high = spec.options.get("min"), spec.options.get("max")
    extra = {"input_name": spec.name, "input_config": config, "received_value": converted}
    if low is not None and converted < low:
        return value, node_error("value_smaller_than_min", f"Value {converted} smaller than min of {low}",
                                 spec.name, **extra)
    if high is not None and converted > high:
        return value, node_error("value_bigger_than_max", f"Value {converted} bigger than max of {high}",
                                 spec.name, **extra)
    return converted, None


def _not_converted(spec: Input, value: Any, config: list[Any], why: str) -> dict[str, Any]:
    kind = spec.type if isinstance(spec.type, str) else "COMBO"
    return node_error("invalid_input_type", f"Failed to convert an input value to a {kind} value",
                      f"{spec.name}, {value}, {why}", input_name=spec.name, input_config=config,
                      received_value=value, exception_message=why)


def _not_in_list(spec: Input, value: Any, config: list[Any], options: list[str]) -> dict[str, Any]:
    if len(options) > LONG_LIST:
        shown, config_shown = f"(list of length {len(options)})", None
    else:
        shown, config_shown = str(options), config
    return node_error("value_not_in_list", "Value not in list", f"{spec.name}: '{value}' not in {shown}",
                      input_name=spec.name, input_config=config_shown, received_value=value)
