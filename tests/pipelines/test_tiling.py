"""Seamless tiling (``tiling: true``): the output's edges continue into each other, on both families and in every
pass of a job; the shared modules get their own padding back after the job, however it ended.

What "the edges continue into each other" means, measurably: with every convolution of the UNet and the VAE
padding circularly, the image is computed on a torus, so it has no edge at all. Rolling the starting noise by half
a tile then rolls the image by half a tile, to the pixel (rounding aside): the old left/right and top/bottom edges
now meet in the middle, computed exactly as any inside pixel. With zero padding the edges are computed apart
from each other and the rolled run differs by far (the test fails without ``pipelines.tiling``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from pipelines.common import generate
from pipelines.loading import base_pipeline
from pipelines.tiling import convolutions
from pipelines.txt2img import Txt2Img
from runtime.models.store import ModelStore
from runtime.plugins import JobInterrupted
from tests.pipelines.harness import MODELS, Harness, interrupt_at, parse, pixels

SIDE = 64  # a square of 8x8 latents: half a tile is 4 latents, a multiple of the tiny UNets' downsampling


def _from_noise(harness: Harness, model: str, tiling: bool, noise: torch.Tensor) -> np.ndarray:
    """Txt2img through the product's ``generate`` on given starting latents (diffusers' ``latents``)."""
    pipeline = Txt2Img()
    inputs = parse(Txt2Img.Inputs, {"prompt": "a red fox in the snow", "width": SIDE, "height": SIDE, "steps": 3,
                                    "tiling": tiling})
    ctx = harness.context(model=model)
    job = pipeline.prepare(inputs, ctx)
    images = generate(pipeline.view(job), job, ctx, width=SIDE, height=SIDE, latents=noise)
    return np.asarray(images[0], dtype=float)


def _seam_error(harness: Harness, model: str, tiling: bool) -> float:
    """The largest pixel difference between the image rolled by half a tile and the image of the rolled noise."""
    noise = torch.randn(1, 4, SIDE // 8, SIDE // 8, generator=torch.Generator().manual_seed(0))
    image = _from_noise(harness, model, tiling, noise)
    rolled = _from_noise(harness, model, tiling, torch.roll(noise, (SIDE // 16, SIDE // 16), (2, 3)))
    return float(np.abs(np.roll(image, (SIDE // 2, SIDE // 2), (0, 1)) - rolled).max())


@pytest.mark.parametrize("model", MODELS)
def test_the_edges_continue_into_each_other(harness: Harness, model: str) -> None:
    assert _seam_error(harness, model, tiling=True) <= 1  # one level of 8-bit rounding
    assert _seam_error(harness, model, tiling=False) > 32  # the test's own check: without tiling it would fail


def _modes(store: ModelStore, model: str) -> set[str]:
    return {layer.padding_mode for layer in convolutions(base_pipeline(store, model))}


@pytest.mark.parametrize(("model", "fields", "passes"), [
    ("tiny-sd", {"hires": {"scale": 1.5, "denoising_strength": 0.5}}, ("tiny-sd",)),
    ("tiny-sdxl", {"refiner": "tiny-sdxl-refiner", "switch_at": 0.5, "hires": {"scale": 1.5, "upscaler": "lanczos",
                                                                                "denoising_strength": 0.5}},
     ("tiny-sdxl", "tiny-sdxl-refiner")),
])
def test_every_pass_pads_circularly(harness: Harness, model: str, fields: dict[str, Any],
                                    passes: tuple[str, ...]) -> None:
    """Hires fix's second pass and the refiner run through ``generate`` too: at every step of every pass, the
    model running it pads circularly (the refiner's own modules during its steps), and nothing does afterwards."""
    seen: list[set[str]] = []

    def on_step(step: int, state: Any) -> None:
        running = passes[1] if len(passes) > 1 and 2 < step <= 4 else passes[0]  # 2 base, 2 refiner, 2 hires
        seen.append(_modes(harness.store, running))

    harness.run("txt2img", model=model, steps=4, tiling=True, on_step=on_step, **fields)
    assert len(seen) >= 5 and all(modes == {"circular"} for modes in seen), seen
    assert all(_modes(harness.store, name) == {"zeros"} for name in passes)


def test_the_padding_is_restored_however_the_job_ends(harness: Harness, tiny_models: Path) -> None:
    """After a tiling job that finished, failed or was interrupted, a job without tiling gives the bytes it gives on
    a fresh store (the modules are every job's)."""
    fresh = pixels(Harness(ModelStore(tiny_models, "cpu")).run("img2img"))

    def fail(step: int, state: Any) -> None:
        if step == 2:
            raise RuntimeError("the job fails at its second step")

    harness.run("img2img", tiling=True)
    assert np.array_equal(pixels(harness.run("img2img")), fresh)
    with pytest.raises(RuntimeError, match="second step"):
        harness.run("img2img", tiling=True, on_step=fail)
    assert _modes(harness.store, "tiny-sd") == {"zeros"}
    assert np.array_equal(pixels(harness.run("img2img")), fresh)
    interrupt_at(harness, "img2img", 2, tiling=True)
    assert _modes(harness.store, "tiny-sd") == {"zeros"}
    assert np.array_equal(pixels(harness.run("img2img")), fresh)


def test_tiling_changes_an_image_only_when_asked(harness: Harness) -> None:
    plain, tiled = (pixels(harness.run("txt2img", tiling=value)) for value in (False, True))
    assert not np.array_equal(plain, tiled)
    assert Image.fromarray(tiled[0]).size == (64, 48)


def _interrupt(step: int, state: Any) -> None:
    raise JobInterrupted


def test_each_layer_gets_its_own_mode_back(harness: Harness) -> None:
    layers = convolutions(base_pipeline(harness.store, "tiny-sd"))
    layers[0].padding_mode = "reflect"  # a mode of the model's own: tiling's restore must keep it
    try:
        harness.run("txt2img", tiling=True)
        assert layers[0].padding_mode == "reflect"
        with pytest.raises(JobInterrupted):
            harness.run("txt2img", tiling=True, on_step=_interrupt)
        assert layers[0].padding_mode == "reflect"
    finally:
        layers[0].padding_mode = "zeros"
