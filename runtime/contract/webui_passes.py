"""WebUI's hires fix, refiner, tiling and inpainting fields as spotgen's inputs (``runtime.contract.webui``).

Each is a native feature already (``Hires``, ``refiner``/``switch_at``, ``tiling``, the ``inpaint`` pipeline);
here a body reaches it under WebUI 1.10's names and defaults. Where WebUI's behaviour and spotgen's part
(WebUI's hires target of another aspect ratio is cropped, its mask may be blurred unevenly), the body is refused
naming its field rather than run as something else.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

from runtime.contract.edits import FILL_MODES, MAX_MASK_BLUR, MAX_PADDING
from runtime.contract.errors import ContractError
from runtime.contract.inputs import HIRES_MAX_SCALE, MAX_SCHEDULE, MAX_STEPS

#: ``resolve(name, field, what)``: a catalog id by its WebUI name, of the checkpoints or the upscalers.
Resolve = Callable[[str, str, str], str]
#: WebUI's upscaler names that need no model (casefolded) -> spotgen's: the latent modes
#: (``shared.latent_upscale_modes``), and "None", a plain resize with Pillow's Lanczos, as WebUI's UpscalerNone.
UPSCALER_NAMES = {
    "latent": "latent", "latent (antialiased)": "latent_antialiased", "latent (bicubic)": "latent_bicubic",
    "latent (bicubic antialiased)": "latent_bicubic_antialiased", "latent (nearest)": "latent_nearest",
    "latent (nearest-exact)": "latent_nearest_exact", "none": "lanczos", "lanczos": "lanczos", "nearest": "nearest",
}
#: The values WebUI's UI sends for "the first pass's own" (and the API's null and "").
_SAME = (None, "", "Use same sampler", "Use same scheduler", "Use same checkpoint")
#: What ``refiner_checkpoint`` says when there is no refiner.
_NO_REFINER = (None, "", "None", "none")


def _get(body: Mapping[str, Any], key: str, default: Any) -> Any:
    value = body.get(key)
    return default if value is None else value


def _invalid(field: str, why: str) -> ContractError:
    return ContractError("invalid_field", f"{field}: {why}", field)


def hires(body: Mapping[str, Any], size: tuple[int, int], model: str, resolve_model: Resolve,
          resolve_upscaler: Resolve, sampler: Callable[[str], str],
          prompt: Callable[[str, str], str]) -> dict[str, Any]:
    """``inputs.hires`` of a txt2img body with ``enable_hr`` (WebUI's ``StableDiffusionProcessingTxt2Img``);
    ``sampler(name)`` and ``prompt(text, field)`` read the second pass's own as the first pass's are read."""
    strength = _get(body, "denoising_strength", 0.75)  # WebUI txt2img's default
    if not 0 < strength <= 1:
        raise _invalid("denoising_strength", f"hires fix denoises by more than 0 and at most 1, not {strength:g}")
    name = body.get("hr_upscaler")
    out: dict[str, Any] = {"denoising_strength": strength, "upscaler": "latent" if name is None else
                           UPSCALER_NAMES.get(name.casefold()) or resolve_upscaler(name, "hr_upscaler", "upscaler")}
    width, height = size
    rx, ry = _get(body, "hr_resize_x", 0), _get(body, "hr_resize_y", 0)
    for field, value in (("hr_resize_x", rx), ("hr_resize_y", ry)):
        if value < 0:
            raise _invalid(field, f"must be 0 (use hr_scale) or a size, not {value}")
    if rx == 0 and ry == 0:
        scale = _get(body, "hr_scale", 2.0)
        if not 1 <= scale <= HIRES_MAX_SCALE:
            raise _invalid("hr_scale", f"spotgen's hires fix scales by 1 to {HIRES_MAX_SCALE:g}, not {scale:g}")
        out["scale"] = scale
    elif rx and ry and rx * height != ry * width:  # WebUI upscales to cover the target, then crops
        raise ContractError("unsupported_field", f"hr_resize_y: {rx}x{ry} is not the first pass's aspect ratio "
                            f"({width}x{height}); WebUI crops the upscaled image to it, spotgen does not: give "
                            "hr_resize_x or hr_resize_y alone, or a size of that ratio", "hr_resize_y")
    else:
        out |= {key: value for key, value in (("width", rx), ("height", ry)) if value}
    own, first = _get(body, "hr_second_pass_steps", 0), _get(body, "steps", 50)
    if own or isinstance(first, int) and 1 <= first <= MAX_STEPS:  # a bad ``steps`` is refused naming itself
        out["steps"] = second_pass_schedule(own or first, strength, "hr_second_pass_steps" if own else "steps")
    if text := body.get("hr_prompt"):
        out["prompt"] = prompt(text, "hr_prompt")
    if text := body.get("hr_negative_prompt"):
        out["negative_prompt"] = text
    if body.get("hr_sampler_name") not in _SAME:
        out["scheduler"] = sampler(body["hr_sampler_name"])
    if body.get("hr_scheduler") not in _SAME and str(body["hr_scheduler"]).casefold() != \
            str(body.get("scheduler") or "Automatic").casefold():
        raise ContractError("unsupported_field", "hr_scheduler: the second pass runs the first pass's schedule "
                            "type here (leave hr_scheduler out, or give the same)", "hr_scheduler")
    if (checkpoint := body.get("hr_checkpoint_name")) not in _SAME and \
            resolve_model(checkpoint, "hr_checkpoint_name", "checkpoint") != model:
        raise ContractError("unsupported_field", "hr_checkpoint_name: the second pass runs on the first pass's "
                            "checkpoint here (leave it out, or name the same)", "hr_checkpoint_name")
    return out


def second_pass_schedule(steps: int, strength: float, field: str) -> int:
    """The schedule (``hires.steps``) on which the second pass runs ``steps`` denoising steps, as WebUI's does.

    WebUI runs ``hr_second_pass_steps`` (the first pass's when 0) steps of a schedule stretched by the strength
    (its ``setup_img2img_steps``: ``steps / denoising_strength``); spotgen's second pass runs img2img's
    ``int(schedule x strength)`` of its schedule. The smallest schedule that gives exactly ``steps`` is WebUI's
    stretched one, rounded up where WebUI's rounds down: the same count of steps, from a noise level at most one
    step of the schedule apart."""
    if not isinstance(steps, int) or isinstance(steps, bool) or not 1 <= steps <= MAX_STEPS:
        raise _invalid(field, f"the second pass runs 1 to {MAX_STEPS} steps here, not {steps!r}")
    schedule = max(steps, math.ceil(steps / strength - 1e-9))
    while int(schedule * strength) < steps:  # float rounding of the division above
        schedule += 1
    if schedule > MAX_SCHEDULE:
        raise _invalid("denoising_strength", f"{steps} steps at {strength:g} take a schedule of {schedule} steps, "
                       f"above the models' {MAX_SCHEDULE} (fewer steps, or a higher strength)")
    return schedule


def refiner(body: Mapping[str, Any], task: str, resolve_model: Resolve) -> dict[str, Any]:
    """``refiner`` and ``switch_at`` of ``refiner_checkpoint`` and ``refiner_switch_at`` (txt2img only)."""
    if (name := body.get("refiner_checkpoint")) in _NO_REFINER:
        return {}
    if task != "txt2img":
        raise ContractError("unsupported_field", "refiner_checkpoint: spotgen runs a refiner after txt2img only "
                            "(leave it out, or \"None\")", "refiner_checkpoint")
    switch_at = _get(body, "refiner_switch_at", 0.8)  # WebUI's UI default
    if not 0 < switch_at < 1:
        raise _invalid("refiner_switch_at", f"must be above 0 and below 1 (the fraction of the steps the base "
                       f"model runs), not {switch_at:g}")
    return {"refiner": resolve_model(name, "refiner_checkpoint", "checkpoint"), "switch_at": switch_at}


def inpaint(body: Mapping[str, Any]) -> dict[str, Any]:
    """The ``inpaint`` pipeline's own inputs of an img2img body with a ``mask`` (WebUI's
    ``StableDiffusionProcessingImg2Img`` defaults: blur 4, fill 0, full resolution with padding 0)."""
    blur = body.get("mask_blur")  # WebUI's mask_blur sets both of its radii
    blur_x, blur_y = (blur, blur) if blur is not None else (_get(body, "mask_blur_x", 4), _get(body, "mask_blur_y", 4))
    if blur_x != blur_y:
        raise ContractError("unsupported_field", f"mask_blur_y: spotgen blurs the mask by one radius; give "
                            f"mask_blur, or mask_blur_x and mask_blur_y alike (not {blur_x} and {blur_y})",
                            "mask_blur_y")
    field = "mask_blur" if blur is not None else "mask_blur_x"
    if not 0 <= blur_x <= MAX_MASK_BLUR:
        raise _invalid(field, f"must be 0 to {MAX_MASK_BLUR}, not {blur_x}")
    fill = _get(body, "inpainting_fill", 0)
    if not 0 <= fill < len(FILL_MODES):
        raise _invalid("inpainting_fill", f"must be 0 (fill), 1 (original), 2 (latent noise) or 3 (latent "
                       f"nothing), not {fill}")
    padding = _get(body, "inpaint_full_res_padding", 0)
    if not 0 <= padding <= MAX_PADDING:
        raise _invalid("inpaint_full_res_padding", f"must be 0 to {MAX_PADDING}, not {padding}")
    return {"mask": body["mask"], "mask_blur": blur_x, "fill": FILL_MODES[fill], "padding": padding,
            "only_masked": _get(body, "inpaint_full_res", True),
            "invert_mask": bool(_get(body, "inpainting_mask_invert", 0))}  # WebUI: any true value inverts
