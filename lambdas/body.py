"""The one JSON parser of every route: a request body becomes JSON values, or a ``ContractError`` naming what is
wrong, never another exception.

Python's ``json`` takes more than JSON and fails in ways a handler does not expect, each of which a caller can
trigger at will (on AWS an unexpected exception is a Lambda error, a 500):

- nesting deeper than the interpreter's recursion limit raises ``RecursionError``; anything nested deeper than
  ``MAX_DEPTH`` is refused here, before pydantic, ``json.dumps`` or a worker recurse into it;
- an integer of more than ``sys.get_int_max_str_digits()`` digits (4,300) raises ``ValueError``;
- ``NaN``, ``Infinity`` and ``-Infinity`` are accepted although RFC 8259 has no such numbers, and a number too
  large for a float (``1e400``) becomes an infinity: both then break arithmetic far from the parser (a
  ``KeyError`` in a lookup, ``OverflowError`` in ``int()``) or are written back as ``null``;
- a ``\\ud800`` escape gives a string with a lone surrogate, which is not Unicode text: it cannot be encoded as
  UTF-8, so the failure would come later and name the wrong field.

Each is refused with a 400 naming the field (``task.content.eta``, ``alwayson_scripts.controlnet.args.0
.threshold_a``; ``body`` for the body as a whole) in the route's usual error shape.
"""

from __future__ import annotations

import itertools
import json
import math
import re
import sys
from typing import Any

from runtime.contract import MAX_BODY_BYTES, ContractError

#: Deeper JSON is refused. Every request of every route nests a few levels (a ComfyUI graph or a WebUI
#: ControlNet unit: 5 or 6); 64 leaves room for any plugin's inputs and stays far below the recursion limit.
MAX_DEPTH = 64
#: The longest integer Python converts from text (its guard against quadratic conversion); longer is refused.
MAX_INT_DIGITS = sys.get_int_max_str_digits() or 4300


class _Refused:
    """A value the parser met that JSON (or Python) cannot hold; refused, naming its field, after parsing."""

    def __init__(self, code: str, what: str) -> None:
        self.code, self.what = code, what


class _Hooks:
    """``json.loads``'s hooks for one parse: they mark what is refused, so that the (slower) search for its field
    runs only when something is there to find."""

    def __init__(self, long_ints: bool = False) -> None:
        self.marked = False
        self.parse_int = self._int if long_ints else None

    def parse_constant(self, name: str) -> _Refused:
        self.marked = True
        return _Refused("invalid_number", f"{name} is not a JSON number (RFC 8259 has no NaN or infinities)")

    def parse_float(self, text: str) -> float | _Refused:
        value = float(text)
        if math.isinf(value):
            self.marked = True
            return _Refused("invalid_number", f"{text[:40]} is beyond a 64-bit float's range (an infinity)")
        return value

    def _int(self, text: str) -> int | _Refused:
        if len(text.lstrip("-")) > MAX_INT_DIGITS:
            self.marked = True
            return _Refused("invalid_number", f"an integer of {len(text.lstrip('-'))} digits is too long (at most "
                            f"{MAX_INT_DIGITS})")
        return int(text)


#: A string of the JSON text (to leave out when counting brackets), and a surrogate's escape.
_STRING_RE = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)
_SURROGATE_RE = re.compile(r"\\u[dD][89a-fA-F]")
_NOT_BRACKET_RE = re.compile(r"[^\[\]{}]+")
_DEPTH_STEP = {"[": 1, "{": 1, "]": -1, "}": -1}


def _depth(text: str) -> int:
    """The JSON text's deepest nesting (brackets outside strings): C-speed scans, no recursion."""
    brackets = _NOT_BRACKET_RE.sub("", _STRING_RE.sub("", text))
    return max(itertools.accumulate(map(_DEPTH_STEP.__getitem__, brackets)), default=0)


def _is_text(value: str) -> bool:
    """Whether ``value`` is Unicode text: no lone surrogate (what a ``\\ud800`` escape without its pair gives)."""
    if value.isascii():
        return True
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _name(path: tuple[str, ...]) -> str:
    return ".".join(path) if path else "body"


def _leaf(item: Any, path: tuple[str, ...]) -> None:
    if isinstance(item, _Refused):
        raise ContractError(item.code, f"{_name(path)}: {item.what}", _name(path))
    if isinstance(item, str) and not _is_text(item):
        raise ContractError("invalid_text", f"{_name(path)}: holds a lone UTF-16 surrogate (a \\ud800 to \\udfff "
                            "escape without its pair), which is not Unicode text", _name(path))


def check(value: Any) -> None:
    """Refuse, naming the field, what the hooks marked, strings and keys that are not Unicode text, and nesting
    deeper than ``MAX_DEPTH``. Iterative: it recurses into nothing itself."""
    todo: list[tuple[Any, tuple[str, ...]]] = [(value, ())]
    while todo:
        item, path = todo.pop()
        if len(path) > MAX_DEPTH:
            where = _name(path[:4]) + (".…" if len(path) > 4 else "")  # its start: enough to find it
            raise ContractError("too_deep", f"{where}: the request nests deeper than {MAX_DEPTH} levels", where)
        if isinstance(item, dict):
            children: Any = item.items()
            for key in item:
                if not _is_text(key):
                    raise ContractError("invalid_text", f"{_name(path)}: a key holds a lone UTF-16 surrogate, "
                                        "which is not Unicode text", _name(path))
        elif isinstance(item, list):
            children = enumerate(item)
        else:
            _leaf(item, path)
            continue
        for key, child in children:
            if isinstance(child, dict | list):
                todo.append((child, (*path, str(key))))
            elif not isinstance(child, int | float | bool | None):  # strings and what the hooks marked
                _leaf(child, (*path, str(key)))


def parse_json(body: bytes, limit: int = MAX_BODY_BYTES) -> Any:
    """The body's JSON value, or ``ContractError``: too large, not UTF-8, not JSON, or JSON this API refuses."""
    if len(body) > limit:
        raise ContractError("body_too_large", f"the request body is larger than {limit} bytes", "body")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ContractError("invalid_json", f"the request body is not UTF-8 text (byte {exc.start})", "body") \
            from None
    hooks = _Hooks()
    try:
        try:
            value = json.loads(text, parse_constant=hooks.parse_constant, parse_float=hooks.parse_float)
        except ValueError as exc:
            if isinstance(exc, json.JSONDecodeError):
                raise
            hooks = _Hooks(long_ints=True)  # an integer Python will not convert: parse again to find its field
            value = json.loads(text, parse_constant=hooks.parse_constant, parse_float=hooks.parse_float,
                               parse_int=hooks.parse_int)
    except json.JSONDecodeError as exc:
        raise ContractError("invalid_json", f"the request body is not valid JSON: {exc.msg} at line {exc.lineno} "
                            f"column {exc.colno}", "body") from None
    except RecursionError:
        raise ContractError("too_deep", f"body: the request nests deeper than {MAX_DEPTH} levels", "body") from None
    if hooks.marked or _SURROGATE_RE.search(text) or (
            text.count("[") + text.count("{") > MAX_DEPTH and _depth(text) > MAX_DEPTH):
        check(value)
    return value
