"""WebUI's hires fix, refiner, tiling and inpainting fields as spotgen's inputs (``runtime/contract/webui_passes.py``).

The bodies are ``webuiapi``'s payloads (``webui_cases``) with the feature switched on, as clients send them; each job
is validated as its pipeline's inputs (``mapped``), and each refusal names the body's field.
"""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from runtime.contract import ContractError
from runtime.contract.inputs import MAX_SCHEDULE, Hires
from runtime.contract.webui_passes import second_pass_schedule
from tests.contract.webui_cases import NAMES, mapped, png, refused, webuiapi_img2img, webuiapi_txt2img

SDXL = {"override_settings": {"sd_model_checkpoint": "sd_xl_base_1.0"}}
PASS_NAMES = NAMES.model_copy(update={
    "models": {**NAMES.models, "sd_xl_refiner_1.0.safetensors": "sdxl-refiner", "sdxl-refiner": "sdxl-refiner",
               "sd-v1-5-inpainting.ckpt": "sd15-inpainting", "sd15-inpainting": "sd15-inpainting"},
    "upscalers": {"4x-UltraSharp.pth": "ultrasharp", "ultrasharp": "ultrasharp"},
    "variants": {"sd15-inpainting": "inpainting", "sdxl-refiner": "refiner"}})


def hires_of(**changes: Any) -> dict[str, Any]:
    return mapped(webuiapi_txt2img(enable_hr=True, **changes), names=PASS_NAMES).inputs["hires"]


# -- hires fix ----------------------------------------------------------------------------------------------------
def test_enable_hr_with_webuiapis_defaults_is_hires_fix_at_twice_the_size_in_latent_space() -> None:
    # webuiapi's 20 steps at 0.7, as WebUI runs them: 20 steps of a schedule stretched to 29
    assert hires_of() == {"denoising_strength": 0.7, "upscaler": "latent", "scale": 2.0, "steps": 29}
    assert "hires" not in mapped(webuiapi_txt2img(hr_scale=3, hr_upscaler="Nearest")).inputs  # enable_hr false


@pytest.mark.parametrize(("name", "upscaler"), [
    ("Latent (nearest-exact)", "latent_nearest_exact"), ("Latent (bicubic antialiased)", "latent_bicubic_antialiased"),
    ("latent (antialiased)", "latent_antialiased"), ("None", "lanczos"), ("Lanczos", "lanczos"),
    ("Nearest", "nearest"), ("4x-UltraSharp", "ultrasharp"), ("4x-UltraSharp.pth", "ultrasharp"), (None, "latent"),
])
def test_hr_upscaler_takes_webuis_names_and_the_catalogs_upscalers(name: str | None, upscaler: str) -> None:
    assert hires_of(hr_upscaler=name)["upscaler"] == upscaler


@pytest.mark.parametrize(("changes", "expected"), [
    ({"hr_resize_x": 1024}, {"width": 1024}), ({"hr_resize_y": "768"}, {"height": 768}),
    ({"hr_resize_x": 1024, "hr_resize_y": 1024}, {"width": 1024, "height": 1024}),
    ({"hr_scale": 1.5}, {"scale": 1.5}), ({"hr_second_pass_steps": 10}, {"scale": 2.0, "steps": 15}),
    ({"hr_prompt": "a blue fox", "hr_negative_prompt": "blur"}, {"scale": 2.0, "prompt": "a blue fox",
                                                                 "negative_prompt": "blur"}),
    ({"hr_sampler_name": "DPM++ 2M", "hr_scheduler": "Automatic"}, {"scale": 2.0, "scheduler": "dpmpp_2m"}),
    ({"hr_sampler_name": "Use same sampler", "hr_checkpoint_name": "Use same checkpoint"}, {"scale": 2.0}),
    ({"hr_checkpoint_name": "v1-5-pruned-emaonly"}, {"scale": 2.0}), ({"denoising_strength": "0.5"}, {"scale": 2.0}),
])
def test_hires_targets_steps_prompts_and_sampler(changes: dict[str, Any], expected: dict[str, Any]) -> None:
    got = hires_of(**changes)
    strength = 0.5 if "denoising_strength" in changes else 0.7
    assert got == {"denoising_strength": strength, "upscaler": "latent", "steps": 40 if strength == 0.5 else 29,
                   **expected}


