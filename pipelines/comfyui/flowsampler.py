"""The Flux and SD 3.5 sampler pass, which both of ComfyUI's ways to sample run: ``KSampler`` (its model from
CheckpointLoaderSimple or UNETLoader) and ``SamplerCustomAdvanced`` with its noise, guider, sampler and sigmas
nodes (``customsampling``). ComfyUI defines KSampler as exactly that set: RandomNoise of its seed, CFGGuider of its
model, conditionings and cfg, KSamplerSelect of its sampler, BasicScheduler of its scheduler, steps and denoise;
so ``ksampler`` builds those values from the node's own inputs and runs the same pass, each refusal naming the
KSampler's input.

The pass is one of the job's checkpoint stream (``pipelines.phases``): diffusers' text-to-image or img2img class of
the model's family on the loaded model's own modules (``pipelines.common.job_pipeline``), run by
``pipelines.resume.run_resumable``, so an interruption at any step resumes there byte-identical. The sampler is
spotgen's flow-matching one of the ComfyUI pair on the model's family, shifted as the MODEL says
(ModelSamplingSD3/Flux); the noise is drawn on the CPU from the seed (image i of a batch from seed + i). The
MODEL's LoRAs are switched on for the pass alone (``loaders.activate``).

Guidance: without a negative, or at cfg 1 or less (ComfyUI's Flux examples: cfg 1), the positive runs alone: SD
3.5 without classifier-free guidance, Flux with the distilled guidance FluxGuidance set (3.5 without one, as
ComfyUI's Flux defaults). Above cfg 1 the negative is added: SD 3.5's classifier-free guidance, Flux's true CFG
(diffusers' ``true_cfg_scale``, a second pass per step). Combined conditionings are ``combine``'s.

An empty latent (EmptySD3LatentImage; EmptyLatentImage's zeros too, of the model's 16 channels as ComfyUI makes
them) at denoise 1 starts from pure noise, as a Flux or SD 3.5 txt2img job; any other latent (a VAEEncode's, a
sampler's), or a denoise below 1, is the family's img2img input, noised to where the schedule starts: ``steps``
are the last of ``steps / denoise`` (``denoise.schedule``). On img2img the flow families run Euler only
(``runtime.contract.families``): the others are refused naming the sampler.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

import torch

from pipelines.comfyui import combine, denoise, loaders
from pipelines.comfyui.flowtext import CHANNELS
from pipelines.comfyui.flowvalues import FlowCond, FlowModel, Guider, Noise, SamplerName, Sigmas, padded
from pipelines.comfyui.values import Cond, Conditioning, Latent
from pipelines.common import job_pipeline
from pipelines.resume import run_resumable
from runtime.contract import ContractError
from runtime.contract.comfy.nodes_sampling import spotgen_sampler
from runtime.contract.families import FAMILIES
from runtime.plugins import RunContext

if TYPE_CHECKING:
    from pipelines.comfyui.executor import Execution

#: Flux's distilled guidance when no FluxGuidance node sets one (ComfyUI's default for Flux models).
FLUX_GUIDANCE = 3.5


def conditioning(ex: Execution, node_id: str, name: str, value: Any, model: FlowModel) -> Conditioning:
    """A sampler's or guider's conditioning on a flow model: encodings of ``model``'s own encoders (or zeros)."""
    out = ex.want(value, Conditioning, node_id, name)
    where = ex.where(node_id, name)
    for part in out.parts:
        if isinstance(part, FlowCond) and part.model_id and part.model_id != model.model_id:
            raise ContractError("mismatched_model", f"{where}: the text was encoded by {part.model_id!r}'s "
                                f"encoders, and the model is {model.model_id!r}", where)
        if not isinstance(part, FlowCond) and part.pooled is None:
            raise ContractError("invalid_link", f"{where}: the text was encoded by an SD model's encoders, and "
                                f"the model is {model.model_id!r}", where)
    return out


def choice(sampler: SamplerName, sigmas: Sigmas) -> SimpleNamespace:
    """What ``FlowMatching.make_scheduler`` reads: spotgen's sampler and schedule of the ComfyUI pair on the
    model's family, and the MODEL's shift; a pair spotgen does not run is refused naming the node that set it."""
    try:
        name, schedule = spotgen_sampler(sampler.name, sigmas.scheduler, sigmas.model.family)
    except ValueError as exc:
        field = sampler.where if str(exc).startswith("sampler_name") else f"{sigmas.where}.inputs.scheduler"
        raise ContractError("value_not_in_list", f"{field}: {str(exc).split(': ', 1)[1]}", field) from None
    return SimpleNamespace(scheduler=name, schedule=schedule, shift=getattr(sigmas.model, "shift", None))


