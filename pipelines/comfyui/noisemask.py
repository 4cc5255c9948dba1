"""ComfyUI's MASK and a latent's noise mask: what ``VAEEncodeForInpaint`` and ``SetLatentNoiseMask`` put on a
latent, and the ``KSampler`` that honours it by inpainting.

A masked latent is resampled inside the mask only: the sampler runs on diffusers' inpainting class of the model's
family (``Family.task_class("inpaint")``), given the latent itself as its image latents, the mask, and the latent as
the masked image's latents. On an ordinary checkpoint diffusers then puts the latent back outside the mask after
every step, noised to the next step's level (clean after the last), as ComfyUI's sampler does with a noise mask;
on an inpainting checkpoint (SD's 9-channel UNet) the denoiser also reads the mask and the masked image's latents
(VAEEncodeForInpaint's grey-filled encoding), as ComfyUI feeds an inpainting model a VAEEncodeForInpaint latent,
and the original latent is put back outside the mask at the end, as ComfyUI's sampler does (``kept_outside``).
Unlike ComfyUI, the mask is binarised at 0.5 (diffusers' mask processor): a feathered mask blends hard. The pass
is ``pipelines.resume.run_resumable``'s like any KSampler's, so an interruption resumes byte-identical.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from pipelines.comfyui import denoise, samplers, sampling
from pipelines.comfyui.unetpass import UnetPass
from pipelines.comfyui.values import Conditioning, Latent, Model
from pipelines.common import job_pipeline
from runtime.plugins import RunContext

if TYPE_CHECKING:
    from pipelines.comfyui.executor import Execution


@dataclass(frozen=True)
class Mask:
    """MASK: float values (batch, height, width) in [0, 1], 1 where the image is to change (ComfyUI's)."""

    values: torch.Tensor


@dataclass(frozen=True)
class MaskedLatent(Latent):
    """A LATENT with ComfyUI's ``noise_mask``: (batch or 1, 1, height, width) in [0, 1], at any size (the
    sampler scales it to the latents')."""

    noise_mask: torch.Tensor | None = None


def as_batch(mask: torch.Tensor) -> torch.Tensor:
    """A mask as (batch, 1, height, width), as ComfyUI reshapes one."""
    return mask.reshape(-1, 1, *mask.shape[-2:]).float()


def ksampler(ex: Execution, node_id: str, args: dict[str, Any]) -> tuple[Any, ...]:
    """KSampler: a latent with a noise mask is inpainted (``inpaint``); any other is the core sampler's."""
    latent = args.get("latent_image")
    if isinstance(latent, MaskedLatent) and latent.noise_mask is not None:
        return inpaint(ex, node_id, args, latent, latent.noise_mask)
    return sampling.ksampler(ex, node_id, args)


def _pixel_mask(mask: torch.Tensor, batch: int, height: int, width: int) -> torch.Tensor:
    """The noise mask at the image's pixel size, one per image of the batch (diffusers scales it to latents)."""
    mask = torch.nn.functional.interpolate(as_batch(mask), size=(height, width), mode="bilinear")
    if mask.shape[0] < batch:
        mask = mask.repeat(-(-batch // mask.shape[0]), 1, 1, 1)
    return mask[:batch].clamp(0, 1)


def kept_outside(out: torch.Tensor, original: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The sampled latents inside the mask, the original's outside, the mask binarised and scaled to the latents
    as diffusers' inpainting scales it. ComfyUI ends a masked sampling so; diffusers does only on 4-channel
    denoisers (where this changes nothing), not on inpainting ones, whose outside would drift."""
    cells = torch.nn.functional.interpolate((mask >= 0.5).to(out.dtype), size=tuple(out.shape[-2:]))
    cells = cells.to(out.device)
    return original.to(out.device, out.dtype) * (1 - cells) + out * cells


def inpaint(ex: Execution, node_id: str, args: dict[str, Any], latent: Latent,
            noise_mask: torch.Tensor) -> tuple[Any, ...]:
    model = ex.want(args["model"], Model, node_id, "model")
    positive = ex.want(args["positive"], Conditioning, node_id, "positive")
    negative = ex.want(args["negative"], Conditioning, node_id, "negative")
    choice = samplers.choice(args["sampler_name"], args["scheduler"], ex.where(node_id))
    run = sampling.schedule(ex, node_id, args, choice)
    seed = denoise.seed(ex, node_id, args)
    cfg = ex.number(node_id, args, "cfg")
    prompts = sampling._prompts(model, positive, negative, ex.where(node_id, "positive"))
    cls = model.kind.task_class("inpaint", model.variant)
    height, width = (side * model.base.vae_scale_factor for side in latent.samples.shape[-2:])
    samples = latent.samples.to(model.base.unet.dtype)
    mask = _pixel_mask(noise_mask, latent.batch, height, width).to(samples.device, samples.dtype)

    unet = UnetPass(model, positive, negative, latent, seed, cfg)

    def sample(ctx: RunContext) -> torch.Tensor:
        if run.total == 0:
            return latent.samples
        view = job_pipeline(cls, model.base, choice, family=model.kind)
        out = unet.run(ex, node_id, ctx, view, run.total, image=samples, mask_image=mask,
                       masked_image_latents=samples, strength=run.strength, width=width, height=height, **prompts)
        return kept_outside(out, samples, mask)

    out = ex.sample(node_id, sample)
    return (MaskedLatent(out, noise_mask=noise_mask),)
