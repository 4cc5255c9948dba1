"""Pixel nodes: ``ImageScale``, ``ImageScaleBy`` and ``ImageInvert``, on IMAGE's float pixels in [0, 1].

The scaling modes are ComfyUI's names: ``nearest-exact``, ``bilinear``, ``area`` and ``bicubic`` through
``torch.nn.functional.interpolate`` (bicubic's overshoot clamped back to [0, 1]), ``lanczos`` through Pillow's filter
on each channel in 32-bit float, so no precision is lost to 8 bits between nodes. Every one is a pure function of its
input: a resumed job scales again to the same values.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image

from pipelines.comfyui.latents import center_crop
from pipelines.comfyui.values import Images, target_size
from runtime.contract import ContractError

if TYPE_CHECKING:
    from pipelines.comfyui.executor import Execution

METHODS = ("nearest-exact", "bilinear", "area", "bicubic", "lanczos")


def scaled(images: Images, width: int, height: int, method: Any, crop: str, where: str) -> Images:
    """``images`` at ``width`` x ``height`` pixels; with ``crop`` "center", cut first to the target's aspect."""
    if method not in METHODS:
        raise ContractError("invalid_field", f"{where}: upscale_method {method!r} is not run here; use one of "
                            f"{', '.join(METHODS)}", where)
    pixels = images.pixels
    if crop == "center":
        pixels = center_crop(pixels, width / height)
    if tuple(pixels.shape[-2:]) == (height, width):
        return Images(pixels)
    if method == "lanczos":
        return Images(_lanczos(pixels, width, height))
    corners = {"align_corners": False} if method in ("bilinear", "bicubic") else {}
    with torch.inference_mode():
        out = torch.nn.functional.interpolate(pixels, size=(height, width), mode=method, **corners)
    return Images(out.clamp(0, 1))


def _lanczos(pixels: torch.Tensor, width: int, height: int) -> torch.Tensor:
    frames = []
    for frame in pixels.numpy():
        channels = [np.asarray(Image.fromarray(channel, mode="F").resize((width, height), Image.Resampling.LANCZOS))
                    for channel in frame.astype(np.float32)]
        frames.append(np.stack(channels))
    return torch.from_numpy(np.stack(frames)).clamp(0, 1)


def image_scale(ex: Execution, node_id: str, args: dict[str, Any]) -> tuple[Any, ...]:
    images = ex.want(args["image"], Images, node_id, "image")
    width, height = ex.integer(node_id, args, "width"), ex.integer(node_id, args, "height")
    have_h, have_w = images.pixels.shape[-2:]
    if width == 0 and height == 0:
        return (images,)
    width, height = target_size(width, height, have_w, have_h, 1)
    return (scaled(images, width, height, args["upscale_method"], args.get("crop", "disabled"),
                   ex.where(node_id, "upscale_method")),)


def image_scale_by(ex: Execution, node_id: str, args: dict[str, Any]) -> tuple[Any, ...]:
    images = ex.want(args["image"], Images, node_id, "image")
    scale = ex.number(node_id, args, "scale_by")
    if not 0 < scale <= 8:
        where = ex.where(node_id, "scale_by")
        raise ContractError("invalid_field", f"{where}: a factor above 0 and at most 8, not {scale!r}", where)
    have_h, have_w = images.pixels.shape[-2:]
    width, height = max(1, round(have_w * scale)), max(1, round(have_h * scale))
    return (scaled(images, width, height, args["upscale_method"], "disabled", ex.where(node_id, "upscale_method")),)


def image_invert(ex: Execution, node_id: str, args: dict[str, Any]) -> tuple[Any, ...]:
    return (Images(1 - ex.want(args["image"], Images, node_id, "image").pixels),)
