"""What flows along the links of a Flux or SD 3.5 graph: MODEL, CLIP and VAE of a flow-matching catalog model, a
text's encoding with Flux's guidance, and custom sampling's NOISE, SAMPLER, SIGMAS and GUIDER (on every family).

A flow model's MODEL and CLIP are classes of their own, not ``values.Model`` and ``values.Clip``: the core nodes
that take those (KSampler, LoraLoader, CLIPSetLastLayer) run SD's UNet code, so a flow model linked to one is
refused there naming the input, instead of failing inside diffusers. Its VAE is a ``values.Vae``, so the core
VAEDecode and VAEEncode run it: ``FlowVae.base`` shows them the VAE with its ``shift_factor`` as a latent mean
(``ShiftedVae``), which makes their ``latents / scale + mean`` diffusers' own Flux and SD 3.5 decoding. Latents are
kept unpacked, (batch, 16, height / 8, width / 8), in the transformer's scale, as ComfyUI keeps them; Flux's 2x2
packing is the sampler's business alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import torch
from diffusers import DiffusionPipeline

from pipelines.comfyui.values import Cond, Conditioning, Model, Vae
from pipelines.families import Family


@dataclass(frozen=True)
class FlowModel:
    """MODEL of a Flux or SD 3.5 catalog model: its loaded pipeline, and ModelSampling's shift when a node set
    one (None: the model's own schedule, Flux dev's shifted by the image's size)."""

    model_id: str
    family: str  # flux or sd3
    kind: Family
    variant: str | None
    base: DiffusionPipeline
    shift: float | None = None
    #: LoRAs on the transformer (LoraLoader's strength_model): catalog id -> strength, switched on while it samples.
    loras: tuple[tuple[str, float], ...] = ()


@dataclass(frozen=True)
class FlowClip:
    """CLIP of a flow model: all its text encoders (CLIP with T5), as its catalog entry holds them, and the LoRAs
    on them (LoraLoader's strength_clip), switched on while a text is encoded."""

    model: FlowModel
    loras: tuple[tuple[str, float], ...] = ()


@dataclass(frozen=True)
class FlowCond(Cond):
    """A text encoded by a flow model's encoders (``embeds``: the transformer's token sequence, ``pooled``: CLIP's
    pooled vector), the model it came from, and FluxGuidance's distilled guidance when a node set it. SD 3.5's
    sequence is its CLIPs' chunks of 77 tokens, then ``t5_tokens`` of T5; ``pad`` is an empty CLIP chunk, which
    makes a positive and a negative of other lengths equal (``padded``)."""

    model_id: str = ""
    guidance: float | None = None
    t5_tokens: int = 0


def padded(cond: Cond, clip_tokens: int, t5_tokens: int) -> torch.Tensor:
    """SD 3.5's ``cond`` with empty CLIP chunks put before its T5 tokens up to ``clip_tokens`` of CLIP (an encoding
    that is no FlowCond is ConditioningZeroOut's zeros: its chunk of zeros goes in alike)."""
    have = cond.embeds.shape[1] - t5_tokens
    if have >= clip_tokens:
        return cond.embeds
    chunk = cond.pad[:, :77]
    more = [chunk] * ((clip_tokens - have) // chunk.shape[1])
    return torch.cat([cond.embeds[:, :have], *more, cond.embeds[:, have:]], dim=1)


class ShiftedVae:
    """A flow VAE as the core VAE nodes read one: ``shift_factor`` shown as a per-channel latent mean with a
    deviation of 1 (``images._normalization``); everything else is the VAE's own."""

    def __init__(self, vae: Any) -> None:
        self.vae = vae
        config = vae.config
        channels = int(config.latent_channels)
        shift = float(getattr(config, "shift_factor", None) or 0.0)
        self.config = SimpleNamespace(scaling_factor=config.scaling_factor, latents_mean=[shift] * channels,
                                      latents_std=[1.0] * channels,
                                      force_upcast=bool(getattr(config, "force_upcast", False)))

    @property
    def dtype(self) -> torch.dtype:
        return self.vae.dtype  # type: ignore[no-any-return]

    @property
    def device(self) -> torch.device:
        return self.vae.device  # type: ignore[no-any-return]

    def to(self, *args: Any, **kwargs: Any) -> Any:
        return self.vae.to(*args, **kwargs)

    def decode(self, *args: Any, **kwargs: Any) -> Any:
        return self.vae.decode(*args, **kwargs)

    def encode(self, *args: Any, **kwargs: Any) -> Any:
        return self.vae.encode(*args, **kwargs)


@dataclass(frozen=True)
class FlowVae(Vae):
    """VAE of a flow model; ``base`` is what ``pipelines.comfyui.images`` reads of a pipeline: the shifted VAE,
    the image processor, and the denoiser's dtype (as ``unet``) for encoded latents."""

    @property
    def base(self) -> Any:
        pipe = self.model.base
        return SimpleNamespace(vae=ShiftedVae(pipe.vae), image_processor=pipe.image_processor,
                               unet=pipe.transformer)


@dataclass(frozen=True)
class Noise:
    """NOISE: RandomNoise's seed (the sampler draws image i of a batch from seed + i, on the CPU)."""

    seed: int


@dataclass(frozen=True)
class SamplerName:
    """SAMPLER: KSamplerSelect's ComfyUI sampler name, and where it was set (for refusals)."""

    name: str
    where: str


@dataclass(frozen=True)
class Sigmas:
    """SIGMAS: BasicScheduler's schedule on its model: ComfyUI's scheduler name, steps and denoise, and the node
    (``node``: its id; ``where``: ``inputs.graph.<id>``) that set them."""

    model: FlowModel | Model
    scheduler: str
    steps: int
    denoise: float
    where: str
    node: str = ""


@dataclass(frozen=True)
class Guider:
    """GUIDER: a model with its conditioning; CFGGuider's negative and cfg too (BasicGuider: no negative, cfg 1).
    The model is a flow model's, or an SD or SDXL checkpoint's (``values.Model``); ``where`` is the input that set
    it (``inputs.graph.<id>.inputs.model``), which a LoRA that cannot load is refused naming."""

    model: FlowModel | Model
    positive: Conditioning
    negative: Conditioning | None = None
    cfg: float = 1.0
    where: str = ""
