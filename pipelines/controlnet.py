"""ControlNet: a text-to-image model of any family with ControlNets guided by a conditioning image (edges, depth,
pose...).

Its own fields are one unit (the form clients used before ``controlnets``); ``inputs.controlnets`` adds more, run
after it (``pipelines.controlunits``: the same checks, maps and per-unit lists as on every other pipeline).
"""

from __future__ import annotations

from PIL.Image import Image

from pipelines import controlunits
from pipelines.common import DiffusersPipeline, controlnet_model, fit, generate
from pipelines.loading import torch_dtype
from pipelines.preprocess import control_map
from runtime.contract import ControlNetInputs
from runtime.models.catalog import ModelError
from runtime.plugins import RunContext


class ControlNet(DiffusersPipeline):
    name = "controlnet"
    checkpoints = True
    Inputs = ControlNetInputs
    image_fields = ("control_image",)
    task = "txt2img"
    always_control = True  # its own unit: the family's ControlNet class of txt2img

    def load(self, model_id: str, kind: str) -> bool:
        if kind != "controlnet":
            return super().load(model_id, kind)
        controlnet_model(self.models, model_id)
        return True

    def run(self, inputs: ControlNetInputs, ctx: RunContext) -> list[Image]:
        base_family = ctx.models.entry(ctx.model, "base").family
        control_family = ctx.models.entry(inputs.controlnet, "controlnet").family
        if control_family != base_family:  # the shapes would not match; say so instead of a tensor error
            raise ModelError("incompatible_controlnet", f"ControlNet {inputs.controlnet!r} is for {control_family} "
                             f"models and {ctx.model!r} is a {base_family} model")
        base_dtype, control_dtype = (torch_dtype(ctx.device, ctx.models.entry(model_id, kind).dtype)
                                     for model_id, kind in ((ctx.model, "base"), (inputs.controlnet, "controlnet")))
        if control_dtype != base_dtype:  # one shared ControlNet cannot be cast for each base model it serves
            raise ModelError("incompatible_controlnet", f"ControlNet {inputs.controlnet!r} runs in {control_dtype} "
                             f"and {ctx.model!r} in {base_dtype}: give them the same catalog dtype")
        job = self.prepare(inputs, ctx)
        control = control_map(fit(ctx.image(inputs.control_image), job.inputs.width, job.inputs.height),
                              inputs.control_preprocessor, inputs.canny_low, inputs.canny_high)
        own = {job.kind.control_key(self.task): control,
               "controlnet_conditioning_scale": inputs.controlnet_conditioning_scale,
               "control_guidance_start": inputs.control_guidance_start,
               "control_guidance_end": inputs.control_guidance_end}
        net: object = controlnet_model(ctx.models, inputs.controlnet)
        if job.inputs.controlnets:  # more units: every argument becomes a list, this pipeline's own unit first
            _, extra = controlunits.for_job(ctx, job.inputs, control.size, job.kind.control_key(self.task))
            net = controlunits.model(ctx.models, [inputs.controlnet] + [unit.id for unit in job.inputs.controlnets])
            own = {key: [value, *(extra[key] if isinstance(extra[key], list) else [extra[key]])]
                   for key, value in own.items()}
        return generate(self.view(job, controlnet=net), job, ctx, width=job.inputs.width, height=job.inputs.height,
                        **own)
