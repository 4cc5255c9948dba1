"""Image nodes: ``VAEDecode``, ``VAEEncode``, and the output nodes ``SaveImage`` and ``PreviewImage``.

Decoding does what diffusers' SD and SDXL pipelines do after their loop (the VAE's scaling factor, SDXL's latent
mean and deviation when its VAE has them, a float16 VAE that must be upcast run in float32 for the call), and the
pixels become [0, 1] as ``postprocess(..., "pt")`` makes them; so a graph's txt2img image is diffusers' own.
Encoding takes the latent distribution's mean, not a sample: it draws nothing, so a job resumed after a VAEEncode
encodes again to the very same latents. A width or height that is no multiple of 8 is cut to one, as ComfyUI does.

The output nodes' images are what the job returns; ``PreviewImage``'s too, since ComfyUI lists them in
``/history`` (as ``temp``) and a client that only previews would otherwise get nothing.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image

from pipelines.comfyui.latents import SCALE
from pipelines.comfyui.values import Images, Latent, Vae

if TYPE_CHECKING:
    from pipelines.comfyui.executor import Execution


def _normalization(vae: Any, like: torch.Tensor) -> tuple[torch.Tensor | float, torch.Tensor | float]:
    """The latents' mean and deviation in the VAE's own space (SDXL VAEs that name them), else 0 and 1."""
    config = vae.config
    mean, std = getattr(config, "latents_mean", None), getattr(config, "latents_std", None)
    if mean is None or std is None:
        return 0.0, 1.0
    shape = (1, len(mean), 1, 1)
    return (torch.tensor(mean).view(shape).to(like.device, like.dtype),
            torch.tensor(std).view(shape).to(like.device, like.dtype))


@contextlib.contextmanager
def _vae_precision(vae: Any) -> Iterator[torch.dtype]:
    """The dtype the VAE runs in for one call: float32 for a float16 VAE that overflows (``force_upcast``), put
    back afterwards, as diffusers' SDXL pipelines do."""
    upcast = vae.dtype == torch.float16 and bool(getattr(vae.config, "force_upcast", False))
    if upcast:
        vae.to(dtype=torch.float32)
    try:
        yield vae.dtype
    finally:
        if upcast:
            vae.to(dtype=torch.float16)


def decode(vae: Vae, latent: Latent) -> Images:
    base = vae.base
    model = base.vae
    with torch.inference_mode(), _vae_precision(model) as dtype:
        latents = latent.samples.to(dtype)
        mean, std = _normalization(model, latents)
        latents = latents * std / model.config.scaling_factor + mean
        pixels = model.decode(latents.to(model.device), return_dict=False)[0]
        pixels = base.image_processor.postprocess(pixels, output_type="pt")
    return Images(pixels.float().cpu())


def encode(vae: Vae, images: Images, device: str) -> Latent:
    base = vae.base
    model = base.vae
    pixels = images.pixels
    height, width = pixels.shape[-2:]
    pixels = pixels[..., :height - height % SCALE, :width - width % SCALE]
    with torch.inference_mode(), _vae_precision(model) as dtype:
        x = (pixels * 2 - 1).to(model.device, dtype)
        latents = model.encode(x).latent_dist.mean
        mean, std = _normalization(model, latents)
        latents = (latents - mean) * model.config.scaling_factor / std
    return Latent(latents.to(device, base.unet.dtype))


def vae_decode(ex: Execution, node_id: str, args: dict[str, Any]) -> tuple[Any, ...]:
    return (decode(ex.want(args["vae"], Vae, node_id, "vae"), ex.want(args["samples"], Latent, node_id, "samples")),)


def vae_encode(ex: Execution, node_id: str, args: dict[str, Any]) -> tuple[Any, ...]:
    vae, images = ex.want(args["vae"], Vae, node_id, "vae"), ex.want(args["pixels"], Images, node_id, "pixels")
    return (encode(vae, images, ex.ctx.device),)


def to_pil(images: Images) -> list[Image.Image]:
    """The pixels as 8-bit RGB images, rounded as diffusers' ``numpy_to_pil`` rounds them."""
    array = images.pixels.permute(0, 2, 3, 1).numpy()
    return [Image.fromarray(frame) for frame in (array * 255).round().astype(np.uint8)]


def save_image(ex: Execution, node_id: str, args: dict[str, Any]) -> tuple[Any, ...]:
    ex.emit(node_id, to_pil(ex.want(args["images"], Images, node_id, "images")))
    return ()


preview_image = save_image
