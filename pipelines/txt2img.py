"""Text to image: a prompt alone, on any family's model (``pipelines.families``); with hires fix (a second pass at a
higher size, ``pipelines.hires``) and SDXL's refiner (``pipelines.refiner``) when the job asks.

A job of several passes runs them as ``pipelines.phases.Phases``: base, then refiner, then hires (WebUI's order: the
refiner finishes the first pass's image, hires fix then works on it at the target size, with the base model).
Everything that can be refused (the refiner's family, the upscaler's id) is checked before the first step.
"""

from __future__ import annotations

from typing import Any

from PIL.Image import Image

from pipelines import controlunits, hires, refiner
from pipelines.common import DiffusersPipeline, Prepared, generate
from pipelines.phases import Phases
from runtime.contract import Txt2ImgInputs
from runtime.plugins import RunContext


class Txt2Img(DiffusersPipeline):
    name = "txt2img"
    checkpoints = True
    Inputs = Txt2ImgInputs
    task = "txt2img"

    def run(self, inputs: Txt2ImgInputs, ctx: RunContext) -> list[Image]:
        job = self.prepare(inputs, ctx)
        if job.inputs.hires is None and job.inputs.refiner is None:
            net, control = controlunits.for_job(ctx, job.inputs, (job.inputs.width, job.inputs.height),
                                                job.kind.control_key(self.task))
            return generate(self.view(job, **net), job, ctx, width=job.inputs.width, height=job.inputs.height,
                            **control)
        return self.passes(job, ctx)

    def passes(self, job: Prepared, ctx: RunContext) -> list[Image]:
        """Base, then refiner, then hires, each a phase of one checkpoint stream (``pipelines.phases``)."""
        inputs, store = job.inputs, ctx.models
        if inputs.refiner is not None:
            refiner.check(store, job)
        if inputs.hires is not None:
            hires.check_upscaler(store, inputs.hires)
        base_steps, refiner_steps = refiner.steps_split(job) if inputs.refiner is not None else (inputs.steps, 0)
        plan = {"base": base_steps}
        if inputs.refiner is not None:
            plan["refiner"] = refiner_steps
        if inputs.hires is not None:
            plan["hires"] = hires.planned_steps(job)
        refiner_model = refiner.model(store, job) if inputs.refiner is not None else None
        phases = Phases(ctx, plan)
        # What each pass hands the next: latents, or decoded images for hires fix's pixel upscalers.
        handover = "pil" if inputs.hires is None or not hires.in_latents(inputs.hires) else "latent"
        end: dict[str, Any] = {"denoising_end": inputs.switch_at} if refiner_model is not None else {}
        first_output = "latent" if refiner_model is not None else handover
        net, control = controlunits.for_job(ctx, inputs, (inputs.width, inputs.height), job.kind.control_key(self.task))
        out = phases.run("base", lambda c: generate(self.view(job, **net), job, c, width=inputs.width,
                                                    height=inputs.height, output_type=first_output, **end, **control))
        if refiner_model is not None:
            latents = out
            out = phases.run("refiner", lambda c: refiner.refine(job, c, refiner_model, latents, handover))
        if inputs.hires is None:
            return list(out)
        size = inputs.hires.target(inputs.width, inputs.height)
        image = hires.upscaled(store, inputs.hires, out, size, job.base.vae_scale_factor)
        return phases.run("hires", lambda c: hires.second_pass(job, c, image))
