"""The API's checks of the editing jobs (issue 26, item 6): inpainting, outpainting, hires fix, the refiner and
upscaling. Each bad request is a 400 naming the field, with nothing stored or queued; each good one is queued with
its inline images moved to the input bucket."""

from __future__ import annotations

import pytest

from runtime.contract.edits import mask_fits


@pytest.mark.parametrize(("image", "mask", "fits"), [
    ((64, 48), (64, 48), True),
    ((64, 48), (128, 96), True),  # twice the size, same shape
    ((100, 75), (33, 25), True),  # 33.33 rounded: one pixel of rounding
    ((75, 100), (25, 33), True),
    ((100, 100), (101, 100), True),
    ((100, 100), (102, 100), False),  # two pixels: stretched
    ((64, 48), (48, 64), False),  # turned
    ((64, 64), (64, 48), False),
    ((64, 48), (0, 48), False),
])
def test_a_mask_fits_an_image_of_its_aspect_ratio_up_to_a_pixel(image: tuple[int, int], mask: tuple[int, int],
                                                               fits: bool) -> None:
    assert mask_fits(image, mask) is fits