def test_the_second_pass_runs_webuis_count_of_steps() -> None:
    """WebUI's second pass runs exactly ``hr_second_pass_steps`` (or the first pass's) steps; spotgen's runs
    ``int(schedule x strength)`` of the schedule it is given: the shortest schedule that makes them equal."""
    for steps, strength in itertools.product([1, 4, 7, 20, 30, 50, 150], [0.05, 0.1, 0.3, 0.33, 0.35, 0.5, 0.7,
                                                                          0.75, 0.999, 1.0]):
        try:
            schedule = second_pass_schedule(steps, strength, "hr_second_pass_steps")
        except ContractError as error:
            assert steps / strength > MAX_SCHEDULE and error.field == "denoising_strength", error
            continue
        assert int(schedule * strength) == steps and int((schedule - 1) * strength) < steps, (steps, strength)
        assert Hires(steps=schedule, denoising_strength=strength).steps == schedule  # the native contract takes it


@pytest.mark.parametrize(("changes", "code", "field"), [
    ({"hr_second_pass_steps": 151}, "invalid_field", "hr_second_pass_steps"),
    ({"steps": 30, "denoising_strength": 0.02}, "invalid_field", "denoising_strength"),
    ({"hr_scale": 8}, "invalid_field", "hr_scale"), ({"hr_scale": 0.5}, "invalid_field", "hr_scale"),
    ({"denoising_strength": 0}, "invalid_field", "denoising_strength"),
    ({"hr_resize_x": 1024, "hr_resize_y": 768}, "unsupported_field", "hr_resize_y"),  # WebUI would crop
    ({"hr_resize_x": -8}, "invalid_field", "hr_resize_x"),
    ({"hr_upscaler": "R-ESRGAN 4x+"}, "unknown_model", "hr_upscaler"),
    ({"hr_scheduler": "Karras"}, "unsupported_field", "hr_scheduler"),
    ({"hr_checkpoint_name": "sd_xl_base_1.0"}, "unsupported_field", "hr_checkpoint_name"),
    ({"hr_prompt": "<lora:LeoArmor:0.5> a fox"}, "unsupported_field", "hr_prompt"),
    ({"hr_prompt": "<hypernet:x:1> a fox"}, "unsupported_field", "hr_prompt"),
    ({"hr_sampler_name": "Restart"}, "invalid_field", "sampler_name"),
])
def test_hires_fix_spotgen_would_run_otherwise_is_refused_naming_the_field(changes: dict[str, Any], code: str,
                                                                           field: str) -> None:
    error = refused(webuiapi_txt2img(enable_hr=True, **changes), names=PASS_NAMES)
    assert (error.code, error.field) == (code, field)


# -- refiner and tiling -------------------------------------------------------------------------------------------
def test_refiner_checkpoint_and_switch_are_the_txt2img_refiner() -> None:
    body = webuiapi_txt2img(refiner_checkpoint="sd_xl_refiner_1.0", refiner_switch_at=0.7, **SDXL)
    inputs = mapped(body, names=PASS_NAMES).inputs
    assert (inputs["refiner"], inputs["switch_at"]) == ("sdxl-refiner", 0.7)
    body = webuiapi_txt2img(refiner_checkpoint="sd_xl_refiner_1.0", refiner_switch_at=None, **SDXL)
    assert mapped(body, names=PASS_NAMES).inputs["switch_at"] == 0.8
    assert "refiner" not in mapped(webuiapi_txt2img(refiner_checkpoint="None", refiner_switch_at=0.5)).inputs


@pytest.mark.parametrize(("body", "task", "code", "field"), [
    (webuiapi_txt2img(refiner_checkpoint="sd_xl_refiner_1.0", refiner_switch_at=1, **SDXL), "txt2img",
     "invalid_field", "refiner_switch_at"),
    (webuiapi_txt2img(refiner_checkpoint="dreamshaper", **SDXL), "txt2img", "unknown_model", "refiner_checkpoint"),
    (webuiapi_img2img(refiner_checkpoint="sd_xl_refiner_1.0", **SDXL), "img2img", "unsupported_field",
     "refiner_checkpoint"),
])
def test_a_refiner_spotgen_cannot_run_is_refused_naming_the_field(body: dict[str, Any], task: str, code: str,
                                                                  field: str) -> None:
    error = refused(body, task, PASS_NAMES)
    assert (error.code, error.field) == (code, field)


