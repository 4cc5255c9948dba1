"""Inpainting and outpainting: the model repaints where the mask is white and keeps the rest, on ordinary
checkpoints (diffusers puts the image's own latents back outside the mask after every step) and on inpainting
checkpoints (catalog ``variant: inpainting``: SD's 9-channel UNet, which also reads the mask and the masked image;
Flux Fill, which runs as diffusers' ``FluxFillPipeline``). The family (``pipelines.families``) names the class.
Masks, canvases, crops and the composite are ``pipelines.masks``'.

WebUI's latent fills (``latent_noise``, ``latent_nothing``) replace the masked area's image latents with noise from
the job's generators, or with zeros, before the strength's noise is added (SD and SDXL: families with
``latent_fills``; the others refuse them, naming ``inputs.fill``). They hook diffusers' ``prepare_latents``: the
image is encoded there as diffusers would, filled, and handed on as latents (diffusers' documented path for a
4-channel ``image``). Resume (``pipelines.resume``) replays ``prepare_latents`` and ``prepare_mask_latents`` (the
masked image's encoding draws too) from fresh generators, and puts the saved generator states back at the first
step: a resumed run is byte-identical with ancestral samplers too.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
from diffusers import DiffusionPipeline
from diffusers.utils.torch_utils import randn_tensor
from PIL.Image import Image

from pipelines import controlunits, masks
from pipelines.common import DiffusersPipeline, Prepared, generate
from pipelines.loading import model_family
from runtime.contract import ContractError
from runtime.contract.edits import InpaintInputs, inpaint_size
from runtime.plugins import RunContext

LATENT_FILLS = ("latent_noise", "latent_nothing")


class LatentFill:
    """Mixin over diffusers' inpaint pipelines: WebUI's latent fills (module docstring). ``latent_fill`` and
    ``fill_mask`` (the mask at the job's size) are set per job."""

    latent_fill: str | None = None
    fill_mask: Image | None = None

    def prepare_latents(self, batch_size: int, num_channels_latents: int, height: int, width: int,
                        dtype: torch.dtype, device: torch.device, generator: Any, latents: Any = None,
                        image: Any = None, timestep: Any = None, is_strength_max: bool = True, *args: Any,
                        **kwargs: Any) -> Any:
        # At strength 1 diffusers starts from noise alone: the image's latents only matter outside the mask.
        if self.latent_fill in LATENT_FILLS and image is not None and latents is None and not is_strength_max:
            image = self._filled(image.to(device=device, dtype=dtype), batch_size, height, width, generator)
        return super().prepare_latents(batch_size, num_channels_latents, height, width,  # type: ignore[misc]
                                       dtype, device, generator, latents, image, timestep, is_strength_max,
                                       *args, **kwargs)

    def _filled(self, image: torch.Tensor, batch_size: int, height: int, width: int, generator: Any) -> torch.Tensor:
        pipe: Any = self
        latents = pipe._encode_vae_image(image=image, generator=generator)
        latents = latents.repeat(batch_size // latents.shape[0], 1, 1, 1)
        # The mask as diffusers' own blend reads it (binarised, nearest to the latents' size), so the latents kept
        # outside it are exactly the image's.
        mask = pipe.mask_processor.preprocess(self.fill_mask, height=height, width=width)
        mask = torch.nn.functional.interpolate(mask, size=tuple(latents.shape[-2:])).to(latents)
        if self.latent_fill == "latent_noise":
            fresh = randn_tensor(tuple(latents.shape), generator=generator, device=latents.device, dtype=latents.dtype)
        else:
            fresh = torch.zeros_like(latents)
        return latents * (1 - mask) + fresh * mask


@functools.cache
def with_latent_fill(cls: type[DiffusionPipeline]) -> type[DiffusionPipeline]:
    """``cls`` with the ``LatentFill`` mixin, made once per pipeline class."""
    return type(cls.__name__, (LatentFill, cls), {"__module__": __name__})


class Inpaint(DiffusersPipeline):
    name = "inpaint"
    checkpoints = True
    Inputs = InpaintInputs
    image_fields = ("image", "mask")
    variants = frozenset({None, "inpainting", "schnell", "turbo"})
    task = "inpaint"

    def view_class(self, job: Prepared, control: bool) -> type[DiffusionPipeline]:
        cls = super().view_class(job, control)
        return with_latent_fill(cls) if job.kind.latent_fills else cls

    def run(self, inputs: InpaintInputs, ctx: RunContext) -> list[Image]:
        if inputs.fill in LATENT_FILLS and not model_family(ctx.models, ctx.model).latent_fills:
            raise ContractError("invalid_field", f"inputs.fill: {inputs.fill} hooks SD's and SDXL's inpainting; on "
                                f"this model use original or fill", "inputs.fill")
        job = self.prepare(inputs, ctx)
        # Fetched, checked and prepared before the model runs, so a bad mask fails the job cheaply.
        image = ctx.image(inputs.image)
        mask = ctx.image(inputs.mask, mode=None) if inputs.mask is not None else None
        board = masks.canvas(image, mask, inputs.extend, inputs.invert_mask, inputs.mask_blur)
        width, height = inpaint_size(job.inputs, image.width, image.height, job.family)
        work = masks.work(board, width, height, inputs.only_masked, inputs.padding, inputs.fill == "fill")
        net, control = controlunits.for_job(ctx, job.inputs, (width, height), box=work.box, canvas=board.image.size)
        pipe: Any = self.view(job, **net)
        if inputs.fill in LATENT_FILLS:
            pipe.latent_fill, pipe.fill_mask = inputs.fill, work.mask
        outputs = generate(pipe, job, ctx, image=work.image, mask_image=work.mask, strength=inputs.strength,
                           width=width, height=height, **control)
        # Left to the image, the output is the canvas's own size (the model's, a multiple of 8, resized to it).
        size = board.image.size if inputs.width is None and inputs.height is None else (width, height)
        return [masks.paste_back(output, board, work, size) for output in outputs]
