"""Upscale models: ``UpscaleModelLoader`` and ``ImageUpscaleWithModel``, on spotgen's own upscalers
(``pipelines.upscalers``: spandrel networks from the catalog's safetensors, run in overlapping tiles).

The API has already put catalog ids in place of ComfyUI's file names (``model_name``), so the loader only looks the
id up, and a model of another kind (a checkpoint, a LoRA) is refused naming the input before any step runs. The
network loads once per process into the model store, as for spotgen's own upscale jobs.

ImageUpscaleWithModel runs the model once over each image of the batch, as ComfyUI's node does: the result is the
model's scale times the image (x4 for an ESRGAN), with no resize towards a target. It goes through
``upscalers.run_tiled``, so a large image is tiled and blended as spotgen's upscale jobs are; that function reads
and writes 8-bit pixels, so the IMAGE is rounded to 8 bits on the way in and out (what a SaveImage keeps anyway).
Every step is a pure function of its input on a given device: a resumed graph upscales again to the same bytes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image

from pipelines import upscalers
from pipelines.comfyui.registry import Node
from pipelines.comfyui.values import Images
from runtime.contract import ContractError
from runtime.models.catalog import ModelError

if TYPE_CHECKING:
    from pipelines.comfyui.executor import Execution


@dataclass(frozen=True)
class UpscaleModel:
    """UPSCALE_MODEL: a loaded catalog upscaler, as the loader hands it on."""

    model_id: str
    model: upscalers.Upscaler


def upscale_model_loader(ex: Execution, node_id: str, args: dict[str, Any]) -> tuple[Any, ...]:
    where = ex.where(node_id, "model_name")
    model_id = args["model_name"]
    try:
        model = upscalers.load(ex.store, model_id)
    except ModelError as exc:
        message = str(exc) if str(exc).startswith(where) else f"{where}: {exc}"
        raise ContractError(exc.code, message, where) from None
    return (UpscaleModel(model_id, model),)


def _to_pil(frame: torch.Tensor) -> Image.Image:
    array = (frame.float().clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255.0).round().astype(np.uint8)
    return Image.fromarray(array, "RGB")


def _from_pil(image: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0).permute(2, 0, 1)


def image_upscale_with_model(ex: Execution, node_id: str, args: dict[str, Any]) -> tuple[Any, ...]:
    upscale = args["upscale_model"]
    if not isinstance(upscale, UpscaleModel):
        where = ex.where(node_id, "upscale_model")
        raise ContractError("invalid_link", f"{where}: wants an UPSCALE_MODEL (UpscaleModelLoader's), the link "
                            f"gives a {type(upscale).__name__}", where)
    images = ex.want(args["image"], Images, node_id, "image")
    frames = [_from_pil(upscalers.run_tiled(upscale.model, _to_pil(frame))) for frame in images.pixels]
    return (Images(torch.stack(frames)),)


NODES: dict[str, Node] = {
    "UpscaleModelLoader": Node(upscale_model_loader),
    "ImageUpscaleWithModel": Node(image_upscale_with_model),
}
