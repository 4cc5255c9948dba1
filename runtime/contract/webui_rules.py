"""What the WebUI modules share: the names of the catalog's entries as clients write them, and the rules for a
field spotgen accepts only at some values or an image it stretches (``runtime.contract.webui``, ``webui_units``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from runtime.contract.errors import ContractError
from runtime.contract.images import ImageRefError, decode_inline
from runtime.contract.inputs import ModelId
from runtime.contract.webui_schema import _EXTENSIONS, _HASH_RE


class Names(BaseModel):
    """What WebUI clients call the catalog's entries: alias -> catalog id, per kind; each id is its own alias."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    models: dict[str, ModelId] = Field(default_factory=dict)
    loras: dict[str, ModelId] = Field(default_factory=dict)
    controlnets: dict[str, ModelId] = Field(default_factory=dict)
    #: IP-Adapters by alias; empty: a unit's model names one by its file (``webui_units._ip_adapter``).
    ip_adapters: dict[str, ModelId] = Field(default_factory=dict)
    #: Upscaler models (catalog ``kind: upscaler``), for ``hr_upscaler`` beside WebUI's own names.
    upscalers: dict[str, ModelId] = Field(default_factory=dict)
    #: The checkpoint of a body that names none (WebUI's loaded model); None: a body must name one.
    default_model: ModelId | None = None
    #: The family and variant of the models the settings say them of: how a body reads on Flux and SD 3.5
    #: (``webui_families``); a model not listed gets the body as it is, and its worker decides.
    families: dict[ModelId, str] = Field(default_factory=dict)
    variants: dict[ModelId, str] = Field(default_factory=dict)

    @field_validator("models", "loras", "controlnets", "upscalers", "ip_adapters")
    @classmethod
    def _ids_are_aliases(cls, value: dict[str, str]) -> dict[str, str]:
        return {**value, **{catalog_id: catalog_id for catalog_id in value.values()}}

    @model_validator(mode="after")
    def _default_is_a_model(self) -> Names:
        if self.default_model is not None and self.default_model not in self.models:
            raise ValueError(f"default_model {self.default_model!r} is not one of the models")
        return self


def _get(body: Mapping[str, Any], key: str, default: Any) -> Any:
    value = body.get(key)
    return default if value is None else value


def _accepted(value: Any, accepted: tuple[Any, ...]) -> bool:
    """Equal as JSON values: true is not 1, 0 is 0.0."""
    return any(value == a and isinstance(value, bool) == isinstance(a, bool) and (value is None) == (a is None)
               for a in accepted)


def _unsupported(field: str, value: Any, accepted: tuple[Any, ...]) -> ContractError:
    shown, allowed = json.dumps(value), " or ".join(json.dumps(a) for a in accepted if a is not None) or "null"
    return ContractError("unsupported_field", f"{field}: {shown[:40]} is not supported yet; spotgen implements "
                         f"only {allowed} (or leave the field out)", field)


def _resolve(aliases: Mapping[str, str], name: str, field: str, what: str) -> str:
    """The catalog id of ``name`` as WebUI clients write it: a title (``x.safetensors [hash]``), a file name
    (maybe in a folder) or a name without extension; the exact spelling first, then regardless of case."""
    bare = _HASH_RE.sub("", name.strip())
    candidates: list[str] = []
    for text in dict.fromkeys((name, bare, bare.replace("\\", "/").rsplit("/", 1)[-1])):
        stem = next((text[: -len(ext)] for ext in _EXTENSIONS if text.casefold().endswith(ext)), text)
        candidates += [text, stem, *(stem + ext for ext in _EXTENSIONS)]
    folded: dict[str, str | None] = {}
    for alias, catalog_id in aliases.items():  # an alias that two ids share regardless of case matches neither
        folded[alias.casefold()] = catalog_id if folded.get(alias.casefold(), catalog_id) == catalog_id else None
    for found in ([aliases.get(c) for c in candidates], [folded.get(c.casefold()) for c in candidates]):
        if any(found):
            return next(f for f in found if f)
    known = ", ".join(sorted(set(aliases.values()))) or "none"
    raise ContractError("unknown_model", f"{field}: no {what} is called {name!r}; the catalog has: {known}", field)


def _check_resize(mode: Any, image: str, size: tuple[int, int], field: str,
                  modes: tuple[tuple[Any, ...], tuple[Any, ...]]) -> None:
    """Spotgen stretches an input image to width x height; WebUI's crop and pad modes do the same to an image
    of that aspect ratio, so they are accepted for one, and refused for any other."""
    stretch, fit = modes
    if not _accepted(mode, stretch) and not (_accepted(mode, fit) and _same_shape(image, size)):
        raise ContractError("unsupported_field", f"{field}: {json.dumps(mode)} is not supported yet: spotgen stretches "
                            f"the image to width x height ({json.dumps(stretch[0])}); crop and fill modes do the same "
                            "only to an image of that aspect ratio", field)


def _same_shape(ref: str, size: tuple[int, int]) -> bool:
    """Whether an inline image has the aspect ratio of width x height (an s3:// one is not read here)."""
    try:
        image = decode_inline(ref)
    except ImageRefError:  # not an image (the image check refuses it, naming the field) or an s3:// one
        return ref[:5].lower() != "s3://"
    return image.width * size[1] == image.height * size[0]
