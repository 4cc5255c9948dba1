"""Loading base models and ControlNets once per process, in the pipeline class their family needs.

The catalog entry's ``family`` decides the class: SD 1.x and 2.x load as ``StableDiffusionPipeline``, SDXL as
``StableDiffusionXLPipeline`` (two text encoders, size conditioning). Each task then builds its own view on the
loaded modules (``pipelines.common.job_pipeline``), so txt2img, img2img and ControlNet of one base share a UNet,
a VAE and the text encoders in memory. Single-file checkpoints (``sd_xl_base_1.0.safetensors`` as SD WebUI users
keep them) load with the catalog's local config directory, so no download is ever attempted.
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers import (
    AutoencoderKL,
    ControlNetModel,
    DiffusionPipeline,
    StableDiffusionPipeline,
    StableDiffusionXLImg2ImgPipeline,
    StableDiffusionXLPipeline,
)

from pipelines import attention
from runtime.models.catalog import ModelError
from runtime.models.store import ModelStore

#: The pipeline class each family's base models load as; tasks pick their own class per kind (``KINDS``).
BASE_CLASSES: dict[str, type[DiffusionPipeline]] = {
    "sd1": StableDiffusionPipeline,
    "sd2": StableDiffusionPipeline,
    "sdxl": StableDiffusionXLPipeline,
}
#: Which kind of diffusers pipeline runs each family: the tasks map a kind to their own class.
KINDS = {"sd1": "sd", "sd2": "sd", "sdxl": "sdxl"}


def torch_dtype(device: str, name: str | None = None) -> torch.dtype:
    """The catalog entry's ``dtype``; else half precision where it is fast and memory is scarce (GPUs), since
    CPUs are slow or inexact at it."""
    if name is not None:
        return getattr(torch, name)
    return torch.float16 if device.startswith("cuda") else torch.float32


def memory_format(store: ModelStore, *models: Any) -> None:
    """Channels-last for the models whose convolutions run faster so (``SPOTGEN_CHANNELS_LAST``)."""
    if store.channels_last:
        for model in models:
            if model is not None:
                model.to(memory_format=torch.channels_last)


def compiled(store: ModelStore, pipe: DiffusionPipeline) -> None:
    """``torch.compile`` the UNet (``SPOTGEN_COMPILE``), where nearly all of a job's time goes. Compilation is
    lazy: the model's first job compiles, and later jobs of the same shapes reuse the code; a new size, batch or
    LoRA set compiles again. ``fullgraph`` is off so that a plugin's UNet with a graph break still runs."""
    if store.compile != "off":
        pipe.unet = torch.compile(pipe.unet, mode=store.compile, dynamic=False)


def family(store: ModelStore, model_id: str) -> str:
    """The base model's family, refused when no built-in pipeline runs it."""
    name = store.entry(model_id, "base").family
    if name not in BASE_CLASSES:
        raise ModelError("unsupported_model_family", f"model {model_id!r} is a {name} model; the built-in "
                         f"pipelines run {', '.join(BASE_CLASSES)} models")
    return name


#: Base models made for one task load as that task's class: SDXL's refiner has no first text encoder.
VARIANT_CLASSES: dict[str, type[DiffusionPipeline]] = {"refiner": StableDiffusionXLImg2ImgPipeline}


def check_variant(store: ModelStore, model_id: str, accepted: frozenset[str | None], task: str,
                  field: str = "model") -> None:
    """Refuse a base model made for another task (an inpainting checkpoint for txt2img, a refiner as the base
    model), naming the catalog's ``variant``."""
    variant = store.entry(model_id, "base").variant
    if variant not in accepted:
        use = {"inpainting": "the inpaint pipeline", "refiner": "a txt2img job's refiner"}.get(variant or "", "")
        raise ModelError("wrong_model_variant", f"{field}: model {model_id!r} is an {variant} model, for {use} only; "
                         f"{task} runs "
                         f"{' or '.join(sorted(v or 'ordinary' for v in accepted))} models")


def base_pipeline(store: ModelStore, model_id: str) -> DiffusionPipeline:
    """The base model's pipeline, loaded once per process; use ``job_pipeline`` to run a job on it."""
    variant = store.entry(model_id, "base").variant
    cls = VARIANT_CLASSES.get(variant or "") or BASE_CLASSES[family(store, model_id)]

    def load() -> DiffusionPipeline:
        source, entry = store.source(model_id, "base"), store.entry(model_id, "base")
        options: dict[str, Any] = {"dtype": torch_dtype(store.device, entry.dtype)}
        if entry.vae is not None:  # the catalog's own VAE (say, SDXL's fp16-safe one) instead of the model's
            options["vae"] = AutoencoderKL.from_pretrained(store.source(entry.vae, "vae").path,
                                                           dtype=options["dtype"], use_safetensors=True)
        if cls is StableDiffusionPipeline:  # (an inpainting checkpoint loads as one too: its tasks view it)
            options.update(safety_checker=None, requires_safety_checker=False)
        else:
            options.update(add_watermarker=False)  # SDXL's invisible watermark is an optional extra we do not ship
        if source.single_file:  # original layout; the catalog's local config dir stands in for the Hub
            pipe = cls.from_single_file(str(source.path), config=str(source.config), local_files_only=True,
                                        **options)
        else:
            pipe = cls.from_pretrained(source.path, use_safetensors=True, **options)
        pipe.to(store.device)
        memory_format(store, pipe.unet, pipe.vae)
        attention.apply(pipe, attention.choose(store.device, store.attention))
        compiled(store, pipe)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    return store.get(f"sd:{model_id}", load, model_id)


def controlnet_model(store: ModelStore, controlnet_id: str) -> ControlNetModel:
    """A ControlNet, loaded once per process and shared by every base model it is used with."""

    def load() -> ControlNetModel:
        source = store.source(controlnet_id, "controlnet")
        dtype = torch_dtype(store.device, store.entry(controlnet_id, "controlnet").dtype)
        if source.single_file:  # original ControlNet layout (or diffusers keys in one file) plus a local config
            model = ControlNetModel.from_single_file(str(source.path), config=str(source.config),
                                                     local_files_only=True, dtype=dtype)
        else:
            model = ControlNetModel.from_pretrained(source.path, dtype=dtype, use_safetensors=True)
        model = model.to(store.device)
        memory_format(store, model)
        attention.apply(model, attention.choose(store.device, store.attention))
        return model

    return store.get(f"controlnet:{controlnet_id}", load, controlnet_id)
