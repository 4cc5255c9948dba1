"""ComfyUI's custom sampling: ``RandomNoise``, ``KSamplerSelect``, ``BasicScheduler``, ``BasicGuider``,
``CFGGuider`` and ``SamplerCustomAdvanced``, on Flux and SD 3.5 models (below) and on SD and SDXL checkpoints, where
the sampler node is the core KSampler's run (``sampling.ksampler``: the seed, the pair, steps and denoise of these
nodes, the guider's cfg; BasicGuider's is 1, which runs no negative) in a pass of its own.

The first five only describe the run (a seed, a sampler name, a schedule, a model with its conditioning); the
``SamplerCustomAdvanced`` node runs it, as one pass of the job's checkpoint stream (``pipelines.phases``), named as
the executor names passes (``samplercustomadvanced-13``): diffusers' text-to-image class of the model's family on
the loaded model's own modules (``pipelines.common.job_pipeline``), run by ``pipelines.resume.run_resumable``, so an
interruption at any step resumes there byte-identical. The sampler is spotgen's flow-matching one of the ComfyUI
pair (``runtime.contract.comfy.nodes_sampling.spotgen_sampler`` on the model's family), shifted as the MODEL says
(ModelSamplingSD3/Flux); the noise is drawn on the CPU from RandomNoise's seed (image i of a batch from seed + i).

Guidance: BasicGuider runs the conditioning alone (SD 3.5 without classifier-free guidance; Flux with the distilled
guidance FluxGuidance set, 3.5 without one, as ComfyUI's Flux defaults). CFGGuider adds the negative at ``cfg``:
SD 3.5's classifier-free guidance, Flux's true CFG (diffusers' ``true_cfg_scale``, a second pass per step).

An empty latent (EmptySD3LatentImage) at denoise 1 starts from pure noise, as a Flux or SD 3.5 txt2img job; any
other latent (a VAEEncode's, a sampler's), or a denoise below 1, is the family's img2img input, noised to where the
schedule starts: BasicScheduler's ``steps`` are the last of ``steps / denoise``, as KSampler counts them
(``sampling.schedule``). On img2img the flow families run Euler only (``runtime.contract.families``): the others
are refused naming the sampler. Not run yet, refused naming the input: combined conditionings on a flow model.
A graph may mix these nodes with KSamplers: the executor plans every sampler node as a pass of one stream.
``SamplerCustomAdvanced``'s ``denoised_output`` is its ``output``: at the schedule's end (sigma 0) the two agree.
"""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

import torch

from pipelines.comfyui import sampling
from pipelines.comfyui.flowtext import CHANNELS
from pipelines.comfyui.flowvalues import FlowCond, FlowModel, Guider, Noise, SamplerName, Sigmas, padded
from pipelines.comfyui.values import Conditioning, Latent, Model
from pipelines.common import job_pipeline
from pipelines.resume import run_resumable
from runtime.contract import ContractError
from runtime.contract.comfy.nodes_sampling import spotgen_sampler
from runtime.contract.families import FAMILIES
from runtime.plugins import RunContext

if TYPE_CHECKING:
    from pipelines.comfyui.executor import Execution

CLASS = "SamplerCustomAdvanced"
#: Seeds wrap below 2**64 by this much, so that seed + i of a batch is still a seed torch takes (as KSampler's).
_SEED_ROOM = 4096
#: Flux's distilled guidance when no FluxGuidance node sets one (ComfyUI's default for Flux models).
FLUX_GUIDANCE = 3.5


def random_noise(ex: Execution, node_id: str, args: dict[str, Any]) -> tuple[Any, ...]:
    return (Noise(ex.integer(node_id, args, "noise_seed") % (2**64 - _SEED_ROOM)),)


def ksampler_select(ex: Execution, node_id: str, args: dict[str, Any]) -> tuple[Any, ...]:
    return (SamplerName(str(args["sampler_name"]), ex.where(node_id, "sampler_name")),)


def _model(ex: Execution, node_id: str, value: Any) -> FlowModel | Model:
    """A MODEL of any family (a flow model's, or a checkpoint's ``values.Model``)."""
    return value if isinstance(value, FlowModel) else ex.want(value, Model, node_id, "model")


def basic_scheduler(ex: Execution, node_id: str, args: dict[str, Any]) -> tuple[Any, ...]:
    model = _model(ex, node_id, args["model"])
    steps, denoise = ex.integer(node_id, args, "steps"), ex.number(node_id, args, "denoise")
    if steps < 1 or not 0 <= denoise <= 1:
        where = ex.where(node_id, "steps" if steps < 1 else "denoise")
        raise ContractError("invalid_field", f"{where}: steps must be 1 or more and denoise between 0 and 1", where)
    return (Sigmas(model, str(args["scheduler"]), steps, denoise, ex.where(node_id), node_id),)


