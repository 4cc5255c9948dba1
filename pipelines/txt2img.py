"""Text to image: Stable Diffusion from a prompt alone."""

from __future__ import annotations

from diffusers import StableDiffusionPipeline
from PIL.Image import Image

from pipelines.common import DiffusersPipeline, base_pipeline, generate, job_pipeline
from runtime.contract import Txt2ImgInputs
from runtime.plugins import RunContext


class Txt2Img(DiffusersPipeline):
    name = "txt2img"
    checkpoints = True
    Inputs = Txt2ImgInputs

    def run(self, inputs: Txt2ImgInputs, ctx: RunContext) -> list[Image]:
        pipe = job_pipeline(StableDiffusionPipeline, base_pipeline(ctx.models, ctx.model), inputs.scheduler)
        return generate(pipe, inputs, ctx, width=inputs.width, height=inputs.height)
