"""``KSamplerAdvanced``: a slice of a sampler's schedule, as ComfyUI's SDXL base + refiner workflow splits one run
over two models, run as one pass of the job's checkpoint stream (``pipelines.resume.run_resumable``), so an
interruption at any of its steps resumes there byte-identical.

ComfyUI's semantics: the schedule is ``steps`` steps and the pass runs steps ``[start_at_step, min(end_at_step,
steps))``. ``add_noise`` enable noises the input latent to where the slice starts (from ``noise_seed``, drawn on the
CPU as KSampler draws it); disable takes the latent as already that noisy. ``return_with_leftover_noise`` enable
hands on the latent as it is at ``end_at_step``; disable ends the last step on the model's fully denoised
prediction when the slice stops before the schedule's end (ComfyUI's last sigma set to 0).

How, on diffusers' own classes (SD 1.x/2.x and SDXL alike; diffusers' ``denoising_end``/``denoising_start`` are
SDXL's only, and cut at a fraction of the timesteps rather than at a step): the img2img class starts at
``start_at_step`` through its strength, and the job view's scheduler is its sampler's class with ``Slice`` on top,
which cuts the timesteps at the slice's end, leaves the latent unnoised when asked, and replaces the last step's
result by the denoised prediction when asked. Its settings are plain attributes, so a checkpoint saves them with
the rest of the scheduler. An empty latent from step 0 with noise is text-to-image, as KSampler runs it.

Latents between samplers are kept as ComfyUI keeps them, ``x0 + sigma * noise``: what the Euler-like schedulers
step on. The others (DPM-Solver++, UniPC, DDIM, LCM) step on ``x / sqrt(1 + sigma^2)``, so a leftover latent is
scaled out of that on return and into it when taken without noise: a base on Euler and a refiner on DPM++ 2M
hand over the same noise level. Not run here yet, refused naming the input: a latent with a noise mask, a
ControlNet's conditioning. Flux and SD 3.5 models run their slice as ``flowadvanced``'s (``family_advanced``).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch

from pipelines.comfyui import denoise, inpaintmodel, samplers, sampling
from pipelines.comfyui.controlnodes import Controlled
from pipelines.comfyui.noisemask import MaskedLatent
from pipelines.comfyui.registry import Node, NodeFn
from pipelines.comfyui.slices import CLASS, Span, cut, slice_scheduler, span, step_index
from pipelines.comfyui.unetpass import UnetPass
from pipelines.comfyui.values import Conditioning, Latent, Model
from pipelines.common import job_pipeline
from pipelines.families.flow import FlowMatching
from runtime.contract import ContractError
from runtime.plugins import RunContext

if TYPE_CHECKING:
    from pipelines.comfyui.executor import Execution



def family_advanced(model: Any) -> tuple[NodeFn, sampling.Planner]:
    """KSamplerAdvanced and its planner for the MODEL's family (its ``kind``, as ``sampling.family_sampler``
    reads it): the flow-matching families' (Flux, SD 3.5) are ``flowadvanced``'s, SD's and SDXL's this module's."""
    if isinstance(getattr(model, "kind", None), FlowMatching):
        from pipelines.comfyui import flowadvanced  # imported when a flow model comes

        return flowadvanced.ksampler_advanced, flowadvanced.plan
    return _sd_ksampler_advanced, _sd_plan


def _model(ex: Execution, node_id: str, value: Any) -> Model:
    model = ex.want(value, Model, node_id, "model")
    inpaintmodel.refuse(ex, node_id, model, CLASS)
    return model


def _scheduler(model: Model, choice: samplers.Choice, steps: int) -> Any:
    scheduler = model.kind.make_scheduler(choice, model.base.scheduler.config)
    scheduler.set_timesteps(steps)
    return scheduler


def planned_steps(model: Model, choice: samplers.Choice, run: Span) -> int:
    """The timesteps the pass runs (a second-order sampler's two stages each)."""
    if run.start >= run.steps:
        return 0
    scheduler = _scheduler(model, choice, run.steps)
    return len(scheduler.timesteps[run.start * scheduler.order:cut(run, scheduler.order)])


def plan(ex: Execution, node_id: str, args: dict[str, Any]) -> int:
    """The steps a KSamplerAdvanced node is planned to run (the executor plans every pass before the first runs)."""
    return family_advanced(args.get("model"))[1](ex, node_id, args)


def ksampler_advanced(ex: Execution, node_id: str, args: dict[str, Any]) -> tuple[Any, ...]:
    """KSamplerAdvanced: its model's family's (``family_advanced``)."""
    return family_advanced(args.get("model"))[0](ex, node_id, args)


def _sd_plan(ex: Execution, node_id: str, args: dict[str, Any]) -> int:
    model = _model(ex, node_id, args["model"])
    choice = samplers.choice(args["sampler_name"], args["scheduler"], ex.where(node_id))
    return planned_steps(model, choice, span(ex, node_id, args, choice))


