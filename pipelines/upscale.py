"""Upscaling, SD WebUI's "extras": an image made ``scale`` times larger by an upscaler model, Lanczos or nearest.

The job's ``model`` is the upscaler: a catalog id of kind ``upscaler`` (ESRGAN, Real-ESRGAN, SwinIR ... read by
spandrel), or ``lanczos`` / ``nearest``, which need no catalog entry (``builtin_models``: the worker does not
look them up). The work is ``pipelines.upscalers.upscale``, the same function hires fix uses, so an upscaler
gives the same pixels in both. WebUI's second upscaler (``upscaler_2``) runs on the same image to the same size
and is blended in at its visibility (``Image.blend``, as WebUI); to a ``width`` x ``height`` with ``crop``, the
covering result is pasted centred on a canvas of that size, as WebUI's "crop to fit" (black shows only where
``multiple_of`` rounding left it short). There are no denoising steps to resume from (``checkpoints = False``: an
interrupted job starts again); progress is reported per tile, and a cancel stops the job between tiles.
"""

from __future__ import annotations

from PIL import Image as PILImage
from PIL.Image import Image

from pipelines.upscalers import RESAMPLERS, load, upscale
from runtime.contract import UpscaleInputs, upscale_sizes
from runtime.models.store import ModelStore
from runtime.plugins import Pipeline, RunContext, SetupContext


class Upscale(Pipeline):
    name = "upscale"
    Inputs = UpscaleInputs
    image_fields = ("image",)
    model_kind = "upscaler"
    #: The upscalers without weights: a job names them as its model, and the catalog has no entry for them.
    builtin_models = tuple(RESAMPLERS)
    checkpoints = False

    def setup(self, ctx: SetupContext) -> None:
        self.store: ModelStore = ctx.models

    def load(self, model_id: str, kind: str) -> bool:
        if kind != "upscaler":
            return False
        load(self.store, model_id)
        return True

    def run(self, inputs: UpscaleInputs, ctx: RunContext) -> list[Image]:
        image = ctx.image(inputs.image)
        grown, size = upscale_sizes(inputs, image.width, image.height)  # the API checks only inline images' sizes
        ctx.mark("encode")
        second = inputs.upscaler_2 if inputs.upscaler_2_visibility > 0 else None
        runs = 2 if second else 1
        out = upscale(ctx.models, ctx.model, image, grown,
                      progress=lambda done, total: ctx.progress(done, runs * total))
        if second is not None:
            other = upscale(ctx.models, second, image, grown,
                            progress=lambda done, total: ctx.progress(total + done, 2 * total))
            out = PILImage.blend(out, other, inputs.upscaler_2_visibility)
        if size != grown:
            canvas = PILImage.new("RGB", size)
            canvas.paste(out, (size[0] // 2 - grown[0] // 2, size[1] // 2 - grown[1] // 2))
            out = canvas
        return [out]
