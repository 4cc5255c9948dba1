"""Image to image: any family's model (``pipelines.families``) starting from a noised input image instead of pure
noise."""

from __future__ import annotations

from PIL.Image import Image

from pipelines import controlunits
from pipelines.common import DiffusersPipeline, fit, generate
from pipelines.families.base import takes
from runtime.contract import Img2ImgInputs
from runtime.plugins import RunContext


class Img2Img(DiffusersPipeline):
    name = "img2img"
    checkpoints = True
    Inputs = Img2ImgInputs
    image_fields = ("image",)
    task = "img2img"

    def run(self, inputs: Img2ImgInputs, ctx: RunContext) -> list[Image]:
        job = self.prepare(inputs, ctx)
        # Fetched and resized before the model runs, so a bad image fails the job cheaply.
        init = fit(ctx.image(inputs.image), job.inputs.width, job.inputs.height)
        net, control = controlunits.for_job(ctx, job.inputs, init.size)
        view = self.view(job, **net)
        # SD's classes keep the image's size; the flow models' would work at their default 1024 unless told.
        size = {"width": init.width, "height": init.height} if takes(view, "width") else {}
        return generate(view, job, ctx, image=init, strength=inputs.strength, **size, **control)
