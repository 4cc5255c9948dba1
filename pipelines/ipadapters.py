"""IP-Adapters per request: read once per worker, built once per base model, switched per job.

An IP-Adapter conditions the UNet on an image as well as the prompt: its ``image_proj`` turns the embedding of
the catalog's image encoder into a few extra tokens, and each cross-attention layer gets an attention processor
that also attends to them (diffusers' ``IPAdapterAttnProcessor2_0``). Loading one with diffusers'
``load_ip_adapter`` replaces the processors of the UNet that every job's view shares and leaves them there; here
the adapters' processors and projection are built once per base model and set of adapters (diffusers' own
converters build them, from the file as ``load_ip_adapter`` reads it) and kept aside, and each job switches the
UNet to its own set, or back to the base's own processor objects, projection and config for a job without
adapters. So a job without one runs exactly as on a worker that never loaded one, byte for byte. One job runs at
a time per process, so switching the shared UNet per job is safe (LoRAs are switched the same way).

The image's embedding is a pure function of the image (the encoder runs in inference mode, no randomness), and is
handed to diffusers as ``ip_adapter_image_embeds`` (the negative: zeros, as diffusers makes it), so a resumed job
computes the same one again and resumes byte-identical. Files come from the catalog only, read with safetensors.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from runtime.contract import ContractError, IpAdapterRef
from runtime.models.catalog import ModelError
from runtime.models.store import ModelStore
from runtime.plugins import RunContext

log = logging.getLogger("spotgen.ipadapters")

#: Larger files are refused before they are read: h94's SDXL "plus" adapters are under 1 GB.
MAX_FILE_BYTES = 2 * 1024**3
#: Sets of adapters kept built per base model, least recently used dropped first.
MAX_SETS = 4
_STATE = "spotgen_ip_adapters"  # the attribute of a base pipeline that keeps its own parts and the built sets


@dataclass
class _State:
    """A base model's own attention processors, projection and config value, and the adapter sets built for it."""

    processors: dict[str, Any]
    projection: Any
    hid_dim_type: Any
    sets: OrderedDict[tuple[str, ...], tuple[dict[str, Any], Any]] = field(default_factory=OrderedDict)
    active: tuple[str, ...] = ()


def check(store: ModelStore, base_family: str, refs: Sequence[IpAdapterRef]) -> None:
    """Refuse, naming the field, an adapter the catalog lacks or one made for another family of models."""
    for i, ref in enumerate(refs):
        field_name = f"inputs.ip_adapters.{i}.id"
        try:
            entry = store.entry(ref.id, "ip_adapter")
        except ModelError as exc:
            raise ContractError(exc.code, str(exc), field_name) from None
        if entry.family != base_family:
            raise ContractError("incompatible_ip_adapter", f"IP-Adapter {ref.id!r} is for {entry.family} models and "
                                f"this is a {base_family} model", field_name)


def activate(store: ModelStore, base: Any, refs: Sequence[IpAdapterRef]) -> None:
    """Switch ``base``'s UNet to exactly ``refs``' adapters at their scales (none: the base's own parts)."""
    state: _State | None = getattr(base, _STATE, None)
    ids = tuple(ref.id for ref in refs)
    if state is None and not ids:
        return  # never touched: nothing to restore (a transformer model, which takes none, always returns here)
    unet = base.unet
    if state is None:
        state = _State(dict(unet.attn_processors), unet.encoder_hid_proj, unet.config.encoder_hid_dim_type)
        setattr(base, _STATE, state)
    if state.active:
        _restore(unet, state)
    if not ids:
        return
    if ids not in state.sets:
        state.sets[ids] = _checked_build(store, unet, ids)  # on the base's own processors (restored above)
        while len(state.sets) > MAX_SETS:
            state.sets.popitem(last=False)
    state.sets.move_to_end(ids)
    processors, projection = state.sets[ids]
    for processor in processors.values():
        if hasattr(processor, "to_k_ip"):
            processor.scale = [ref.scale for ref in refs]
    unet.set_attn_processor(dict(processors))  # (diffusers pops from the dict it is given)
    unet.encoder_hid_proj = projection
    unet.config.encoder_hid_dim_type = "ip_image_proj"
    state.active = ids


def _restore(unet: Any, state: _State) -> None:
    unet.set_attn_processor(dict(state.processors))
    unet.encoder_hid_proj = state.projection
    unet.config.encoder_hid_dim_type = state.hid_dim_type
    state.active = ()


def _checked_build(store: ModelStore, unet: Any, ids: tuple[str, ...]) -> tuple[dict[str, Any], Any]:
    """``_build``, its errors naming the field of the adapter at fault (each alone is tried to find it)."""
    try:
        return _build(store, unet, ids)
    except ModelError as exc:
        culprit = 0
        for i, adapter_id in enumerate(ids):
            try:
                _build(store, unet, (adapter_id,))
            except ModelError:
                culprit = i
                break
        raise ContractError(exc.code, str(exc), f"inputs.ip_adapters.{culprit}.id") from None


def _build(store: ModelStore, unet: Any, ids: tuple[str, ...]) -> tuple[dict[str, Any], Any]:
    """The processors and image projection of ``ids`` for ``unet``, by diffusers' own converters (which read
    the UNet's processors and build new ones, changing nothing of the UNet)."""
    from diffusers.models.embeddings import MultiIPAdapterImageProjection

    state_dicts = [weights(store, adapter_id) for adapter_id in ids]
    try:
        processors = unet._convert_ip_adapter_attn_to_diffusers(state_dicts, low_cpu_mem_usage=False)
        projection = MultiIPAdapterImageProjection([
            unet._convert_ip_adapter_image_proj_to_diffusers(sd["image_proj"], low_cpu_mem_usage=False)
            for sd in state_dicts])
    except Exception as exc:  # keys of no known format, shapes of another model...
        raise ModelError("invalid_ip_adapter", f"IP-Adapter {', '.join(ids)} cannot be applied to this model: "
                         f"{type(exc).__name__}: {exc}") from None
    for processor in processors.values():
        if isinstance(processor, torch.nn.Module):
            processor.to(device=unet.device, dtype=unet.dtype)
    projection.to(device=unet.device, dtype=unet.dtype)
    log.info("built IP-Adapter set %s", ", ".join(ids))
    return processors, projection


