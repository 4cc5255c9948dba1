"""The inpaint pipeline (and outpainting) on the tiny models: what it keeps, what it repaints, its masks and fills,
its crop, and its byte-identical resume on ordinary and inpainting checkpoints.

The harness's photo is 100x80 random pixels and its mask a 50x40 white square (resized to the photo); the tests
leave width and height out where they compare pixels with the input, so that the output is the photo's own size.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from PIL import Image

from pipelines import masks
from runtime.contract.edits import Extend
from runtime.contract.errors import ContractError
from runtime.models.catalog import ModelError
from runtime.worker import checkpoint
from tests.pipelines.harness import MASK, PHOTO, Harness, interrupt_at, png

MODELS = ("tiny-sd", "tiny-sdxl", "tiny-sd-inpainting", "tiny-sdxl-inpainting")
FILLS = ("original", "fill", "latent_noise", "latent_nothing")
#: The photo's repainted square, at its size (the harness's mask is half that).
SQUARE = (30, 20, 60, 50)
#: Each side's own size: the output is the photo's.
SIZED_BY_IMAGE = {"width": None, "height": None}


def _reach(blur: int) -> int:
    """How far the blurred mask (and the mask's resize to the photo) spreads beyond the square: the Gaussian's
    kernel radius, plus the bilinear resize's reach."""
    return int(2.5 * blur + 0.5) + 3


def _outside(shape: tuple[int, int], box: tuple[int, int, int, int], margin: int) -> np.ndarray:
    """True farther than ``margin`` from ``box`` (x1, y1, x2, y2)."""
    keep = np.ones(shape, bool)
    x1, y1, x2, y2 = box
    keep[max(0, y1 - margin):y2 + margin, max(0, x1 - margin):x2 + margin] = False
    return keep


def _array(image: Image.Image) -> np.ndarray:
    return np.asarray(image).astype(int)


def run(harness: Harness, model: str = "tiny-sd", **fields: Any) -> Image.Image:
    (image,) = harness.run("inpaint", model=model, **{**SIZED_BY_IMAGE, **fields})
    return image


# -- what is kept and what is repainted --------------------------------------------------------------------------


@pytest.mark.parametrize("model", MODELS)
def test_pixels_outside_the_mask_are_the_inputs_exactly(harness: Harness, model: str) -> None:
    """On ordinary (SD, SDXL) and inpainting checkpoints, at the photo's 100x80 while the model works at 96x80."""
    out = run(harness, model, strength=0.8, mask_blur=4)
    photo = _array(harness.images[PHOTO])
    assert out.size == (100, 80)
    kept = _outside((80, 100), SQUARE, _reach(4))
    assert np.array_equal(_array(out)[kept], photo[kept])
    x1, y1, x2, y2 = SQUARE
    inside = np.abs(_array(out)[y1:y2, x1:x2] - photo[y1:y2, x1:x2]).mean()
    assert inside > 20, f"{model}: the masked square was hardly repainted ({inside:.1f} per channel)"


@pytest.mark.parametrize("model", ["tiny-sd", "tiny-sd-inpainting"])
def test_each_fill_mode_starts_from_something_else(harness: Harness, model: str) -> None:
    outs = {fill: _array(run(harness, model, fill=fill, strength=0.6)) for fill in FILLS}
    for i, first in enumerate(FILLS):
        for second in FILLS[i + 1:]:
            assert not np.array_equal(outs[first], outs[second]), f"{model}: {first} and {second} paint the same"


def test_fill_paints_the_hole_from_its_surroundings() -> None:
    image = Image.new("RGB", (40, 30), (200, 40, 90))
    image.paste((0, 0, 0), (10, 10, 30, 20))
    hole = Image.new("L", (40, 30))
    hole.paste(255, (10, 10, 30, 20))
    filled = np.asarray(masks.fill(image, hole)).astype(int)
    assert np.abs(filled - (200, 40, 90)).max() <= 4  # the black is gone, the colour around it spread in


# -- only_masked: a crop at the job's size, pasted back -----------------------------------------------------------


def test_only_masked_works_on_a_crop_and_pastes_it_back(harness: Harness) -> None:
    full = run(harness, strength=0.8)
    cropped = run(harness, strength=0.8, only_masked=True, padding=4, width=32, height=24)
    assert cropped.size == (100, 80)  # the photo's, though the model worked at 32x24
    board = masks.canvas(harness.images[PHOTO], harness.images[MASK], None, False, 4)
    x1, y1, x2, y2 = box = masks.crop_box(board.mask, 32, 24, 4)
    assert (x2 - x1) < 100 and (y2 - y1) < 80 and abs((x2 - x1) / (y2 - y1) - 32 / 24) < 0.1
    photo = _array(harness.images[PHOTO])
    outside_crop = _outside((80, 100), box, 0)
    assert outside_crop.any() and np.array_equal(_array(cropped)[outside_crop], photo[outside_crop])
    assert not np.array_equal(_array(cropped), _array(full))
    sx1, sy1, sx2, sy2 = SQUARE
    assert np.abs(_array(cropped)[sy1:sy2, sx1:sx2] - photo[sy1:sy2, sx1:sx2]).mean() > 20


def test_the_crop_holds_the_mask_and_padding_at_the_jobs_aspect_ratio() -> None:
    mask = Image.new("L", (200, 100))
    mask.paste(255, (90, 40, 110, 60))
    x1, y1, x2, y2 = masks.crop_box(mask, 64, 64, 8)
    assert x1 <= 82 and y1 <= 32 and x2 >= 118 and y2 >= 68  # the mask's box, 8 pixels around
    assert x2 - x1 == y2 - y1  # square, as the job


# -- outpainting ---------------------------------------------------------------------------------------------------


def test_extend_grows_the_canvas_repaints_the_new_area_and_keeps_the_old(harness: Harness) -> None:
    extend = {"left": 16, "top": 8}
    out = _array(run(harness, mask=None, extend=extend, strength=0.9, mask_blur=2))
    assert out.shape == (88, 116, 3)
    photo = _array(harness.images[PHOTO])
    old = out[8:, 16:]
    kept = np.ones((80, 100), bool)
    kept[:_reach(2)], kept[:, :_reach(2)] = False, False  # away from the seams with the new area
    assert np.array_equal(old[kept], photo[kept])
    stretched = np.pad(photo, ((8, 0), (16, 0), (0, 0)), mode="edge")  # where the new area starts from
    assert np.abs(out[:8] - stretched[:8]).mean() > 20 and np.abs(out[:, :16] - stretched[:, :16]).mean() > 20


def test_extend_with_a_mask_repaints_both(harness: Harness) -> None:
    out = _array(run(harness, extend={"right": 8}, strength=0.9))
    photo = _array(harness.images[PHOTO])
    x1, y1, x2, y2 = SQUARE
    assert out.shape == (80, 108, 3)
    assert np.abs(out[y1:y2, x1:x2] - photo[y1:y2, x1:x2]).mean() > 20


def test_extend_beyond_the_budget_is_refused_naming_it(harness: Harness) -> None:
    with pytest.raises(ContractError) as caught:
        run(harness, extend={"left": 2048})
    assert caught.value.field == "inputs.extend"


# -- masks ----------------------------------------------------------------------------------------------------------


def _square(mode: str, size: tuple[int, int] = (40, 30), box: tuple[int, int, int, int] = (10, 10, 20, 20),
            on: Any = 255, off: Any = 0) -> Image.Image:
    image = Image.new(mode, size, off)
    image.paste(on, box)
    return image


def _mask(mask: Image.Image | None, extend: Extend | None = None, invert: bool = False, blur: int = 0,
          size: tuple[int, int] = (40, 30)) -> np.ndarray:
    return np.asarray(masks.canvas(Image.new("RGB", size), mask, extend, invert, blur).mask)


def test_l_rgb_and_rgba_alpha_masks_read_alike() -> None:
    want = np.asarray(_square("L"))
    assert np.array_equal(_mask(_square("L")), want)
    assert np.array_equal(_mask(_square("RGB", on=(255, 255, 255))), want)
    # Transparency: the alpha channel is the mask (opaque repaints), whatever the colours say.
    assert np.array_equal(_mask(_square("RGBA", on=(0, 0, 0, 255), off=(255, 255, 255, 0))), want)
    # Opaque everywhere: the grey level, as an RGB mask.
    assert np.array_equal(_mask(_square("RGBA", on=(255, 255, 255, 255), off=(0, 0, 0, 255))), want)


def test_invert_blur_and_resize() -> None:
    square = np.asarray(_square("L"))
    assert np.array_equal(_mask(_square("L"), invert=True), 255 - square)
    blurred = _mask(_square("L"), blur=2)
    assert blurred[15, 15] > 200 and 0 < blurred[15, 8] < 128 and blurred[15, 2] == 0  # soft, and wider
    half = _mask(_square("L", (20, 15), (5, 5, 10, 10)))  # half the image's size, the same aspect: resized
    assert half.shape == (30, 40) and half[15, 15] == 255 and half[2, 2] == 0
    near = _mask(_square("L", (21, 15), (5, 5, 10, 10)))  # 21x15 for 40x30: a pixel of rounding off
    assert near.shape == (30, 40)


def test_extend_masks_the_new_area_united_with_the_mask() -> None:
    grown = _mask(_square("L"), Extend(left=5, bottom=3))
    assert grown.shape == (33, 45)
    assert (grown[:, :5] == 255).all() and (grown[30:] == 255).all()
    assert np.array_equal(grown[:30, 5:], np.asarray(_square("L")))


@pytest.mark.parametrize(("mask", "invert", "phrase"), [
    (_square("L", (40, 40)), False, "another aspect ratio"),
    (Image.new("L", (40, 30), 100), False, "nothing to repaint"),
    (Image.new("RGB", (40, 30), (255, 255, 255)), True, "after invert_mask has nothing to repaint"),
    (Image.new("RGBA", (40, 30), (255, 255, 255, 0)), False, "nothing to repaint"),
], ids=["aspect", "empty", "inverted-full", "transparent"])
def test_a_mask_that_cannot_be_used_is_refused_naming_it(mask: Image.Image, invert: bool, phrase: str) -> None:
    with pytest.raises(ContractError, match=phrase) as caught:
        _mask(mask, invert=invert)
    assert caught.value.field == "inputs.mask"


def test_the_worker_refuses_a_bad_mask_before_the_model_runs(harness: Harness) -> None:
    harness.images["s3://inputs/square-mask.png"] = _square("L", (50, 50))
    with pytest.raises(ContractError) as caught:
        run(harness, mask="s3://inputs/square-mask.png")
    assert caught.value.field == "inputs.mask" and harness.reports == []


# -- resume and variants ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("model", ["tiny-sd", "tiny-sd-inpainting", "tiny-sdxl-inpainting"])
@pytest.mark.parametrize("fill", FILLS)
def test_resumed_run_is_byte_identical(harness: Harness, model: str, fill: str) -> None:
    """An ancestral sampler (noise drawn every step) after diffusers' extra draws (the masked image's encoding,
    latent_noise's noise): a draw out of order would show."""
    settings = {**SIZED_BY_IMAGE, "model": model, "fill": fill, "strength": 0.7, "steps": 6, "num_images": 2,
                "scheduler": "euler_a"}
    reference = png(harness.run("inpaint", **settings))
    for stop in (1, 3):
        state = checkpoint.load(interrupt_at(harness, "inpaint", stop, **settings), "f" * 64)
        resumed = png(harness.run("inpaint", resume_from=state, **settings))
        assert resumed == reference, f"{model}/{fill} resumed at step {stop} differs"


def test_resume_on_sdxl_and_on_a_crop_is_byte_identical(harness: Harness) -> None:
    settings = {"model": "tiny-sdxl", "fill": "latent_noise", "strength": 0.7, "steps": 6, "only_masked": True,
                "scheduler": "dpmpp_2m_sde"}
    reference = png(harness.run("inpaint", **settings))
    state = checkpoint.load(interrupt_at(harness, "inpaint", 2, **settings), "f" * 64)
    assert png(harness.run("inpaint", resume_from=state, **settings)) == reference


def test_txt2img_refuses_an_inpainting_model_naming_it(harness: Harness) -> None:
    with pytest.raises(ModelError) as caught:
        harness.run("txt2img", model="tiny-sd-inpainting")
    assert caught.value.code == "wrong_model_variant" and "tiny-sd-inpainting" in str(caught.value)
    assert harness.store.entry("tiny-sd-inpainting", "base").variant == "inpainting"


def test_inpaint_refuses_a_refiner(harness: Harness) -> None:
    with pytest.raises(ModelError) as caught:
        run(harness, model="tiny-sdxl-refiner")
    assert caught.value.code == "wrong_model_variant" and "tiny-sdxl-refiner" in str(caught.value)
