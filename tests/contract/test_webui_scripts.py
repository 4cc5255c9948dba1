"""WebUI's ``script_name: "SD upscale"`` on img2img as the ``sd_upscale`` job: ``script_args`` read positionally
as WebUI's script takes them (``[info, overlap, upscaler_index, scale_factor]``), the upscaler by its place in
``/sdapi/v1/upscalers``, and what spotgen cannot run so refused naming ``script_args.N`` or the field."""

from __future__ import annotations

from typing import Any

import pytest

from runtime.contract import Names
from runtime.contract.webui_answer import webui_info
from tests.contract.webui_cases import NAMES, mapped, refused, unit, webuiapi_img2img, webuiapi_txt2img

#: Two upscaler models, the second with an alias: WebUI's list is None, Lanczos, Nearest, then these in order.
UPSCALING = Names(**{**NAMES.model_dump(), "upscalers": {"R-ESRGAN 4x+": "realesrgan-x4", "swinir-x4": "swinir-x4",
                                                         "realesrgan-x4": "realesrgan-x4"}})


def sd_upscale(args: list[Any], **changes: Any) -> dict[str, Any]:
    return webuiapi_img2img(script_name="SD upscale", script_args=args, denoising_strength=0.3, **changes)


@pytest.mark.parametrize(("index", "upscaler"), [
    (0, "none"), (1, "lanczos"), (2, "nearest"), (3, "realesrgan-x4"), (4, "swinir-x4")])
def test_the_upscaler_is_the_one_at_its_index_of_webuis_list(index: int, upscaler: str) -> None:
    job = mapped(sd_upscale([None, 64, index, 2]), "img2img", UPSCALING)
    assert job.pipeline == "sd_upscale"
    assert {k: job.inputs[k] for k in ("upscaler", "scale", "overlap")} == {"upscaler": upscaler, "scale": 2,
                                                                           "overlap": 64}


def test_the_tiles_take_the_bodys_prompt_size_strength_steps_and_seed() -> None:
    job = mapped(sd_upscale(["", 32, 1, 1.5], seed=42, width=256, height=192, steps=12, prompt="castle"),
                 "img2img")
    assert {k: job.inputs[k] for k in ("prompt", "width", "height", "strength", "steps", "seed", "overlap",
                                        "scale")} == {"prompt": "castle", "width": 256, "height": 192,
                                                      "strength": 0.3, "steps": 12, "seed": 42, "overlap": 32,
                                                      "scale": 1.5}


def test_the_title_is_found_regardless_of_case_as_webui_finds_it() -> None:
    assert mapped(webuiapi_img2img(script_name="sd UPSCALE", script_args=[None, 0, 0, 2]), "img2img").pipeline \
        == "sd_upscale"


@pytest.mark.parametrize(("args", "field"), [
    ([], "script_args"), ([None, 64, 0], "script_args"), ([None, 64, 0, 2, 5], "script_args"),
    ([None, "64", 0, 2], "script_args.1"), ([None, -16, 0, 2], "script_args.1"), ([None, 64.5, 0, 2], "script_args.1"),
    ([None, 512, 0, 2], "script_args.1"),
    ([None, 64, 5, 2], "script_args.2"), ([None, 64, -1, 2], "script_args.2"), ([None, 64, True, 2], "script_args.2"),
    ([None, 64, "Lanczos", 2], "script_args.2"), ([None, 64, 0, 0], "script_args.3"),
    ([None, 64, 0, 9], "script_args.3"), ([None, 64, 0, "2"], "script_args.3"),
])
def test_bad_script_args_are_refused_naming_the_argument(args: list[Any], field: str) -> None:
    error = refused(sd_upscale(args), "img2img")
    assert error.field == field and error.message.startswith(f"{field}:"), error


@pytest.mark.parametrize(("changes", "field"), [
    ({"batch_size": 2}, "batch_size"), ({"n_iter": 3}, "n_iter"), ({"mask": "x"}, "mask"),
    ({"alwayson_scripts": {"controlnet": {"args": [unit()]}}}, "alwayson_scripts.controlnet"),
])
def test_what_sd_upscale_does_not_run_here_is_refused_naming_the_field(changes: dict[str, Any], field: str) -> None:
    assert refused(sd_upscale([None, 64, 1, 2], **changes), "img2img").field == field


def test_sd_upscale_is_no_txt2img_script_and_other_scripts_stay_refused() -> None:
    error = refused(webuiapi_txt2img(script_name="SD upscale", script_args=[None, 64, 1, 2]))
    assert (error.code, error.field) == ("unsupported_field", "script_name")
    error = refused(webuiapi_img2img(script_name="Loopback", script_args=[]), "img2img")
    assert (error.code, error.field) == ("unsupported_field", "script_name") and "sd upscale" in error.message


def test_the_infotext_says_the_overlap_and_the_upscaler_as_webuis_script_adds_them() -> None:
    body = sd_upscale([None, 48, 1, 2], seed=3)
    info = webui_info(mapped(body, "img2img"), body, 3, "sd15")
    assert info["extra_generation_params"] == {"SD upscale overlap": 48, "SD upscale upscaler": "Lanczos"}
    assert "SD upscale overlap: 48, SD upscale upscaler: Lanczos" in info["infotexts"][0]