def weights(store: ModelStore, adapter_id: str) -> dict[str, dict[str, torch.Tensor]]:
    """The adapter's file as ``load_ip_adapter`` reads it (``{"image_proj": ..., "ip_adapter": ...}``), once per
    process (``store.get``)."""

    def load() -> dict[str, dict[str, torch.Tensor]]:
        path = store.source(adapter_id, "ip_adapter").path
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise ModelError("invalid_ip_adapter", f"IP-Adapter {adapter_id!r}: {size} bytes is more than the "
                             f"{MAX_FILE_BYTES} an IP-Adapter file may have")
        try:
            flat = load_file(path)
        except (SafetensorError, OSError, ValueError) as exc:
            raise ModelError("invalid_ip_adapter", f"IP-Adapter {adapter_id!r}: {path.name} is not a readable "
                             f"safetensors file: {exc}") from None
        parts: dict[str, dict[str, torch.Tensor]] = {"image_proj": {}, "ip_adapter": {}}
        for key, tensor in flat.items():
            prefix, _, rest = key.partition(".")
            if prefix in parts:
                parts[prefix][rest] = tensor
        if not parts["image_proj"] or not parts["ip_adapter"]:
            raise ModelError("invalid_ip_adapter", f"IP-Adapter {adapter_id!r}: {path.name} has no image_proj.* "
                             "and ip_adapter.* keys (diffusers' IP-Adapter layout; see docs/models.md to convert)")
        if "proj.weight" not in parts["image_proj"]:  # Plus, Full Face, FaceID: image_proj of other shapes
            raise ModelError("unsupported_ip_adapter", f"IP-Adapter {adapter_id!r}: only plain IP-Adapters "
                             "(image_proj.proj.weight: the image embedding projected to 4 tokens) are supported; "
                             "Plus, Full Face and FaceID adapters are not yet")
        return parts

    return store.get(f"ip-adapter:{adapter_id}", load, adapter_id)


def image_encoder(store: ModelStore, encoder_id: str) -> tuple[Any, Any]:
    """The image encoder and its image processor (diffusers' choice: the encoder's own image size), loaded once
    per process."""

    def load() -> tuple[Any, Any]:
        from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection

        from pipelines import components
        from pipelines.loading import torch_dtype

        entry = store.entry(encoder_id, "image_encoder")
        model = components.model(CLIPVisionModelWithProjection, store.source(encoder_id, "image_encoder").path,
                                 torch_dtype(store.device, entry.dtype)).to(store.device).eval()
        size = model.config.image_size
        return model, CLIPImageProcessor(size=size, crop_size=size)

    return store.get(f"image-encoder:{encoder_id}", load, encoder_id)


def embeds(pipe: Any, base: Any, refs: Sequence[IpAdapterRef], ctx: RunContext, guidance: bool) -> dict[str, Any]:
    """``ip_adapter_image_embeds`` for diffusers: per adapter, its image's embedding (after a zero one, the
    negative, with classifier-free guidance). An image that cannot be read is refused naming its field. None
    for a pass on a model the adapters are not active on (an SDXL refiner's pass)."""
    state: _State | None = getattr(base, _STATE, None)
    if not refs or state is None or state.active != tuple(ref.id for ref in refs):
        return {}
    out = []
    projections = state.sets[state.active][1].image_projection_layers
    for i, ref in enumerate(refs):
        entry = ctx.models.entry(ref.id, "ip_adapter")
        assert entry.image_encoder is not None  # the catalog requires it
        encoder, processor = image_encoder(ctx.models, entry.image_encoder)
        try:
            image = ctx.image(ref.image)
        except (OSError, ValueError, SyntaxError) as exc:
            raise ContractError("invalid_image", f"the IP-Adapter's image cannot be read as an image: {exc}",
                                f"inputs.ip_adapters.{i}.image") from None
        pixels = processor(images=image, return_tensors="pt").pixel_values
        with torch.inference_mode():
            embedding = encoder(pixels.to(encoder.device, encoder.dtype)).image_embeds[None]  # (1, 1, dim)
        width = projections[i].image_embeds.in_features
        if embedding.shape[-1] != width:
            raise ContractError("invalid_ip_adapter", f"IP-Adapter {ref.id!r} takes embeddings of {width} values and "
                                f"its image encoder {entry.image_encoder!r} makes {embedding.shape[-1]}: the catalog "
                                "pairs it with another model's encoder", f"inputs.ip_adapters.{i}.id")
        if guidance:
            embedding = torch.cat([torch.zeros_like(embedding), embedding])
        out.append(embedding.to(pipe.unet.device, pipe.unet.dtype))
    return {"ip_adapter_image_embeds": out}


def preload(store: ModelStore, adapter_id: str) -> None:
    """Read the adapter's file and load its image encoder before the first job (``SPOTGEN_PRELOAD``), so a broken
    one stops the worker's start-up."""
    entry = store.entry(adapter_id, "ip_adapter")
    weights(store, adapter_id)
    assert entry.image_encoder is not None  # the catalog requires it
    image_encoder(store, entry.image_encoder)
