"""Loader nodes: ``CheckpointLoaderSimple``'s MODEL, CLIP and VAE from one catalog base model, and
``LoraLoader``/``LoraLoaderModelOnly``'s LoRAs on them, on every family: an SD or SDXL checkpoint gives
``values``' Model, Clip and Vae; a Flux or SD 3.5 one (ComfyUI's "checkpoint" examples of those families) the flow
views of ``flowvalues``, the same the UNETLoader/DualCLIPLoader/VAELoader set gives (``flowloaders``).

The API has already put catalog ids in place of ComfyUI's file names (``ckpt_name``), so the worker only looks ids
up. The model loads once per process into the store every built-in pipeline reads (``pipelines.loading``); the
graph's three outputs are views of it. A shared model may carry another job's LoRAs or IP-Adapter: they are
switched off here, before any node uses it, as ``DiffusersPipeline.prepare`` does for a job without them.

A LoRA loader loads nothing itself: its MODEL and CLIP name the LoRAs (``pipelines.loras``: read once per worker,
kept in the base model) with ComfyUI's two strengths, and ``activate`` switches exactly those on when they are used:
the CLIP's while a text is encoded (only the text encoders run then), the MODEL's while a sampler runs (only the
denoiser runs then). So one graph may sample with and without a LoRA, or with two sets, on one loaded model. A
flow family's LoRA file may hold text-encoder layers too (kohya's ``lora_te1_``, diffusers' ``text_encoder.``):
diffusers loads them into the encoders and strength_clip weighs them; one of the transformer alone (the common
Flux and SD 3.5 ones) leaves the text as it was, whatever strength_clip is, as in ComfyUI.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any

from pipelines import loras
from pipelines.comfyui.flowvalues import FlowClip, FlowModel, FlowVae
from pipelines.comfyui.values import Clip, Model, Vae, with_lora
from pipelines.families.flow import FlowMatching
from pipelines.families.sd import StableDiffusion
from pipelines.ipadapters import activate as activate_ip_adapters
from pipelines.loading import base_pipeline, check_variant, model_family
from runtime.contract import ContractError, LoraRef
from runtime.models.catalog import ModelError
from runtime.models.store import ModelStore

if TYPE_CHECKING:
    from pipelines.comfyui.executor import Execution

#: Base model variants a checkpoint loader takes: ordinary checkpoints, distilled ones (SDXL and SD 3.5 Turbo, Flux
#: schnell), SDXL's refiner (KSampler runs it on the img2img class with its aesthetic score, an empty latent from
#: noise) and SD's and SDXL's inpainting checkpoints (their 9-channel UNet gets the mask and the masked image's
#: latents: ``noisemask`` with a noise mask, ``inpaintmodel`` without).
VARIANTS: frozenset[str | None] = frozenset({None, "turbo", "schnell", "refiner", "inpainting"})
#: Of those, the ones a flow family's checkpoint may be (FLUX.1 Fill's inpainting transformer does not run here).
FLOW_VARIANTS: frozenset[str | None] = frozenset({None, "turbo", "schnell"})


def catalog_base(store: ModelStore, model_id: Any, where: str, variants: Any, loader: str) -> tuple[Any, Any]:
    """The catalog entry of base model ``model_id`` and its family, for a loader node; a ContractError naming
    ``where`` (the node's input) when the id is not a string, not in the catalog, or of another variant."""
    try:
        if not isinstance(model_id, str):
            raise ModelError("invalid_model_id", f"{model_id!r} is not a model id")
        entry = store.entry(model_id, "base")
        kind = model_family(store, model_id)
        check_variant(store, model_id, variants, loader, field=where)
    except ModelError as exc:
        message = str(exc) if str(exc).startswith(where) else f"{where}: {exc}"
        raise ContractError(exc.code, message, where) from None
    return entry, kind


def load_model(store: ModelStore, model_id: Any, where: str) -> Model | FlowModel:
    """The catalog base model ``model_id``, loaded and with no adapters; refused naming ``where`` (the node's
    input) when the catalog lacks it, it is no base model, or this interpreter does not run its family."""
    entry, kind = catalog_base(store, model_id, where, VARIANTS, "a ComfyUI checkpoint loader")
    if isinstance(kind, FlowMatching):
        catalog_base(store, model_id, where, FLOW_VARIANTS, "a ComfyUI checkpoint loader of a Flux or SD 3.5 model")
        return flow_model(store, model_id, entry, kind)
    if not isinstance(kind, StableDiffusion):
        raise ContractError("unsupported_model_family", f"{where}: model {model_id!r} is a {entry.family} model; "
                            "ComfyUI graphs run on SD 1.x, SD 2.x, SDXL, SD 3.5 and Flux models", where)
    base = base_pipeline(store, model_id)
    loras.activate(store, base, [])
    activate_ip_adapters(store, base, [])
    return Model(model_id, entry.family, kind, entry.variant, base)


def flow_model(store: ModelStore, model_id: str, entry: Any, kind: FlowMatching) -> FlowModel:
    """A Flux or SD 3.5 base model (``catalog_base``'s ``entry`` and ``kind``), loaded with no LoRAs on."""
    base = base_pipeline(store, model_id)
    loras.activate(store, base, [])
    return FlowModel(model_id, entry.family, kind, entry.variant, base)


def checkpoint_loader_simple(ex: Execution, node_id: str, args: dict[str, Any]) -> tuple[Any, ...]:
    model = load_model(ex.store, args["ckpt_name"], ex.where(node_id, "ckpt_name"))
    if isinstance(model, FlowModel):
        return model, FlowClip(model), FlowVae(model)  # type: ignore[arg-type]
    return model, Clip(model), Vae(model)


def activate(store: ModelStore, model: Model | FlowModel, chosen: tuple[tuple[str, float], ...], where: str) -> None:
    """Make ``chosen`` the only LoRAs active on ``model``'s loaded pipeline; a LoRA that cannot load is refused
    naming ``where`` (the input of the node that uses it)."""
    refs = [LoraRef.model_construct(id=lora_id, weight=weight) for lora_id, weight in chosen]
    try:
        loras.activate(store, model.base, refs)
    except ContractError as exc:
        raise ContractError(exc.code, f"{where}: {exc.message}", where) from None


def _lora(ex: Execution, node_id: str, args: dict[str, Any], model: Model | FlowModel) -> str:
    """The node's LoRA id, checked against the catalog and the model's family before anything loads."""
    where = ex.where(node_id, "lora_name")
    lora_id = args["lora_name"]
    try:
        entry = ex.store.entry(lora_id, "lora")
    except ModelError as exc:
        raise ContractError(exc.code, f"{where}: {exc}", where) from None
    if entry.family != model.family:
        raise ContractError("incompatible_lora", f"{where}: LoRA {lora_id!r} is for {entry.family} models and "
                            f"{model.model_id!r} is a {model.family} model", where)
    return str(lora_id)


def _model(ex: Execution, node_id: str, value: Any) -> Model | FlowModel:
    return value if isinstance(value, FlowModel) else ex.want(value, Model, node_id, "model")


def lora_loader(ex: Execution, node_id: str, args: dict[str, Any]) -> tuple[Any, ...]:
    model = _model(ex, node_id, args["model"])
    clip = args["clip"] if isinstance(args["clip"], FlowClip) else ex.want(args["clip"], Clip, node_id, "clip")
    lora_id = _lora(ex, node_id, args, model)
    strength_model = ex.number(node_id, args, "strength_model")
    strength_clip = ex.number(node_id, args, "strength_clip")
    return (replace(model, loras=with_lora(model.loras, lora_id, strength_model)),
            replace(clip, loras=with_lora(clip.loras, lora_id, strength_clip)))


def lora_loader_model_only(ex: Execution, node_id: str, args: dict[str, Any]) -> tuple[Any, ...]:
    model = _model(ex, node_id, args["model"])
    lora_id = _lora(ex, node_id, args, model)
    return (replace(model, loras=with_lora(model.loras, lora_id, ex.number(node_id, args, "strength_model"))),)
