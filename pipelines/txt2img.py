"""Text to image: Stable Diffusion (1.x, 2.x or XL, as the model is) from a prompt alone."""

from __future__ import annotations

from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline
from PIL.Image import Image

from pipelines.common import DiffusersPipeline, generate
from runtime.contract import Txt2ImgInputs
from runtime.plugins import RunContext


class Txt2Img(DiffusersPipeline):
    name = "txt2img"
    checkpoints = True
    Inputs = Txt2ImgInputs
    classes = {"sd": StableDiffusionPipeline, "sdxl": StableDiffusionXLPipeline}

    def run(self, inputs: Txt2ImgInputs, ctx: RunContext) -> list[Image]:
        job = self.prepare(inputs, ctx)
        return generate(self.view(job), job, ctx, width=job.inputs.width, height=job.inputs.height)
