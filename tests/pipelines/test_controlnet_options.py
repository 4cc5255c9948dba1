"""ControlNet's guidance window (``control_guidance_start``/``end``) and the Canny preprocessor
(``control_preprocessor``), as SD WebUI's ControlNet extension offers them: each changes the image, a resumed
run with them is byte-identical, and Canny makes the edge map OpenCV makes."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from pipelines.preprocess import control_map
from runtime.contract import ContractError, validate_inputs
from runtime.worker import checkpoint
from tests.pipelines.harness import EDGES, PHOTO, Harness, interrupt_at, png

SETTINGS = {"steps": 4, "scheduler": "dpmpp_2m"}


def test_canny_finds_the_edges_of_a_square() -> None:
    image = Image.new("RGB", (64, 64))
    image.paste((255, 255, 255), (16, 16, 48, 48))
    edges = np.asarray(control_map(image, "canny", 100, 200))
    assert edges.shape == (64, 64, 3) and set(np.unique(edges)) == {0, 255}
    assert (edges[..., 0] == edges[..., 1]).all() and (edges[..., 0] == edges[..., 2]).all()
    ring = np.zeros((64, 64), bool)
    ring[15:49, 15:49] = True
    ring[18:46, 18:46] = False
    hit = edges[..., 0] == 255
    assert hit.any() and not (hit & ~ring).any()  # every edge pixel lies on the square's border
    assert control_map(image, "none") is image


def test_the_canny_preprocessor_is_what_the_controlnet_sees(harness: Harness) -> None:
    photo = harness.images[PHOTO]
    canny_job = png(harness.run("controlnet", control_image=PHOTO, control_preprocessor="canny", **SETTINGS))
    assert canny_job != png(harness.run("controlnet", control_image=PHOTO, **SETTINGS))
    from pipelines.common import fit

    harness.images["s3://inputs/edges-of-photo.png"] = control_map(fit(photo, 64, 48), "canny", 100, 200)
    try:
        given = png(harness.run("controlnet", control_image="s3://inputs/edges-of-photo.png", **SETTINGS))
    finally:
        del harness.images["s3://inputs/edges-of-photo.png"]
    assert given == canny_job


def test_a_guidance_window_changes_the_image_and_resumes_byte_identically(harness: Harness) -> None:
    window = {**SETTINGS, "control_guidance_start": 0.25, "control_guidance_end": 0.5}
    reference = png(harness.run("controlnet", **window))
    assert reference != png(harness.run("controlnet", **SETTINGS))
    state = checkpoint.load(interrupt_at(harness, "controlnet", 2, **window), "f" * 64)
    assert png(harness.run("controlnet", resume_from=state, **window)) == reference


@pytest.mark.parametrize(("extra", "field"), [
    ({"control_guidance_start": 0.5, "control_guidance_end": 0.5}, "inputs.control_guidance_end"),
    ({"control_guidance_end": 1.5}, "inputs.control_guidance_end"),
    ({"control_preprocessor": "depth"}, "inputs.control_preprocessor"),
    ({"canny_low": 150, "canny_high": 100}, "inputs.canny_high"),
    ({"canny_low": 0}, "inputs.canny_low"),
])
def test_a_bad_guidance_window_or_preprocessor_is_refused_naming_the_field(extra: dict[str, object],
                                                                          field: str) -> None:
    inputs = {"prompt": "x", "control_image": EDGES, "controlnet": "tiny-controlnet", **extra}
    with pytest.raises(ContractError) as caught:
        validate_inputs("controlnet", inputs, input_bucket="inputs")
    assert caught.value.field == field, caught.value.message
