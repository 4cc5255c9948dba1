"""SD upscale's grid and seeds as SD WebUI's script makes them: the tiles' places (``split_grid``), the blend
across their overlaps (``combine_grid``), tile ``i`` seeded ``seed + i``, and the upscale to WebUI's size; and
the bad inputs refused naming their field. The resume in every tile is the contract kit's (test_kit_sdupscale)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipelines.sdupscale import combine, split
from runtime.contract import ContractError
from runtime.contract.sdupscale import SdUpscaleInputs, upscaled_size
from runtime.kit.local import LocalRun
from spotgen.testing import sample_image

BUCKET = {"input_bucket": "b"}


def webui_starts(size: int, tile: int, overlap: int) -> list[int]:
    """WebUI 1.10's ``split_grid`` along one side, written out again: ceil((size - overlap) / (tile - overlap))
    tiles, the i-th at int(i x (size - tile) / (count - 1)), pulled back so that it ends inside the image."""
    count = math.ceil((size - overlap) / (tile - overlap))
    step = (size - tile) / (count - 1) if count > 1 else 0
    starts = []
    for i in range(count):
        start = int(i * step)
        starts.append(size - tile if start + tile >= size else start)
    return starts


@pytest.mark.parametrize(("size", "tile", "overlap"), [
    ((1024, 1024), (512, 512), 64), ((1000, 760), (512, 512), 64), ((96, 80), (64, 48), 16),
    ((512, 512), (512, 512), 0), ((1536, 1000), (512, 768), 128), ((1200, 900), (384, 256), 0),
    ((2048, 1536), (512, 512), 256)])
def test_tiles_are_placed_as_webuis_split_grid(size: tuple[int, int], tile: tuple[int, int], overlap: int) -> None:
    places = split(size, tile, overlap)
    assert [row[0][1] for row in places] == webui_starts(size[1], tile[1], overlap)
    assert all([x for x, _ in row] == webui_starts(size[0], tile[0], overlap) for row in places)


def webui_blend(places: list[list[tuple[int, int]]], tiles: list[np.ndarray], size: tuple[int, int],
                overlap: int) -> np.ndarray:
    """WebUI's ``combine_grid`` in floats: each tile over a row strip, each strip over the image, both rising
    across the first ``overlap`` pixels by int(r x 255 / overlap) / 255."""
    alpha = (np.arange(overlap, dtype=np.float32) * 255 / overlap).astype(np.uint8) / 255.0
    out = np.zeros((size[1], size[0], 3))
    todo = iter(tiles)
    for row in places:
        strip = None
        for x, _ in row:
            tile = next(todo).astype(np.float64)
            if strip is None:
                strip = np.zeros((tile.shape[0], size[0], 3))
            if x == 0:
                strip[:, :tile.shape[1]] = tile
                continue
            a = alpha[None, :, None]
            strip[:, x:x + overlap] = tile[:, :overlap] * a + strip[:, x:x + overlap] * (1 - a)
            strip[:, x + overlap:x + tile.shape[1]] = tile[:, overlap:]
        y = row[0][1]
        if y == 0:
            out[:strip.shape[0]] = strip
            continue
        a = alpha[:, None, None]
        out[y:y + overlap] = strip[:overlap] * a + out[y:y + overlap] * (1 - a)
        out[y + overlap:y + strip.shape[0]] = strip[overlap:]
    return out


def test_tiles_blend_across_their_overlaps_as_webuis_combine_grid() -> None:
    size, tile, overlap = (200, 150), (96, 64), 24
    places = split(size, tile, overlap)
    rng = np.random.default_rng(3)
    tiles = [rng.integers(0, 256, (tile[1], tile[0], 3), dtype=np.uint8) for row in places for _ in row]
    assert len(places) == 4 and len(places[0]) == 3  # rows overlap by more than 24: WebUI spreads them evenly
    got = np.asarray(combine(places, [Image.fromarray(t) for t in tiles], size, overlap), dtype=np.float64)
    # Pillow rounds its masked paste in integers: one level of difference at most, and none outside the overlaps.
    assert np.abs(got - webui_blend(places, tiles, size, overlap)).max() <= 1


def test_unchanged_tiles_give_back_the_image_exactly() -> None:
    image = sample_image("gradient", (96, 80))
    places = split(image.size, (64, 48), 16)
    crops = [image.crop((x, y, x + 64, y + 48)) for row in places for x, y in row]
    assert combine(places, crops, image.size, 16).tobytes() == image.tobytes()


def test_upscaled_to_webuis_size() -> None:
    inputs = SdUpscaleInputs.model_validate({"prompt": "p", "image": "s3://b/k.png", "scale": 1.3,
                                             "upscaler": "lanczos", "width": 64, "height": 48, "overlap": 16},
                                            context=BUCKET)
    assert upscaled_size(inputs, 80, 64) == (104, 80)  # 104.0 and 83.2, rounded down to multiples of 8
    none = inputs.model_copy(update={"upscaler": "none"})
    assert upscaled_size(none, 80, 64) == (80, 64)  # WebUI's "None": the image as it is


def test_tile_i_is_img2img_of_its_crop_seeded_seed_plus_i(tiny_models: Path) -> None:
    run = LocalRun(tiny_models)
    image = sample_image("gradient")  # 80x64, x 1.25 -> 96x80: 2 x 2 tiles of 64x48 at 0 and 32
    common = {"prompt": "a red fox", "width": 64, "height": 48, "steps": 3, "strength": 0.67}
    out = run.run("sd_upscale", "tiny-sd", {**common, "upscaler": "lanczos", "scale": 1.25, "overlap": 16},
                  seed=7, images={"image": image}).images[0]
    big = image.convert("RGB").resize((96, 80), Image.Resampling.LANCZOS)
    first = run.run("img2img", "tiny-sd", common, seed=7, images={"image": big.crop((0, 0, 64, 48))}).images[0]
    last = run.run("img2img", "tiny-sd", common, seed=10, images={"image": big.crop((32, 32, 96, 80))}).images[0]
    # What no later tile covers is the first tile's own; past the last tile's overlaps it is the last tile's.
    assert out.crop((0, 0, 32, 32)).tobytes() == first.crop((0, 0, 32, 32)).tobytes()
    assert out.crop((48, 48, 96, 80)).tobytes() == last.crop((16, 16, 64, 48)).tobytes()


@pytest.mark.parametrize(("fields", "field"), [
    ({"num_images": 2}, "num_images"), ({"overlap": 48}, "overlap"), ({"scale": 9}, "scale"),
    ({"controlnets": [{"id": "c", "image": "s3://b/c.png"}]}, "controlnets")])
def test_bad_inputs_are_refused_naming_the_field(fields: dict, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        SdUpscaleInputs.model_validate({"prompt": "p", "image": "s3://b/k.png", "width": 64, "height": 48, **fields},
                                       context=BUCKET)


def test_an_image_smaller_than_a_tile_is_refused_naming_scale(tiny_models: Path) -> None:
    with pytest.raises(ContractError, match="inputs.scale"):
        LocalRun(tiny_models).run("sd_upscale", "tiny-sd", {"prompt": "p", "width": 128, "height": 128, "steps": 2,
                                                           "upscaler": "lanczos", "scale": 1.0},
                                  images={"image": sample_image("gradient")})
