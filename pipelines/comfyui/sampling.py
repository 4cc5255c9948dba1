"""``KSampler`` on the MODEL's family (``family_sampler``: Flux's and SD 3.5's is ``flowsampler``'s; SD's and
SDXL's here): one pass of the job's checkpoint stream, on diffusers' text-to-image or img2img class of the
model's family (``Family.task_class``), built on the loaded model's own modules (``pipelines.common.job_pipeline``)
and run by ``pipelines.resume.run_resumable``, so an interruption at any of its steps resumes there byte-identical.

Which class: an empty latent (EmptyLatentImage, upscaled or not) at denoise 1 starts from pure noise, as spotgen's
txt2img does; any other latent (a sampler's, a VAEEncode's) is img2img's input, noised to where the schedule
starts. Denoise is ComfyUI's: ``steps`` steps are run, the last ones of a schedule of ``steps / denoise``
(diffusers' img2img would run ``steps x strength`` of ``steps``). The noise is drawn on the CPU from the node's
``seed`` (image i of a batch from seed + i), so a seed gives the same noise on any device.

SDXL's refiner has no text-to-image class: its passes are img2img's with its aesthetic-score conditioning, an empty
latent at strength 1 (from pure noise, as ComfyUI samples one). An inpainting checkpoint's 9-channel UNet runs on
the inpainting class (``inpaintmodel``: a mask of ones and a grey image's latents, as ComfyUI gives it).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch

from pipelines.comfyui import denoise, flowsampler, inpaintmodel, samplers
from pipelines.comfyui.denoise import Schedule, schedule
from pipelines.comfyui.registry import NodeFn
from pipelines.comfyui.unetpass import UnetPass
from pipelines.comfyui.values import Conditioning, Latent, Model
from pipelines.common import job_pipeline
from pipelines.families.flow import FlowMatching
from runtime.contract import ContractError
from runtime.plugins import RunContext

if TYPE_CHECKING:
    from pipelines.comfyui.executor import Execution

Planner = Callable[["Execution", str, dict[str, Any]], int]


def planned_steps(model: Model, choice: samplers.Choice, plan: Schedule) -> int:
    """How many steps the pass reports: the timesteps its scheduler runs (Heun's and DPM2's more than steps)."""
    if plan.total == 0:
        return 0
    scheduler = model.kind.make_scheduler(choice, model.base.scheduler.config)
    scheduler.set_timesteps(plan.total)
    start = plan.total - min(int(plan.total * plan.strength), plan.total)
    return len(scheduler.timesteps[max(start, 0) * scheduler.order:])


def family_sampler(model: Any) -> tuple[NodeFn, Planner]:
    """KSampler and its planner for the MODEL's family (its ``kind``): the flow-matching families' (Flux, SD 3.5)
    are ``flowsampler``'s, SD's and SDXL's this module's (any other value: SD's, which refuse it naming the
    input)."""
    if isinstance(getattr(model, "kind", None), FlowMatching):
        return flowsampler.ksampler, flowsampler.plan
    return _sd_ksampler, _sd_plan


def plan(ex: Execution, node_id: str, args: dict[str, Any]) -> int:
    """The steps a KSampler node is planned to run (the executor plans every pass before the first runs)."""
    return family_sampler(args.get("model"))[1](ex, node_id, args)


def ksampler(ex: Execution, node_id: str, args: dict[str, Any]) -> tuple[Any, ...]:
    """KSampler: its model's family's (``family_sampler``)."""
    return family_sampler(args.get("model"))[0](ex, node_id, args)


def _sd_plan(ex: Execution, node_id: str, args: dict[str, Any]) -> int:
    choice = samplers.choice(args["sampler_name"], args["scheduler"], ex.where(node_id))
    model = ex.want(args["model"], Model, node_id, "model")
    return planned_steps(model, choice, schedule(ex, node_id, args, choice))


def _prompts(model: Model, positive: Conditioning, negative: Conditioning, where: str) -> dict[str, Any]:
    """The call's embeddings: each side's first conditioning, padded to the length of the longest of all (the
    others are ``pipelines.comfyui.combine``'s)."""
    parts = positive.parts + negative.parts
    if len({part.embeds.shape[-1] for part in parts}) > 1 or len({part.pooled is None for part in parts}) > 1:
        raise ContractError("unsupported_combination", f"{where}: the sampler's conditionings come from different "
                            "text encoders", where)
    pos, neg = positive.parts[0], negative.parts[0]
    chunks = max(part.chunks for part in parts)  # the longest part's: ``combine`` predicts each at this length
    out = {"prompt_embeds": pos.padded(chunks), "negative_prompt_embeds": neg.padded(chunks)}
    if pos.pooled is not None and neg.pooled is not None:
        out |= {"pooled_prompt_embeds": pos.pooled, "negative_pooled_prompt_embeds": neg.pooled}
    return out


def _sd_ksampler(ex: Execution, node_id: str, args: dict[str, Any]) -> tuple[Any, ...]:
    model = ex.want(args["model"], Model, node_id, "model")
    positive = ex.want(args["positive"], Conditioning, node_id, "positive")
    negative = ex.want(args["negative"], Conditioning, node_id, "negative")
    latent = ex.want(args["latent_image"], Latent, node_id, "latent_image")
    choice = samplers.choice(args["sampler_name"], args["scheduler"], ex.where(node_id))
    run = schedule(ex, node_id, args, choice)
    seed = denoise.seed(ex, node_id, args)
    cfg = ex.number(node_id, args, "cfg")
    prompts = _prompts(model, positive, negative, ex.where(node_id, "positive"))
    if model.variant == "inpainting":  # its UNet also reads a mask and a masked image: everything is repainted
        return inpaintmodel.unmasked(ex, node_id, args, model, latent, run, prompts)
    # A refiner has no text-to-image class: an empty latent is img2img's at strength 1, a pass from pure noise.
    refiner = bool(model.base.config.get("requires_aesthetics_score", False))
    txt2img = latent.empty and run.strength >= 1 and not refiner
    cls = model.kind.task_class("txt2img" if txt2img else "img2img", model.variant)
    height, width = (side * model.base.vae_scale_factor for side in latent.samples.shape[-2:])
    if txt2img:
        task: dict[str, Any] = {"width": width, "height": height}
    else:
        task = {"image": latent.samples.to(model.base.unet.dtype), "strength": run.strength}

    unet = UnetPass(model, positive, negative, latent, seed, cfg)

    def sample(ctx: RunContext) -> torch.Tensor:
        if run.total == 0:
            return latent.samples
        view = job_pipeline(cls, model.base, choice, family=model.kind, requires_aesthetics_score=refiner)
        return unet.run(ex, node_id, ctx, view, run.total, **prompts, **task)

    out = ex.sample(node_id, sample)
    return (Latent(out, empty=latent.empty and run.total == 0),)
