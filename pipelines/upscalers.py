"""Upscalers: Pillow's resampling, or a catalog model (ESRGAN, Real-ESRGAN, SwinIR ...) run in overlapping tiles.

One function serves the ``upscale`` pipeline and hires fix's pixel upscalers, so both resize alike. A model is
read from its ``.safetensors`` weights by ``spandrel``, which recognises the architecture from the tensors'
names and shapes; pickle weights are never loaded. It runs at its own scale as many times as the target needs,
then the result is resized to exactly the target with Lanczos, as SD WebUI does (``modules/upscaler.py``:
at most three passes of the model, then ``Image.resize(..., LANCZOS)``).

Large images go through the model in tiles of ``TILE`` input pixels that overlap by ``OVERLAP``: the model's
activations, which are tens of times the image (a feature map per block), stay bounded by the tile, and the
overlaps are blended with weights that fall linearly to the tile's edge, so no seam shows where a tile's border
pixels, which lacked their context, would have been cut.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image

from runtime.models.catalog import ModelError
from runtime.models.spandrelimport import spandrel as import_spandrel

if TYPE_CHECKING:
    from runtime.models.store import ModelStore

#: Pillow's resamplings by name: the upscalers that need no model.
RESAMPLERS: dict[str, Image.Resampling] = {"lanczos": Image.Resampling.LANCZOS,
                                           "nearest": Image.Resampling.NEAREST}
#: Largest tile side in input pixels. 512 keeps an ESRGAN x4 (64 features, 23 blocks) near 2 GB of activations
#: in float16, and each tile large enough that the overlaps cost little (WebUI's default is 192, for 4 GB cards).
TILE = 512
#: Least overlap of neighbouring tiles in input pixels: a convolutional upscaler's output near a tile's edge lacks
#: the pixels beyond it, and the linear blend across the overlap gives those pixels the least weight. 16 is twice
#: WebUI's 8 (which leaves faint seams on flat areas); it costs at most (512 / 496)^2 - 1 = 6.6% more work, so
#: a tiled run keeps over 90% of an untiled one's throughput (tests/harness/bench_upscale.py measures it).
OVERLAP = 16
#: The tile of a model that must see the whole image: larger than any image (``MAX_IMAGE_PIXELS``' side).
MAX_SIDE_PX = 1 << 16
#: WebUI's limit on the passes of a model towards the target (a x2 model reaches x8 in three).
MAX_PASSES = 3
ProgressFn = Callable[[int, int], None]


def upscale(store: ModelStore, upscaler: str, image: Image.Image, size: tuple[int, int], *,
            progress: ProgressFn | None = None) -> Image.Image:
    """``image`` resized to exactly ``size`` (RGB) by ``upscaler``: ``lanczos``, ``nearest`` or a catalog id of
    kind ``upscaler``. ``progress(done, total)`` is called after each tile (it may raise to cancel)."""
    image = image.convert("RGB")
    if upscaler in RESAMPLERS:
        image = image.resize(size, RESAMPLERS[upscaler])
        if progress is not None:
            progress(1, 1)
        return image
    model = load(store, upscaler)
    passes = passes_needed(model.scale, image.size, size)
    total = sum(len(tiles(*_grown(image.size, model.scale, i), model.tile, model.overlap)) for i in range(passes))
    done = [0]

    def step(_: int, __: int) -> None:
        done[0] += 1
        if progress is not None:
            progress(done[0], total)

    for _ in range(passes):
        image = run_tiled(model, image, progress=step)
    return image if image.size == tuple(size) else image.resize(size, Image.Resampling.LANCZOS)


def passes_needed(scale: int, source: tuple[int, int], target: tuple[int, int]) -> int:
    """How many times the model runs: until the image covers the target, at most ``MAX_PASSES`` (WebUI's rule);
    none when the target is no larger than the image (a x4 model does not run for a x1 job)."""
    width, height = source
    passes = 0
    while passes < MAX_PASSES and (width < target[0] or height < target[1]) and scale > 1:
        width, height, passes = width * scale, height * scale, passes + 1
    return passes


def _grown(size: tuple[int, int], scale: int, times: int) -> tuple[int, int]:
    return size[0] * scale ** times, size[1] * scale ** times


# ---- models -------------------------------------------------------------------------------------------------------

class Upscaler(torch.nn.Module):
    """A loaded upscaler: spandrel's descriptor (its network, scale and size requirements) and the tiling it
    runs with. A module, so that the model store counts the network's parameters against its memory budget."""

    def __init__(self, model_id: str, descriptor: Any) -> None:
        super().__init__()
        self.model_id, self.descriptor, self.net = model_id, descriptor, descriptor.model
        self.scale, self.architecture = descriptor.scale, descriptor.architecture.name
        # spandrel says when a model needs the whole image (it tiles internally, or looks at global statistics)
        self.tile = TILE if descriptor.tiling.name != "INTERNAL" else MAX_SIDE_PX
        self.overlap = OVERLAP


def load(store: ModelStore, model_id: str) -> Upscaler:
    """The catalog's upscaler ``model_id``, loaded once per process (the store's tier 2)."""
    source = store.source(model_id, "upscaler")  # checks the id, the path and the suffix before anything is read
    dtype = store.entry(model_id, "upscaler").dtype
    return store.get(f"upscaler:{model_id}", lambda: read(model_id, source.path, store.device, dtype), model_id)


def read(model_id: str, path: Any, device: str = "cpu", dtype: str | None = None) -> Upscaler:
    """Build the network that ``path``'s weights describe, on ``device`` in ``dtype`` (the catalog's; else half
    precision on a GPU where the architecture supports it, as the base models); a ``ModelError`` naming the
    model when the file is not safetensors or holds no architecture spandrel knows."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not str(path).lower().endswith(".safetensors"):
        raise ModelError("unsafe_weights", f"upscaler {model_id!r}: {path} is not a .safetensors file; only "
                         "safetensors are loaded (docs/models.md says how to convert a .pth)")
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise ModelError("invalid_upscaler", f"upscaler {model_id!r}: {path} is not a readable safetensors file: "
                         f"{exc}") from None
    spandrel = import_spandrel()
    try:
        descriptor = spandrel.ModelLoader().load_from_state_dict(state)
    except spandrel.UnsupportedModelError:
        raise ModelError("invalid_upscaler", f"upscaler {model_id!r}: spandrel recognises no architecture in "
                         f"{path.name if hasattr(path, 'name') else path} (ESRGAN, Real-ESRGAN, SwinIR ... weights "
                         "as their authors saved them)") from None
    except (KeyError, ValueError, RuntimeError) as exc:
        raise ModelError("invalid_upscaler", f"upscaler {model_id!r}: its weights do not fit the architecture "
                         f"spandrel sees in them: {exc}") from None
    if not isinstance(descriptor, spandrel.ImageModelDescriptor) or descriptor.purpose != "SR":
        raise ModelError("invalid_upscaler", f"upscaler {model_id!r}: {descriptor.architecture.name} is a "
                         f"{getattr(descriptor, 'purpose', 'non-image')} model, not a super-resolution one")
    if descriptor.input_channels != 3 or descriptor.output_channels != 3:
        raise ModelError("invalid_upscaler", f"upscaler {model_id!r}: it maps {descriptor.input_channels} channels "
                         f"to {descriptor.output_channels}; an upscaler maps RGB to RGB")
    if dtype is None:
        half = device.startswith("cuda") and descriptor.supports_half
        dtype = "float16" if half else "float32"
    descriptor.model.eval().requires_grad_(False)
    descriptor.to(device, getattr(torch, dtype))
    return Upscaler(model_id, descriptor)


# ---- tiling -------------------------------------------------------------------------------------------------------

def tiles(width: int, height: int, tile: int, overlap: int) -> list[tuple[int, int, int, int]]:
    """The tiles covering a ``width`` x ``height`` image, as (left, top, right, bottom): at most ``tile`` pixels a
    side, neighbours overlapping by at least ``overlap``."""
    return [(x, y, x + w, y + h) for y, h in _spans(height, tile, overlap) for x, w in _spans(width, tile, overlap)]


def _spans(length: int, tile: int, overlap: int) -> list[tuple[int, int]]:
    """(start, size) of the tiles along one axis: as few as cover ``length`` with ``overlap`` between
    neighbours, all of one size (at most ``tile``) and spread evenly, so that no tile is mostly overlap."""
    if length <= tile:
        return [(0, length)]
    count = -(-(length - overlap) // (tile - overlap))
    size = -(-(length + (count - 1) * overlap) // count)  # <= tile: count * (tile - overlap) >= length - overlap
    # consecutive starts differ by at most ceil((length - size) / (count - 1)) <= size - overlap
    return [(index * (length - size) // (count - 1), size) for index in range(count)]


def _ramp(length: int, start: int, end: int, total: int, overlap: int) -> np.ndarray:
    """Blend weights along one axis of a tile (output pixels): 1, falling linearly to near 0 over ``overlap``
    pixels at each side that has a neighbour (a side on the image's edge keeps 1)."""
    weights = np.ones(length, np.float32)
    ramp = (np.arange(overlap, dtype=np.float32) + 0.5) / overlap if overlap > 0 else np.zeros(0, np.float32)
    n = min(overlap, length)
    if start > 0:
        weights[:n] = np.minimum(weights[:n], ramp[:n])
    if end < total:
        weights[length - n:] = np.minimum(weights[length - n:], ramp[:n][::-1])
    return weights


def run_tiled(model: Upscaler, image: Image.Image, *, tile: int | None = None, overlap: int | None = None,
              progress: ProgressFn | None = None) -> Image.Image:
    """One pass of the model over ``image`` in overlapping tiles, blended; the result is ``model.scale`` times
    the image. A tile at least as large as the image is one untiled run."""
    tile, overlap = tile or model.tile, model.overlap if overlap is None else overlap
    if not 0 <= overlap < tile:
        raise ValueError(f"the tiles' overlap ({overlap}) must be less than their size ({tile})")
    scale = model.scale
    pixels = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    height, width = pixels.shape[:2]
    out = np.zeros((height * scale, width * scale, 3), np.float32)
    weight = np.zeros((height * scale, width * scale, 1), np.float32)
    boxes = tiles(width, height, tile, overlap)
    device, dtype = model.descriptor.device, model.descriptor.dtype
    for index, (left, top, right, bottom) in enumerate(boxes):
        crop = torch.from_numpy(np.ascontiguousarray(pixels[top:bottom, left:right].transpose(2, 0, 1)))[None]
        result = _forward(model, crop.to(device, dtype)).float().cpu().numpy()[0].transpose(1, 2, 0)
        wy = _ramp(result.shape[0], top, bottom, height, overlap * scale)
        wx = _ramp(result.shape[1], left, right, width, overlap * scale)
        mask = (wy[:, None] * wx[None, :])[..., None]
        out[top * scale:bottom * scale, left * scale:right * scale] += result * mask
        weight[top * scale:bottom * scale, left * scale:right * scale] += mask
        if progress is not None:
            progress(index + 1, len(boxes))
    out /= weight
    return Image.fromarray((np.clip(out, 0.0, 1.0) * 255.0).round().astype(np.uint8), "RGB")


def _forward(model: Upscaler, crop: torch.Tensor) -> torch.Tensor:
    """The network on one tile, through spandrel's descriptor: it pads the tile (reflecting its edges) to the
    sizes the architecture accepts (``size_requirements``: a multiple, a minimum, a square) and cuts the padding
    off the output, calls the architecture as it must be called, and clamps to 0..1."""
    with torch.inference_mode():
        return model.descriptor(crop)
