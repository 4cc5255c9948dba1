"""What the built-in pipelines share: schedulers, model loading, per-job pipeline views and input images.

Models are loaded once per process through the ``ModelStore``; every job then gets a *view*: a new
diffusers pipeline object holding the very same UNet, VAE and text encoder plus a scheduler of its own.
Schedulers and pipeline objects keep per-run state (timesteps, solver history, guidance scale), so
sharing them between jobs would leak one job's settings into the next; the modules themselves are only
read during inference. A view costs about a millisecond, far less than one denoising step.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Mapping
from typing import Any, TypeVar

import numpy as np
import torch
from diffusers import (
    ControlNetModel,
    DDIMScheduler,
    DiffusionPipeline,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    PNDMScheduler,
    StableDiffusionPipeline,
    UniPCMultistepScheduler,
)
from diffusers.schedulers.scheduling_lms_discrete import LMSDiscreteScheduler
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from PIL import Image

from pipelines import attention
from pipelines.resume import resumable, step_callback
from runtime.contract import GenerationInputs
from runtime.models.catalog import ModelError
from runtime.models.store import ModelStore
from runtime.plugins import Pipeline, RunContext, SetupContext

P = TypeVar("P", bound=DiffusionPipeline)


class LMSScheduler(LMSDiscreteScheduler):
    """diffusers' LMS without its scipy dependency (``diffusers.LMSDiscreteScheduler`` is a stub without scipy).

    The coefficient it integrates with ``scipy.integrate.quad`` is a polynomial of degree ``order - 1`` in
    sigma, so Gauss-Legendre quadrature with ``order`` nodes computes it exactly.
    """

    def get_lms_coefficient(self, order: int, t: int, current_order: int) -> float:
        sigmas = self.sigmas.tolist()
        start, end = sigmas[t], sigmas[t + 1]
        nodes, weights = np.polynomial.legendre.leggauss(order)
        tau = (end - start) / 2 * nodes + (start + end) / 2
        basis = np.ones_like(tau)
        for k in range(order):
            if k != current_order:
                basis *= (tau - sigmas[t - k]) / (sigmas[t - current_order] - sigmas[t - k])
        return float((end - start) / 2 * np.dot(weights, basis))


#: The diffusers scheduler behind each name in ``runtime.contract.SCHEDULERS``.
SCHEDULER_CLASSES: dict[str, type[SchedulerMixin]] = {
    "ddim": DDIMScheduler,
    "euler": EulerDiscreteScheduler,
    "euler_a": EulerAncestralDiscreteScheduler,
    "dpmpp_2m": DPMSolverMultistepScheduler,
    "unipc": UniPCMultistepScheduler,
    "pndm": PNDMScheduler,
    "lms": LMSScheduler,
}
# Settings that make a name mean the same sampler whatever scheduler config the model ships with.
SCHEDULER_OPTIONS: dict[str, dict[str, Any]] = {
    # Latent diffusion must not clip to [-1, 1]; the SD pipelines force this anyway, with a warning per job.
    "ddim": {"clip_sample": False},
    "dpmpp_2m": {"algorithm_type": "dpmsolver++", "solver_order": 2},
}
#: Model families StableDiffusionPipeline and its siblings can run (SDXL needs other pipeline classes).
SUPPORTED_FAMILIES = ("sd1", "sd2")


class DiffusersPipeline(Pipeline):
    """What the built-in pipelines share as plugins: the attention kernel is checked when the worker starts, and
    base models can be preloaded (``SPOTGEN_PRELOAD``) into the store every built-in pipeline reads."""

    def setup(self, ctx: SetupContext) -> None:
        attention.choose(ctx.device, ctx.models.attention)  # a kernel that cannot run here stops start-up
        self.models = ctx.models

    def load(self, model_id: str, kind: str) -> bool:
        if kind != "base":
            return False
        base_pipeline(self.models, model_id)
        return True


def make_scheduler(name: str, base_config: Mapping[str, Any]) -> SchedulerMixin:
    """A new scheduler for one job, keeping the model's noise schedule (betas, offsets, prediction type)."""
    return SCHEDULER_CLASSES[name].from_config(base_config, **SCHEDULER_OPTIONS.get(name, {}))


def torch_dtype(device: str) -> torch.dtype:
    """Half precision where it is fast and memory is scarce (GPUs); CPUs are slow or inexact at it."""
    return torch.float16 if device.startswith("cuda") else torch.float32


