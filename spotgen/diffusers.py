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

A job of several passes (a first pass, then a second at a higher size; a base model, then a refiner) runs each
through ``run_resumable`` inside ``Phases``: one progress count, the status naming the pass, and an interruption
in any pass resumes in that pass, at that step (docs/plugins.md)::

    phases = Phases(ctx, {"draft": steps, "refine": 4})
    latents = phases.run("draft", lambda c: run_resumable(base, c, prompt=p, num_inference_steps=steps,
                                                          output_type="latent"))
    return phases.run("refine", lambda c: run_resumable(base, c, task=StableDiffusionImg2ImgPipeline, prompt=p,
                                                        image=latents, strength=0.5, num_inference_steps=8))

Importing this module imports torch and diffusers (``import spotgen`` does not).
"""

from __future__ import annotations

from typing import Any

from pipelines.loading import base_pipeline
from pipelines.phases import Phases
from pipelines.resume import generators, job_view, resumable, run_resumable
from runtime.plugins import RunContext

__all__ = ["Phases", "base_model", "generators", "job_view", "resumable", "run_resumable"]


def base_model(ctx: RunContext) -> Any:
    """The job's base model (``ctx.model``) as a loaded diffusers pipeline from the worker's model store: loaded
    once per process and shared by every job (and every pipeline) that names it."""
    return base_pipeline(ctx.models, ctx.model)
