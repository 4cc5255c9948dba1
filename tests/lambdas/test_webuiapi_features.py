"""WebUI's features through the real ``webuiapi`` client on a running ``spotgen dev`` (issue 29, items 1 and 2).

The bodies the issue lists as refused before: ``"sampler_index": "Euler a", "eta": 0``, ``"inpainting_mask_invert":
false, "mask": null``; then hires fix, inpainting, several ControlNet units and tiling as the client sends them.
Jobs run on the compatibility group's shared stack (``own_stack``) with the tiny models: 64 px, 4 steps.
"""

from __future__ import annotations

import base64
import io
from typing import Any

import numpy as np
import webuiapi
from PIL import Image, ImageDraw

from tests.conftest import Stack
from tests.rest import call

CANNY = "control_v11p_sd15_canny"
SMALL: dict[str, Any] = {"prompt": "a red fox", "width": 64, "height": 64}


def picture() -> Image.Image:
    image = Image.new("RGB", (64, 64), (20, 20, 20))
    ImageDraw.Draw(image).rectangle((16, 12, 48, 52), fill=(230, 230, 230))
    return image


def b64(image: Image.Image) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def test_the_issues_bodies_are_answered_with_an_image(own_stack: Stack) -> None:
    status, answer = call("POST", f"{own_stack.api_url}/sdapi/v1/txt2img",
                          {"prompt": "x", "sampler_index": "Euler a", "eta": 0, "width": 64, "height": 64,
                           "steps": 4}, timeout=300)
    assert status == 200 and len(answer["images"]) == 1, answer
    status, answer = call("POST", f"{own_stack.api_url}/sdapi/v1/img2img",
                          {"prompt": "x", "init_images": [b64(picture())], "inpainting_mask_invert": False,
                           "mask": None, "width": "64", "height": 64, "steps": "4"}, timeout=300)
    assert status == 200 and len(answer["images"]) == 1, answer


def test_euler_a_at_eta_0_is_euler(webui: webuiapi.WebUIApi) -> None:
    without_noise = webui.txt2img(**SMALL, seed=5, sampler_name="Euler a", eta=0, alwayson_scripts={})
    euler = webui.txt2img(**SMALL, seed=5, sampler_name="Euler", alwayson_scripts={})
    ancestral = webui.txt2img(**SMALL, seed=5, sampler_name="Euler a", alwayson_scripts={})
    assert without_noise.image.tobytes() == euler.image.tobytes() != ancestral.image.tobytes()


def test_hires_fix_doubles_the_size(webui: webuiapi.WebUIApi) -> None:
    result = webui.txt2img(**SMALL, seed=7, enable_hr=True, hr_scale=2, hr_upscaler="Latent", denoising_strength=0.5,
                         alwayson_scripts={})
    assert result.image.size == (128, 128) and result.parameters["enable_hr"] is True
    resized = webui.txt2img(**SMALL, seed=7, enable_hr=True, hr_resize_x=96, hr_upscaler="Lanczos",
                          denoising_strength=0.5, alwayson_scripts={})
    assert resized.image.size == (96, 96)


def test_inpainting_repaints_only_the_masked_area(webui: webuiapi.WebUIApi) -> None:
    mask = Image.new("L", (64, 64), 0)
    ImageDraw.Draw(mask).rectangle((24, 24, 40, 40), fill=255)
    source = picture()
    result = webui.img2img(images=[source], mask_image=mask, **SMALL, seed=9, denoising_strength=0.9,
                         inpainting_fill=1, alwayson_scripts={})
    out, before = np.asarray(result.image.convert("RGB"), np.int16), np.asarray(source, np.int16)
    assert result.image.size == (64, 64)
    assert np.abs(out[:8, :8] - before[:8, :8]).max() <= 2  # far from the mask: the input's pixels
    assert np.abs(out[28:36, 28:36] - before[28:36, 28:36]).max() > 2  # inside: repainted
    inverted = webui.img2img(images=[source], mask_image=mask, **SMALL, seed=9, denoising_strength=0.9,
                           inpainting_fill=1, inpainting_mask_invert=1, alwayson_scripts={})
    assert inverted.image.tobytes() != result.image.tobytes()


def test_several_controlnet_units_guide_one_job(webui: webuiapi.WebUIApi) -> None:
    canny = webuiapi.ControlNetUnit(image=picture(), module="canny", model=CANNY)
    plain = webuiapi.ControlNetUnit(image=picture(), module="none", model=CANNY, weight=0.5)
    one = webui.txt2img(**SMALL, seed=13, controlnet_units=[canny], alwayson_scripts={})
    two = webui.txt2img(**SMALL, seed=13, controlnet_units=[canny, plain], alwayson_scripts={})
    assert two.image.size == (64, 64) and one.image.tobytes() != two.image.tobytes()


def test_tiling_changes_the_image(webui: webuiapi.WebUIApi) -> None:
    tiled = webui.txt2img(**SMALL, seed=17, tiling=True, alwayson_scripts={})
    plain = webui.txt2img(**SMALL, seed=17, alwayson_scripts={})
    assert tiled.image.tobytes() != plain.image.tobytes()


def test_a_unit_the_model_cannot_take_is_refused_naming_its_place_in_the_body(own_stack: Stack) -> None:
    args = [{"enabled": False}, {"enabled": True, "module": "canny", "model": CANNY, "image": b64(picture())},
            {"enabled": True, "module": "none", "model": "tiny-sdxl-controlnet", "image": b64(picture())}]
    status, answer = call("POST", f"{own_stack.api_url}/sdapi/v1/txt2img",
                          {**SMALL, "steps": 4, "alwayson_scripts": {"controlnet": {"args": args}}}, timeout=300)
    assert status == 400 and answer["error"]["field"] == "alwayson_scripts.controlnet.args.2.model", answer


def test_an_ip_adapter_unit_conditions_the_image(webui: webuiapi.WebUIApi) -> None:
    adapter = webuiapi.ControlNetUnit(image=picture(), module="ip-adapter_clip_sd15", model="tiny-ip-adapter-sd1",
                                      weight=0.8)
    adapted = webui.txt2img(**SMALL, seed=19, controlnet_units=[adapter], alwayson_scripts={})
    plain = webui.txt2img(**SMALL, seed=19, alwayson_scripts={})
    assert adapted.image.size == (64, 64) and adapted.image.tobytes() != plain.image.tobytes()
