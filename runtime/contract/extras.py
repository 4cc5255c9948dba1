"""SD WebUI's extras (``POST /sdapi/v1/extra-single-image`` and ``extra-batch-images``) as ``upscale`` jobs.

A WebUI client upscales with WebUI 1.10's ``ExtrasSingleImageRequest`` / ``ExtrasBatchImagesRequest`` and reads
``{"html_info", "image"}`` / ``{"html_info", "images"}``. Each image becomes one ``upscale`` job whose inputs say
what WebUI's upscale step does (``scripts/postprocessing_upscale.py``): ``upscaler_1`` is the job's model,
``upscaler_2`` is blended in at ``extras_upscaler_2_visibility``, ``resize_mode`` 1 covers
``upscaling_resize_w`` x ``upscaling_resize_h`` and, with ``upscaling_crop``, cuts to it; sides are rounded
down to multiples of 8 as WebUI's upscalers round them. ``upscaler_1`` "None" returns the image as it is, as
WebUI does (a nearest-neighbour copy at scale 1).

The body is read as WebUI's pydantic v1 models read it (numbers as strings, 0/1 for booleans), except that a
field WebUI lacks is refused, naming it, as on every WebUI route here. Face restoration (``gfpgan_visibility``,
``codeformer_visibility`` above 0) is refused naming the field: spotgen has no face restorer.
``show_extras_results`` and ``upscale_first`` change nothing without one and are accepted at any value;
``codeformer_weight`` likewise while CodeFormer is off.
"""

from __future__ import annotations

import html
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from runtime.contract.errors import ContractError, raise_contract_error
from runtime.contract.inputs import PIXEL_UPSCALERS

#: WebUI's names of the upscalers that need no model (its ``shared.sd_upscalers``' first three).
BUILTIN_NAMES = {"Lanczos": "lanczos", "Nearest": "nearest"}
#: WebUI's upscaler that does nothing.
NO_UPSCALER = "None"
#: WebUI's upscalers make sides that are multiples of this (``modules/upscaler.py``: ``// 8 * 8``).
WEBUI_MULTIPLE = 8
#: The most images one ``extra-batch-images`` request may hold (each is a job; the answer carries them all).
MAX_BATCH_IMAGES = 16


class _Extras(BaseModel):
    """``ExtrasBaseRequest`` of WebUI 1.10 (``modules/api/models.py``), with its defaults and bounds."""

    model_config = ConfigDict(extra="forbid")

    resize_mode: Literal[0, 1] = 0
    show_extras_results: bool = True
    gfpgan_visibility: float = Field(0.0, ge=0.0, le=1.0, allow_inf_nan=False)
    codeformer_visibility: float = Field(0.0, ge=0.0, le=1.0, allow_inf_nan=False)
    codeformer_weight: float = Field(0.0, ge=0.0, le=1.0, allow_inf_nan=False)
    upscaling_resize: float = Field(2.0, ge=1.0, le=8.0)
    upscaling_resize_w: int = Field(512, ge=1)
    upscaling_resize_h: int = Field(512, ge=1)
    upscaling_crop: bool = True
    upscaler_1: str = NO_UPSCALER
    upscaler_2: str = NO_UPSCALER
    extras_upscaler_2_visibility: float = Field(0.0, ge=0.0, le=1.0, allow_inf_nan=False)
    upscale_first: bool = False


class ExtrasSingle(_Extras):
    image: str = ""


class FileData(BaseModel):
    model_config = ConfigDict(extra="forbid")

    data: str
    name: str


class ExtrasBatch(_Extras):
    imageList: list[FileData] = Field(max_length=MAX_BATCH_IMAGES)  # noqa: N815 - WebUI's name


@dataclass(frozen=True)
class ExtrasJob:
    """One image's ``upscale`` job: its model (the upscaler), its inputs, and the body's field its image is at."""

    model: str
    inputs: dict[str, Any]
    image_field: str


def upscaler_names(upscalers: Sequence[str], aliases: Mapping[str, str]) -> dict[str, str]:
    """WebUI's upscaler names -> spotgen's: "Lanczos" and "Nearest", each catalog upscaler by its id and by its
    aliases (``SPOTGEN_ALIASES``, e.g. ``R-ESRGAN 4x+=realesrgan-x4plus``)."""
    names = {**BUILTIN_NAMES, **{p: p for p in PIXEL_UPSCALERS}, **{u: u for u in upscalers}}
    names.update({alias: target for alias, target in aliases.items() if target in upscalers})
    return names


