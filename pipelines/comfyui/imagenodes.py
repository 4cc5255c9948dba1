"""Images from the input bucket and masks: LoadImage, LoadImageMask, VAEEncodeForInpaint, SetLatentNoiseMask, and
KSampler with a noise mask (``noisemask``).

``NODES``: the classes this area runs (``executor.node_table`` merges it after the core table, so its KSampler,
which hands every latent without a noise mask to the core one, is the one that runs; ``runtime.contract.comfy``'s
``RUNS_IMAGES`` lists the other names for the API).

The API has resolved each LoadImage's and LoadImageMask's ``image`` (a name the caller uploaded) to its object in
the input bucket (``lambdas.comfy_images``); the worker opens it through ``RunContext.image``, whose store reads
the input bucket only. The loaded values are pure functions of the image's bytes, so a resumed job loads them
again to the same values.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image

from pipelines.comfyui import images, noisemask
from pipelines.comfyui.latents import SCALE
from pipelines.comfyui.noisemask import Mask, MaskedLatent, as_batch
from pipelines.comfyui.registry import Node
from pipelines.comfyui.sampling import plan
from pipelines.comfyui.values import Images, Latent, Vae
from runtime.contract import ContractError

if TYPE_CHECKING:
    from pipelines.comfyui.executor import Execution

#: LoadImageMask's channels, as Pillow names RGBA's bands.
CHANNELS = {"alpha": "A", "red": "R", "green": "G", "blue": "B"}


def _open(ex: Execution, node_id: str, args: dict[str, Any]) -> Image.Image:
    """The node's image, in its own mode (L, RGB or RGBA): only an input-bucket reference is opened."""
    ref = args.get("image")
    if not isinstance(ref, str) or not ref.startswith("s3://"):
        where = ex.where(node_id, "image")
        raise ContractError("invalid_field", f"{where}: names no uploaded image (POST /upload/image, then the "
                            f"name it answers); got {ref!r}", where)
    return ex.ctx.image(ref, mode=None)


def _floats(image: Image.Image) -> torch.Tensor:
    """8-bit channels as floats in [0, 1], (height, width, channels)."""
    array = np.asarray(image, dtype=np.uint8)
    return torch.from_numpy(array.astype(np.float32) / 255.0).reshape(image.height, image.width, -1)


def load_image(ex: Execution, node_id: str, args: dict[str, Any]) -> tuple[Any, ...]:
    """IMAGE (RGB) and MASK: 1 - alpha where the image has an alpha channel (ComfyUI's: a painted-out area is
    transparent), else zeros (ComfyUI's is 64 x 64 zeros; the image's size here, the same once resized)."""
    image = _open(ex, node_id, args)
    pixels = _floats(image.convert("RGB")).permute(2, 0, 1).unsqueeze(0)
    if image.mode == "RGBA":
        mask = 1.0 - _floats(image.getchannel("A"))[..., 0]
    else:
        mask = torch.zeros((image.height, image.width))
    return Images(pixels), Mask(mask.unsqueeze(0))


def load_image_mask(ex: Execution, node_id: str, args: dict[str, Any]) -> tuple[Any, ...]:
    """MASK from one channel of the image as RGBA (an image without alpha is opaque); the alpha channel inverted,
    as ComfyUI's."""
    band = CHANNELS.get(args.get("channel"))  # type: ignore[arg-type]
    if band is None:
        where = ex.where(node_id, "channel")
        raise ContractError("invalid_field", f"{where}: one of {', '.join(CHANNELS)}", where)
    image = _open(ex, node_id, args).convert("RGBA")
    mask = _floats(image.getchannel(band))[..., 0]
    return (Mask((1.0 - mask if band == "A" else mask).unsqueeze(0)),)


def _grown(mask: torch.Tensor, by: int) -> torch.Tensor:
    """The rounded mask dilated by a ``by`` x ``by`` square (ComfyUI's ``grow_mask_by``), kept in [0, 1]."""
    if by == 0:
        return mask
    kernel = torch.ones((1, 1, by, by))
    grown = torch.nn.functional.conv2d(mask.round(), kernel, padding=math.ceil((by - 1) / 2))
    return grown.clamp(0, 1)


def vae_encode_for_inpaint(ex: Execution, node_id: str, args: dict[str, Any]) -> tuple[Any, ...]:
    """The image cut to whole latent cells about its centre, grey (0.5) where the mask is, encoded; its noise mask
    is the mask grown by ``grow_mask_by`` pixels, rounded."""
    vae = ex.want(args["vae"], Vae, node_id, "vae")
    pixels = ex.want(args["pixels"], Images, node_id, "pixels").pixels
    mask = ex.want(args["mask"], Mask, node_id, "mask").values
    by = ex.integer(node_id, args, "grow_mask_by")
    if not 0 <= by <= 64:
        where = ex.where(node_id, "grow_mask_by")
        raise ContractError("invalid_field", f"{where}: from 0 to 64, not {by}", where)
    height, width = pixels.shape[-2:]
    mask = torch.nn.functional.interpolate(as_batch(mask), size=(height, width), mode="bilinear")
    cut_h, cut_w = height - height % SCALE, width - width % SCALE
    top, left = (height % SCALE) // 2, (width % SCALE) // 2
    pixels = pixels[..., top:top + cut_h, left:left + cut_w]
    mask = mask[..., top:top + cut_h, left:left + cut_w]
    keep = 1.0 - mask.round()
    grey = (pixels - 0.5) * keep + 0.5
    encoded = images.encode(vae, Images(grey), ex.ctx.device)
    noise_mask = _grown(mask, by)[..., :cut_h, :cut_w].round()
    return (MaskedLatent(encoded.samples, noise_mask=noise_mask),)


def set_latent_noise_mask(ex: Execution, node_id: str, args: dict[str, Any]) -> tuple[Any, ...]:
    """The latent, resampled only where the mask is when a KSampler takes it."""
    latent = ex.want(args["samples"], Latent, node_id, "samples")
    mask = ex.want(args["mask"], Mask, node_id, "mask").values
    return (MaskedLatent(latent.samples, empty=latent.empty, noise_mask=as_batch(mask)),)


NODES: dict[str, Node] = {
    "LoadImage": Node(load_image),
    "LoadImageMask": Node(load_image_mask),
    "VAEEncodeForInpaint": Node(vae_encode_for_inpaint),
    "SetLatentNoiseMask": Node(set_latent_noise_mask),
    "KSampler": Node(noisemask.ksampler, plan=plan),
}
