"""SD WebUI (AUTOMATIC1111) API requests as spotgen jobs: the bodies of ``POST /sdapi/v1/txt2img`` and ``/img2img``.

People bring WebUI clients (the ``webuiapi`` package, their scripts, the AWS "stable-diffusion-on-eks" sample,
whose v1alpha2 ``content`` is such a body) and expect WebUI's picture. So a body means what it means on WebUI
1.10, or it is refused naming the body's own field; it never silently becomes another image. What a body leaves
out is WebUI's default, not spotgen's (50 steps, CFG 7, 512 x 512, Euler). Clients send every field every time,
so a field spotgen does not implement is accepted at any value that cannot change the images: WebUI's default,
or anything while what it tunes is off (``hr_*`` without ``enable_hr``...); a field WebUI lacks is refused.
Values are read as WebUI's pydantic v1 models read them ("64" is 64 for an integer, false is 0, "7.5" is 7.5
for a number): ``webui_coerce``; what WebUI refuses is refused naming the field. The sampler, its schedule type
and ``eta`` (eta 0 on Euler a is Euler) are read as WebUI does: ``webui_samplers``.
Flux and SD 3.5 checkpoints read a body as Forge does, with its ``distilled_cfg_scale``: ``webui_families``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from runtime.contract import webui_passes, webui_scripts
from runtime.contract.errors import ContractError
from runtime.contract.inputs import MAX_IMAGES, MAX_LORA_WEIGHT, MAX_LORAS, WEBUI_SAMPLERS, ModelId
from runtime.contract.webui_coerce import KIND_NAMES, coerce, exact
from runtime.contract.webui_families import family_inputs
from runtime.contract.webui_rules import Names, _accepted, _check_resize, _get, _resolve, _unsupported
from runtime.contract.webui_samplers import sampler_of
from runtime.contract.webui_schema import (
    _EXTRA_NETWORK_RE,
    _INIT_RESIZE,
    _NUMBER_RE,
    _ONLY,
    _SETTINGS,
    _TYPES,
)
from runtime.contract.webui_units import _scripts

Task = Literal["txt2img", "img2img"]
__all__ = ["Names", "Task", "WebuiJob", "from_webui"]


class WebuiJob(BaseModel):
    """The job a WebUI body asks for; ``inputs`` are checked as the pipeline's by ``jobs.validate_inputs``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    pipeline: Literal["txt2img", "img2img", "controlnet", "inpaint", "sd_upscale"]
    model: ModelId
    inputs: dict[str, Any]
    #: The body left the seed to the server (-1 or none): the API picks one and reports it.
    server_seed: bool
    #: The sampler the body named where spotgen runs another for it (an ancestral one at eta 0 runs as the sampler
    #: without its noise): WebUI's answer names the body's, with its ``Eta``.
    named_sampler: str | None = None




def from_webui(body: dict[str, Any], task: Task, names: Names) -> WebuiJob:
    """The job a WebUI ``/sdapi/v1/{task}`` body asks for, or a ``ContractError`` naming the body's field."""
    if task not in _TYPES:
        raise ValueError(f"task is txt2img or img2img, not {task!r}")
    if not isinstance(body, dict):
        raise ContractError("invalid_body", "the request body must be a JSON object", "body")
    body = _check_fields(body, _TYPES[task])
    size = (_get(body, "width", 512), _get(body, "height", 512))
    sampler, schedule, own = sampler_of(body)
    prompt, loras = _prompt(body, names)
    inputs: dict[str, Any] = {
        "prompt": prompt, "negative_prompt": _get(body, "negative_prompt", ""), "width": size[0],
        "height": size[1], "steps": _get(body, "steps", 50), "guidance_scale": _get(body, "cfg_scale", 7.0),
        "scheduler": sampler, "schedule": schedule, "num_images": _count(body),
    }
    settings = _get(body, "override_settings", {})
    seed, (model, clip_skip) = _get(body, "seed", -1), _settings(settings, names)
    given = {"seed": None if seed == -1 else seed, "loras": loras or None, "clip_skip": clip_skip}
    inputs |= {key: value for key, value in given.items() if value is not None} | _output_format(settings)
    hires = bool(body.get("enable_hr")) and task == "txt2img"
    script_model, unit_pipeline, control = _scripts(body.get("alwayson_scripts", {}), task, names, size, hires)
    if None not in (model, script_model) and model != script_model:
        field = "alwayson_scripts.sd_model_checkpoint"
        raise ContractError("invalid_field", f"{field}: another checkpoint than override_settings' one", field)
    if (model := model or script_model or names.default_model) is None:
        field = "override_settings.sd_model_checkpoint"
        raise ContractError("missing_field", f"{field}: name the checkpoint (there is no default one)", field)
    inputs |= (_init_image(body, size) if task == "img2img" else {}) | control
    pipeline, inputs = _passes(body, task, names, model, size, inputs, unit_pipeline or task)
    field = "alwayson_scripts.sd_model_checkpoint" if script_model and not settings.get("sd_model_checkpoint") \
        else "override_settings.sd_model_checkpoint"
    inputs = family_inputs(body, inputs, names.families.get(model), names.variants.get(model), field, own,
                           pipeline)
    return WebuiJob(pipeline=pipeline, model=model, inputs=inputs, server_seed=seed == -1,
                    named_sampler=WEBUI_SAMPLERS[own] if own != sampler else None)


