"""The ``sd_upscale`` pipeline's inputs: SD WebUI's "SD upscale" img2img script as a native job.

The job's ``image`` is made ``scale`` times larger by ``upscaler`` (``none``: left at its size, as WebUI's
"None"), cut into tiles of ``width`` x ``height`` that overlap by ``overlap`` pixels, and each tile is denoised
again by img2img with the job's prompt, ``strength`` and steps; the tiles are blended back across their overlaps.
Tile ``i`` (row by row) is seeded ``seed + i``, as WebUI seeds them. One image per job: WebUI's batch of tiles and
its repeated upscales would seed the tiles otherwise, so ``num_images`` stays 1.
"""

from __future__ import annotations

from pydantic import Field, model_validator

from runtime.contract.edits import MAX_UPSCALE
from runtime.contract.inputs import Img2ImgInputs

#: The upscaler that leaves the image at its size (WebUI's "None" in this script: tiles of the image as it is).
NO_UPSCALE = "none"
#: WebUI's slider goes to 256; more than a tile's side is refused where the tile size is known.
MAX_OVERLAP = 1024
#: Most tiles one job denoises (each an img2img run and, until the last, part of every checkpoint): 8 x 8.
MAX_TILES = 64


class SdUpscaleInputs(Img2ImgInputs):
    """img2img's inputs, ``width`` x ``height`` being the tile's size, plus the upscale before the tiles."""

    upscaler: str = Field(NO_UPSCALE, min_length=1, max_length=128)
    scale: float = Field(2.0, ge=1.0, le=MAX_UPSCALE)
    overlap: int = Field(64, ge=0, le=MAX_OVERLAP)

    @model_validator(mode="after")
    def _one_tiled_image(self) -> SdUpscaleInputs:
        if self.num_images != 1:
            raise ValueError("num_images: SD upscale makes one image (its tiles are seeded seed, seed + 1, ...)")
        if self.controlnets:
            raise ValueError("controlnets: SD upscale's tiles run without ControlNet units")
        for side in (self.width, self.height):
            if side is not None and self.overlap >= side:
                raise ValueError(f"overlap: {self.overlap} must be less than the tile's sides "
                                 f"({self.width}x{self.height})")
        return self


def grid_positions(size: int, tile: int, overlap: int) -> list[int]:
    """Where the tiles along one side of ``size`` pixels start, as WebUI's ``split_grid`` places them: as many as
    cover the side with ``overlap`` shared between neighbours, spread evenly, the last flush with the edge."""
    if tile > size:
        raise ValueError(f"a tile of {tile} pixels does not fit in {size}")
    count = max(1, -(-(size - overlap) // (tile - overlap)))
    spacing = (size - tile) / (count - 1) if count > 1 else 0
    return [min(int(i * spacing), size - tile) for i in range(count)]


def upscaled_size(inputs: SdUpscaleInputs, width: int, height: int) -> tuple[int, int]:
    """The size an image of ``width`` x ``height`` is upscaled to, and the job's output's: WebUI's, the sides
    times ``scale`` rounded down to multiples of 8 (``Upscaler.upscale``); with ``none``, the image's own."""
    if inputs.upscaler == NO_UPSCALE:
        return width, height
    return int(width * inputs.scale) // 8 * 8, int(height * inputs.scale) // 8 * 8
