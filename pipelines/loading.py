"""Loading base models and ControlNets once per process, in the classes their family needs.

The catalog entry's ``family`` picks the module of ``pipelines.families`` that knows how to load it: SD 1.x and
2.x as ``StableDiffusionPipeline``, SDXL as ``StableDiffusionXLPipeline``, Flux as ``FluxPipeline``, SD 3.5 as
``StableDiffusion3Pipeline``. Each task then builds its own view on the loaded modules
(``pipelines.common.job_pipeline``), so txt2img, img2img, inpaint and ControlNet of one base share its denoiser (a
UNet or a transformer), its VAE and its text encoders in memory. Single-file checkpoints (``sd_xl_base_1.0.safetensors``
as SD WebUI users keep them) load with the catalog's local config directory, so no download is ever attempted.
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers import DiffusionPipeline

from pipelines import attention
from pipelines.dtypes import torch_dtype
from pipelines.families import Family, family_of
from runtime.models.catalog import ModelError
from runtime.models.store import ModelStore

__all__ = ["base_pipeline", "check_variant", "compiled", "controlnet_model", "family", "memory_format",
           "model_family", "torch_dtype"]


def memory_format(store: ModelStore, *models: Any) -> None:
    """Channels-last for the models whose convolutions run faster so (``SPOTGEN_CHANNELS_LAST``)."""
    if store.channels_last:
        for model in models:
            if model is not None:
                model.to(memory_format=torch.channels_last)


def compiled(store: ModelStore, pipe: DiffusionPipeline, denoiser: str = "unet") -> None:
    """``torch.compile`` the denoiser (``SPOTGEN_COMPILE``), where nearly all of a job's time goes. Compilation is
    lazy: the model's first job compiles, and later jobs of the same shapes reuse the code; a new size, batch or
    LoRA set compiles again. ``fullgraph`` is off so that a plugin's UNet with a graph break still runs."""
    if store.compile != "off":
        setattr(pipe, denoiser, torch.compile(getattr(pipe, denoiser), mode=store.compile, dynamic=False))


def family(store: ModelStore, model_id: str) -> str:
    """The base model's family name, refused when no built-in pipeline runs it."""
    return _family(store, model_id)[0]


def _family(store: ModelStore, model_id: str) -> tuple[str, Family]:
    name = store.entry(model_id, "base").family
    return name, family_of(name, model_id)


def model_family(store: ModelStore, model_id: str) -> Family:
    """The ``pipelines.families`` module's family that runs the base model."""
    return _family(store, model_id)[1]


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
    kind = model_family(store, model_id)

    def load() -> DiffusionPipeline:
        pipe = kind.load(store, model_id)
        memory_format(store, getattr(pipe, kind.denoiser, None), pipe.vae)
        attention.apply(pipe, attention.choose(store.device, store.attention))
        compiled(store, pipe, kind.denoiser)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    return store.get(f"sd:{model_id}", load, model_id)


def controlnet_model(store: ModelStore, controlnet_id: str) -> Any:
    """A ControlNet, loaded once per process and shared by every base model it is used with."""
    kind = family_of(store.entry(controlnet_id, "controlnet").family, controlnet_id)

    def load() -> Any:
        model = kind.load_controlnet(store, controlnet_id)
        memory_format(store, model)
        attention.apply(model, attention.choose(store.device, store.attention))
        return model

    return store.get(f"controlnet:{controlnet_id}", load, controlnet_id)
