"""Resume for free on a diffusers pipeline: progress, cancel, checkpoints and byte-identical resume, with no state
code in the plugin. The built-in pipelines run through the same ``run_resumable``.

    from diffusers import StableDiffusionInpaintPipeline
    from spotgen import Pipeline
    from spotgen.diffusers import base_model, run_resumable

    class Inpaint(Pipeline):
        name, Inputs, checkpoints = "inpaint", InpaintInputs, True

        def run(self, inputs, ctx):
            return run_resumable(base_model(ctx), ctx, task=StableDiffusionInpaintPipeline, prompt=inputs.prompt,
                                 image=ctx.image(inputs.image), mask_image=ctx.image(inputs.mask),
                                 num_inference_steps=inputs.steps, width=inputs.width, height=inputs.height)

Importing this module imports torch and diffusers (``import spotgen`` does not).
"""

from __future__ import annotations

from typing import Any

from pipelines.loading import base_pipeline
from pipelines.resume import generators, job_view, resumable, run_resumable
from runtime.plugins import RunContext

__all__ = ["base_model", "generators", "job_view", "resumable", "run_resumable"]


def base_model(ctx: RunContext) -> Any:
    """The job's base model (``ctx.model``) as a loaded diffusers pipeline from the worker's model store: loaded
    once per process and shared by every job (and every pipeline) that names it."""
    return base_pipeline(ctx.models, ctx.model)
