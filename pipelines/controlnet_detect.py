"""``controlnet_detect``: one ControlNet preprocessor run on one image, the map as the job's output (WebUI's
ControlNet extension's ``/controlnet/detect``), so a client can preview the map a unit would make, or make it once
and send it as a unit's image with preprocessor ``none``.

The work is ``pipelines.preprocess.preprocess``, the very function the units run, so a previewed map is the one a
job would use (before the job resizes it to its own size). No model: the job's ``model`` is ``none``
(``builtin_models``, not looked up in the catalog); ``shuffle`` draws from the job's seed. There are no steps to
resume (``checkpoints = False``: an interrupted job starts again).
"""

from __future__ import annotations

from PIL.Image import Image

from pipelines.preprocess import preprocess
from runtime.contract.detect import DETECT_MODEL, ControlNetDetectInputs
from runtime.plugins import Pipeline, RunContext


class ControlNetDetect(Pipeline):
    name = "controlnet_detect"
    Inputs = ControlNetDetectInputs
    image_fields = ("image",)
    model_kind = "preprocessor"
    builtin_models = (DETECT_MODEL,)
    checkpoints = False

    def run(self, inputs: ControlNetDetectInputs, ctx: RunContext) -> list[Image]:
        image = ctx.image(inputs.image)
        ctx.mark("encode")
        return [preprocess(image, inputs.preprocessor, inputs.threshold_a, inputs.threshold_b, inputs.resolution,
                           ctx.seed, "inputs.preprocessor")]