def _conditioning(ex: Execution, node_id: str, name: str, value: Any, model: FlowModel | Model) -> Conditioning:
    """A guider's conditioning; on a flow model, one encoding, of ``model``'s encoders (or zeros of them)."""
    conditioning = ex.want(value, Conditioning, node_id, name)
    if isinstance(model, Model):  # SD's: the core KSampler's checks apply (``sampling``)
        return conditioning
    where = ex.where(node_id, name)
    if len(conditioning.parts) != 1:
        raise ContractError("unsupported_combination", f"{where}: combined conditionings run on SD and SDXL models "
                            "so far; give this model one text", where)
    part = conditioning.parts[0]
    if isinstance(part, FlowCond) and part.model_id and part.model_id != model.model_id:
        raise ContractError("mismatched_model", f"{where}: the text was encoded by {part.model_id!r}'s encoders, "
                            f"and the model is {model.model_id!r}", where)
    return conditioning


def basic_guider(ex: Execution, node_id: str, args: dict[str, Any]) -> tuple[Any, ...]:
    model = _model(ex, node_id, args["model"])
    return (Guider(model, _conditioning(ex, node_id, "conditioning", args["conditioning"], model)),)


def cfg_guider(ex: Execution, node_id: str, args: dict[str, Any]) -> tuple[Any, ...]:
    model = _model(ex, node_id, args["model"])
    positive = _conditioning(ex, node_id, "positive", args["positive"], model)
    negative = _conditioning(ex, node_id, "negative", args["negative"], model)
    cfg = ex.number(node_id, args, "cfg")
    if cfg < 0:
        where = ex.where(node_id, "cfg")
        raise ContractError("invalid_field", f"{where}: a cfg of 0 or more, not {cfg}", where)
    return (Guider(model, positive, negative, cfg),)


def _choice(sampler: SamplerName, sigmas: Sigmas) -> SimpleNamespace:
    """What ``FlowMatching.make_scheduler`` reads: spotgen's sampler and schedule of the ComfyUI pair on the
    model's family, and the MODEL's shift; a pair spotgen does not run is refused naming the node that set it."""
    try:
        name, schedule = spotgen_sampler(sampler.name, sigmas.scheduler, sigmas.model.family)
    except ValueError as exc:
        field = sampler.where if str(exc).startswith("sampler_name") else f"{sigmas.where}.inputs.scheduler"
        raise ContractError("value_not_in_list", f"{field}: {str(exc).split(': ', 1)[1]}", field) from None
    return SimpleNamespace(scheduler=name, schedule=schedule, shift=getattr(sigmas.model, "shift", None))


def _inputs(ex: Execution, node_id: str) -> tuple[SamplerName, Sigmas]:
    sampler = ex.want(ex.resolve(node_id, "sampler"), SamplerName, node_id, "sampler")
    return sampler, ex.want(ex.resolve(node_id, "sigmas"), Sigmas, node_id, "sigmas")


def _schedule(ex: Execution, sigmas: Sigmas, choice: SimpleNamespace) -> sampling.Schedule:
    """ComfyUI's denoise as KSampler reads it (``sampling.schedule``): ``steps`` of ``steps / denoise``. The flow
    img2img classes start at ``int(total - total x strength)`` (no rounding down of ``total x strength`` first, as
    SD's do), so the strength is put half a step below the count here."""
    run = sampling.schedule(ex, sigmas.node, {"steps": sigmas.steps, "denoise": sigmas.denoise},
                            choice)  # type: ignore[arg-type]
    if run.total == 0 or run.strength >= 1:
        return run
    return sampling.Schedule(run.total, (sigmas.steps - 0.5) / run.total)


def _start(run: sampling.Schedule) -> int:
    """The first step of ``run``'s schedule that the flow classes run (``get_timesteps``)."""
    return int(max(run.total - run.total * run.strength, 0))


def plan(ex: Execution, node_id: str, args: dict[str, Any] | None = None) -> int:
    """The steps a SamplerCustomAdvanced node runs: the timesteps of its scheduler (Heun's more than steps) from
    where its denoise starts. Its model is the sigmas' (the node has no ``model`` input), so ``args`` go unread."""
    sampler, sigmas = _inputs(ex, node_id)
    choice = _choice(sampler, sigmas)
    model = sigmas.model
    if isinstance(model, Model):
        return sampling.plan(ex, sigmas.node, _ksampler_args(sampler, sigmas, model))
    run = _schedule(ex, sigmas, choice)
    if run.total == 0:
        return 0
    scheduler = model.kind.make_scheduler(choice, model.base.scheduler.config)
    dynamic = {"mu": 0.0} if scheduler.config.get("use_dynamic_shifting") else {}  # the count is mu's alone
    scheduler.set_timesteps(run.total, **dynamic)
    return len(scheduler.timesteps[_start(run) * scheduler.order:])