def schedule(ex: Execution, sigmas: Sigmas, picked: SimpleNamespace) -> denoise.Schedule:
    """ComfyUI's denoise as KSampler reads it (``denoise.schedule``): ``steps`` of ``steps / denoise``. The flow
    img2img classes start at ``int(total - total x strength)`` (no rounding down of ``total x strength`` first, as
    SD's do), so the strength is put half a step below the count here."""
    run = denoise.schedule(ex, sigmas.node, {"steps": sigmas.steps, "denoise": sigmas.denoise},
                           picked)  # type: ignore[arg-type]
    if run.total == 0 or run.strength >= 1:
        return run
    return denoise.Schedule(run.total, (sigmas.steps - 0.5) / run.total)


def planned(ex: Execution, sampler: SamplerName, sigmas: Sigmas) -> int:
    """The steps a pass runs: the timesteps of its scheduler (Heun's more than steps) from where its denoise
    starts (``get_timesteps``: ``int(total - total x strength)``)."""
    model = sigmas.model
    picked = choice(sampler, sigmas)
    run = schedule(ex, sigmas, picked)
    if run.total == 0:
        return 0
    scheduler = model.kind.make_scheduler(picked, model.base.scheduler.config)
    dynamic = {"mu": 0.0} if scheduler.config.get("use_dynamic_shifting") else {}  # the count is mu's alone
    scheduler.set_timesteps(run.total, **dynamic)
    start = int(max(run.total - run.total * run.strength, 0))
    return len(scheduler.timesteps[start * scheduler.order:])


def _parts(guider: Guider) -> list[Cond]:
    """Every encoding the pass runs: the positive's, and the negative's when it is guided."""
    sides = [guider.positive, guider.negative] if guided(guider) else [guider.positive]
    return [part for side in sides for part in side.parts]  # type: ignore[union-attr]


def fit(guider: Guider) -> tuple[Callable[[Cond, int], torch.Tensor], int]:
    """How an encoding of the pass is made ``length`` tokens long, and the length every one is made: SD 3.5's
    longest (empty CLIP chunks put before the T5 tokens, as diffusers needs one length to batch its two sides and
    ``combine`` its parts); Flux's are of one length (T5's), as they are."""
    parts = _parts(guider)
    if guider.model.family == "flux":
        return (lambda cond, length: cond.embeds), parts[0].embeds.shape[1]
    t5 = next((c.t5_tokens for c in parts if isinstance(c, FlowCond)), 0)
    return (lambda cond, length: padded(cond, length - t5, t5)), max(c.embeds.shape[1] for c in parts)


def _call(guider: Guider, batch: int) -> dict[str, Any]:
    """The diffusers call's conditioning: embeddings for each image, Flux's guidance, CFG with its negative."""
    model, positive = guider.model, guider.positive.parts[0]
    flux = model.family == "flux"
    pad, length = fit(guider)
    call: dict[str, Any] = {"prompt_embeds": pad(positive, length).repeat(batch, 1, 1),
                            "pooled_prompt_embeds": positive.pooled.repeat(batch, 1),  # type: ignore[union-attr]
                            "num_images_per_prompt": 1}
    guidance = positive.guidance if isinstance(positive, FlowCond) else None
    call["guidance_scale"] = (FLUX_GUIDANCE if guidance is None else guidance) if flux else 1.0
    if guided(guider):
        negative = guider.negative.parts[0]  # type: ignore[union-attr]
        call |= {"negative_prompt_embeds": pad(negative, length).repeat(batch, 1, 1),
                 "negative_pooled_prompt_embeds": negative.pooled.repeat(batch, 1)}  # type: ignore[union-attr]
        call["true_cfg_scale" if flux else "guidance_scale"] = guider.cfg
    return call


def guided(guider: Guider) -> bool:
    """Whether the pass runs the negative too (ComfyUI skips it at cfg 1, as diffusers does)."""
    return guider.negative is not None and guider.cfg > 1


