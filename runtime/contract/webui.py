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

import json
import re
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from runtime.contract import webui_passes
from runtime.contract.errors import ContractError
from runtime.contract.images import ImageRefError, decode_inline
from runtime.contract.inputs import MAX_IMAGES, MAX_LORA_WEIGHT, MAX_LORAS, ModelId
from runtime.contract.webui_coerce import KIND_NAMES, coerce
from runtime.contract.webui_families import family_inputs
from runtime.contract.webui_samplers import sampler_of
from runtime.contract.webui_schema import (
    _CONTROL_RESIZE,
    _EXTENSIONS,
    _EXTRA_NETWORK_RE,
    _HASH_RE,
    _INIT_RESIZE,
    _NUMBER_RE,
    _ONLY,
    _SETTINGS,
    _TYPES,
    _UNIT,
)

Task = Literal["txt2img", "img2img"]


class Names(BaseModel):
    """What WebUI clients call the catalog's entries: alias -> catalog id, per kind; each id is its own alias."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    models: dict[str, ModelId] = Field(default_factory=dict)
    loras: dict[str, ModelId] = Field(default_factory=dict)
    controlnets: dict[str, ModelId] = Field(default_factory=dict)
    #: Upscaler models (catalog ``kind: upscaler``), for ``hr_upscaler`` beside WebUI's own names.
    upscalers: dict[str, ModelId] = Field(default_factory=dict)
    #: The checkpoint of a body that names none (WebUI's loaded model); None: a body must name one.
    default_model: ModelId | None = None
    #: The family and variant of the models the settings say them of: how a body reads on Flux and SD 3.5
    #: (``webui_families``); a model not listed gets the body as it is, and its worker decides.
    families: dict[ModelId, str] = Field(default_factory=dict)
    variants: dict[ModelId, str] = Field(default_factory=dict)

    @field_validator("models", "loras", "controlnets", "upscalers")
    @classmethod
    def _ids_are_aliases(cls, value: dict[str, str]) -> dict[str, str]:
        return {**value, **{catalog_id: catalog_id for catalog_id in value.values()}}

    @model_validator(mode="after")
    def _default_is_a_model(self) -> Names:
        if self.default_model is not None and self.default_model not in self.models:
            raise ValueError(f"default_model {self.default_model!r} is not one of the models")
        return self


class WebuiJob(BaseModel):
    """The job a WebUI body asks for; ``inputs`` are checked as the pipeline's by ``jobs.validate_inputs``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    pipeline: Literal["txt2img", "img2img", "controlnet", "inpaint"]
    model: ModelId
    inputs: dict[str, Any]
    #: The body left the seed to the server (-1 or none): the API picks one and reports it.
    server_seed: bool




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
    script_model, control = _scripts(body.get("alwayson_scripts", {}), task, names, size)
    if None not in (model, script_model) and model != script_model:
        field = "alwayson_scripts.sd_model_checkpoint"
        raise ContractError("invalid_field", f"{field}: another checkpoint than override_settings' one", field)
    if (model := model or script_model or names.default_model) is None:
        field = "override_settings.sd_model_checkpoint"
        raise ContractError("missing_field", f"{field}: name the checkpoint (there is no default one)", field)
    inputs |= (_init_image(body, size) if task == "img2img" else {}) | (control or {})
    pipeline, inputs = _passes(body, task, names, model, size, inputs, "controlnet" if control else task)
    field = "alwayson_scripts.sd_model_checkpoint" if script_model and not settings.get("sd_model_checkpoint") \
        else "override_settings.sd_model_checkpoint"
    inputs = family_inputs(body, inputs, names.families.get(model), names.variants.get(model), field, own,
                           pipeline)
    return WebuiJob(pipeline=pipeline, model=model, inputs=inputs, server_seed=seed == -1)


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
    if task == "img2img" and body.get("mask"):  # WebUI reads "" as no mask
        pipeline, out = "inpaint", out | webui_passes.inpaint(body)
    return pipeline, out


def _get(body: Mapping[str, Any], key: str, default: Any) -> Any:
    value = body.get(key)
    return default if value is None else value


def _typed(value: Any, kind: str, field: str) -> Any:
    """``value`` as WebUI's pydantic v1 models read a field of ``kind``: ``webui_coerce``."""
    return coerce(value, kind, field)


def _accepted(value: Any, accepted: tuple[Any, ...]) -> bool:
    """Equal as JSON values: true is not 1, 0 is 0.0."""
    return any(value == a and isinstance(value, bool) == isinstance(a, bool) and (value is None) == (a is None)
               for a in accepted)