def _passes(body: Mapping[str, Any], task: Task, names: Names, model: str, size: tuple[int, int],
            inputs: dict[str, Any], pipeline: str) -> tuple[str, dict[str, Any]]:
    """The pipeline and inputs with WebUI's hires fix, refiner, tiling and inpainting (``webui_passes``)."""
    def resolver(aliases: Mapping[str, str]) -> webui_passes.Resolve:
        return lambda name, field, what: _resolve(aliases, name, field, what)

    def hr_prompt(text: str, field: str) -> str:
        try:
            hr, loras = _prompt({**body, "prompt": text}, names)
        except ContractError as exc:
            raise ContractError(exc.code, exc.message.replace("prompt:", f"{field}:", 1), field) from None
        if loras != inputs.get("loras", []):
            raise ContractError("unsupported_field", f"{field}: the second pass applies the first pass's LoRAs "
                                "here; tag the same ones, or none", field)
        return hr

    out = inputs | webui_passes.refiner(body, task, resolver(names.models))
    if body.get("tiling"):
        out["tiling"] = True
    if body.get("enable_hr") and task == "txt2img":  # img2img's models have no enable_hr
        if pipeline != "txt2img":
            raise ContractError("unsupported_field", "enable_hr: spotgen runs hires fix with ControlNet units as "
                                "controlnets of txt2img, not yet through this route", "enable_hr")
        out["hires"] = webui_passes.hires(
            body, size, model, resolver(names.models), resolver(names.upscalers),
            lambda name: sampler_of({"sampler_name": name, "eta": body.get("eta")})[0], hr_prompt)
    if webui_scripts.selected(body, task) == "sd upscale":  # refuses another script_name, naming it
        if out.get("controlnets") or out.get("ip_adapters"):
            field = "alwayson_scripts.controlnet"
            raise ContractError("unsupported_field", f"{field}: SD upscale's tiles run without units here", field)
        return "sd_upscale", out | webui_scripts.sd_upscale(body, names)
    if task == "img2img" and body.get("mask"):  # WebUI reads "" as no mask
        pipeline, out = "inpaint", out | webui_passes.inpaint(body)
    return pipeline, out


def _typed(value: Any, kind: str, field: str) -> Any:
    """``value`` as WebUI's pydantic v1 models read a field of ``kind``: ``webui_coerce``."""
    return coerce(value, kind, field)


def _check_fields(body: Mapping[str, Any], types: Mapping[str, str]) -> dict[str, Any]:
    """The body with its values as WebUI's models make them; a field WebUI lacks, or null where WebUI's model
    takes none, refused naming it."""
    out: dict[str, Any] = {}
    for key, value in body.items():
        if key not in types:
            raise ContractError("unknown_field", f"unknown field {key!r}: SD WebUI's API has no such field here", key)
        if value is None and not types[key].endswith("?"):
            raise ContractError("invalid_field", f"{key}: must be {KIND_NAMES[types[key]]}, not null", key)
        if value is not None:
            value = _typed(value, types[key].rstrip("?"), key)
            if key in _ONLY and not _accepted(value, _ONLY[key]):
                raise _unsupported(key, value, _ONLY[key])
        out[key] = value
    return out


def _count(body: Mapping[str, Any]) -> int:
    batch_size, n_iter = _get(body, "batch_size", 1), _get(body, "n_iter", 1)
    field = "batch_size" if batch_size < 1 or batch_size > MAX_IMAGES else "n_iter"
    if min(batch_size, n_iter) < 1 or batch_size * n_iter > MAX_IMAGES:
        raise ContractError("invalid_field", f"{field}: batch_size x n_iter is {batch_size} x {n_iter} images; a job "
                            f"makes 1 to {MAX_IMAGES}", field)
    return batch_size * n_iter


