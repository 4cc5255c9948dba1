"""``KSamplerAdvanced`` on Flux and SD 3.5 models: a slice ``[start_at_step, min(end_at_step, steps))`` of a
``steps`` schedule, run as ``flowsampler``'s pass (the one KSampler and SamplerCustomAdvanced run on these models:
its conditioning checks, guider and sampler choice), so an interruption at any step resumes there byte-identical.
``advanced`` hands a flow model's node here (``advanced.family_advanced``); the slice is read as on SD
(``slices.span``).

ComfyUI's meaning on a flow-matching model: the sigmas go from 1 to 0, shifted as the MODEL says
(ModelSamplingSD3/Flux, or the model's own shift); the latent is ``x = (1 - sigma) * x0 + sigma * noise``.
``add_noise`` enable noises the input latent to the slice's first sigma, ``(1 - sigma) * latent + sigma * noise``
(noise drawn on the CPU from ``noise_seed``); disable adds none, which in ComfyUI's formula with zero noise is
``(1 - sigma) * latent``. ``return_with_leftover_noise`` enable hands on the latent at the slice's end as ComfyUI
hands it, ``x / (1 - sigma)`` (its ``inverse_noise_scaling``), which a next slice without noise scales back;
disable ends the last step on the denoised prediction ``x - sigma * v`` when the slice stops before the schedule's
end (ComfyUI's last sigma set to 0). So a schedule cut in two (leftover noise, then add_noise disable) is the uncut
run up to the rounding of ``x / (1 - sigma) * (1 - sigma)`` at the cut.

How, on diffusers' own classes: an empty latent from step 0 with noise is the family's text-to-image class, as
KSampler runs it; anything else is its img2img class, started at ``start_at_step``. The job view's scheduler is its
sampler's class with ``FlowSlice`` on top, which cuts the timesteps at the slice's end and does the noising and the
two ends above with the scheduler's own sigmas; its settings are plain attributes, so a checkpoint saves them with
the rest of the scheduler. The img2img view starts at the slice's step (``FromStart``) rather than at one worked
out from a strength. On img2img the flow families run Euler (and SD 3.5 Heun) only, as for KSampler: the multistep
samplers are refused naming ``sampler_name`` unless the slice starts from an empty latent at step 0 with noise.
A latent with a noise mask is refused naming the input.
"""

from __future__ import annotations

import functools
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

import torch

from pipelines.comfyui import denoise, flowsampler
from pipelines.comfyui.flowvalues import FlowModel, Guider, Noise, SamplerName, Sigmas
from pipelines.comfyui.noisemask import MaskedLatent
from pipelines.comfyui.slices import CLASS, Span, cut, slice_scheduler, span, step_index
from pipelines.comfyui.values import Latent
from runtime.contract import ContractError
from runtime.contract.families import FAMILIES

if TYPE_CHECKING:
    from pipelines.comfyui.executor import Execution


def _values(ex: Execution, node_id: str, args: dict[str, Any]) -> tuple[SamplerName, Sigmas, SimpleNamespace,
                                                                         Span]:
    """The node's sampler and schedule as KSamplerSelect and BasicScheduler would give them (denoise 1: the slice
    says where to start), spotgen's sampler of the pair, and the slice; a multistep sampler on a slice that is
    img2img whatever its latent is refused here, so that the planner refuses it before any pass runs."""
    model = ex.want(args["model"], FlowModel, node_id, "model")
    sigmas = Sigmas(model, str(args["scheduler"]), ex.integer(node_id, args, "steps"), 1.0, ex.where(node_id),
                    node_id)
    sampler = SamplerName(str(args["sampler_name"]), ex.where(node_id, "sampler_name"))
    picked = flowsampler.choice(sampler, sigmas)
    run = span(ex, node_id, args, picked)  # type: ignore[arg-type]
    why = FAMILIES[model.family].txt2img_samplers.get(picked.scheduler)
    if why and run.start < run.steps and (run.start > 0 or not run.noise):  # img2img, whatever the latent
        raise ContractError("value_not_in_list", f"{sampler.where}: {sampler.name!r} runs from an empty latent at "
                            f"step 0 with noise only: {why}", sampler.where)
    return sampler, sigmas, picked, run


def plan(ex: Execution, node_id: str, args: dict[str, Any]) -> int:
    """The timesteps the pass runs: those of its slice (Heun's two stages each), as ``flowsampler.planned``
    counts a schedule."""
    sampler, sigmas, picked, run = _values(ex, node_id, args)
    if run.start >= run.steps:
        return 0
    model = sigmas.model
    scheduler = model.kind.make_scheduler(picked, model.base.scheduler.config)
    dynamic = {"mu": 0.0} if scheduler.config.get("use_dynamic_shifting") else {}  # the count is mu's alone
    scheduler.set_timesteps(run.steps, **dynamic)
    order = scheduler.order
    return len(scheduler.timesteps[run.start * order:cut(run, order)])


