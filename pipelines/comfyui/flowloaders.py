"""Flux's and SD 3.5's loader nodes: ``UNETLoader``, ``CLIPLoader``, ``DualCLIPLoader`` and ``VAELoader``, and the
model nodes ``ModelSamplingSD3`` and ``ModelSamplingFlux``.

ComfyUI loads a Flux graph's transformer, text encoders and VAE from three or four files; spotgen's catalog holds
them together as one base model, and the API has already put that model's catalog id in place of each file name.
So each loader names the same id, and each gives a view of the one pipeline loaded for it (``pipelines.loading``:
once per process, shared with spotgen's own Flux and SD 3.5 jobs). A loader whose id is not a Flux or SD 3.5 base
model is refused naming its input, and so is a CLIP or VAE loader whose id is not the one a UNETLoader of the graph
loads (a text encoded by another model's encoders, latents decoded by another model's VAE: not what the graph's
author meant, since the catalog has no separate encoders or VAEs of these families). ComfyUI's "checkpoint"
examples of these families load the same views through CheckpointLoaderSimple (``loaders.flow_model``).

ModelSampling nodes set the schedule's shift. ComfyUI's ModelSamplingFlux computes its shift from the width and
height it is given (linear in the image's tokens from ``base_shift`` at 256 to ``max_shift`` at 4096, then
exponentiated), which is the static shift ``exp(mu)``: that is what the scheduler gets, dynamic shifting off.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from pipelines.comfyui.flowvalues import FlowClip, FlowModel, FlowVae
from pipelines.comfyui.loaders import catalog_base, flow_model
from pipelines.families.flow import FlowMatching
from pipelines.loading import model_family
from runtime.contract import ContractError
from runtime.models.catalog import ModelError

if TYPE_CHECKING:
    from pipelines.comfyui.executor import Execution

#: Variants these loaders take: ordinary checkpoints and timestep-distilled ones (Flux schnell, SD 3.5 turbo).
VARIANTS: frozenset[str | None] = frozenset({None, "schnell", "turbo"})
#: The loaders whose ids must name one model, and the input each names it with.
LOADERS = {"UNETLoader": ("unet_name",), "CLIPLoader": ("clip_name",), "DualCLIPLoader": ("clip_name1", "clip_name2"),
           "VAELoader": ("vae_name",)}
#: DualCLIPLoader's and CLIPLoader's ``type`` that each family's encoders are.
CLIP_TYPES = {"flux": "flux", "sd3": "sd3"}


def load(ex: Execution, model_id: Any, where: str) -> FlowModel:
    """The Flux or SD 3.5 base model ``model_id``, loaded with no LoRAs on; refused naming ``where`` otherwise."""
    store = ex.store
    entry, kind = catalog_base(store, model_id, where, VARIANTS, "a ComfyUI Flux or SD 3.5 loader")
    if not isinstance(kind, FlowMatching):
        raise ContractError("unsupported_model_family", f"{where}: model {model_id!r} is a {entry.family} model; "
                            "this loader runs Flux and SD 3.5 models (CheckpointLoaderSimple loads every family)",
                            where)
    return flow_model(store, model_id, entry, kind)


def _runs(ex: Execution, model_id: Any) -> bool:
    """Whether a UNETLoader loads ``model_id`` (else it refuses it itself, naming its own input)."""
    try:
        entry = ex.store.entry(model_id, "base")
        return isinstance(model_family(ex.store, model_id), FlowMatching) and entry.variant in VARIANTS
    except (ModelError, TypeError):
        return False


def _same_model(ex: Execution, node_id: str, name: str) -> None:
    """Refuse a CLIP or VAE loader's id that differs from what the graph's UNETLoaders load (module docstring)."""
    mine = ex.graph[node_id]["inputs"].get(name)
    unets = {ex.graph[n]["inputs"].get("unet_name") for n in ex.order if ex.graph[n]["class_type"] == "UNETLoader"}
    unets = {unet for unet in unets if _runs(ex, unet)}
    if unets and mine not in unets:
        where = ex.where(node_id, name)
        raise ContractError("mismatched_model", f"{where}: {mine!r} is not the model the graph's UNETLoader loads "
                            f"({', '.join(sorted(map(repr, unets)))}); spotgen's catalog holds a Flux or SD 3.5 "
                            "model's transformer, text encoders and VAE together, so every loader names its id",
                            where)


def unet_loader(ex: Execution, node_id: str, args: dict[str, Any]) -> tuple[Any, ...]:
    """``weight_dtype`` is left to the catalog (its ``storage_dtype`` puts weights in fp8), so it is not read."""
    return (load(ex, args["unet_name"], ex.where(node_id, "unet_name")),)


def _clip(ex: Execution, node_id: str, args: dict[str, Any], names: tuple[str, ...]) -> FlowClip:
    for name in names:
        _same_model(ex, node_id, name)
    first = args[names[0]]
    for name in names[1:]:
        if args[name] != first:
            where = ex.where(node_id, name)
            raise ContractError("mismatched_model", f"{where}: {args[name]!r} is not {first!r}; both name the one "
                                "catalog model that holds the text encoders", where)
    model = load(ex, first, ex.where(node_id, names[0]))
    wanted = CLIP_TYPES[model.family]
    if args["type"] != wanted:
        where = ex.where(node_id, "type")
        raise ContractError("invalid_field", f"{where}: model {model.model_id!r} is a {model.family} model, whose "
                            f"text encoders are of type {wanted!r}, not {args['type']!r}", where)
    return FlowClip(model)


def clip_loader(ex: Execution, node_id: str, args: dict[str, Any]) -> tuple[Any, ...]:
    return (_clip(ex, node_id, args, ("clip_name",)),)


def dual_clip_loader(ex: Execution, node_id: str, args: dict[str, Any]) -> tuple[Any, ...]:
    return (_clip(ex, node_id, args, ("clip_name1", "clip_name2")),)


def vae_loader(ex: Execution, node_id: str, args: dict[str, Any]) -> tuple[Any, ...]:
    _same_model(ex, node_id, "vae_name")
    return (FlowVae(load(ex, args["vae_name"], ex.where(node_id, "vae_name"))),)  # type: ignore[arg-type]


def _flow_model(ex: Execution, node_id: str, args: dict[str, Any], family: str) -> FlowModel:
    model = ex.want(args["model"], FlowModel, node_id, "model")
    if model.family != family:
        where = ex.where(node_id, "model")
        raise ContractError("unsupported_model_family", f"{where}: model {model.model_id!r} is a {model.family} "
                            f"model; this node sets the sampling of {family} models", where)
    return model


def model_sampling_sd3(ex: Execution, node_id: str, args: dict[str, Any]) -> tuple[Any, ...]:
    model = _flow_model(ex, node_id, args, "sd3")
    shift = ex.number(node_id, args, "shift")
    if shift <= 0:
        where = ex.where(node_id, "shift")
        raise ContractError("invalid_field", f"{where}: a shift above 0, not {shift}", where)
    return (replace(model, shift=shift),)


def flux_shift(max_shift: float, base_shift: float, width: int, height: int) -> float:
    """ComfyUI's ModelSamplingFlux shift for an image of ``width`` x ``height`` (module docstring)."""
    tokens = (width * height) / (8 * 8 * 2 * 2)
    mu = base_shift + (max_shift - base_shift) * (tokens - 256) / (4096 - 256)
    return math.exp(mu)


def model_sampling_flux(ex: Execution, node_id: str, args: dict[str, Any]) -> tuple[Any, ...]:
    model = _flow_model(ex, node_id, args, "flux")
    values = [ex.number(node_id, args, name) for name in ("max_shift", "base_shift")]
    sides = [ex.integer(node_id, args, name) for name in ("width", "height")]
    shift = flux_shift(*values, *sides)
    if not 0 < shift < 1e6:
        where = ex.where(node_id, "max_shift")
        raise ContractError("invalid_field", f"{where}: these shifts at {sides[0]} x {sides[1]} make a shift of "
                            f"{shift:g}, out of range", where)
    return (replace(model, shift=shift),)
