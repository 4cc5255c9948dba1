"""SD upscale (SD WebUI's img2img script of that name): an image made larger by an upscaler, then denoised again
tile by tile with img2img, so a model trained near 512 pixels adds detail to an image of any size.

The upscale is ``pipelines.upscalers.upscale`` (the extras' and hires fix's), to WebUI's size: the image's sides
times ``scale``, rounded down to multiples of 8 (WebUI's ``Upscaler.upscale``); ``none`` keeps the image as it
is. The tiles are WebUI's grid (``runtime.contract.sdupscale.grid_positions``): tiles of the job's ``width`` x
``height`` spread evenly, the last flush with the edge, neighbours sharing at least ``overlap`` pixels. Each
tile is an img2img run of the job's prompt, strength and steps, tile ``i`` (row by row) seeded ``seed + i`` as
WebUI's. The tiles are pasted back in order, each over the ones before it: across its first ``overlap`` columns
(and, for a row, its first ``overlap`` lines) a mask rising linearly from 0 blends it into what is there, as
WebUI's ``combine_grid``, so no seam shows.

Each tile is a pass of ``pipelines.phases`` (``tile-0``, ``tile-1`` ...): one checkpoint stream and one progress
count over all tiles, and a job interrupted at any step of any tile resumes there byte-identical, the tiles
before it taken from the checkpoint. The upscale before the first tile is a pure function of the input image, so
it is done again on resume and gives the same pixels.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
from PIL import Image as PILImage
from PIL.Image import Image

from pipelines.common import DiffusersPipeline, Prepared, generate
from pipelines.families.base import takes
from pipelines.phases import Phases
from pipelines.schedulers import make_scheduler
from pipelines.upscalers import RESAMPLERS, upscale
from runtime.contract import MAX_IMAGE_PIXELS, ContractError
from runtime.contract.sdupscale import MAX_TILES, NO_UPSCALE, SdUpscaleInputs, grid_positions, upscaled_size
from runtime.models.catalog import ModelError
from runtime.models.store import ModelStore
from runtime.plugins import RunContext

#: A tile's place: (x, y) of its top-left corner in the upscaled image.
Place = tuple[int, int]


def split(size: tuple[int, int], tile: tuple[int, int], overlap: int) -> list[list[Place]]:
    """The tiles' places, row by row (WebUI's ``split_grid``)."""
    xs = grid_positions(size[0], tile[0], overlap)
    return [[(x, y) for x in xs] for y in grid_positions(size[1], tile[1], overlap)]


def _ramp(length: int, across: int, vertical: bool) -> Image:
    """A mask rising from 0 by 255 / ``length`` a pixel over ``length`` pixels (WebUI's blend across an overlap)."""
    ramp = (np.arange(length, dtype=np.float32) * 255 / length).astype(np.uint8)
    return PILImage.fromarray(np.repeat(ramp[:, None], across, 1) if vertical else np.repeat(ramp[None, :], across, 0))


def combine(places: list[list[Place]], tiles: list[Image], size: tuple[int, int], overlap: int) -> Image:
    """The tiles (in ``places``' order) blended into one image of ``size`` (WebUI's ``combine_grid``)."""
    out = PILImage.new("RGB", size)
    todo = iter(tiles)
    for row in places:
        tile_h = 0
        strip = PILImage.new("RGB", (size[0], 0))
        for x, _y in row:
            tile = next(todo)
            if not strip.height:
                strip = PILImage.new("RGB", (size[0], tile.height))
                tile_h = tile.height
            if x == 0 or overlap == 0:
                strip.paste(tile, (x, 0))
                continue
            strip.paste(tile.crop((0, 0, overlap, tile_h)), (x, 0), _ramp(overlap, tile_h, vertical=False))
            strip.paste(tile.crop((overlap, 0, tile.width, tile_h)), (x + overlap, 0))
        y = row[0][1]
        if y == 0 or overlap == 0:
            out.paste(strip, (0, y))
            continue
        out.paste(strip.crop((0, 0, size[0], overlap)), (0, y), _ramp(overlap, size[0], vertical=True))
        out.paste(strip.crop((0, overlap, size[0], tile_h)), (0, y + overlap))
    return out


def check_upscaler(store: ModelStore, upscaler: str) -> None:
    """Refuse, naming the field, an upscaler the catalog lacks, before anything loads."""
    if upscaler == NO_UPSCALE or upscaler in RESAMPLERS:
        return
    try:
        store.entry(upscaler, "upscaler")
    except ModelError as exc:
        raise ContractError(exc.code, str(exc), "inputs.upscaler") from None


def tile_steps(job: Prepared) -> int:
    """How many steps one tile's img2img runs, from the timesteps its sampler sets (``pipelines.hires``' way)."""
    inputs = job.inputs
    scheduler = make_scheduler(inputs.scheduler, inputs.schedule, job.base.scheduler.config)
    scheduler.set_timesteps(inputs.steps)
    start = inputs.steps - min(int(inputs.steps * inputs.strength), inputs.steps)
    return len(scheduler.timesteps[max(start, 0) * scheduler.order:])


class SdUpscale(DiffusersPipeline):
    name = "sd_upscale"
    checkpoints = True
    Inputs = SdUpscaleInputs
    image_fields = ("image",)
    task = "img2img"

    def run(self, inputs: SdUpscaleInputs, ctx: RunContext) -> list[Image]:
        check_upscaler(ctx.models, inputs.upscaler)
        job = self.prepare(inputs, ctx)
        tile = (job.inputs.width, job.inputs.height)
        image = ctx.image(inputs.image).convert("RGB")
        size = upscaled_size(inputs, image.width, image.height)
        if size[0] * size[1] > MAX_IMAGE_PIXELS or size[0] < tile[0] or size[1] < tile[1]:
            raise ContractError("invalid_field", f"inputs.scale: the upscaled image ({size[0]}x{size[1]}) must hold "
                                f"a tile ({tile[0]}x{tile[1]}) and be at most {MAX_IMAGE_PIXELS} pixels",
                                "inputs.scale")
        places = split(size, tile, inputs.overlap)
        count = sum(len(row) for row in places)
        if count > MAX_TILES:
            raise ContractError("invalid_field", f"inputs.scale: {count} tiles of {tile[0]}x{tile[1]}, more than "
                                f"{MAX_TILES}; use larger tiles (width, height) or a smaller scale", "inputs.scale")
        steps = tile_steps(job)
        phases = Phases(ctx, {f"tile-{i}": steps for i in range(count)})
        ctx.mark("encode")
        big = image if inputs.upscaler == NO_UPSCALE else upscale(ctx.models, inputs.upscaler, image, size)
        done: list[Image] = []
        for i, (x, y) in enumerate(place for row in places for place in row):
            crop = big.crop((x, y, x + tile[0], y + tile[1]))

            def one(c: RunContext, crop: Image = crop, i: int = i) -> list[Image]:
                view = self.view(job)  # a fresh scheduler for each tile: a run moves its scheduler's step on
                extra: dict[str, Any] = {"width": tile[0], "height": tile[1]} if takes(view, "width") else {}
                return generate(view, job, dataclasses.replace(c, seed=c.seed + i), image=crop,
                                strength=inputs.strength, **extra)

            done.extend(phases.run(f"tile-{i}", one))
        return [combine(places, done, size, inputs.overlap)]
