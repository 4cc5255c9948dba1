"""Image to image: Stable Diffusion starting from a noised input image instead of pure noise."""

from __future__ import annotations

from diffusers import StableDiffusionImg2ImgPipeline
from PIL.Image import Image

from pipelines.common import DiffusersPipeline, base_pipeline, fit, generate, job_pipeline
from runtime.contract import Img2ImgInputs
from runtime.plugins import RunContext


class Img2Img(DiffusersPipeline):
    name = "img2img"
    checkpoints = True
    Inputs = Img2ImgInputs
    image_fields = ("image",)

    def run(self, inputs: Img2ImgInputs, ctx: RunContext) -> list[Image]:
        # Fetched and resized before the model is touched, so a bad image fails the job cheaply.
        init = fit(ctx.image(inputs.image), inputs.width, inputs.height)
        pipe = job_pipeline(StableDiffusionImg2ImgPipeline, base_pipeline(ctx.models, ctx.model), inputs.scheduler)
        return generate(pipe, inputs, ctx, image=init, strength=inputs.strength)