def _prompt(body: Mapping[str, Any], names: Names) -> tuple[str, list[dict[str, Any]]]:
    """The prompt without its ``<lora:NAME:WEIGHT>`` tags, and those LoRAs. The tags are cut out and nothing
    else, as WebUI does, so the text encoder reads what it reads on WebUI."""
    if "prompt" not in body:
        raise ContractError("missing_field", "'prompt' is required", "prompt")
    loras: list[dict[str, Any]] = []

    def take(match: re.Match[str]) -> str:
        kind, args, tag = match.group(1), match.group(2).split(":"), match.group(0)
        if body.get("disable_extra_networks") is True:
            return ""  # WebUI still cuts the tag out
        if kind not in ("lora", "lyco") or len(args) > 2 or any("=" in arg for arg in args):
            raise ContractError("unsupported_field", f"prompt: {tag!r} is not supported yet; spotgen applies LoRAs "
                                "as <lora:NAME> or <lora:NAME:WEIGHT> (one weight)", "prompt")
        weight = args[1].strip() if len(args) > 1 else "1"
        if not _NUMBER_RE.match(weight) or abs(float(weight)) > MAX_LORA_WEIGHT:
            raise ContractError("invalid_field", f"prompt: {tag!r}: the weight must be a number from "
                                f"{-MAX_LORA_WEIGHT} to {MAX_LORA_WEIGHT}", "prompt")
        lora_id = _resolve(names.loras, args[0], "prompt", "LoRA")
        if any(lora["id"] == lora_id for lora in loras):
            raise ContractError("invalid_field", f"prompt: LoRA {lora_id!r} is tagged twice", "prompt")
        loras.append({"id": lora_id, "weight": float(weight)})
        return ""

    if not (text := _EXTRA_NETWORK_RE.sub(take, body["prompt"])) or len(loras) > MAX_LORAS:
        why = f"{len(loras)} LoRAs; a job applies {MAX_LORAS} at most" if text else "empty (without its tags)"
        raise ContractError("invalid_field", f"prompt: {why}", "prompt")
    return text, loras


def _settings(settings: Mapping[str, Any], names: Names) -> tuple[str | None, int | None]:
    """(checkpoint, clip skip) of ``override_settings``; another setting is refused unless at its default."""
    model = clip_skip = None
    for key, value in settings.items():
        field = f"override_settings.{key}"
        if key == "sd_model_checkpoint":
            model = _resolve(names.models, exact(value, "str", field), field, "checkpoint")
        elif key == "CLIP_stop_at_last_layers":
            clip_skip = exact(value, "int", field)
        elif key in _FORMAT_SETTINGS:
            continue  # read by _output_format
        elif key not in _SETTINGS:
            raise ContractError("unsupported_field", f"{field}: spotgen does not apply this WebUI setting", field)
        elif not _accepted(value, _SETTINGS[key]):
            raise _unsupported(field, value, _SETTINGS[key])
    return model, clip_skip


#: WebUI's settings of the saved (and, in its API, returned) images' format: ``samples_format``, ``jpeg_quality``
#: (WebP's too, default 80) and ``webp_lossless``; spotgen's ``format``, ``quality`` and ``lossless``.
_FORMAT_SETTINGS = ("samples_format", "jpeg_quality", "webp_lossless")
_SAMPLES_FORMATS = {"png": "png", "jpg": "jpeg", "jpeg": "jpeg", "webp": "webp"}
_WEBUI_QUALITY = 80


def _output_format(settings: Mapping[str, Any]) -> dict[str, Any]:
    """The job's output format of ``override_settings``, as WebUI saves its images: ``jpeg_quality`` (WebUI's 80
    when left out) for JPEG and lossy WebP, ``webp_lossless`` for WebP only (WebUI ignores both elsewhere)."""
    field = "override_settings.samples_format"
    name = exact(settings.get("samples_format", "png"), "str", field)
    if name.casefold() not in _SAMPLES_FORMATS:
        raise ContractError("invalid_field", f"{field}: spotgen writes {', '.join(_SAMPLES_FORMATS)}, not {name!r}",
                            field)
    fmt = _SAMPLES_FORMATS[name.casefold()]
    quality = exact(settings.get("jpeg_quality", _WEBUI_QUALITY), "int", "override_settings.jpeg_quality")
    lossless = exact(settings.get("webp_lossless", False), "bool", "override_settings.webp_lossless")
    if fmt == "png":
        return {}
    if fmt == "webp" and lossless:
        return {"format": fmt, "lossless": True}
    return {"format": fmt, "quality": quality}


def _init_image(body: Mapping[str, Any], size: tuple[int, int]) -> dict[str, Any]:
    images = _get(body, "init_images", [])
    if not images:
        raise ContractError("missing_field", "'init_images' is required: img2img starts from an image", "init_images")
    if len(images) > 1:
        raise ContractError("unsupported_field", f"init_images: {len(images)} images; spotgen's img2img takes one",
                            "init_images")
    image = _image(images[0], "init_images.0")
    _check_resize(_get(body, "resize_mode", 0), image, size, "resize_mode", _INIT_RESIZE)
    return {"image": image, "strength": body.get("denoising_strength", 0.75)}


def _image(value: Any, field: str) -> str:
    """An image of a list WebUI's model leaves untyped (``init_images``): a string, as WebUI decodes it."""
    if not isinstance(value, str):
        raise ContractError("invalid_field", f"{field}: must be a base64 image (a string)", field)
    return value
