"""Every input of every built-in pipeline changes the pixels, for both families of tiny models.

A pipeline that silently ignored an input (a control image, a LoRA, a schedule, ``clip_skip``) would pass every
other test, so each input is varied alone against one reference run. The tiny models are initialised so that
this can fail: their ControlNets' zero convolutions are not zero, and their LoRAs have non-zero weights.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from PIL import Image

from tests.pipelines.harness import COMMON, CONTROLNETS, MODELS, PHOTO, Harness, pixels

OTHER_PHOTO, BLACK = "s3://inputs/other.png", "s3://inputs/black.png"
#: Inpainting's: of the photo's aspect ratio (5:4), which its mask must share.
OTHER_CANVAS, OTHER_MASK = "s3://inputs/other-canvas.png", "s3://inputs/other-mask.png"
LORAS = {"tiny-sd": "tiny-lora-sd1", "tiny-sdxl": "tiny-lora-sdxl"}
IP_ADAPTERS = {"tiny-sd": "tiny-ip-adapter-sd1", "tiny-sdxl": "tiny-ip-adapter-sdxl"}
# One reference per pipeline: the values every variation departs from.
REFERENCE: dict[str, dict[str, Any]] = {
    "txt2img": {},
    "img2img": {"strength": 0.6, "steps": 5},
    "controlnet": {"controlnet_conditioning_scale": 1.0},
    # On a crop (so that padding counts), below full strength (so that the fill counts).
    "inpaint": {"strength": 0.6, "steps": 5, "only_masked": True, "padding": 4, "mask_blur": 2},
}
COMMON_VARIATIONS: dict[str, dict[str, Any]] = {
    "prompt": {"prompt": "a blue bird over the sea"},
    "prompt_editing": {"prompt": "[a red fox in the snow:a blue bird over the sea:1]"},  # at the 3rd step run
    "alternation": {"prompt": "[a red fox in the snow|a blue bird over the sea]"},
    "negative_prompt_editing": {"negative_prompt": "[blurry, dark::0.5]"},
    "negative_prompt": {"negative_prompt": "blurry, dark"},
    "guidance_scale": {"guidance_scale": 3.0},
    "scheduler": {"scheduler": "dpmpp_2m"},
    "schedule": {"schedule": "karras"},
    "clip_skip": {"clip_skip": 2},
    "lora": {"loras": "LORA@0.8"},
    "tiling": {"tiling": True},
    "ip_adapters": {"ip_adapters": "ADAPTER"},
    "controlnets": {"controlnets": "UNIT"},
}
TASK_VARIATIONS: dict[str, dict[str, dict[str, Any]]] = {
    "txt2img": {},
    "img2img": {"image": {"image": OTHER_PHOTO}, "strength": {"strength": 0.9}},
    "controlnet": {"control_image": {"control_image": BLACK}, "controlnet_conditioning_scale":
                   {"controlnet_conditioning_scale": 0.2}},
    "inpaint": {"image": {"image": OTHER_CANVAS}, "mask": {"mask": OTHER_MASK}, "mask_blur": {"mask_blur": 6},
                "invert_mask": {"invert_mask": True}, "strength": {"strength": 0.9},
                "fill": {"fill": "latent_noise"}, "only_masked": {"only_masked": False}, "padding": {"padding": 0},
                "extend": {"extend": {"left": 8, "top": 8}}},
}
SDXL_VARIATIONS: dict[str, dict[str, Any]] = {
    "original_size": {"original_size": [1024, 1024]},
    "target_size": {"target_size": [1024, 768]},
    "crops_coords_top_left": {"crops_coords_top_left": [32, 16]},
}


def _cases() -> list[tuple[str, str, str]]:
    cases = []
    for model in MODELS:
        for name in REFERENCE:
            variations = [*COMMON_VARIATIONS, *TASK_VARIATIONS[name]]
            variations += list(SDXL_VARIATIONS) if model == "tiny-sdxl" else []
            cases += [(model, name, variation) for variation in variations]
    return cases


@pytest.fixture(scope="module")
def jobs() -> dict[str, np.ndarray]:
    """The pixels of each job run so far, by its full arguments: the same job gives the same bytes
    (test_pipelines.py), so the tests that compare with one job (a reference, a hires fix) share its run."""
    return {}


def run(harness: Harness, jobs: dict[str, np.ndarray], name: str, model: str = "tiny-sd",
        **fields: Any) -> np.ndarray:
    key = repr((name, model, sorted({**COMMON, **fields}.items())))
    if key not in jobs:
        jobs[key] = pixels(harness.run(name, model=model, **fields))
    return jobs[key]


@pytest.fixture(scope="module")
def runs(harness: Harness, jobs: dict[str, np.ndarray]) -> dict[tuple[str, str], np.ndarray]:
    """Reference pixels per (model, pipeline), computed once."""
    rng = np.random.default_rng(7)
    harness.images[OTHER_PHOTO] = Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8))
    harness.images[BLACK] = Image.new("RGB", (64, 48))
    harness.images[OTHER_CANVAS] = Image.fromarray(rng.integers(0, 256, (80, 100, 3), dtype=np.uint8))
    harness.images[OTHER_MASK] = Image.new("L", (50, 40))
    harness.images[OTHER_MASK].paste(255, (5, 5, 20, 15))
    return {(model, name): run(harness, jobs, name, model, **REFERENCE[name]) for model in MODELS
            for name in REFERENCE}


def _with_lora(fields: dict[str, Any], model: str) -> dict[str, Any]:
    if isinstance(fields.get("loras"), str):
        weight = float(fields["loras"].split("@")[1])
        return {**fields, "loras": [{"id": LORAS[model], "weight": weight}]}
    if fields.get("ip_adapters") == "ADAPTER":  # (its image and scale: test_ipadapters)
        return {**fields, "ip_adapters": [{"id": IP_ADAPTERS[model], "image": PHOTO, "scale": 0.8}]}
    if fields.get("controlnets") == "UNIT":  # one unit of the model's family (the controlnet pipeline: one more)
        return {**fields, "controlnets": [{"id": CONTROLNETS[model], "image": PHOTO, "scale": 1.5}]}
    return fields


@pytest.mark.parametrize(("model", "name", "variation"), _cases())
def test_each_input_changes_the_pixels(harness: Harness, runs: dict[tuple[str, str], np.ndarray], model: str,
                                       name: str, variation: str, jobs: dict[str, np.ndarray]) -> None:
    fields = {**COMMON_VARIATIONS, **TASK_VARIATIONS[name], **SDXL_VARIATIONS}[variation]
    changed = run(harness, jobs, name, model, **{**REFERENCE[name], **_with_lora(fields, model)})
    assert not np.array_equal(changed, runs[(model, name)]), f"{model}/{name}: {variation} changed nothing"


@pytest.mark.parametrize("model", MODELS)
def test_the_lora_weight_changes_the_pixels(harness: Harness, model: str, jobs: dict[str, np.ndarray]) -> None:
    strong = run(harness, jobs, "txt2img", model, loras=[{"id": LORAS[model], "weight": 0.8}])
    weak = pixels(harness.run("txt2img", model=model, loras=[{"id": LORAS[model], "weight": 0.4}]))
    assert not np.array_equal(strong, weak)


@pytest.mark.parametrize("model", MODELS)
def test_prompt_editing_is_neither_of_its_texts(harness: Harness, model: str, jobs: dict[str, np.ndarray]) -> None:
    """[a:b:0.5] is a for the first steps and b for the rest: neither a's picture nor b's."""
    a, b = "a red fox in the snow", "a blue bird over the sea"
    edited = pixels(harness.run("txt2img", model=model, prompt=f"[{a}:{b}:0.5]"))
    for text in (a, b):
        assert not np.array_equal(edited, run(harness, jobs, "txt2img", model, prompt=text)), text


@pytest.mark.parametrize("model", MODELS)
def test_an_embeddings_name_matters(harness: Harness, model: str) -> None:
    """A textual-inversion embedding named in the prompt changes the pixels, and so does which one."""
    names = ("tiny-emb-sd1", "tiny-emb-sd1-diffusers") if model == "tiny-sd" else ("tiny-emb-sdxl",)
    runs = [pixels(harness.run("txt2img", model=model, prompt=f"a red fox {name}".strip())) for name in ("", *names)]
    assert all(not np.array_equal(a, b) for i, a in enumerate(runs) for b in runs[i + 1:])


def test_img2img_starts_from_the_input_image(harness: Harness, runs: dict[tuple[str, str], np.ndarray]) -> None:
    """At a low strength the output stays close to its input: the image is really where denoising starts."""
    photo = np.asarray(harness.images[PHOTO].resize((64, 48)), dtype=float)
    out = pixels(harness.run("img2img", strength=0.2, steps=10)).astype(float)[0]
    other = np.asarray(harness.images[OTHER_PHOTO].resize((64, 48)), dtype=float)
    assert np.abs(out - photo).mean() < np.abs(out - other).mean()


# -- upscale: its inputs are the image and the scale, and its model is the upscaler --------------------------------
UPSCALE_REFERENCE: dict[str, Any] = {"model": "tiny-esrgan", "image": PHOTO, "scale": 2.0}
UPSCALE_VARIATIONS: dict[str, dict[str, Any]] = {
    "image": {"image": OTHER_PHOTO}, "scale": {"scale": 2.1}, "model=tiny-compact": {"model": "tiny-compact"},
    "model=lanczos": {"model": "lanczos"}, "model=nearest": {"model": "nearest"},
}


def _upscaled(harness: Harness, model: str, **fields: Any) -> np.ndarray:
    from pipelines.upscale import Upscale
    from tests.pipelines.harness import parse

    harness.images.setdefault(OTHER_PHOTO, Image.fromarray(np.full((80, 100, 3), 90, np.uint8)))
    return pixels(Upscale().run(parse(Upscale.Inputs, fields), harness.context(model=model)))


@pytest.mark.parametrize("variation", UPSCALE_VARIATIONS)
def test_each_upscale_input_changes_the_pixels(harness: Harness, variation: str, jobs: dict[str, np.ndarray]) -> None:
    reference = {**UPSCALE_REFERENCE}
    changed = {**reference, **UPSCALE_VARIATIONS[variation]}
    if "upscale" not in jobs:  # the same job for every variation: run once
        jobs["upscale"] = _upscaled(harness, reference.pop("model"), **reference)
    before = jobs["upscale"]
    after = _upscaled(harness, changed.pop("model"), **changed)
    assert not np.array_equal(before, after), f"upscale: {variation} changed nothing"


# -- txt2img's hires fix and SDXL refiner: each field, varied alone against a job that has them -----------------
HIRES_REFERENCE: dict[str, Any] = {"scale": 1.5, "steps": 4, "denoising_strength": 0.5}
HIRES_VARIATIONS: dict[str, dict[str, Any]] = {
    "scale": {"scale": 2.0}, "width": {"scale": None, "width": 104}, "height": {"scale": None, "height": 80},
    "upscaler=latent_nearest": {"upscaler": "latent_nearest"}, "upscaler=lanczos": {"upscaler": "lanczos"},
    "upscaler=tiny-esrgan": {"upscaler": "tiny-esrgan"}, "steps": {"steps": 6},
    "denoising_strength": {"denoising_strength": 0.75}, "prompt": {"prompt": "a blue bird over the sea"},
    "negative_prompt": {"negative_prompt": "blurry, dark"}, "scheduler": {"scheduler": "dpmpp_2m"},
}
REFINER_REFERENCE: dict[str, Any] = {"model": "tiny-sdxl", "steps": 4, "refiner": "tiny-sdxl-refiner",
                                     "switch_at": 0.5}
REFINER_VARIATIONS: dict[str, dict[str, Any]] = {"refiner": {"refiner": "tiny-sdxl"}, "switch_at": {"switch_at": 0.75}}


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("variation", HIRES_VARIATIONS)
def test_each_hires_input_changes_the_pixels(harness: Harness, model: str, variation: str,
                                             jobs: dict[str, np.ndarray]) -> None:
    before = run(harness, jobs, "txt2img", model, steps=3, hires=HIRES_REFERENCE)
    hires = {key: value for key, value in {**HIRES_REFERENCE, **HIRES_VARIATIONS[variation]}.items()
             if value is not None}
    after = pixels(harness.run("txt2img", model=model, steps=3, hires=hires))
    assert before.shape != after.shape or not np.array_equal(before, after), f"{model}: hires.{variation}"


@pytest.mark.parametrize("variation", REFINER_VARIATIONS)
def test_each_refiner_input_changes_the_pixels(harness: Harness, variation: str, jobs: dict[str, np.ndarray]) -> None:
    before = run(harness, jobs, "txt2img", **REFINER_REFERENCE)
    after = pixels(harness.run("txt2img", **{**REFINER_REFERENCE, **REFINER_VARIATIONS[variation]}))
    assert not np.array_equal(before, after), f"{variation} changed nothing"
