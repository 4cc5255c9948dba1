"""The real SD WebUI client, the ``webuiapi`` package (0.9.17), against ``/sdapi/v1`` of a running ``spotgen dev``.

``tests/lambdas/test_compat_webui.py`` sends the routes raw HTTP; here the client sends what it sends, with every
one of its defaults (``enable_hr``, ``styles``, ``subseed``, ``eta``, ``script_name``, ``sampler_index``, a
ControlNet unit's ``processor_res``, ``hr_option``, ...), and reads the answers as its users do: PIL images,
``info`` parsed, a refusal raised as ``RuntimeError(status, body)``. Jobs run on a real worker with the tiny
models: 64 px, 4 steps. Two things the client itself does, which a test must not trip on:

- ``txt2img`` and ``img2img`` default ``alwayson_scripts`` to one shared ``{}`` and write the ControlNet units
  into it, so a call with units and without ``alwayson_scripts`` leaves them in every later call's default;
  the calls here pass a fresh ``alwayson_scripts``.
- ``set_options`` and ``util_set_model`` do not look at the status: a refused option comes back as the error's
  JSON (``util_set_model`` prints "model changed" regardless).
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
import webuiapi
from PIL import Image, ImageDraw

from runtime.models.tiny import ALIASES, FLOW_MODELS
from tests.conftest import Stack

SD15, SDXL, CANNY = "v1-5-pruned-emaonly.safetensors", "sd_xl_turbo_1.0.safetensors", "control_v11p_sd15_canny"
FLOW_TITLES = {model: ALIASES[model][0] for model in FLOW_MODELS}  # the tiny Flux and SD 3.5 models' file names
SMALL: dict[str, Any] = {"prompt": "a red fox", "width": 64, "height": 64}


@pytest.fixture(scope="module")
def stack(own_stack: Stack) -> Stack:
    return own_stack


@pytest.fixture(scope="module")
def api(webui: webuiapi.WebUIApi) -> webuiapi.WebUIApi:
    return webui


def pixels(result: webuiapi.WebUIApiResult) -> list[bytes]:
    return [image.tobytes() for image in result.images]


def refusal(call: Any) -> tuple[int, dict[str, Any]]:
    """The status and error of a request the client raised for (``RuntimeError(status, body)``)."""
    with pytest.raises(RuntimeError) as raised:
        call()
    status, body = raised.value.args
    return status, json.loads(body)["error"]


def control_image() -> Image.Image:
    """Something with edges for Canny to find."""
    image = Image.new("RGB", (64, 64), (20, 20, 20))
    ImageDraw.Draw(image).rectangle((16, 12, 48, 52), fill=(230, 230, 230))
    return image


def test_the_client_lists_the_catalog(api: webuiapi.WebUIApi) -> None:
    inpainting, refiner = "sd-v1-5-inpainting.safetensors", "sd_xl_refiner_1.0.safetensors"
    xl_inpainting = "sd_xl_base_1.0_inpainting_0.1.safetensors"
    assert api.util_get_model_names() == sorted([SD15, SDXL, inpainting, xl_inpainting, refiner, *FLOW_TITLES.values()])
    assert {m["model_name"]: m["title"] for m in api.get_sd_models()} == {
        "tiny-sd": SD15, "tiny-sdxl": SDXL, "tiny-sd-inpainting": inpainting, "tiny-sdxl-inpainting": xl_inpainting,
        "tiny-sdxl-refiner": refiner, **FLOW_TITLES}
    assert {"Euler a", "Euler", "DPM++ 2M", "DDIM", "UniPC"} <= set(api.util_get_sampler_names())
    assert api.util_get_scheduler_names() == ["automatic", "exponential", "karras", "sgm_uniform"]
    assert {lora["name"] for lora in api.get_loras()} >= {"tiny-lora-sd1", "tiny-lora-sdxl"}
    assert api.util_get_current_model() == SD15
    progress = api.get_progress()
    assert progress["state"]["job_count"] == 0 and progress["progress"] == 0
    assert api.interrupt() == {}  # nothing running: WebUI's 200 too


def test_txt2img_reports_the_seed_and_a_seed_gives_the_same_pixels(api: webuiapi.WebUIApi) -> None:
    first = api.txt2img(**SMALL, seed=-1, batch_size=2, alwayson_scripts={})
    seed = first.info["seed"]
    assert isinstance(seed, int) and seed >= 0 and first.info["all_seeds"] == [seed, (seed + 1) % 2**32]
    assert len(first.images) == 2 and {image.size for image in first.images} == {(64, 64)}
    assert first.parameters["seed"] == -1 and first.info["sampler_name"] == "Euler a"
    assert first.info["sd_model_name"] == SD15 and len(first.info["infotexts"]) == 2
    assert f"Seed: {seed}," in first.info["infotexts"][0]
    again = api.txt2img(**SMALL, seed=seed, batch_size=2, alwayson_scripts={})
    assert again.info["all_seeds"] == first.info["all_seeds"] and pixels(again) == pixels(first)
    # As on WebUI, the second image of a batch is the one its own seed makes alone: the same picture, to the
    # rounding of a batch of one against a batch of two (measured: at most 1 in 255, on a few pixels).
    second = api.txt2img(**SMALL, seed=first.info["all_seeds"][1], alwayson_scripts={})
    difference = np.abs(np.asarray(second.image, dtype=int) - np.asarray(first.images[1], dtype=int))
    assert second.info["seed"] == first.info["all_seeds"][1] and difference.max() <= 2 and difference.mean() < 0.05


def test_img2img_from_a_pil_image_answers_the_asked_size(api: webuiapi.WebUIApi) -> None:
    result = api.img2img(images=[control_image()], prompt="a fox", width=48, height=64, seed=3,
                         denoising_strength=0.5, alwayson_scripts={})
    assert result.image.size == (48, 64) and result.info["denoising_strength"] == 0.5
    assert result.parameters["init_images"] is None and result.info["all_seeds"] == [3]


def test_a_controlnet_unit_conditions_txt2img(api: webuiapi.WebUIApi) -> None:
    unit = webuiapi.ControlNetUnit(image=control_image(), module="canny", model=CANNY)
    controlled = api.txt2img(**SMALL, seed=11, controlnet_units=[unit], alwayson_scripts={})
    sent = controlled.parameters["alwayson_scripts"]["ControlNet"]["args"][0]
    # The client's unit with its defaults, as it sent them (the image left out of the echo, as on WebUI).
    assert {key: sent[key] for key in ("module", "model", "resize_mode", "processor_res", "threshold_a",
                                       "control_mode", "pixel_perfect", "hr_option", "image")} == {
        "module": "canny", "model": CANNY, "resize_mode": "Resize and Fill", "processor_res": 512,
        "threshold_a": 64, "control_mode": "Balanced", "pixel_perfect": False, "hr_option": "Both", "image": None}
    assert controlled.image.size == (64, 64) and controlled.info["all_seeds"] == [11]
    plain = api.txt2img(**SMALL, seed=11, alwayson_scripts={})
    assert pixels(controlled) != pixels(plain)

    # On img2img the unit guides the denoising too (a ControlNet of img2img).
    guided = api.img2img(images=[control_image()], **SMALL, seed=11, controlnet_units=[unit], alwayson_scripts={})
    unguided = api.img2img(images=[control_image()], **SMALL, seed=11, alwayson_scripts={})
    assert guided.image.size == (64, 64) and pixels(guided) != pixels(unguided)
    # What spotgen does not run yet is refused naming the client's own field.
    other_mode = webuiapi.ControlNetUnit(image=control_image(), module="canny", model=CANNY, control_mode=1)
    status, error = refusal(lambda: api.txt2img(**SMALL, controlnet_units=[other_mode], alwayson_scripts={}))
    assert status == 400 and error["field"] == "alwayson_scripts.ControlNet.args.0.control_mode", error
    assert "My prompt is more important" in error["message"]


def test_a_refusal_is_the_clients_error_naming_the_field(api: webuiapi.WebUIApi) -> None:
    status, error = refusal(lambda: api.txt2img(**SMALL, override_settings={"sd_model_checkpoint": "ghost.safetensors"},
                                                alwayson_scripts={}))
    assert (status, error["code"], error["field"]) == (400, "unknown_model", "override_settings.sd_model_checkpoint")
    assert "ghost.safetensors" in error["message"]
    # The client's default eta (1.0) is DDIM's eta on WebUI too: a stochastic DDIM spotgen does not run.
    status, error = refusal(lambda: api.txt2img(**SMALL, sampler_name="DDIM", alwayson_scripts={}))
    assert (status, error["field"]) == (400, "eta"), error
    # A listed title names the checkpoint of one request, as WebUI's override_settings does.
    result = api.txt2img(**SMALL, seed=5, override_settings={"sd_model_checkpoint": SDXL}, alwayson_scripts={})
    assert result.info["sd_model_name"] == SDXL and result.image.size == (64, 64)


def test_setting_the_model_switches_this_callers_later_requests(api: webuiapi.WebUIApi) -> None:
    """As the AWS sample's queue agent and ``util_set_model`` do: the option is kept for the caller (this client's
    address) and applies to its later requests; put back afterwards, as the module's other tests are the same
    caller."""
    options = api.get_options()
    assert (options["sd_model_checkpoint"], options["send_seed"], options["CLIP_stop_at_last_layers"]) == (
        SD15, True, 1)
    assert api.set_options({"sd_model_checkpoint": SD15}) is None  # WebUI's answer: null
    try:
        api.util_set_model(SDXL)
        assert api.util_get_current_model() == SDXL
        assert api.txt2img(**SMALL, seed=5, alwayson_scripts={}).info["sd_model_name"] == SDXL
        refused = api.set_options({"sd_model_checkpoint": "nope.safetensors"})  # the client does not raise
        assert refused["error"]["field"] == "options.sd_model_checkpoint"
    finally:
        assert api.set_options({"sd_model_checkpoint": SD15}) is None
    assert api.txt2img(**SMALL, seed=5, alwayson_scripts={}).info["sd_model_name"] == SD15

