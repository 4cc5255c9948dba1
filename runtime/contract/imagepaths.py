"""Where a built-in pipeline's inputs hold image references: the top-level fields (``IMAGE_FIELDS``: ``image``,
``control_image``, ``mask``) and the nested ones, each ControlNet unit's and each IP-Adapter's ``image``.

The submit Lambda moves every inline image to S3 (a queue message holds at most 256 KiB) and fetches every
``https://`` image where allowed, and the WebUI routes reckon their answer's size without the images: all of them
must find the same references, nested ones included, so they are listed here once. A path is the keys and list
indexes leading to the reference, as in an error's field name (``inputs.controlnets.0.image``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from runtime.contract.builtin import IMAGE_FIELDS

Path = tuple[str | int, ...]
#: Lists of inputs whose items each hold one image reference in ``image``.
NESTED_IMAGE_LISTS = ("controlnets", "ip_adapters")


def image_paths(inputs: Mapping[str, Any]) -> list[Path]:
    """The path of every image reference (a string) present in ``inputs``, the request's JSON as sent; other
    values are left to the contract, which refuses them naming the field."""
    paths: list[Path] = [(name,) for name in IMAGE_FIELDS if isinstance(inputs.get(name), str)]
    for name in NESTED_IMAGE_LISTS:
        items = inputs.get(name)
        if isinstance(items, list):
            paths += [(name, i, "image") for i, item in enumerate(items)
                      if isinstance(item, Mapping) and isinstance(item.get("image"), str)]
    return paths


def get_path(inputs: Mapping[str, Any], path: Path) -> Any:
    value: Any = inputs
    for key in path:
        value = value[key]
    return value


def set_path(inputs: Mapping[str, Any], path: Path, value: Any) -> dict[str, Any]:
    """A copy of ``inputs`` with ``value`` at ``path`` (the lists and objects on the way copied, the rest shared):
    the request as sent is never changed."""
    head, *rest = path
    if not rest:
        return {**inputs, head: value}  # type: ignore[dict-item]
    inner = inputs[head]  # type: ignore[index]
    if isinstance(inner, list):
        index = rest[0]
        copied = list(inner)
        copied[index] = value if len(rest) == 1 else set_path(inner[index], tuple(rest[1:]), value)  # type: ignore[index]
        return {**inputs, head: copied}  # type: ignore[dict-item]
    return {**inputs, head: set_path(inner, tuple(rest), value)}  # type: ignore[dict-item]


def field_name(path: Path) -> str:
    """The path as the API names a field: ``inputs.controlnets.0.image``."""
    return "inputs." + ".".join(str(key) for key in path)


def key_name(path: Path) -> str:
    """The path as the name of a stored input image: ``controlnets.0.image`` (``image`` for the top level)."""
    return ".".join(str(key) for key in path)
