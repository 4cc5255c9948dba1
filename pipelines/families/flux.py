"""Flux.1 (dev, schnell, Fill): a rectified-flow transformer with T5 and CLIP, black-forest-labs' models.

dev is guidance-distilled: its ``guidance`` (Forge's "Distilled CFG Scale", 3.5 by default; 30 for Fill, as
black-forest-labs recommend) is an input of the transformer, not a second pass. True classifier-free guidance with
a negative prompt is optional (``guidance_scale`` > 1: diffusers' ``true_cfg_scale``, twice the compute per step).
schnell (catalog ``variant: schnell``) is timestep-distilled: a few steps, no guidance of either kind (the contract
refuses both). Fill models (``variant: inpainting``) run the inpaint task as diffusers' ``FluxFillPipeline``.
"""

from __future__ import annotations

from typing import Any, ClassVar

from diffusers import (
    DiffusionPipeline,
    FluxControlNetImg2ImgPipeline,
    FluxControlNetInpaintPipeline,
    FluxControlNetModel,
    FluxControlNetPipeline,
    FluxFillPipeline,
    FluxImg2ImgPipeline,
    FluxInpaintPipeline,
    FluxPipeline,
)
from diffusers.models.controlnets.controlnet_flux import FluxMultiControlNetModel

from pipelines.families.base import require
from pipelines.families.flow import FlowMatching


class Flux(FlowMatching):
    names = ("flux",)
    base_class = FluxPipeline
    tasks: ClassVar[dict[str, type[DiffusionPipeline]]] = {
        "txt2img": FluxPipeline, "img2img": FluxImg2ImgPipeline, "inpaint": FluxInpaintPipeline}
    control_tasks: ClassVar[dict[str, type[DiffusionPipeline]]] = {
        "txt2img": FluxControlNetPipeline, "img2img": FluxControlNetImg2ImgPipeline,
        "inpaint": FluxControlNetInpaintPipeline}
    variant_tasks: ClassVar[dict[tuple[str, str], type[DiffusionPipeline]]] = {("inpaint", "inpainting"):
                                                                               FluxFillPipeline}
    controlnet_class = FluxControlNetModel
    variant_sequence_length: ClassVar[dict[str, int]] = {"schnell": 256}  # what schnell was trained with

    def multi_controlnet(self, nets: Any) -> Any:
        return FluxMultiControlNetModel(list(nets))

    def load(self, store: Any, model_id: str) -> DiffusionPipeline:
        # the forms of docs/models.md "Flux and SD 3.5 on 24 GB GPUs"; original-layout files through fluxlayout
        from diffusers import FluxTransformer2DModel

        from pipelines import flowload
        from runtime.models import fluxlayout

        return flowload.load(self, store, model_id, FluxTransformer2DModel, fluxlayout.to_diffusers)

    def call_args(self, pipe: DiffusionPipeline, inputs: Any) -> dict[str, Any]:
        # diffusers' Flux ``guidance_scale`` is the distilled guidance; it reaches the transformer only when the
        # model has a guidance embedding (dev and Fill; not schnell, for which the contract leaves it None).
        args: dict[str, Any] = {} if inputs.guidance is None else {"guidance_scale": inputs.guidance}
        if inputs.guidance_scale > 1:
            args["true_cfg_scale"] = inputs.guidance_scale
            require(pipe, args, "inputs.guidance_scale", "true_cfg_scale")
        return args


FAMILY = Flux()
