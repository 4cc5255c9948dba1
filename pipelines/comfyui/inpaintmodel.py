"""KSampler on an inpainting checkpoint (SD's and SDXL's 9-channel UNet) with a latent that has no noise mask:
EmptyLatentImage's, VAEEncode's, another sampler's.

Such a UNet reads the mask and the masked image's latents beside the noisy latents at every step, so it cannot run
on the text-to-image or img2img classes. ComfyUI gives it, when the latent carries no mask, a mask of ones and a
blank masked image (a grey image's latents): everything is to be painted, nothing is kept. This pass does the same
on diffusers' inpainting class of the model's family: ``mask_image`` all ones, ``masked_image_latents`` the VAE's
encoding of a grey image (0.5 in [0, 1], as VAEEncodeForInpaint fills what it masks), the latent as its image, so
an empty latent at denoise 1 starts from pure noise (diffusers' ``strength`` 1) and any other is noised to where
the schedule starts. A latent with a noise mask is ``noisemask``'s (the mask and the VAEEncodeForInpaint latent
go to the UNet there). The pass is ``pipelines.resume.run_resumable``'s, so an interruption resumes byte-identical.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from pipelines.comfyui import denoise, images, samplers
from pipelines.comfyui.denoise import Schedule
from pipelines.comfyui.unetpass import UnetPass
from pipelines.comfyui.values import Conditioning, Images, Latent, Model, Vae
from pipelines.common import job_pipeline
from runtime.contract import ContractError
from runtime.plugins import RunContext

if TYPE_CHECKING:
    from pipelines.comfyui.executor import Execution

#: The value (in [0, 1]) a blank masked image has: VAEEncodeForInpaint's fill of what it masks.
GREY = 0.5


def refuse(ex: Execution, node_id: str, model: Model, what: str) -> None:
    """A sampler that feeds the UNet only the noisy latents cannot run an inpainting checkpoint's 9-channel UNet:
    refused naming its ``model`` before any step, rather than failing on the UNet's first call."""
    if model.variant == "inpainting":
        where = ex.where(node_id, "model")
        raise ContractError("unsupported_model", f"{where}: {model.model_id!r} is an inpainting checkpoint, which "
                            f"{what} does not run yet; sample it with KSampler", where)


def blank_latents(model: Model, batch: int, height: int, width: int, device: str) -> torch.Tensor:
    """The masked image's latents when everything is masked: a grey image's, one per image of the batch."""
    grey = Images(torch.full((1, 3, height, width), GREY))
    return images.encode(Vae(model), grey, device).samples.repeat(batch, 1, 1, 1)


def unmasked(ex: Execution, node_id: str, args: dict[str, Any], model: Model, latent: Latent, run: Schedule,
             prompts: dict[str, Any]) -> tuple[Any, ...]:
    """KSampler's pass on inpainting checkpoint ``model`` for ``latent`` (no noise mask), on ``run``'s schedule
    with the sampler's ``prompts`` (``sampling._prompts``)."""
    positive = ex.want(args["positive"], Conditioning, node_id, "positive")
    negative = ex.want(args["negative"], Conditioning, node_id, "negative")
    choice = samplers.choice(args["sampler_name"], args["scheduler"], ex.where(node_id))
    seed = denoise.seed(ex, node_id, args)
    cfg = ex.number(node_id, args, "cfg")
    cls = model.kind.task_class("inpaint", model.variant)
    height, width = (side * model.base.vae_scale_factor for side in latent.samples.shape[-2:])
    samples = latent.samples.to(model.base.unet.dtype)
    mask = torch.ones((latent.batch, 1, height, width), dtype=samples.dtype, device=samples.device)
    blank = blank_latents(model, latent.batch, height, width, ex.ctx.device).to(samples.device, samples.dtype)

    unet = UnetPass(model, positive, negative, latent, seed, cfg)

    def sample(ctx: RunContext) -> torch.Tensor:
        if run.total == 0:
            return latent.samples
        view = job_pipeline(cls, model.base, choice, family=model.kind)
        return unet.run(ex, node_id, ctx, view, run.total, image=samples, mask_image=mask,
                        masked_image_latents=blank, strength=run.strength, width=width, height=height, **prompts)

    out = ex.sample(node_id, sample)
    return (Latent(out, empty=latent.empty and run.total == 0),)