class FlowSlice:
    """On a diffusers flow-matching scheduler class: the slice (``start_at``, ``cut_at``: timestep indices),
    ``keep_latent`` (add_noise disable), ``final_denoise`` (end on the denoised prediction) and ``leftover`` (hand
    on ``x / (1 - sigma)``), set on the instance before the pipeline sets its timesteps."""

    start_at: int
    cut_at: int
    keep_latent: bool
    final_denoise: bool
    leftover: bool

    def set_timesteps(self, *args: Any, **kwargs: Any) -> None:
        super().set_timesteps(*args, **kwargs)  # type: ignore[misc]
        self.timesteps = self.timesteps[:self.cut_at]  # the sigmas stay whole: the last step goes to the cut's

    def _sigma(self, index: int) -> torch.Tensor:
        sigmas = self.sigmas  # type: ignore[attr-defined]
        return sigmas[index] if index < len(sigmas) else sigmas.new_zeros(())  # type: ignore[no-any-return]

    def scale_noise(self, sample: torch.Tensor, timestep: Any, noise: torch.Tensor | None = None) -> torch.Tensor:
        if not self.keep_latent:
            return super().scale_noise(sample, timestep, noise)  # type: ignore[misc,no-any-return]
        sigma = self._sigma(self.start_at).to(device=sample.device, dtype=sample.dtype)
        return (1.0 - sigma) * sample  # ComfyUI's noise scaling with zero noise

    def step(self, model_output: torch.Tensor, timestep: Any, sample: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        index = step_index(self, timestep)  # type: ignore[arg-type]
        last = index == len(self.timesteps) - 1  # type: ignore[attr-defined]
        sigma = self._sigma(index)
        out = super().step(model_output, timestep, sample, *args, **kwargs)  # type: ignore[misc]
        if not last or not (self.final_denoise or self.leftover):
            return out
        prev = out[0] if isinstance(out, tuple) else out.prev_sample
        if self.final_denoise:  # ComfyUI's step to sigma 0: the model's clean latent
            prev = (sample.float() - sigma.float() * model_output.float()).to(prev.dtype)
        else:
            level = float(self._sigma(self.cut_at))
            if level == 0:  # the schedule's end: nothing to scale (the whole run is KSampler's, bit for bit)
                return out
            prev = (prev.float() / (1.0 - level)).to(prev.dtype)
        if isinstance(out, tuple):
            return (prev, *out[1:])
        out.prev_sample = prev
        return out


class FromStart:
    """On an img2img pipeline class: the timesteps from the slice's first (its scheduler's ``start_at``), where
    diffusers works one out from a strength and the count of timesteps, which the cut changes."""

    def get_timesteps(self, num_inference_steps: int, strength: float, device: Any) -> tuple[torch.Tensor, int]:
        scheduler = self.scheduler  # type: ignore[attr-defined]
        scheduler.set_begin_index(scheduler.start_at)
        timesteps = scheduler.timesteps[scheduler.start_at:]
        return timesteps, len(timesteps)


@functools.cache
def _from_start(cls: type) -> type:
    return type(cls.__name__, (FromStart, cls), {"__module__": __name__})


def _adapt(run: Span) -> Any:
    """What makes a job view run ``run``'s slice (``flowsampler.run``'s ``adapt``)."""

    def adapt(view: Any) -> None:
        slice_scheduler(view.scheduler, FlowSlice, run)
        view.scheduler.leftover = run.leftover
        if hasattr(view, "get_timesteps"):
            view.__class__ = _from_start(type(view))

    return adapt


def ksampler_advanced(ex: Execution, node_id: str, args: dict[str, Any]) -> tuple[Any, ...]:
    """KSamplerAdvanced on a Flux or SD 3.5 model (module docstring)."""
    sampler, sigmas, _, run = _values(ex, node_id, args)
    model = sigmas.model
    assert isinstance(model, FlowModel)
    positive = flowsampler.conditioning(ex, node_id, "positive", args["positive"], model)
    negative = flowsampler.conditioning(ex, node_id, "negative", args["negative"], model)
    latent = ex.want(args["latent_image"], Latent, node_id, "latent_image")
    if isinstance(latent, MaskedLatent) and latent.noise_mask is not None:
        where = ex.where(node_id, "latent_image")
        raise ContractError("unsupported_combination", f"{where}: {CLASS} on a Flux or SD 3.5 model does "
                            "not run a latent with a noise mask yet", where)
    guider = Guider(model, positive, negative, flowsampler.cfg(ex, node_id, args), where=ex.where(node_id, "model"))
    noise = Noise(denoise.seed(ex, node_id, args, "noise_seed"))
    if run.start >= run.steps:  # no step of the schedule left: the latent goes on as it came, as in ComfyUI
        fixed = denoise.Schedule(0, 0.0)
    else:  # a strength of 1 is text-to-image on an empty latent; below it, img2img (started by ``FromStart``)
        fixed = denoise.Schedule(run.steps, 1.0 if run.start == 0 and run.noise else
                                 (run.steps - run.start - 0.5) / run.steps)
    return (flowsampler.run(ex, node_id, noise, guider, sampler, sigmas, latent, fixed=fixed, adapt=_adapt(run)),)