def _coerce(body: Any, batch: bool) -> _Extras:
    if not isinstance(body, dict):
        raise ContractError("invalid_body", "the request body must be a JSON object", "body")
    try:  # lax: pydantic v1's coercions ("2" for 2, 0/1 and "true" for booleans), as WebUI reads the body
        return (ExtrasBatch if batch else ExtrasSingle).model_validate(body)
    except ValidationError as exc:
        raise_contract_error(exc)
        raise  # unreachable


def _upscaler(name: str, names: Mapping[str, str], field: str) -> str | None:
    if name == NO_UPSCALER:
        return None
    if name not in names:
        raise ContractError("unknown_model", f"{field}: unknown upscaler {name!r}; available: "
                            f"{', '.join([NO_UPSCALER, *names])}", field)
    return names[name]


def extras_jobs(body: Any, batch: bool, names: Mapping[str, str]) -> tuple[list[ExtrasJob], _Extras]:
    """The ``upscale`` jobs a WebUI extras body asks for (one per image), and the body as WebUI reads it; a
    ContractError naming the body's field (``upscaler_1``, ``gfpgan_visibility``, ``imageList.1.data``...)."""
    request = _coerce(body, batch)
    for field in ("gfpgan_visibility", "codeformer_visibility"):
        if getattr(request, field) > 0:
            raise ContractError("unsupported_field", f"{field}: spotgen has no face restorer (GFPGAN, CodeFormer); "
                                "send 0 and restore faces elsewhere", field)
    first = _upscaler(request.upscaler_1, names, "upscaler_1")
    second = _upscaler(request.upscaler_2, names, "upscaler_2")
    if isinstance(request, ExtrasBatch):
        images = [(item.data, f"imageList.{i}.data") for i, item in enumerate(request.imageList)]
        if not images:
            raise ContractError("invalid_field", "imageList: no image to work on", "imageList")
    else:
        images = [(request.image, "image")]  # type: ignore[attr-defined]
    if first is None:  # WebUI leaves the image as it is (its second upscaler too)
        return [ExtrasJob("nearest", {"image": image, "scale": 1.0}, field) for image, field in images], request
    inputs: dict[str, Any] = {"multiple_of": WEBUI_MULTIPLE}
    if request.resize_mode == 1:
        inputs.update(width=request.upscaling_resize_w, height=request.upscaling_resize_h, crop=request.upscaling_crop)
    else:
        inputs["scale"] = request.upscaling_resize
    if second is not None and request.extras_upscaler_2_visibility > 0:
        inputs.update(upscaler_2=second, upscaler_2_visibility=request.extras_upscaler_2_visibility)
    return [ExtrasJob(first, {"image": image, **inputs}, field) for image, field in images], request


#: The upscale job's fields -> the extras body's (``image`` is each job's own: ``ExtrasJob.image_field``).
_BODY_FIELDS = {"model": "upscaler_1", "inputs.scale": "upscaling_resize", "inputs.width": "upscaling_resize_w",
                "inputs.height": "upscaling_resize_h", "inputs.upscaler_2": "upscaler_2"}


def extras_error(exc: ContractError, job: ExtrasJob) -> ContractError:
    """``exc``, found in ``job``, naming the extras body's field instead of the job's."""
    fields = {**_BODY_FIELDS, "inputs.image": job.image_field}
    field = fields.get(exc.field or "")
    if field is None:
        return exc
    return ContractError(exc.code, exc.message.replace(exc.field or "", field, 1), field)


def _quote(value: Any) -> str:
    """WebUI's infotext quoting (``infotext_utils.quote``): JSON where the text has a comma, colon or newline."""
    text = str(value)
    return json.dumps(text, ensure_ascii=False) if any(c in text for c in ",:\n") else text


def extras_html_info(request: _Extras) -> str:
    """WebUI's ``html_info`` for the body: its postprocessing infotext (``Postprocess upscale by: 2.0, ...``) as
    ``plaintext_to_html`` makes it; empty (``<p></p>``) when ``upscaler_1`` is "None"."""
    info: dict[str, Any] = {}
    if request.upscaler_1 != NO_UPSCALER:
        if request.resize_mode == 1:
            info["Postprocess upscale to"] = f"{request.upscaling_resize_w}x{request.upscaling_resize_h}"
            if request.upscaling_crop:
                info["Postprocess crop to"] = f"{request.upscaling_resize_w}x{request.upscaling_resize_h}"
        else:
            info["Postprocess upscale by"] = request.upscaling_resize
        info["Postprocess upscaler"] = request.upscaler_1
        if request.upscaler_2 != NO_UPSCALER and request.extras_upscaler_2_visibility > 0:
            info["Postprocess upscaler 2"] = request.upscaler_2
    text = ", ".join(key if key == value else f"{key}: {_quote(value)}" for key, value in info.items())
    return "<p>" + "<br>\n".join(html.escape(line) for line in text.split("\n")) + "</p>"