def _unsupported(field: str, value: Any, accepted: tuple[Any, ...]) -> ContractError:
    shown, allowed = json.dumps(value), " or ".join(json.dumps(a) for a in accepted if a is not None) or "null"
    return ContractError("unsupported_field", f"{field}: {shown[:40]} is not supported yet; spotgen implements "
                         f"only {allowed} (or leave the field out)", field)


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
            model = _resolve(names.models, _typed(value, "str", field), field, "checkpoint")
        elif key == "CLIP_stop_at_last_layers":
            clip_skip = _typed(value, "int", field)
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
    name = _typed(settings.get("samples_format", "png"), "str", field)
    if name.casefold() not in _SAMPLES_FORMATS:
        raise ContractError("invalid_field", f"{field}: spotgen writes {', '.join(_SAMPLES_FORMATS)}, not {name!r}",
                            field)
    fmt = _SAMPLES_FORMATS[name.casefold()]
    quality = _typed(settings.get("jpeg_quality", _WEBUI_QUALITY), "int", "override_settings.jpeg_quality")
    lossless = _typed(settings.get("webp_lossless", False), "bool", "override_settings.webp_lossless")
    if fmt == "png":
        return {}
    if fmt == "webp" and lossless:
        return {"format": fmt, "lossless": True}
    return {"format": fmt, "quality": quality}


def _scripts(scripts: Mapping[str, Any], task: Task, names: Names, size: tuple[int, int]
             ) -> tuple[str | None, dict[str, Any] | None]:
    """(checkpoint, ControlNet inputs) of ``alwayson_scripts``: ControlNet is the one script spotgen runs, and
    ``sd_model_checkpoint`` is where the AWS EKS sample names the model."""
    model, control, seen = None, None, False
    for key, value in scripts.items():
        field = f"alwayson_scripts.{key}"
        if key == "sd_model_checkpoint":
            model = _resolve(names.models, _typed(value, "str", field), field, "checkpoint")
        elif key.casefold() == "controlnet" and not seen:  # WebUI finds scripts by title, regardless of case
            seen, control = True, _controlnet(value, field, task, names, size)
        else:
            raise ContractError("unsupported_field", f"{field}: spotgen runs no WebUI script but ControlNet", field)
    return model, control


def _controlnet(value: Any, field: str, task: Task, names: Names, size: tuple[int, int]) -> dict[str, Any] | None:
    if isinstance(value, dict):
        for key in set(value) - {"args"}:
            raise ContractError("unknown_field", f"unknown field {field}.{key}", f"{field}.{key}")
        value, field = value.get("args", []), f"{field}.args"
    enabled = []
    for i, unit in enumerate(_typed(value, "list", field)):
        path = f"{field}.{i}"
        if "enabled" not in _typed(unit, "dict", path):  # sd-webui-controlnet's default has changed over versions
            raise ContractError("missing_field", f"{path}.enabled: say whether the unit is enabled", f"{path}.enabled")
        if _typed(unit["enabled"], "bool", f"{path}.enabled"):
            enabled.append((path, unit))
    if not enabled:
        return None
    path, unit = enabled[0]
    if len(enabled) > 1 or task == "img2img":
        path = f"{enabled[1][0]}.enabled" if len(enabled) > 1 else path
        why = "one enabled unit a job" if len(enabled) > 1 else "ControlNet with img2img (it starts from noise)"
        raise ContractError("unsupported_field", f"{path}: spotgen does not run {why} yet", path)
    for key, item in unit.items():
        if key not in _UNIT:
            raise ContractError("unknown_field", f"unknown field {path}.{key}", f"{path}.{key}")
        if _UNIT[key] and not _accepted(item, _UNIT[key]):
            raise _unsupported(f"{path}.{key}", item, _UNIT[key])
    if "image" in unit and "input_image" in unit:
        raise ContractError("invalid_field", f"{path}.input_image: give image or input_image, not both",
                            f"{path}.input_image")
    image_field = f"{path}.input_image" if "input_image" in unit else f"{path}.image"
    image, model = unit.get("input_image", unit.get("image")), unit.get("model")
    for name, value in ((image_field, image), (f"{path}.model", model)):
        if value in (None, "", "None"):
            raise ContractError("missing_field", f"{name}: an enabled ControlNet unit needs one", name)
    _check_resize(unit.get("resize_mode", "Crop and Resize"), _typed(image, "str", image_field), size,
                  f"{path}.resize_mode", _CONTROL_RESIZE)
    weight = _typed(unit.get("weight", 1.0), "num", f"{path}.weight")
    controlnet = _resolve(names.controlnets, _typed(model, "str", f"{path}.model"), f"{path}.model", "ControlNet")
    job = {"control_image": image, "controlnet": controlnet, "controlnet_conditioning_scale": weight,
           "control_guidance_start": _typed(unit.get("guidance_start", 0.0), "num", f"{path}.guidance_start"),
           "control_guidance_end": _typed(unit.get("guidance_end", 1.0), "num", f"{path}.guidance_end")}
    if unit.get("module", "none") == "canny":  # the extension's -1 (or nothing): the module's own 100 and 200
        for key, name, default in (("threshold_a", "canny_low", 100), ("threshold_b", "canny_high", 200)):
            value = _typed(unit.get(key, -1), "num", f"{path}.{key}")
            job[name] = default if value == -1 else int(value) if value == int(value) else value
        job["control_preprocessor"] = "canny"
    return job


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