def base_pipeline(store: ModelStore, model_id: str) -> StableDiffusionPipeline:
    """The base model's pipeline, loaded once per process; use ``job_pipeline`` to run a job on it."""
    family = store.entry(model_id, "base").family
    if family not in SUPPORTED_FAMILIES:
        raise ModelError("unsupported_model_family", f"model {model_id!r} is a {family} model; the built-in "
                         f"pipelines run {', '.join(SUPPORTED_FAMILIES)} models")

    def load() -> StableDiffusionPipeline:
        source = store.source(model_id, "base")
        options: dict[str, Any] = {"dtype": torch_dtype(store.device), "safety_checker": None,
                                   "requires_safety_checker": False}
        if source.single_file:  # original SD layout; the catalog's local config dir stands in for the Hub
            pipe = StableDiffusionPipeline.from_single_file(str(source.path), config=str(source.config),
                                                            local_files_only=True, **options)
        else:
            pipe = StableDiffusionPipeline.from_pretrained(source.path, use_safetensors=True, **options)
        pipe.to(store.device)
        attention.apply(pipe, attention.choose(store.device, store.attention))
        pipe.set_progress_bar_config(disable=True)
        return pipe

    return store.get(f"sd:{model_id}", load, model_id)


def controlnet_model(store: ModelStore, controlnet_id: str) -> ControlNetModel:
    """A ControlNet, loaded once per process and shared by every base model it is used with."""

    def load() -> ControlNetModel:
        source = store.source(controlnet_id, "controlnet")
        if source.single_file:  # original ControlNet layout (or diffusers keys in one file) plus a local config
            model = ControlNetModel.from_single_file(str(source.path), config=str(source.config),
                                                     local_files_only=True, dtype=torch_dtype(store.device))
        else:
            model = ControlNetModel.from_pretrained(source.path, dtype=torch_dtype(store.device),
                                                    use_safetensors=True)
        model = model.to(store.device)
        attention.apply(model, attention.choose(store.device, store.attention))
        return model

    return store.get(f"controlnet:{controlnet_id}", load, controlnet_id)


def job_pipeline(cls: type[P], base: DiffusionPipeline, scheduler: str, **components: Any) -> P:
    """A ``cls`` pipeline for one job on ``base``'s own modules (no copy), with a fresh ``scheduler``; it can
    continue from a checkpoint (``pipelines.resume``).

    ``components`` adds modules ``base`` lacks, such as ``controlnet``. Construction goes through
    ``cls.__init__`` rather than ``cls.from_pipe``, which also casts every module to a dtype (float32
    unless told otherwise) and would turn the shared half-precision weights to float32 on a GPU.
    """
    parts = {**base.components, **components, "scheduler": make_scheduler(scheduler, base.scheduler.config)}
    accepted = _init_parameters(cls)
    pipe = resumable(cls)(**{name: value for name, value in parts.items() if name in accepted},
                          requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe  # type: ignore[return-value]


@functools.cache
def _init_parameters(cls: type) -> frozenset[str]:
    return frozenset(inspect.signature(cls.__init__).parameters)


def generators(seed: int, n: int) -> list[torch.Generator]:
    """One CPU generator per image, seeded ``seed + i``: the same seed gives the same noise on any device,
    and image ``i`` does not depend on how many images the job asked for."""
    return [torch.Generator("cpu").manual_seed(seed + i) for i in range(n)]


def fit(image: Image.Image, width: int, height: int) -> Image.Image:
    """The input image as RGB at exactly ``width`` x ``height``, so the output has the size the job asked for
    (diffusers would keep the input's own size, rounded to a multiple of 8)."""
    image = image if image.mode == "RGB" else image.convert("RGB")
    if image.size != (width, height):
        image = image.resize((width, height), Image.Resampling.LANCZOS)
    return image


def generate(pipe: DiffusionPipeline, inputs: GenerationInputs, ctx: RunContext, **task: Any) -> list[Image.Image]:
    """Run ``pipe`` with the settings every task shares plus ``task``'s own arguments, from the beginning or
    from ``ctx.resume_from``; every step goes through ``ctx.step`` with a way to save the state."""
    gens = generators(ctx.seed, inputs.num_images)
    if ctx.resume_from is not None:
        pipe.resume_from(ctx.resume_from, gens)  # type: ignore[attr-defined]
    pipe.phase_hook = ctx.mark  # type: ignore[attr-defined]  # "denoise" once the latents are ready
    ctx.mark("encode")
    with torch.inference_mode():
        result = pipe(
            prompt=inputs.prompt,
            negative_prompt=inputs.negative_prompt or None,
            num_inference_steps=inputs.steps,
            guidance_scale=inputs.guidance_scale,
            num_images_per_prompt=inputs.num_images,
            generator=gens,
            callback_on_step_end=step_callback(ctx, gens),
            output_type="pil",
            **task,
        )
    return list(result.images)