def test_tiling_is_seamless_tiling_on_txt2img_and_img2img() -> None:
    assert mapped(webuiapi_txt2img(tiling=True)).inputs["tiling"] is True
    assert mapped(webuiapi_img2img(tiling="true"), "img2img").inputs["tiling"] is True
    assert "tiling" not in mapped(webuiapi_txt2img(tiling=False)).inputs


# -- inpainting ---------------------------------------------------------------------------------------------------
def test_img2img_with_a_mask_is_inpainting_with_webuis_defaults() -> None:
    mask = png(512, 512)
    job = mapped(webuiapi_img2img(mask=mask), "img2img")
    assert job.pipeline == "inpaint"
    inputs = job.inputs
    assert {k: inputs[k] for k in ("mask", "mask_blur", "fill", "padding", "only_masked", "invert_mask",
                                   "strength")} == {"mask": mask, "mask_blur": 4, "fill": "fill", "padding": 0,
                                                    "only_masked": True, "invert_mask": False, "strength": 0.75}
    bare = mapped({"prompt": "x", "init_images": [png(512, 512)], "mask": mask}, "img2img").inputs
    assert (bare["mask_blur"], bare["fill"], bare["only_masked"], bare["padding"]) == (4, "fill", True, 0)


@pytest.mark.parametrize(("changes", "key", "expected"), [
    ({"inpainting_mask_invert": 1}, "invert_mask", True), ({"inpainting_mask_invert": True}, "invert_mask", True),
    ({"inpainting_mask_invert": False}, "invert_mask", False), ({"mask_blur": 8}, "mask_blur", 8),
    ({"mask_blur": None, "mask_blur_x": 6, "mask_blur_y": 6}, "mask_blur", 6), ({"inpainting_fill": 1}, "fill",
                                                                                 "original"),
    ({"inpainting_fill": 2}, "fill", "latent_noise"), ({"inpainting_fill": "3"}, "fill", "latent_nothing"),
    ({"inpaint_full_res": False}, "only_masked", False), ({"inpaint_full_res_padding": 32}, "padding", 32),
    ({"denoising_strength": 0.4}, "strength", 0.4),
])
def test_webuis_inpainting_fields_map_onto_the_inpaint_pipeline(changes: dict[str, Any], key: str,
                                                                expected: Any) -> None:
    assert mapped(webuiapi_img2img(mask=png(512, 512), **changes), "img2img").inputs[key] == expected


def test_an_empty_or_null_mask_is_plain_img2img_as_in_webui() -> None:
    for mask in ("", None):
        assert mapped(webuiapi_img2img(mask=mask, inpainting_mask_invert=False), "img2img").pipeline == "img2img"


@pytest.mark.parametrize(("changes", "code", "field"), [
    ({"mask_blur": None, "mask_blur_x": 2, "mask_blur_y": 8}, "unsupported_field", "mask_blur_y"),
    ({"mask_blur": 100}, "invalid_field", "mask_blur"), ({"inpainting_fill": 4}, "invalid_field", "inpainting_fill"),
    ({"inpaint_full_res_padding": -1}, "invalid_field", "inpaint_full_res_padding"),
    ({"inpainting_mask_invert": "x"}, "invalid_field", "inpainting_mask_invert"),
])
def test_inpainting_spotgen_cannot_run_is_refused_naming_the_field(changes: dict[str, Any], code: str,
                                                                   field: str) -> None:
    error = refused(webuiapi_img2img(mask=png(512, 512), **changes), "img2img")
    assert (error.code, error.field) == (code, field)


def test_an_inpainting_checkpoint_runs_with_a_mask_and_is_refused_without() -> None:
    model = {"override_settings": {"sd_model_checkpoint": "sd-v1-5-inpainting.ckpt"}}
    job = mapped(webuiapi_img2img(mask=png(512, 512), **model), "img2img", PASS_NAMES)
    assert (job.pipeline, job.model) == ("inpaint", "sd15-inpainting")
    error = refused(webuiapi_img2img(**model), "img2img", PASS_NAMES)
    assert error.field == "override_settings.sd_model_checkpoint" and "give img2img a mask" in error.message