def run(ex: Execution, node_id: str, noise: Noise, guider: Guider, sampler: SamplerName, sigmas: Sigmas,
        latent: Latent, fixed: denoise.Schedule | None = None, adapt: Callable[[Any], None] | None = None) -> Latent:
    """The sampler node ``node_id``'s pass on a flow model (module docstring); refusals name where each value was
    set (a KSampler's own inputs, or the custom-sampling node that made it). KSamplerAdvanced (``flowadvanced``)
    gives its own ``fixed`` schedule instead of the sigmas' denoise, and ``adapt``s the job view to its slice."""
    model = guider.model
    assert isinstance(model, FlowModel)
    picked = choice(sampler, sigmas)
    where = ex.where(node_id, "latent_image")
    batch, channels, cells_h, cells_w = latent.samples.shape
    if latent.empty and channels != CHANNELS:  # EmptyLatentImage's zeros: ComfyUI makes them the model's channels
        latent = dataclasses.replace(latent, samples=latent.samples.new_zeros(batch, CHANNELS, cells_h, cells_w))
    elif channels != CHANNELS:
        raise ContractError("invalid_link", f"{where}: a latent of {channels} channels; Flux and SD 3.5 take "
                            f"{CHANNELS} (EmptySD3LatentImage's)", where)
    if model.family == "flux" and (cells_h % 2 or cells_w % 2):
        raise ContractError("invalid_field", f"{where}: Flux takes sides that are multiples of 16 pixels", where)
    plan = schedule(ex, sigmas, picked) if fixed is None else fixed
    txt2img = latent.empty and plan.strength >= 1
    why = FAMILIES[model.family].txt2img_samplers.get(picked.scheduler)
    if not txt2img and plan.total and why:
        raise ContractError("value_not_in_list", f"{sampler.where}: {sampler.name!r} runs from an empty latent at "
                            f"denoise 1 only: {why}", sampler.where)
    height, width = cells_h * 8, cells_w * 8
    call = _call(guider, batch)
    if not txt2img:  # an img2img pass: the latents noised to where the schedule's last ``steps`` start
        call |= {"image": latent.samples, "strength": plan.strength}
    cls = model.kind.task_class("txt2img" if txt2img else "img2img", model.variant)
    negative = guider.negative if guided(guider) and guider.negative is not None else guider.positive
    flux = model.family == "flux"

    def sample(ctx: RunContext) -> torch.Tensor:
        if plan.total == 0:
            return latent.samples
        loaders.activate(ctx.models, model, model.loras, guider.where)  # type: ignore[arg-type]
        view = job_pipeline(cls, model.base, picked, family=model.kind)  # type: ignore[arg-type]
        if adapt is not None:
            adapt(view)
        with combine.averaged(model.base.transformer, guider.positive, negative, batch, flux and guided(guider),
                              FLUX_GUIDANCE if flux else None, fit(guider)[0]):
            out = run_resumable(view, dataclasses.replace(ctx, seed=noise.seed), num_images=batch,
                                output_type="latent", width=width, height=height, num_inference_steps=plan.total,
                                **call)
        if flux:  # diffusers' Flux returns its packed 2 x 2 tokens
            out = view._unpack_latents(out, height, width, view.vae_scale_factor)  # type: ignore[attr-defined]
        return out  # type: ignore[no-any-return]

    return Latent(ex.sample(node_id, sample), empty=latent.empty and plan.total == 0)


def _values(ex: Execution, node_id: str, args: dict[str, Any]) -> tuple[SamplerName, Sigmas]:
    """KSampler's sampler and schedule as KSamplerSelect and BasicScheduler would give them, set by its inputs."""
    model = ex.want(args["model"], FlowModel, node_id, "model")
    steps, amount = ex.integer(node_id, args, "steps"), ex.number(node_id, args, "denoise")
    sigmas = Sigmas(model, str(args["scheduler"]), steps, amount, ex.where(node_id), node_id)
    return SamplerName(str(args["sampler_name"]), ex.where(node_id, "sampler_name")), sigmas


def plan(ex: Execution, node_id: str, args: dict[str, Any]) -> int:
    """The steps a KSampler node on a flow model is planned to run."""
    return planned(ex, *_values(ex, node_id, args))


def cfg(ex: Execution, node_id: str, args: dict[str, Any]) -> float:
    """The node's ``cfg``, refused below 0 naming it (the guidance of CFGGuider and of KSampler on these models)."""
    value = ex.number(node_id, args, "cfg")
    if value < 0:
        where = ex.where(node_id, "cfg")
        raise ContractError("invalid_field", f"{where}: a cfg of 0 or more, not {value}", where)
    return value


def ksampler(ex: Execution, node_id: str, args: dict[str, Any]) -> tuple[Any, ...]:
    """KSampler on a Flux or SD 3.5 model: ComfyUI's custom-sampling set of its inputs (module docstring)."""
    sampler, sigmas = _values(ex, node_id, args)
    model = sigmas.model
    assert isinstance(model, FlowModel)
    positive = conditioning(ex, node_id, "positive", args["positive"], model)
    negative = conditioning(ex, node_id, "negative", args["negative"], model)
    guider = Guider(model, positive, negative, cfg(ex, node_id, args), where=ex.where(node_id, "model"))
    latent = ex.want(args["latent_image"], Latent, node_id, "latent_image")
    return (run(ex, node_id, Noise(denoise.seed(ex, node_id, args)), guider, sampler, sigmas, latent),)