def _call(ex: Execution, node_id: str, guider: Guider, batch: int) -> dict[str, Any]:
    """The diffusers call's conditioning: embeddings for each image, Flux's guidance, CFG with its negative."""
    model, positive = guider.model, guider.positive.parts[0]
    flux = model.family == "flux"
    call: dict[str, Any] = {"prompt_embeds": positive.embeds.repeat(batch, 1, 1),
                            "pooled_prompt_embeds": positive.pooled.repeat(batch, 1),  # type: ignore[union-attr]
                            "num_images_per_prompt": 1}
    guidance = positive.guidance if isinstance(positive, FlowCond) else None
    call["guidance_scale"] = (FLUX_GUIDANCE if guidance is None else guidance) if flux else 1.0
    if guider.negative is not None and guider.cfg > 1:
        negative = guider.negative.parts[0]
        embeds = negative.embeds
        if not flux:  # diffusers batches SD 3.5's two sides: their CLIP chunks padded to one count
            t5 = next(c.t5_tokens for c in (positive, negative) if isinstance(c, FlowCond))
            clip = max(c.embeds.shape[1] for c in (positive, negative)) - t5
            call["prompt_embeds"] = padded(positive, clip, t5).repeat(batch, 1, 1)
            embeds = padded(negative, clip, t5)
        call |= {"negative_prompt_embeds": embeds.repeat(batch, 1, 1),
                 "negative_pooled_prompt_embeds": negative.pooled.repeat(batch, 1)}  # type: ignore[union-attr]
        call["true_cfg_scale" if flux else "guidance_scale"] = guider.cfg
    return call


def _ksampler_args(sampler: SamplerName, sigmas: Sigmas, model: Model) -> dict[str, Any]:
    return {"model": model, "sampler_name": sampler.name, "scheduler": sigmas.scheduler, "steps": sigmas.steps,
            "denoise": sigmas.denoise}


def sampler_custom_advanced(ex: Execution, node_id: str, args: dict[str, Any]) -> tuple[Any, ...]:
    noise = ex.want(args["noise"], Noise, node_id, "noise")
    guider = ex.want(args["guider"], Guider, node_id, "guider")
    sampler, sigmas = _inputs(ex, node_id)
    latent = ex.want(args["latent_image"], Latent, node_id, "latent_image")
    model = guider.model
    if sigmas.model.model_id != model.model_id:
        where = ex.where(node_id, "sigmas")
        raise ContractError("mismatched_model", f"{where}: the schedule is {sigmas.model.model_id!r}'s and the "
                            f"guider's model is {model.model_id!r}", where)
    choice = _choice(sampler, sigmas)
    if isinstance(model, Model):
        core = {**_ksampler_args(sampler, sigmas, model), "seed": noise.seed, "cfg": guider.cfg,
                "positive": guider.positive, "negative": guider.negative or guider.positive, "latent_image": latent}
        done = sampling.ksampler(ex, node_id, core)[0]
        return done, done
    assert isinstance(model, FlowModel)
    where = ex.where(node_id, "latent_image")
    batch, channels, cells_h, cells_w = latent.samples.shape
    if channels != CHANNELS:
        raise ContractError("invalid_link", f"{where}: a latent of {channels} channels; Flux and SD 3.5 take "
                            f"{CHANNELS} (EmptySD3LatentImage's)", where)
    if model.family == "flux" and (cells_h % 2 or cells_w % 2):
        raise ContractError("invalid_field", f"{where}: Flux takes sides that are multiples of 16 pixels", where)
    run = _schedule(ex, sigmas, choice)
    txt2img = latent.empty and run.strength >= 1
    why = FAMILIES[model.family].txt2img_samplers.get(choice.scheduler)
    if not txt2img and run.total and why:
        raise ContractError("value_not_in_list", f"{sampler.where}: {sampler.name!r} runs from an empty latent at "
                            f"denoise 1 only: {why}", sampler.where)
    height, width = cells_h * 8, cells_w * 8
    call = _call(ex, node_id, guider, batch)
    if not txt2img:  # an img2img pass: the latents noised to where the schedule's last ``steps`` start
        call |= {"image": latent.samples, "strength": run.strength}
    cls = model.kind.task_class("txt2img" if txt2img else "img2img", model.variant)

    def sample(ctx: RunContext) -> torch.Tensor:
        if run.total == 0:
            return latent.samples
        view = job_pipeline(cls, model.base, choice, family=model.kind)  # type: ignore[arg-type]
        out = run_resumable(view, dataclasses.replace(ctx, seed=noise.seed), num_images=batch,
                            output_type="latent", width=width, height=height, num_inference_steps=run.total,
                            **call)
        if model.family == "flux":  # diffusers' Flux returns its packed 2 x 2 tokens
            out = view._unpack_latents(out, height, width, view.vae_scale_factor)  # type: ignore[attr-defined]
        return out  # type: ignore[no-any-return]

    out = Latent(ex.sample(node_id, sample), empty=latent.empty and run.total == 0)
    return out, out
