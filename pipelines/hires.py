"""Hires fix (SD WebUI's "Hires. fix"): a first pass at the job's size, an upscale, then a second pass that denoises
the upscaled image again at the target size, as img2img on the same base model.

Why two passes: SD models compose well only near the size they were trained at; generated directly at twice that,
a subject repeats across the canvas. The first pass settles the composition, the second adds the detail.

The upscale between the passes is WebUI's: a *latent* mode resizes the first pass's latents with
``torch.nn.functional.interpolate`` (``latent`` is bilinear, then bicubic, nearest and nearest-exact, with or without
antialiasing), which needs no decode; a *pixel* mode decodes the first pass (diffusers' own decode, as for an
output) and resizes the image (Pillow's ``lanczos``/``nearest``, or an upscaler model from the catalog, through
``pipelines.upscalers``), which the second pass encodes again. Both are pure functions of the first pass's output,
so a job resumed in its second pass upscales again to the very same values (``pipelines.phases``).

The second pass is diffusers' img2img class for the model's kind, built on the base model's own modules (nothing
is loaded twice), with ``steps`` (the first pass's when left out) and ``denoising_strength`` as img2img's
``strength``: it runs ``int(steps x denoising_strength)`` steps, and its prompt, negative prompt and sampler
are its own when given. The job's ControlNet units guide both passes (WebUI's way): the second pass is then
diffusers' ControlNet img2img class, with the units' maps made again at the target size.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch
from PIL.Image import Image

from pipelines import controlunits
from pipelines.common import Prepared, generate, job_pipeline
from pipelines.schedulers import make_scheduler
from pipelines.upscalers import upscale
from runtime.contract import LATENT_UPSCALERS, PIXEL_UPSCALERS, SAMPLER_SCHEDULES, ContractError, Hires
from runtime.models.catalog import ModelError
from runtime.models.store import ModelStore
from runtime.plugins import RunContext

#: WebUI's latent upscale modes (``shared.latent_upscale_modes``): interpolate's mode and antialias.
LATENT_MODES: dict[str, tuple[str, bool]] = {
    "latent": ("bilinear", False),
    "latent_antialiased": ("bilinear", True),
    "latent_bicubic": ("bicubic", False),
    "latent_bicubic_antialiased": ("bicubic", True),
    "latent_nearest": ("nearest", False),
    "latent_nearest_exact": ("nearest-exact", False),
}
assert set(LATENT_MODES) == set(LATENT_UPSCALERS)


def check_upscaler(store: ModelStore, hires: Hires) -> None:
    """Refuse, naming the field, an upscaler id the catalog lacks or that is no upscaler, before anything loads."""
    if hires.upscaler in LATENT_MODES or hires.upscaler in PIXEL_UPSCALERS:
        return
    try:
        store.entry(hires.upscaler, "upscaler")
    except ModelError as exc:
        raise ContractError(exc.code, str(exc), "inputs.hires.upscaler") from None


def in_latents(hires: Hires) -> bool:
    """Whether the upscale works on latents: then the pass before it hands over latents, else decoded images."""
    return hires.upscaler in LATENT_MODES


def upscaled(store: ModelStore, hires: Hires, first: Any, size: tuple[int, int], vae_scale: int) -> Any:
    """The first pass's output (latents, or images for a pixel upscaler) at the target ``size`` (width, height)."""
    width, height = size
    if in_latents(hires):
        mode, antialias = LATENT_MODES[hires.upscaler]
        corners = {"align_corners": False} if mode in ("bilinear", "bicubic") else {}
        with torch.inference_mode():
            return torch.nn.functional.interpolate(first, size=(height // vae_scale, width // vae_scale), mode=mode,
                                                   antialias=antialias, **corners)
    return [upscale(store, hires.upscaler, image, size) for image in first]


def second_pass_inputs(job: Prepared) -> Any:
    """The inputs the second pass runs with: the target size, and its own steps, prompts and sampler if given."""
    inputs = job.inputs
    hires: Hires = inputs.hires
    width, height = hires.target(inputs.width, inputs.height)
    sampler = hires.scheduler or inputs.scheduler
    schedule = inputs.schedule if inputs.schedule in SAMPLER_SCHEDULES[sampler] else "default"
    return inputs.model_copy(update={
        "width": width, "height": height, "steps": hires.steps or inputs.steps, "scheduler": sampler,
        "schedule": schedule, "prompt": hires.prompt or inputs.prompt,
        "negative_prompt": inputs.negative_prompt if hires.negative_prompt is None else hires.negative_prompt})


def planned_steps(job: Prepared) -> int:
    """How many steps the second pass runs: img2img's count, from the timesteps its sampler sets."""
    second = second_pass_inputs(job)
    scheduler = make_scheduler(second.scheduler, second.schedule, job.base.scheduler.config)
    scheduler.set_timesteps(second.steps)
    start = second.steps - min(int(second.steps * job.inputs.hires.denoising_strength), second.steps)
    return len(scheduler.timesteps[max(start, 0) * scheduler.order:])


def second_pass(job: Prepared, ctx: RunContext, image: Any) -> list[Image]:
    """The second pass on ``image`` (latents, or images at the target size): the job's final images."""
    second = replace(job, inputs=second_pass_inputs(job))
    # The job's ControlNet units guide this pass too (as WebUI's), their maps at the target size.
    net, control = controlunits.for_job(ctx, second.inputs, (second.inputs.width, second.inputs.height))
    cls = job.kind.task_class("img2img", job.variant, control=bool(net))
    view = job_pipeline(cls, job.base, second.inputs, family=job.kind, **net)
    return generate(view, second, ctx, image=image, strength=job.inputs.hires.denoising_strength, **control)
