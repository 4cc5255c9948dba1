"""Stable Diffusion XL: two CLIP text encoders, size and crop conditioning, and a refiner variant.

Everything SD 1.x's module does (prompts WebUI's way, every sampler, IP-Adapters), with SDXL's classes, its
micro-conditioning passed as diffusers takes it, and the refiner (catalog ``variant: refiner``), which has no first
text encoder and loads as the img2img class.
"""

from __future__ import annotations

from typing import Any, ClassVar

from diffusers import (
    DiffusionPipeline,
    StableDiffusionXLControlNetImg2ImgPipeline,
    StableDiffusionXLControlNetInpaintPipeline,
    StableDiffusionXLControlNetPipeline,
    StableDiffusionXLImg2ImgPipeline,
    StableDiffusionXLInpaintPipeline,
    StableDiffusionXLPipeline,
)

from pipelines.families.sd import StableDiffusion
from runtime.contract import SIZE_CONDITIONING_FIELDS
from runtime.models.catalog import CatalogEntry
from runtime.models.store import ModelStore


class StableDiffusionXL(StableDiffusion):
    names = ("sdxl",)
    base_class = StableDiffusionXLPipeline
    variant_classes: ClassVar[dict[str, type[DiffusionPipeline]]] = {"refiner": StableDiffusionXLImg2ImgPipeline}
    tasks: ClassVar[dict[str, type[DiffusionPipeline]]] = {
        "txt2img": StableDiffusionXLPipeline, "img2img": StableDiffusionXLImg2ImgPipeline,
        "inpaint": StableDiffusionXLInpaintPipeline}
    control_tasks: ClassVar[dict[str, type[DiffusionPipeline]]] = {
        "txt2img": StableDiffusionXLControlNetPipeline, "img2img": StableDiffusionXLControlNetImg2ImgPipeline,
        "inpaint": StableDiffusionXLControlNetInpaintPipeline}

    def load_options(self, store: ModelStore, entry: CatalogEntry) -> dict[str, Any]:
        return {"add_watermarker": False}  # SDXL's invisible watermark is an optional extra we do not ship

    def call_args(self, pipe: DiffusionPipeline, inputs: Any) -> dict[str, Any]:
        """Guidance, and the micro-conditioning as diffusers takes it; diffusers' own defaults for what the request
        leaves out (the output size, no crop)."""
        out = super().call_args(pipe, inputs)
        for name in SIZE_CONDITIONING_FIELDS:
            value = getattr(inputs, name)
            if value is not None:
                out[name] = tuple(value)
        return out


FAMILY = StableDiffusionXL()
