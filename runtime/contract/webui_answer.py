"""What SD WebUI answers besides the images: ``parameters`` (the request as run) and ``info`` (seeds and settings).

WebUI clients read both: ``webuiapi`` parses ``info`` into a dict, bots print its ``infotexts``, and the AWS
sample's ``.out`` document is ``parameters`` with the seeds added. They are built here, by the API, from the body
and the job it became, before the job is queued (the seed is chosen by then): the sync ``/sdapi/v1`` answer and
the worker's ``.out`` document say the same thing, and the worker needs no WebUI rules.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from typing import Any

from runtime.contract.errors import ContractError
from runtime.contract.inputs import WEBUI_SAMPLERS
from runtime.contract.webui import WebuiJob
from runtime.contract.webui_schema import SCHEDULE_LABELS
from runtime.contract.webui_units import unit_field

#: Written in ``info`` where WebUI writes its own version.
VERSION = "spotgen"


def webui_parameters(body: Mapping[str, Any]) -> dict[str, Any]:
    """The body as WebUI echoes it in ``parameters``: images left out (WebUI sets ``init_images`` and ``mask`` to
    null; ControlNet units' images are dropped the same way here), so the echo stays small."""
    echo = copy.deepcopy(dict(body))
    for key in ("init_images", "mask"):
        if key in echo:
            echo[key] = None
    for key, script in (echo.get("alwayson_scripts") or {}).items():
        if key.casefold() == "controlnet" and isinstance(script, dict):
            for unit in script.get("args") or []:
                if isinstance(unit, dict):
                    for image_key in ("image", "input_image", "mask", "mask_image"):
                        if image_key in unit:
                            unit[image_key] = None
    return echo


def webui_info(job: WebuiJob, body: Mapping[str, Any], seed: int, model_title: str) -> dict[str, Any]:
    """WebUI's ``info`` (``Processed.js()``) for ``job`` run with ``seed``: image ``i`` has seed ``seed + i``,
    as spotgen seeds it, and the same infotext WebUI would write into its PNG."""
    inputs = job.inputs
    count = inputs.get("num_images", 1)
    seeds = [(seed + i) % 2**32 for i in range(count)]
    prompt, negative = str(body.get("prompt", "")), str(body.get("negative_prompt", ""))
    sampler = job.named_sampler or WEBUI_SAMPLERS.get(inputs.get("scheduler", "euler"), "Euler")
    schedule = SCHEDULE_LABELS.get(inputs.get("schedule", "default"), "Automatic")
    hires = inputs.get("hires") or {}
    strength = inputs.get("strength") if job.pipeline != "txt2img" and "strength" in inputs else \
        hires.get("denoising_strength")
    info: dict[str, Any] = {
        "prompt": prompt, "all_prompts": [prompt] * count,
        "negative_prompt": negative, "all_negative_prompts": [negative] * count,
        "seed": seeds[0], "all_seeds": seeds, "subseed": -1, "all_subseeds": [-1] * count, "subseed_strength": 0,
        "width": inputs["width"], "height": inputs["height"], "sampler_name": sampler, "scheduler": schedule,
        "cfg_scale": inputs["guidance_scale"], "steps": inputs["steps"], "batch_size": count,
        "restore_faces": False, "face_restoration_model": None, "sd_model_name": model_title,
        "sd_model_hash": None, "sd_vae_name": None, "sd_vae_hash": None,
        "seed_resize_from_w": -1, "seed_resize_from_h": -1, "denoising_strength": strength,
        "extra_generation_params": _extra_params(body, inputs), "index_of_first_image": 0, "styles": [],
        "job_timestamp": "",
        "clip_skip": inputs.get("clip_skip", 1), "is_using_inpainting_conditioning": False, "version": VERSION,
    }
    if job.named_sampler:  # the ancestral sampler at eta 0: WebUI's sampler adds its eta, not being its default
        info["extra_generation_params"]["Eta"] = 0
    if inputs.get("guidance") is not None:  # Flux's distilled guidance, as Forge reports it
        info["distilled_cfg_scale"] = inputs["guidance"]
    info["infotexts"] = [_infotext(info, s) for s in seeds]
    return info


def _infotext(info: Mapping[str, Any], seed: int) -> str:
    """WebUI's generation parameters text (what it writes into a PNG's ``parameters`` chunk)."""
    settings = [f"Steps: {info['steps']}", f"Sampler: {info['sampler_name']}"]
    if info["scheduler"] != "Automatic":
        settings.append(f"Schedule type: {info['scheduler']}")
    settings.append(f"CFG scale: {info['cfg_scale']}")
    if "distilled_cfg_scale" in info:
        settings.append(f"Distilled CFG Scale: {info['distilled_cfg_scale']}")  # where Forge writes it
    settings += [f"Seed: {seed}", f"Size: {info['width']}x{info['height']}",
                 f"Model: {info['sd_model_name']}"]
    if info["denoising_strength"] is not None:
        settings.append(f"Denoising strength: {info['denoising_strength']}")
    if info["clip_skip"] > 1:
        settings.append(f"Clip skip: {info['clip_skip']}")
    settings += [f"{key}: {value}" for key, value in info["extra_generation_params"].items()]
    settings.append(f"Version: {VERSION}")
    lines = [info["prompt"]] + ([f"Negative prompt: {info['negative_prompt']}"] if info["negative_prompt"] else [])
    return "\n".join([*lines, ", ".join(settings)])


def _extra_params(body: Mapping[str, Any], inputs: Mapping[str, Any]) -> dict[str, Any]:
    """What WebUI adds to a job's parameters for hires fix, the refiner, tiling and inpainting, by its labels."""
    extra: dict[str, Any] = {}
    if hires := inputs.get("hires"):
        if "scale" in hires:
            extra["Hires upscale"] = hires["scale"]
        else:
            extra["Hires resize"] = f"{hires.get('width', 0)}x{hires.get('height', 0)}"
        extra["Hires upscaler"] = body.get("hr_upscaler") or "Latent"
        if body.get("hr_second_pass_steps"):  # as WebUI adds it: the count asked for, not spotgen's schedule
            extra["Hires steps"] = body["hr_second_pass_steps"]
    if "refiner" in inputs:
        extra |= {"Refiner": body.get("refiner_checkpoint"), "Refiner switch at": inputs.get("switch_at", 0.8)}
    if inputs.get("tiling"):
        extra["Tiling"] = True
    if "mask" in inputs and "mask_blur" in inputs:
        extra["Mask blur"] = inputs["mask_blur"]
    if "overlap" in inputs and "upscaler" in inputs:  # SD upscale (webui_scripts): its upscaler as WebUI lists it
        extra["SD upscale overlap"] = inputs["overlap"]
        extra["SD upscale upscaler"] = _BUILTIN_UPSCALER_NAMES.get(inputs["upscaler"], inputs["upscaler"])
    return extra


#: SD upscale's upscalers without a model, by WebUI's names (a model's is its catalog id here).
_BUILTIN_UPSCALER_NAMES = {"none": "None", "lanczos": "Lanczos", "nearest": "Nearest"}


def sample_out_document(job_id: str, parameters: Mapping[str, Any], info: Mapping[str, Any] | None,
                        error: str | None) -> dict[str, Any]:
    """The AWS sample's ``.out`` document (its queue agent's ``succeed``/``failed``): ``parameters`` with the
    task id and the seeds (``image_seed``), or with the error; ``info`` as WebUI's JSON text (empty on failure)."""
    if error is not None:
        return {"images": [""], "parameters": {"id_task": job_id, "status": 0, "error_msg": error, "reason": None},
                "info": ""}
    seeds = ",".join(str(s) for s in (info or {}).get("all_seeds", []))
    return {"images": [""], "parameters": {**parameters, "id_task": job_id, "image_seed": seeds, "error_msg": ""},
            "info": json.dumps(info or {})}


#: Where a job's field came from in a WebUI body: an error found in the job (by ``validate_inputs`` or the API's
#: model checks) names the field the client wrote. The ControlNet unit is the first enabled one.
_UNIT = "alwayson_scripts.controlnet.args.0"
_WEBUI_FIELDS = {
    "model": "override_settings.sd_model_checkpoint", "inputs.prompt": "prompt", "inputs.loras": "prompt",
    "inputs.negative_prompt": "negative_prompt", "inputs.width": "width", "inputs.height": "height",
    "inputs.steps": "steps", "inputs.guidance_scale": "cfg_scale", "inputs.guidance": "distilled_cfg_scale",
    "inputs.seed": "seed",
    "inputs.scheduler": "sampler_name", "inputs.schedule": "scheduler", "inputs.num_images": "batch_size",
    "inputs.clip_skip": "override_settings.CLIP_stop_at_last_layers", "inputs.image": "init_images.0",
    "inputs.strength": "denoising_strength", "inputs.control_image": f"{_UNIT}.image",
    "inputs.controlnet": f"{_UNIT}.model", "inputs.controlnet_conditioning_scale": f"{_UNIT}.weight",
    "inputs.control_guidance_start": f"{_UNIT}.guidance_start", "inputs.control_guidance_end": f"{_UNIT}.guidance_end",
    "inputs.control_preprocessor": f"{_UNIT}.module", "inputs.canny_low": f"{_UNIT}.threshold_a",
    "inputs.canny_high": f"{_UNIT}.threshold_b", "inputs.format": "override_settings.samples_format",
    "inputs.quality": "override_settings.jpeg_quality", "inputs.lossless": "override_settings.webp_lossless",
    "inputs.hires": "enable_hr", "inputs.hires.scale": "hr_scale", "inputs.hires.width": "hr_resize_x",
    "inputs.hires.height": "hr_resize_y", "inputs.hires.upscaler": "hr_upscaler",
    "inputs.hires.steps": "hr_second_pass_steps", "inputs.hires.denoising_strength": "denoising_strength",
    "inputs.hires.prompt": "hr_prompt", "inputs.hires.negative_prompt": "hr_negative_prompt",
    "inputs.hires.scheduler": "hr_sampler_name", "inputs.refiner": "refiner_checkpoint",
    "inputs.switch_at": "refiner_switch_at", "inputs.tiling": "tiling", "inputs.mask": "mask",
    "inputs.mask_blur": "mask_blur", "inputs.fill": "inpainting_fill", "inputs.only_masked": "inpaint_full_res",
    "inputs.padding": "inpaint_full_res_padding", "inputs.invert_mask": "inpainting_mask_invert",
}


def webui_error(exc: ContractError, body: Mapping[str, Any] | None = None) -> ContractError:
    """``exc``, found in the job a WebUI body became, naming the body's field instead of the job's (a unit's by
    its place in ``alwayson_scripts.controlnet.args`` when ``body`` is given)."""
    field = exc.field or ""
    unit = unit_field(body, field) if body is not None else None
    if unit is not None:
        return ContractError(exc.code, exc.message.replace(field, unit, 1) if field in exc.message else exc.message,
                             unit)
    known = max((name for name in _WEBUI_FIELDS if field == name or field.startswith(name + ".")), key=len,
                default=None)
    if known is None:
        return exc
    webui = _WEBUI_FIELDS[known] + field[len(known):]
    return ContractError(exc.code, exc.message.replace(field, webui, 1) if field in exc.message else exc.message,
                         webui)


#: Lambda's synchronous response payload limit, 6 MB: the invocation's whole JSON answer (status, headers and the
#: body as an escaped string). A larger one is a Lambda error, and API Gateway answers 502 to the client.
LAMBDA_RESPONSE_BYTES = 6 * 1024 * 1024
#: What a PNG holds besides its image data, at most: signature (8), IHDR (25), IEND (12), the ``parameters``
#: tEXt chunk's framing and keyword (23) and zlib's header and checksum (6), with room to spare.
PNG_FIXED_BYTES = 1024
#: PIL writes the image data in IDAT chunks of 64 KiB, 12 bytes of framing each; the bound allows one per 8 KiB.
IDAT_CHUNK_BYTES = 8 * 1024


def deflate_bytes_bound(size: int) -> int:
    """zlib's own worst case for deflating ``size`` bytes with any settings (``deflateBound``'s conservative bound:
    fixed-Huffman blocks, 9 bits a literal, about 13.3% over). Its tight bound (0.03%) holds only for zlib's
    default memory level, which PIL does not use: random pixels measure 0.1 to 0.2% over, beyond the tight one."""
    return size + (size >> 3) + (size >> 8) + (size >> 9) + 4


def png_bytes_bound(width: int, height: int, text_bytes: int = 0) -> int:
    """The most bytes an 8-bit RGB PNG of ``width`` x ``height`` can take, whatever its pixels: the rows are 3
    bytes a pixel and a filter byte each, deflated (``deflate_bytes_bound``), in IDAT chunks; ``text_bytes``: the
    ``parameters`` text chunk (``runtime.worker.images.encode_png``), stored uncompressed. About 3.4 bytes a
    pixel, 4.5 once in base64."""
    data = deflate_bytes_bound(height * (1 + 3 * width))
    return data + 12 * (data // IDAT_CHUNK_BYTES + 1) + PNG_FIXED_BYTES + text_bytes


def base64_bytes(size: int) -> int:
    """The length of ``size`` bytes in base64: 4 characters for every 3 bytes begun."""
    return 4 * ((size + 2) // 3)
