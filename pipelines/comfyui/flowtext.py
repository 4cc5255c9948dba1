"""Text on Flux and SD 3.5 models: ``CLIPTextEncode`` of a flow model's CLIP, ``FluxGuidance``, and the
``EmptySD3LatentImage`` those models start from.

``CLIPTextEncode`` is one node class for every family: a flow model's CLIP (``FlowClip``) is encoded here, any
other CLIP by the core node (``pipelines.comfyui.text``), unchanged. The encoding is spotgen's own for the family,
so a graph reads a prompt as a Flux or SD 3.5 job does: Flux through diffusers' ``encode_prompt`` (CLIP's pooled
vector, T5's tokens; the attention syntax stripped, as Forge does), SD 3.5 with WebUI's weights on its CLIPs'
tokens (``pipelines.sd3prompts``). T5 reads as many tokens as the family's jobs do by default (512 for Flux dev,
256 for schnell and SD 3.5).
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any

import torch

from pipelines import sd3prompts
from pipelines.comfyui import loaders, text
from pipelines.comfyui.flowvalues import FlowClip, FlowCond
from pipelines.comfyui.values import Conditioning, Latent
from pipelines.families.flow import plain_text
from runtime.contract import ContractError

if TYPE_CHECKING:
    from pipelines.comfyui.executor import Execution

#: The flow families' latent channels (Flux's and SD 3.5's VAEs); a pixel is an eighth of a latent cell's side.
CHANNELS, SCALE = 16, 8


def encode(clip: FlowClip, prompt: str, where: str) -> FlowCond:
    model = clip.model
    pipe, kind = model.base, model.kind
    tokens = kind.variant_sequence_length.get(model.variant or "", kind.sequence_length)  # type: ignore[attr-defined]
    plain = plain_text(prompt, where, 1)
    with torch.inference_mode():
        if model.family == "flux":
            embeds, pooled, _ = pipe.encode_prompt(prompt=plain, prompt_2=None, device=pipe._execution_device,
                                                   num_images_per_prompt=1, max_sequence_length=tokens)
        else:
            out = sd3prompts.encode(pipe, {"prompt": (prompt, plain)}, num_images=1, max_sequence_length=tokens)
            embeds, pooled = out["prompt_embeds"], out["pooled_prompt_embeds"]
            empty = sd3prompts.encode(pipe, {"prompt": ("", "")}, num_images=1, max_sequence_length=tokens)
            return FlowCond(embeds, pooled, empty["prompt_embeds"][:, :77], model_id=model.model_id,
                            t5_tokens=tokens)
    return FlowCond(embeds, pooled, embeds, model_id=model.model_id)


def clip_text_encode(ex: Execution, node_id: str, args: dict[str, Any]) -> tuple[Any, ...]:
    """A flow model's CLIP encodes with its LoRAs on (LoraLoader's strength_clip; none: every LoRA off)."""
    clip = args.get("clip")
    if not isinstance(clip, FlowClip):
        return text.clip_text_encode(ex, node_id, args)
    where = ex.where(node_id, "text")
    loaders.activate(ex.store, clip.model, clip.loras, where)
    return (Conditioning((encode(clip, str(args["text"]), where),)),)


def flux_guidance(ex: Execution, node_id: str, args: dict[str, Any]) -> tuple[Any, ...]:
    """Every encoding of the conditioning with Flux's distilled guidance; one that is no flow model's (a
    ConditioningZeroOut's) takes it too, as ComfyUI's keeps it beside the zeros."""
    conditioning = ex.want(args["conditioning"], Conditioning, node_id, "conditioning")
    guidance = ex.number(node_id, args, "guidance")
    if guidance < 0:
        where = ex.where(node_id, "guidance")
        raise ContractError("invalid_field", f"{where}: a guidance of 0 or more, not {guidance}", where)
    parts = tuple(replace(c, guidance=guidance) if isinstance(c, FlowCond) else
                  FlowCond(c.embeds, c.pooled, c.pad, guidance=guidance) for c in conditioning.parts)
    return (Conditioning(parts),)


def empty_sd3_latent_image(ex: Execution, node_id: str, args: dict[str, Any]) -> tuple[Any, ...]:
    width, height, batch = (ex.integer(node_id, args, name) for name in ("width", "height", "batch_size"))
    for name, side in (("width", width), ("height", height)):
        if side < 16 or side % 16:
            where = ex.where(node_id, name)
            raise ContractError("invalid_field", f"{where}: a multiple of 16 (Flux packs 2 x 2 latent cells), not "
                                f"{side}", where)
    if batch < 1:
        where = ex.where(node_id, "batch_size")
        raise ContractError("invalid_field", f"{where}: 1 or more images, not {batch}", where)
    shape = (batch, CHANNELS, height // SCALE, width // SCALE)
    return (Latent(torch.zeros(shape, device=ex.ctx.device), empty=True),)
