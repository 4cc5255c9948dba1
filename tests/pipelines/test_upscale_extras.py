"""The ``upscale`` pipeline's WebUI extras inputs (issue 29): a target size with WebUI's "crop to fit", sides
rounded down to a multiple (WebUI's upscalers make multiples of 8), and a second upscaler blended in at a
visibility, each compared with what WebUI's own steps (``scripts/postprocessing_upscale.py``) make of the same
upscalers' outputs, on the tiny models."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from PIL import Image

from pipelines.upscale import Upscale
from pipelines.upscalers import upscale
from runtime.contract import ContractError
from tests.pipelines.harness import PHOTO, Harness, parse


def _run(harness: Harness, model: str, **inputs: Any) -> Image.Image:
    fields = parse(Upscale.Inputs, {"image": PHOTO, **inputs})
    (out,) = Upscale().run(fields, harness.context(model=model))
    return out


def _same(a: Image.Image, b: Image.Image) -> bool:
    return a.size == b.size and np.array_equal(np.asarray(a), np.asarray(b))


def test_a_target_size_is_covered_then_cut_around_the_centre(harness: Harness) -> None:
    """The photo is 100x80. To 64x64: scaled by max(64/100, 64/80) = 0.8 to 80x64, whose middle 64 columns are the
    output; without ``crop`` the covering 80x64 is the output."""
    photo = harness.images[PHOTO]
    covered = upscale(harness.store, "tiny-compact", photo, (80, 64))
    assert _same(_run(harness, "tiny-compact", width=64, height=64), covered.crop((8, 0, 72, 64)))
    assert _same(_run(harness, "tiny-compact", width=64, height=64, crop=False), covered)
    wide = _run(harness, "lanczos", width=300, height=120)  # by 3: 300x240, cut to 300x120
    assert _same(wide, upscale(harness.store, "lanczos", photo, (300, 240)).crop((0, 60, 300, 180)))


def test_sides_round_down_to_the_multiple_as_webui_does(harness: Harness) -> None:
    """WebUI: ``int(w * scale // 8 * 8)``; 100x80 by 1.5 is 144x120, not 150x120. Cropped to a target it did not
    reach, the rest of the canvas is black, where WebUI pastes on a new black image."""
    assert _run(harness, "lanczos", scale=1.5, multiple_of=8).size == (144, 120)
    assert _run(harness, "lanczos", scale=1.5).size == (150, 120)
    out = _run(harness, "lanczos", width=150, height=100, multiple_of=8)  # by 1.5: 144x120 on a 150x100 canvas
    assert out.size == (150, 100)
    pixels = np.asarray(out)
    assert not pixels[:, :3].any() and not pixels[:, -3:].any() and pixels[:, 3:-3].any()


@pytest.mark.parametrize("visibility", [0.0, 0.35, 1.0])
def test_the_second_upscaler_is_blended_in_at_its_visibility(harness: Harness, visibility: float) -> None:
    photo = harness.images[PHOTO]
    first = upscale(harness.store, "nearest", photo, (200, 160))
    second = upscale(harness.store, "tiny-esrgan", photo, (200, 160))
    out = _run(harness, "nearest", upscaler_2="tiny-esrgan", upscaler_2_visibility=visibility)
    assert _same(out, Image.blend(first, second, visibility))
    assert _same(out, first) == (visibility == 0.0)
    assert harness.reports[-1][0] == harness.reports[-1][1]  # progress ends at its total, both upscalers counted


def test_half_a_size_and_a_target_beyond_the_pixels_are_refused_naming_the_field(harness: Harness) -> None:
    with pytest.raises(ValueError, match="give both width and height"):
        parse(Upscale.Inputs, {"image": PHOTO, "width": 64})
    harness.images["s3://inputs/wide.png"] = Image.new("RGB", (1000, 10))
    with pytest.raises(ContractError) as caught:  # covering 4096x4096 takes 409600x4096
        _run(harness, "lanczos", image="s3://inputs/wide.png", width=4096, height=4096)
    assert caught.value.field == "inputs.width" and "scaled to cover 4096x4096" in caught.value.message
