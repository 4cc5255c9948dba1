"""What flows along a graph's links: ComfyUI's MODEL, CLIP, VAE, CONDITIONING, LATENT and IMAGE as spotgen holds
them.

A checkpoint loader's three outputs are views of one loaded diffusers pipeline (``pipelines.loading``: loaded once
per process, shared with every other pipeline), so a graph never loads a model twice; a LoRA loader's outputs are
the same views naming the LoRAs and strengths to switch on when they are used (``pipelines.comfyui.loaders``).
Latents are kept as the denoiser sees them (scaled by the VAE's factor), which is what diffusers'
``output_type="latent"`` returns and its img2img classes take back: a sampler's output goes to the next sampler
untouched, and only VAEDecode and VAEEncode scale. Images are float tensors (batch, 3, height, width) in [0, 1], as
diffusers' ``postprocess(..., "pt")`` gives them, so the PNG of a graph's image has the bytes of diffusers' own PIL
conversion.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from diffusers import DiffusionPipeline

from pipelines.families import Family


@dataclass(frozen=True)
class Model:
    """MODEL: a catalog base model, loaded; the denoiser of a sampler node."""

    model_id: str
    family: str  # the catalog's family name (sd1, sdxl...)
    kind: Family
    variant: str | None
    base: DiffusionPipeline
    #: LoRAs on the denoiser (LoraLoader's strength_model): catalog id -> strength, switched on while it samples.
    loras: tuple[tuple[str, float], ...] = ()


@dataclass(frozen=True)
class Clip:
    """CLIP: the text encoders of a loaded model, and the layer they stop at (CLIPSetLastLayer: -1 is the last,
    -2 the one before, as WebUI's clip_skip 2)."""

    model: Model
    last_layer: int = -1
    #: LoRAs on the text encoders (LoraLoader's strength_clip), switched on while a text is encoded.
    loras: tuple[tuple[str, float], ...] = ()

    @property
    def clip_skip(self) -> int:
        return -self.last_layer

    def at_layer(self, last_layer: int) -> Clip:
        return replace(self, last_layer=last_layer)


@dataclass(frozen=True)
class Vae:
    """VAE: a loaded model's autoencoder (the pipeline, for its image processor and scale factor)."""

    model: Model

    @property
    def base(self) -> DiffusionPipeline:
        return self.model.base


@dataclass(frozen=True)
class Cond:
    """One text's encoding: token embeddings (1, 77 x chunks, hidden), SDXL's pooled vector, and the empty chunk's
    embeddings, which pad the shorter of a sampler's positive and negative (diffusers needs equal shapes; WebUI
    pads the same way)."""

    embeds: torch.Tensor
    pooled: torch.Tensor | None
    pad: torch.Tensor

    def padded(self, chunks: int) -> torch.Tensor:
        have = self.embeds.shape[1] // self.pad.shape[1]
        return torch.cat([self.embeds] + [self.pad] * (chunks - have), dim=1) if chunks > have else self.embeds

    @property
    def chunks(self) -> int:
        return self.embeds.shape[1] // self.pad.shape[1]


@dataclass(frozen=True)
class Conditioning:
    """CONDITIONING: a list of encodings, as ComfyUI's is (ConditioningCombine joins lists)."""

    parts: tuple[Cond, ...]


@dataclass(frozen=True)
class Latent:
    """LATENT: latents (batch, channels, height / 8, width / 8) in the denoiser's scale. ``empty`` marks an
    EmptyLatentImage's zeros (and their upscales): a sampler starts those from pure noise, as text to image."""

    samples: torch.Tensor
    empty: bool = False

    @property
    def batch(self) -> int:
        return int(self.samples.shape[0])


@dataclass(frozen=True)
class Images:
    """IMAGE: float pixels (batch, 3, height, width) in [0, 1]."""

    pixels: torch.Tensor


def type_name(cls: type) -> str:
    """A value class's ComfyUI type name, for messages."""
    names: dict[type, str] = {Model: "MODEL", Clip: "CLIP", Vae: "VAE", Conditioning: "CONDITIONING",
                              Latent: "LATENT", Images: "IMAGE"}
    return names.get(cls, cls.__name__)


def with_lora(loras: tuple[tuple[str, float], ...], lora_id: str, strength: float) -> tuple[tuple[str, float], ...]:
    """``loras`` with one more LoRA; the same LoRA twice adds its strengths, as two applications of it would."""
    merged = dict(loras)
    merged[lora_id] = merged.get(lora_id, 0.0) + strength
    return tuple(merged.items())


def target_size(width: int, height: int, have_w: int, have_h: int, least: int) -> tuple[int, int]:
    """ComfyUI's target of a resize node: a side given as 0 follows the other's aspect ratio (at least ``least``);
    both 0 is the size it has (the node then passes its input on)."""
    if width == 0 and height == 0:
        return have_w, have_h
    if width == 0:
        width = max(least, round(have_w * height / have_h))
    elif height == 0:
        height = max(least, round(have_h * width / have_w))
    return width, height
