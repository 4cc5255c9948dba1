"""WebUI's weight-free ControlNet preprocessors (``pipelines.preprocess``): each makes an RGB map at its working
size with a property of its own that a wrong implementation breaks; ``shuffle`` is seeded by the job; the ones
needing a detector's weights are refused naming the unit's field."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from pipelines.preprocess import PARAMETERS, preprocess
from runtime.contract import ContractError
from runtime.contract.preprocessors import NEEDS_WEIGHTS, WEIGHT_FREE


def photo(width: int = 96, height: int = 64) -> Image.Image:
    """A smooth colour gradient with a dark line and a bright square: edges, lines and colours to find."""
    y, x = np.mgrid[0:height, 0:width]
    pixels = np.stack([x * 255 // width, y * 255 // height, (x + y) * 255 // (width + height)], axis=-1)
    pixels = pixels.astype(np.uint8)
    pixels[height // 2 - 1:height // 2 + 1, 8:width - 8] = 0
    pixels[8:24, 8:24] = 250
    return Image.fromarray(pixels)


def run(name: str, image: Image.Image | None = None, **params: float) -> np.ndarray:
    made = preprocess(image or photo(), name, resolution=64, **params)  # type: ignore[arg-type]
    assert made.mode == "RGB"
    return np.asarray(made)


@pytest.mark.parametrize("name", WEIGHT_FREE)
def test_every_module_makes_an_rgb_map_at_its_working_size(name: str) -> None:
    """``resolution`` is the short side, as the extension's ``processor_res``; the tile modules, invert and none
    keep the image's size."""
    out = preprocess(photo(), name, resolution=128)
    assert out.mode == "RGB"
    own = name in ("none", "invert", "tile_colorfix", "tile_colorfix+sharp", "tile_resample")
    assert out.size == ((96, 64) if own else (192, 128))


def test_invert_twice_is_the_image() -> None:
    once = preprocess(photo(), "invert")
    assert (np.asarray(once) != np.asarray(photo())).any()
    assert np.array_equal(np.asarray(preprocess(once, "invert")), np.asarray(photo()))


@pytest.mark.parametrize("name", ["threshold", "binary", "scribble_xdog", "canny"])
def test_binary_maps_are_only_black_and_white(name: str) -> None:
    out = run(name)
    assert set(np.unique(out)) == {0, 255}
    assert (out[..., 0] == out[..., 1]).all() and (out[..., 1] == out[..., 2]).all()


def test_threshold_a_is_the_threshold() -> None:
    gray = Image.fromarray(np.tile(np.arange(0, 256, 4, dtype=np.uint8), (64, 1)))  # 64 x 64, 0 to 252
    for level in (50, 127, 200):
        out = run("threshold", gray, threshold_a=level)[..., 0]
        assert (out == 255).mean() == pytest.approx((np.arange(0, 256, 4) > level).mean(), abs=0.05)


def test_binary_inverts_and_otsu_splits_two_levels() -> None:
    two = np.full((64, 64, 3), 40, np.uint8)
    two[:, 32:] = 220
    out = run("binary", Image.fromarray(two))[..., 0]  # threshold 0: Otsu's
    assert (out[:, :30] == 255).all() and (out[:, 34:] == 0).all()  # dark becomes white


def test_tile_resample_downsamples_by_threshold_a() -> None:
    assert run("tile_resample").shape[:2] == (64, 96)
    assert run("tile_resample", threshold_a=2.0).shape[:2] == (32, 48)
    assert run("tile_resample", threshold_a=4.0).shape[:2] == (16, 24)


def test_colorfix_blurs_by_its_variation_and_sharp_adds_detail_back() -> None:
    def detail(out: np.ndarray) -> float:
        return float(np.abs(np.diff(out.astype(int), axis=1)).mean())

    weak, strong = run("tile_colorfix", threshold_a=3), run("tile_colorfix", threshold_a=24)
    assert detail(strong) < detail(weak) < detail(np.asarray(photo()))
    sharp = run("tile_colorfix+sharp", threshold_a=24, threshold_b=2.0)
    assert detail(sharp) > detail(strong)


def test_shuffle_is_seeded_and_moves_the_pixels() -> None:
    a = np.asarray(preprocess(photo(), "shuffle", resolution=64, seed=1))
    assert np.array_equal(a, np.asarray(preprocess(photo(), "shuffle", resolution=64, seed=1)))
    assert not np.array_equal(a, np.asarray(preprocess(photo(), "shuffle", resolution=64, seed=2)))
    assert not np.array_equal(a, np.asarray(photo()))


def test_lineart_standard_finds_the_dark_line_only() -> None:
    out = run("lineart_standard")[..., 0].astype(int)
    line, elsewhere = out[31:33, 12:84], out[45:60, 30:80]
    assert line.mean() > 100 and elsewhere.max() < 40


def test_blur_gaussian_smooths_more_with_a_larger_sigma() -> None:
    def spread(out: np.ndarray) -> float:
        return float(out.std())

    assert spread(run("blur_gaussian", threshold_a=8)) < spread(run("blur_gaussian", threshold_a=1))


def test_color_grid_is_blocks_of_64() -> None:
    out = run("t2ia_color_grid", photo(256, 128))  # at resolution 64: 128 x 64
    assert out.shape[:2] == (64, 128)
    assert len(np.unique(out.reshape(-1, 3), axis=0)) <= 2  # two blocks of 64


@pytest.mark.parametrize("name", ["recolor_luminance", "recolor_intensity"])
def test_recolor_is_gray_and_gamma_darkens(name: str) -> None:
    plain, dark = run(name), run(name, threshold_a=2.0)
    assert (plain[..., 0] == plain[..., 2]).all()
    assert dark.mean() < plain.mean()


def test_every_module_has_its_parameters_named() -> None:
    assert set(PARAMETERS) == set(WEIGHT_FREE)


@pytest.mark.parametrize("name", NEEDS_WEIGHTS[:3] + ("openpose",))
def test_a_module_needing_weights_is_refused_naming_the_field(name: str) -> None:
    with pytest.raises(ContractError) as caught:
        preprocess(photo(), name, field="inputs.controlnets.2.preprocessor")
    assert caught.value.field == "inputs.controlnets.2.preprocessor"
    assert "no detectors" in caught.value.message
