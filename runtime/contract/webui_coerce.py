"""A WebUI body's values as WebUI 1.10's API models make them: pydantic v1's coercions, field by field.

WebUI's ``StableDiffusionTxt2ImgProcessingAPI`` and ``Img2ImgProcessingAPI`` are pydantic v1 models built from
``modules/processing.py``'s annotations (``steps: int``, ``cfg_scale: float``, ``inpainting_mask_invert: int``...),
and pydantic v1 is lenient: ``false`` is 0 for an integer, ``"64"`` is 64, ``7.9`` is 7 (``int()`` truncates), 7
is 7.0 for a number, ``"7.5"`` is 7.5, 5 is ``"5"`` for a string, ``"yes"``, ``"on"`` and 1 are true for a
boolean. Clients rely on that (many send ``"inpainting_mask_invert": false``), and WebUI answers them with an
image, so spotgen reads a body the same way. What pydantic v1 refuses ("abc" or an array for an integer, 2 for a
boolean, a string for an array) WebUI answers with a 422, and spotgen with a 400 naming the field. One rule is
spotgen's own: NaN and the infinities, which pydantic v1 takes from a string ("nan"), are refused, since no
pipeline can run them and JSON has none.
"""

from __future__ import annotations

import json
import math
from typing import Any

from runtime.contract.errors import ContractError, json_type

#: What each kind is called in an error.
KIND_NAMES = {"str": "a string", "bool": "a boolean", "int": "an integer", "num": "a number", "list": "an array",
              "dict": "an object"}
#: pydantic v1's ``bool_validator``: these (strings regardless of case) and nothing else.
_TRUE = frozenset({"1", "on", "t", "true", "y", "yes"})
_FALSE = frozenset({"0", "off", "f", "false", "n", "no"})
#: Python's limit on the digits ``int()`` reads from a string (pydantic v1 refuses longer ones too).
_MAX_INT_DIGITS = 4300


def _refuse(value: Any, kind: str, field: str) -> ContractError:
    shown = f" ({json.dumps(value)[:40]})" if isinstance(value, str | int | float) else ""
    return ContractError("invalid_field", f"{field}: must be {KIND_NAMES[kind]}, not {json_type(value)}{shown}",
                         field)


def _finite(value: float, field: str) -> float:
    if not math.isfinite(value):
        raise ContractError("invalid_number", f"{field}: {value} is not a finite number (no NaN or infinities)",
                            field)
    return value


def coerce(value: Any, kind: str, field: str) -> Any:
    """``value`` as pydantic v1 makes it for a field of ``kind`` (str, bool, int, num, list, dict), or a
    ``ContractError`` naming ``field`` where pydantic v1 refuses it. None is not handled here (WebUI's models
    take it for every field of theirs that defaults to None: ``webui_schema``)."""
    if isinstance(value, float):
        _finite(value, field)
    if kind == "str":
        if isinstance(value, str):
            return value
        if isinstance(value, int | float):  # bool too: pydantic v1 gives "True"
            return str(value)
    elif kind == "bool":
        if isinstance(value, bool):
            return value
        key = value.casefold() if isinstance(value, str) else str(int(value)) if _whole(value) else None
        if key in _TRUE or key in _FALSE:
            return key in _TRUE
    elif kind == "int":
        if isinstance(value, bool | int | float):  # true is 1, 7.9 is 7
            return int(value)
        if isinstance(value, str) and len(value) <= _MAX_INT_DIGITS:
            try:
                return int(value)
            except ValueError:
                pass
    elif kind == "num":
        if isinstance(value, bool | int | float):
            return float(value)
        if isinstance(value, str):
            try:
                number = float(value)
            except ValueError:
                pass
            else:
                return _finite(number, field)
    elif kind == "list":
        if isinstance(value, list):
            return value
    elif kind == "dict":
        if isinstance(value, dict):
            return value
        if isinstance(value, list | str):  # pydantic v1 tries dict(value): [] and [["k", 1]] are objects
            try:
                return dict(value)
            except (TypeError, ValueError):
                pass
    else:
        raise ValueError(f"unknown kind {kind!r}")
    raise _refuse(value, kind, field)


_EXACT = {"str": (str,), "bool": (bool,), "int": (int,), "num": (int, float), "list": (list,), "dict": (dict,)}


def exact(value: Any, kind: str, field: str) -> Any:
    """``value`` if it is of ``kind`` as JSON types go, else a ``ContractError``: for ``override_settings``, which
    WebUI's models declare ``dict[str, Any]`` and WebUI sets into its options as sent (``"80"`` for a JPEG
    quality fails there), so no coercion applies."""
    if isinstance(value, float):
        _finite(value, field)
    if isinstance(value, _EXACT[kind]) and (kind == "bool" or not isinstance(value, bool)):
        return value
    raise _refuse(value, kind, field)


def _whole(value: Any) -> bool:
    """Whether a number is 0 or 1 as pydantic v1's boolean sets hold them (0.0 is 0, 1.0 is 1)."""
    return isinstance(value, int | float) and value in (0, 1)
