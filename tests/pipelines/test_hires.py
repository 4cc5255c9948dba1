"""Hires fix and SDXL's refiner on txt2img (``pipelines/hires.py``, ``pipelines/refiner.py``), on the tiny models:
each upscaler of each kind changes the output and the output has the target size, SD 1.x and SDXL; the refiner
takes over at the switch, with prompts encoded by its one text encoder; and an interruption in any pass (the first
pass, at its last step, the second pass, after the switch to the refiner) resumes byte-identical. Every hires
field and the refiner's change the pixels: ``test_inputs_matter.py``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from pipelines import hires, prompts
from pipelines.common import job_pipeline
from pipelines.loading import base_pipeline
from runtime.contract import LATENT_UPSCALERS, ContractError
from runtime.models.store import ModelStore
from runtime.worker import checkpoint
from tests.pipelines.harness import Harness, assert_same_state, interrupt_at, parse, pixels, png, run_with_snapshots

HIRES = {"scale": 1.5, "denoising_strength": 0.5}  # 64x48 -> 96x72; 3 x 0.5 = 1 second-pass step of 3
REFINED = {"model": "tiny-sdxl", "refiner": "tiny-sdxl-refiner", "switch_at": 0.5, "steps": 4}


@pytest.fixture(scope="module")
def modes(harness: Harness) -> dict[str, np.ndarray]:
    """The output of every upscaler, latent and pixel, on SD 1.x; wider and less high than the first pass, since
    antialiasing changes only what shrinks (WebUI's modes alike)."""
    upscalers = [*LATENT_UPSCALERS, "lanczos", "nearest", "tiny-esrgan"]
    target = {"width": 96, "height": 40, "denoising_strength": 0.5}
    return {name: pixels(harness.run("txt2img", hires={**target, "upscaler": name})) for name in upscalers}


def test_every_upscaler_gives_its_own_output_at_the_target_size(modes: dict[str, np.ndarray]) -> None:
    for name, out in modes.items():
        assert out.shape == (1, 40, 96, 3), name
    names = list(modes)
    same = [(a, b) for i, a in enumerate(names) for b in names[i + 1:] if np.array_equal(modes[a], modes[b])]
    assert not same, f"these upscalers gave the same pixels: {same}"


def test_the_second_pass_starts_from_the_first(harness: Harness) -> None:
    """With the second pass's own prompt fixed, the first pass's prompt still shows: its image is what the second
    pass denoises, for a latent and a pixel upscaler alike."""
    for upscaler in ("latent", "lanczos"):
        hires = {**HIRES, "upscaler": upscaler, "prompt": "a castle"}
        fox = pixels(harness.run("txt2img", prompt="a red fox", hires=hires))
        bird = pixels(harness.run("txt2img", prompt="a blue bird", hires=hires))
        assert not np.array_equal(fox, bird), upscaler


@pytest.mark.parametrize(("target", "size"), [({"width": 128}, (128, 96)), ({"width": 80, "height": 80}, (80, 80)),
                                              ({"height": 64}, (80, 64)), ({}, (128, 96))])
def test_the_target_size(harness: Harness, target: dict[str, int], size: tuple[int, int]) -> None:
    assert harness.run("txt2img", steps=2, hires={**target, "denoising_strength": 0.5})[0].size == size


def test_progress_counts_both_passes_and_names_each(harness: Harness) -> None:
    named: list[str | None] = []
    ctx_phases = harness.context

    def context(*args: Any, **kwargs: Any) -> Any:
        ctx = ctx_phases(*args, **kwargs)
        ctx.on_begin_phase = named.append
        return ctx

    harness.context = context  # type: ignore[method-assign]
    try:
        harness.run("txt2img", steps=4, hires={"scale": 1.5, "steps": 6, "denoising_strength": 0.5})
        assert harness.reports == [(step, 7) for step in range(1, 8)]  # 4 + int(6 x 0.5)
        assert named == ["base", "hires"]
        harness.run("txt2img", **{**REFINED, "hires": HIRES})
        assert harness.reports == [(step, 6) for step in range(1, 7)]  # 2 + 2 + int(4 x 0.5)
        assert named[2:] == ["base", "refiner", "hires"]
    finally:
        harness.context = ctx_phases  # type: ignore[method-assign]


@pytest.mark.parametrize(("fields", "stops"), [
    ({"hires": {**HIRES, "steps": 4}}, (1, 3, 4)),  # first pass; its last step (the switch); the second pass
    ({"hires": {**HIRES, "upscaler": "lanczos", "steps": 4}}, (3, 4)),  # decoded images carried, not latents
    ({"model": "tiny-sdxl", "hires": {**HIRES, "upscaler": "latent_bicubic_antialiased", "steps": 4}}, (2, 4)),
    ({**REFINED, "hires": HIRES}, (1, 2, 3, 4, 5)),  # base; switch; refiner; after the refiner; hires
    (REFINED, (2, 3)),  # the refiner alone: at the switch, in the refiner
], ids=["sd-latent", "sd-lanczos", "sdxl-latent", "sdxl-refiner-hires", "sdxl-refiner"])
def test_an_interruption_in_any_pass_resumes_byte_identical(harness: Harness, fields: dict[str, Any],
                                                            stops: tuple[int, ...]) -> None:
    fields = {"steps": 3, **fields}
    images, saved = run_with_snapshots(harness, "txt2img", stops, **fields)  # the checkpoints, as bytes
    reference, total = png(images), harness.reports[-1][1]
    # Interrupted for real at the first stop: the same state as the reference run saved there.
    assert_same_state(interrupt_at(harness, "txt2img", stops[0], **fields), saved[stops[0]])
    for stop in stops:
        assert stop < total
        state = checkpoint.load(saved[stop], "f" * 64)
        resumed = png(harness.run("txt2img", resume_from=state, **fields))
        assert harness.reports[0] == (stop + 1, total), f"resumed after step {stop}"
        assert resumed == reference, f"interrupted after step {stop} of {total}: the images differ"


@pytest.mark.parametrize("sampler", ["heun", "dpmpp_sde"])
def test_every_step_of_every_pass_resumes_with_a_second_order_or_brownian_sampler(harness: Harness,
                                                                                   sampler: str) -> None:
    """Heun runs more timesteps than steps (the count of each pass is the sampler's, so the total holds), and DPM++
    SDE draws from a Brownian tree seeded per pass: both resume byte-identical at every step of every pass."""
    fields = {**REFINED, "scheduler": sampler, "hires": HIRES}
    images, saved = run_with_snapshots(harness, "txt2img", **fields)  # the checkpoint after every step, as bytes
    reference, total = png(images), harness.reports[-1][1]
    assert {t for _, t in harness.reports} == {total} and [s for s, _ in harness.reports] == list(range(1, total + 1))
    for stop in range(1, total):
        state = checkpoint.load(saved[stop], "f" * 64)
        assert png(harness.run("txt2img", resume_from=state, **fields)) == reference, f"{sampler}, step {stop}"


def test_the_refiner_takes_over_at_the_switch(harness: Harness) -> None:
    plain = pixels(harness.run("txt2img", model="tiny-sdxl", steps=4))
    refined = pixels(harness.run("txt2img", **REFINED))
    assert refined.shape == plain.shape and not np.array_equal(refined, plain)
    # an ordinary SDXL model serves as a refiner too (here the base itself: its steps after the switch, as img2img)
    itself = pixels(harness.run("txt2img", **{**REFINED, "refiner": "tiny-sdxl"}))
    assert not np.array_equal(itself, refined)


def test_the_refiners_prompt_is_encoded_by_its_one_text_encoder_with_webui_weights(harness: Harness) -> None:
    refiner = base_pipeline(harness.store, "tiny-sdxl-refiner")
    assert refiner.text_encoder is None and refiner.text_encoder_2 is not None
    with torch.inference_mode():
        plain = prompts.encode(refiner, "a red fox", "")
        weighted = prompts.encode(refiner, "a (red:1.4) fox", "")
    assert plain["prompt_embeds"].shape[-1] == refiner.text_encoder_2.config.hidden_size
    assert plain["pooled_prompt_embeds"].shape[-1] == refiner.text_encoder_2.config.projection_dim
    assert not torch.equal(plain["prompt_embeds"], weighted["prompt_embeds"])


@pytest.mark.parametrize(("fields", "field"), [
    ({**REFINED, "refiner": "tiny-sd"}, "inputs.refiner"),  # another family
    ({**REFINED, "refiner": "tiny-sd-inpainting"}, "inputs.refiner"),
    ({**REFINED, "refiner": "tiny-esrgan"}, "inputs.refiner"),  # not a base model
    ({**REFINED, "refiner": "no-such-model"}, "inputs.refiner"),
    ({"refiner": "tiny-sdxl-refiner", "steps": 4, "switch_at": 0.5}, "inputs.refiner"),  # an SD 1.x job
    ({"hires": {**HIRES, "upscaler": "no-such-upscaler"}}, "inputs.hires.upscaler"),
    ({"hires": {**HIRES, "upscaler": "tiny-sd"}}, "inputs.hires.upscaler"),  # not an upscaler
])
def test_a_refiner_or_upscaler_that_cannot_serve_is_refused_naming_the_field(harness: Harness,
                                                                              fields: dict[str, Any],
                                                                              field: str) -> None:
    steps: list[int] = []
    with pytest.raises(ContractError) as caught:
        harness.run("txt2img", on_step=lambda step, state: steps.append(step), **fields)
    assert caught.value.field == field and not steps, caught.value


def test_the_contract_refuses_a_hires_target_beyond_the_family_budget() -> None:
    from pipelines.txt2img import Txt2Img
    from runtime.contract import for_family

    inputs = parse(Txt2Img.Inputs, {"prompt": "x", "width": 512, "height": 512, "hires": {"scale": 4}})
    with pytest.raises(ContractError) as caught:
        for_family(inputs, "sd1")
    assert caught.value.field == "inputs.hires"


def test_the_second_pass_runs_on_the_base_models_own_modules(tiny_models: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """No second load: the img2img view of the second pass holds the very modules of the first pass's model, and
    the refiner is one more model, loaded once."""
    views: list[Any] = []

    def recording(cls: type, *args: Any, **kwargs: Any) -> Any:
        views.append(view := job_pipeline(cls, *args, **kwargs))
        return view

    monkeypatch.setattr(hires, "job_pipeline", recording)
    fresh = Harness(ModelStore(tiny_models, "cpu"))
    fresh.run("txt2img", **{**REFINED, "hires": HIRES})
    fresh.run("txt2img", **{**REFINED, "hires": HIRES})
    assert fresh.store.loads == 2  # the base model and the refiner, once each
    base = base_pipeline(fresh.store, "tiny-sdxl")
    assert len(views) == 2 and all(type(view).__name__ == "StableDiffusionXLImg2ImgPipeline" for view in views)
    for part in ("unet", "vae", "text_encoder", "text_encoder_2"):
        assert all(getattr(view, part) is getattr(base, part) for view in views), part
