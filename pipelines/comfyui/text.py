"""Text nodes: ``CLIPTextEncode``, ``CLIPSetLastLayer``, ``ConditioningZeroOut`` and ``ConditioningCombine``.

A text is encoded WebUI's way (``pipelines.prompts``: ``(word:1.2)`` weights, which ComfyUI reads alike, and
75-token chunks, so no 77-token limit), on its own: ComfyUI encodes the positive and the negative separately, and
a sampler then pads the shorter with empty chunks. An empty text is encoded like any other (ComfyUI's way), not
zeroed as diffusers' SDXL does for an empty negative: ``ConditioningZeroOut`` is how a graph asks for zeros.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from pipelines import prompts
from pipelines.comfyui import loaders
from pipelines.comfyui.values import Clip, Cond, Conditioning
from runtime.contract import ContractError

if TYPE_CHECKING:
    from pipelines.comfyui.executor import Execution


def encode(ex: Execution, clip: Clip, text: str, where: str) -> Cond:
    """``text`` through ``clip``'s encoders with its LoRAs, stopping at its last layer; a refusal names ``where``."""
    base = clip.model.base
    loaders.activate(ex.store, clip.model, clip.loras, where)
    try:
        with torch.inference_mode():
            out = prompts.encode(base, text, "", clip_skip=clip.clip_skip, guidance=False)
            pad = prompts.encode(base, "", "", clip_skip=clip.clip_skip, guidance=False)["prompt_embeds"]
    except ContractError as exc:
        raise ContractError(exc.code, f"{where}: {exc.message}", where) from None
    return Cond(out["prompt_embeds"], out.get("pooled_prompt_embeds"), pad)


def clip_text_encode(ex: Execution, node_id: str, args: dict[str, Any]) -> tuple[Any, ...]:
    clip = ex.want(args["clip"], Clip, node_id, "clip")
    return (Conditioning((encode(ex, clip, str(args["text"]), ex.where(node_id, "text")),)),)


def clip_set_last_layer(ex: Execution, node_id: str, args: dict[str, Any]) -> tuple[Any, ...]:
    clip = ex.want(args["clip"], Clip, node_id, "clip")
    layer = args["stop_at_clip_layer"]
    if not isinstance(layer, int) or isinstance(layer, bool) or layer > -1:
        where = ex.where(node_id, "stop_at_clip_layer")
        raise ContractError("invalid_field", f"{where}: a layer counted from the last, -1 or less, not {layer!r}",
                            where)
    return (clip.at_layer(layer),)


def conditioning_zero_out(ex: Execution, node_id: str, args: dict[str, Any]) -> tuple[Any, ...]:
    conditioning = ex.want(args["conditioning"], Conditioning, node_id, "conditioning")
    zeros = tuple(Cond(torch.zeros_like(c.embeds), None if c.pooled is None else torch.zeros_like(c.pooled),
                       torch.zeros_like(c.pad)) for c in conditioning.parts)
    return (Conditioning(zeros),)


def conditioning_combine(ex: Execution, node_id: str, args: dict[str, Any]) -> tuple[Any, ...]:
    """Both lists of encodings, which a sampler averages the predictions of (``pipelines.comfyui.combine``)."""
    first = ex.want(args["conditioning_1"], Conditioning, node_id, "conditioning_1")
    second = ex.want(args["conditioning_2"], Conditioning, node_id, "conditioning_2")
    return (Conditioning(first.parts + second.parts),)
