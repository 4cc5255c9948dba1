"""Latent nodes: ``EmptyLatentImage``, ``LatentUpscale`` and ``LatentUpscaleBy``.

An empty latent is zeros of the SD families' four channels at an eighth of the size; a sampler at full denoise
starts it from pure noise, as a text-to-image run (``pipelines.comfyui.sampling``). The upscales resize latents with
``torch.nn.functional.interpolate`` in the modes ComfyUI names (``nearest-exact``, ``bilinear``, ``area``,
``bicubic``), and ``bislerp``: bilinear, but each latent cell's channel vector blended spherically (direction by
slerp, length linearly), which keeps the noise-like latents' norms where plain bilinear shrinks them (written here
from that description; its pixels are not ComfyUI's). All are pure functions of their input, so a job resumed after
the first sampler upscales its carried latents again to the very same values.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from pipelines.comfyui.values import Latent, target_size
from runtime.contract import ContractError

if TYPE_CHECKING:
    from pipelines.comfyui.executor import Execution

#: Pixels per latent cell (the SD families' VAEs downscale by 8).
SCALE = 8
CHANNELS = 4
#: ComfyUI's upscale_method -> interpolate's mode.
MODES = {"nearest-exact": "nearest-exact", "bilinear": "bilinear", "area": "area", "bicubic": "bicubic",
         "bislerp": "bislerp"}


def empty_latent_image(ex: Execution, node_id: str, args: dict[str, Any]) -> tuple[Any, ...]:
    width, height, batch = (ex.integer(node_id, args, name) for name in ("width", "height", "batch_size"))
    shape = (batch, CHANNELS, height // SCALE, width // SCALE)
    return (Latent(torch.zeros(shape, device=ex.ctx.device), empty=True),)


def resized(latent: Latent, width: int, height: int, method: Any, crop: str, where: str) -> Latent:
    """``latent`` at ``width`` x ``height`` cells; with ``crop`` "center", cut first to the target's aspect."""
    mode = MODES.get(method) if isinstance(method, str) else None
    if mode is None:
        raise ContractError("invalid_field", f"{where}: upscale_method {method!r} is not run here; use one of "
                            f"{', '.join(MODES)}", where)
    samples = latent.samples
    if crop == "center":
        samples = center_crop(samples, width / height)
    corners = {"align_corners": False} if mode in ("bilinear", "bicubic") else {}
    with torch.inference_mode():
        if mode == "bislerp":
            out = _slerp_axis(_slerp_axis(samples.float(), width, -1), height, -2).to(samples.dtype)
        else:
            out = torch.nn.functional.interpolate(samples, size=(height, width), mode=mode, **corners)
    return Latent(out, empty=latent.empty)


def _slerp_axis(samples: torch.Tensor, size: int, axis: int) -> torch.Tensor:
    """``samples`` resized to ``size`` along ``axis`` (-1 or -2): each new cell between its two nearest source
    cells (half-pixel centres, as bilinear without corner alignment), their channel vectors slerped."""
    have = samples.shape[axis]
    if have == size:
        return samples
    position = ((torch.arange(size, dtype=torch.float64) + 0.5) * have / size - 0.5).clamp(0, have - 1)
    low = position.floor().long()
    high = (low + 1).clamp(max=have - 1)
    weight = (position - low).to(samples.dtype)
    a, b = samples.index_select(axis, low.to(samples.device)), samples.index_select(axis, high.to(samples.device))
    shape = [1] * samples.ndim
    shape[axis] = size
    return _slerp(a, b, weight.to(samples.device).view(shape))


def _slerp(a: torch.Tensor, b: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Spherical blend over the channels (dim 1): the direction slerped, the length blended linearly; where the
    two directions (nearly) agree or a vector is zero, plain linear blending."""
    norm_a, norm_b = a.norm(dim=1, keepdim=True), b.norm(dim=1, keepdim=True)
    unit_a, unit_b = a / norm_a.clamp_min(1e-12), b / norm_b.clamp_min(1e-12)
    omega = (unit_a * unit_b).sum(dim=1, keepdim=True).clamp(-1, 1).acos()
    sin = omega.sin()
    curved = ((1 - t) * omega).sin() / sin.clamp_min(1e-6) * unit_a + (t * omega).sin() / sin.clamp_min(1e-6) * unit_b
    length = (1 - t) * norm_a + t * norm_b
    straight = (1 - t) * a + t * b
    flat = (sin < 1e-4) | (norm_a == 0) | (norm_b == 0)
    return torch.where(flat, straight, curved * length)


def center_crop(samples: torch.Tensor, aspect: float) -> torch.Tensor:
    height, width = samples.shape[-2:]
    if width / height > aspect:  # too wide: cut the sides
        keep = round(height * aspect)
        left = (width - keep) // 2
        return samples[..., :, left:left + keep]
    keep = round(width / aspect)
    top = (height - keep) // 2
    return samples[..., top:top + keep, :]


def latent_upscale(ex: Execution, node_id: str, args: dict[str, Any]) -> tuple[Any, ...]:
    latent = ex.want(args["samples"], Latent, node_id, "samples")
    width, height = ex.integer(node_id, args, "width"), ex.integer(node_id, args, "height")
    cells_h, cells_w = latent.samples.shape[-2:]
    if width == 0 and height == 0:
        return (latent,)
    width, height = target_size(width, height, cells_w, cells_h, 64)
    crop = args.get("crop", "disabled")
    return (resized(latent, width // SCALE, height // SCALE, args["upscale_method"], crop,
                    ex.where(node_id, "upscale_method")),)


def latent_upscale_by(ex: Execution, node_id: str, args: dict[str, Any]) -> tuple[Any, ...]:
    latent = ex.want(args["samples"], Latent, node_id, "samples")
    scale = args["scale_by"]
    if isinstance(scale, bool) or not isinstance(scale, int | float) or not 0 < scale <= 8:
        where = ex.where(node_id, "scale_by")
        raise ContractError("invalid_field", f"{where}: a factor above 0 and at most 8, not {scale!r}", where)
    cells_h, cells_w = latent.samples.shape[-2:]
    width, height = max(1, round(cells_w * scale)), max(1, round(cells_h * scale))
    return (resized(latent, width, height, args["upscale_method"], "disabled", ex.where(node_id, "upscale_method")),)
