"""Stable Diffusion 1.x and 2.x: a UNet, one CLIP text encoder, prompts encoded WebUI's way.

Prompts go through ``pipelines.promptschedule`` (weights, BREAK, 75-token chunks, clip_skip, textual-inversion
embeddings, prompt editing and alternation), not diffusers' own encoding; IP-Adapter images add their
embeddings. Every sampler of ``pipelines.schedulers`` runs here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

import torch
from diffusers import (
    DiffusionPipeline,
    StableDiffusionControlNetImg2ImgPipeline,
    StableDiffusionControlNetInpaintPipeline,
    StableDiffusionControlNetPipeline,
    StableDiffusionImg2ImgPipeline,
    StableDiffusionInpaintPipeline,
    StableDiffusionPipeline,
)

from pipelines import embeddings, promptschedule
from pipelines.families.base import Family, StepConditioning
from pipelines.ipadapters import embeds as ip_adapter_embeds
from runtime.models.catalog import CatalogEntry
from runtime.models.store import ModelStore

if TYPE_CHECKING:
    from pipelines.common import Prepared
    from runtime.plugins import RunContext


class StableDiffusion(Family):
    names = ("sd1", "sd2")
    base_class = StableDiffusionPipeline
    tasks: ClassVar[dict[str, type[DiffusionPipeline]]] = {
        "txt2img": StableDiffusionPipeline, "img2img": StableDiffusionImg2ImgPipeline,
        "inpaint": StableDiffusionInpaintPipeline}
    control_tasks: ClassVar[dict[str, type[DiffusionPipeline]]] = {
        "txt2img": StableDiffusionControlNetPipeline, "img2img": StableDiffusionControlNetImg2ImgPipeline,
        "inpaint": StableDiffusionControlNetInpaintPipeline}
    latent_fills = True

    def load_options(self, store: ModelStore, entry: CatalogEntry) -> dict[str, Any]:
        # (an inpainting checkpoint loads as this class too: its tasks view it)
        return {"safety_checker": None, "requires_safety_checker": False}

    def encode(self, pipe: DiffusionPipeline, job: Prepared,
               ctx: RunContext) -> tuple[dict[str, Any], StepConditioning | None]:
        inputs = job.inputs
        guided = inputs.guidance_scale > 1
        with torch.inference_mode():
            # Encoded here, WebUI's way (weights, 75-token chunks, BREAK, clip_skip), not by diffusers: see
            # prompts.py; prompt editing swaps them between steps (promptschedule.py), from the step the run starts at.
            start = ctx.resume_from.step if ctx.resume_from is not None else 0
            embeds, conditioning = promptschedule.encode(
                pipe, inputs.prompt, inputs.negative_prompt, steps=inputs.steps, start=start,
                clip_skip=inputs.clip_skip, guidance=guided, num_images=inputs.num_images,
                embeddings=embeddings.for_family(ctx.models, job.family, (inputs.prompt, inputs.negative_prompt)))
        embeds |= ip_adapter_embeds(pipe, job.base, inputs.ip_adapters, ctx, guidance=guided)
        return embeds, conditioning


FAMILY = StableDiffusion()