class Slice:
    """On a diffusers scheduler class: the slice's cut, noise and end (``cut_at``, ``keep_latent``,
    ``final_denoise``), set on the instance before ``set_timesteps``, which works out the noise levels at the
    slice's ends (``level_in``, ``level_out``, as sigmas of ``x0 + sigma * noise``) and then cuts."""

    cut_at: int
    start_at: int
    keep_latent: bool
    final_denoise: bool
    level_in: float
    level_out: float

    def set_timesteps(self, *args: Any, **kwargs: Any) -> None:
        super().set_timesteps(*args, **kwargs)  # type: ignore[misc]
        full = self.timesteps  # type: ignore[attr-defined]
        self.level_in, self.level_out = self._level(full, self.start_at), self._level(full, self.cut_at)
        self.timesteps = full[:self.cut_at]

    def _level(self, timesteps: torch.Tensor, index: int) -> float:
        if index >= len(timesteps):  # the schedule's end (a second-order sampler's last step has one stage)
            return 0.0
        sigmas = getattr(self, "sigmas", None)
        if sigmas is not None and len(sigmas) > len(timesteps):  # the karras-style schedulers keep theirs
            return float(sigmas[index])
        alpha = float(self.alphas_cumprod[int(timesteps[index])])  # type: ignore[attr-defined]
        return math.sqrt((1 - alpha) / alpha)

    @property
    def scaled(self) -> bool:
        """Whether the latents it steps on are ``x / sqrt(1 + sigma^2)`` (pure noise has a sigma of 1)."""
        return float(self.init_noise_sigma) <= 1  # type: ignore[attr-defined]

    def add_noise(self, original: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        if not self.keep_latent:
            return super().add_noise(original, noise, timesteps)  # type: ignore[misc,no-any-return]
        return original / math.sqrt(1 + self.level_in ** 2) if self.scaled else original

    def step(self, model_output: torch.Tensor, timestep: Any, sample: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        index = self._index(timestep)
        denoised = self._denoised(model_output, timestep, sample, index) if self.final_denoise and \
            index == len(self.timesteps) - 1 else None  # type: ignore[attr-defined]
        out = super().step(model_output, timestep, sample, *args, **kwargs)  # type: ignore[misc]
        if denoised is None:
            return out
        if isinstance(out, tuple):
            return (denoised, *out[1:])
        out.prev_sample = denoised
        return out

    def _index(self, timestep: Any) -> int:
        return step_index(self, timestep)

    def _denoised(self, model_output: torch.Tensor, timestep: Any, sample: torch.Tensor, index: int) -> torch.Tensor:
        """The model's prediction of the clean latents at this step (ComfyUI's step to sigma 0)."""
        sigma = self._level(self.timesteps, index)  # type: ignore[attr-defined]
        alpha = 1 / math.sqrt(1 + sigma ** 2)
        x = sample.float() if self.scaled else sample.float() * alpha
        out, kind = model_output.float(), self.config.prediction_type  # type: ignore[attr-defined]
        if kind == "v_prediction":
            clean = alpha * x - sigma * alpha * out
        elif kind == "sample":
            clean = out
        else:
            clean = (x - sigma * alpha * out) / alpha
        return clean.to(sample.dtype)


def _view(model: Model, cls: type, choice: samplers.Choice, run: Span) -> Any:
    """A job view of ``cls`` whose scheduler runs ``run``'s slice."""
    aesthetics = bool(model.base.config.get("requires_aesthetics_score", False))  # a refiner's conditioning
    view = job_pipeline(cls, model.base, choice, family=model.kind,  # type: ignore[arg-type]
                        requires_aesthetics_score=aesthetics)
    slice_scheduler(view.scheduler, Slice, run)
    return view


def _refuse(ex: Execution, node_id: str, name: str, what: str) -> None:
    where = ex.where(node_id, name)
    raise ContractError("unsupported_combination", f"{where}: {CLASS} does not run {what} yet; KSampler does",
                        where)


def _sd_ksampler_advanced(ex: Execution, node_id: str, args: dict[str, Any]) -> tuple[Any, ...]:
    model = _model(ex, node_id, args["model"])
    positive = ex.want(args["positive"], Conditioning, node_id, "positive")
    negative = ex.want(args["negative"], Conditioning, node_id, "negative")
    latent = ex.want(args["latent_image"], Latent, node_id, "latent_image")
    for name, conditioning in (("positive", positive), ("negative", negative)):
        if isinstance(conditioning, Controlled) and conditioning.control is not None:
            _refuse(ex, node_id, name, "a ControlNet's conditioning")
    if isinstance(latent, MaskedLatent) and latent.noise_mask is not None:
        _refuse(ex, node_id, "latent_image", "a latent with a noise mask")
    choice = samplers.choice(args["sampler_name"], args["scheduler"], ex.where(node_id))
    run = span(ex, node_id, args, choice)
    seed = denoise.seed(ex, node_id, args, "noise_seed")
    cfg = ex.number(node_id, args, "cfg")
    prompts = sampling._prompts(model, positive, negative, ex.where(node_id, "positive"))
    txt2img = latent.empty and run.start == 0 and run.noise and model.variant != "refiner"
    cls = model.kind.task_class("txt2img" if txt2img else "img2img", model.variant)
    height, width = (side * model.base.vae_scale_factor for side in latent.samples.shape[-2:])
    if txt2img:
        task: dict[str, Any] = {"width": width, "height": height}
    else:  # the strength that makes img2img start at ``start`` of ``steps`` (half a step above the count)
        strength = min(1.0, (run.steps - run.start + 0.5) / run.steps)
        task = {"image": latent.samples.to(model.base.unet.dtype), "strength": strength}

    unet = UnetPass(model, positive, negative, latent, seed, cfg)

    def sample(ctx: RunContext) -> torch.Tensor:
        if run.start >= run.steps:
            return latent.samples
        view = _view(model, cls, choice, run)
        out = unet.run(ex, node_id, ctx, view, run.steps, **prompts, **task)
        scheduler = view.scheduler
        if run.leftover and scheduler.scaled and scheduler.level_out > 0:
            out = out * math.sqrt(1 + scheduler.level_out ** 2)  # back to ``x0 + sigma * noise``
        return out  # type: ignore[no-any-return]

    out = ex.sample(node_id, sample)
    return (Latent(out, empty=latent.empty and run.start >= run.steps),)


NODES: dict[str, Node] = {CLASS: Node(ksampler_advanced, plan=plan)}
