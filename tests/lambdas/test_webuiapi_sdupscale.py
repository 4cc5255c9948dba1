"""WebUI's img2img script "SD upscale" through the real ``webuiapi`` client on a running ``spotgen dev`` (issue 29,
item 3): ``script_name="SD upscale"`` with ``script_args=[info, overlap, upscaler_index, scale_factor]``, the
upscaler by its index in the client's own ``get_upscalers()``, answers the upscaled image the ``sd_upscale``
pipeline makes of the same inputs; a bad argument is a 400 naming ``script_args.N``. The compat group's stack."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import webuiapi
from PIL import Image, ImageDraw

from lambdas.compat import check_answer_size
from runtime.contract import ContractError, Names, from_webui, webui_parameters
from runtime.kit.local import LocalRun
from tests.conftest import Stack
from tests.rest import call


def picture() -> Image.Image:
    image = Image.new("RGB", (80, 64), (30, 60, 90))
    ImageDraw.Draw(image).ellipse((10, 8, 70, 56), fill=(230, 200, 40))
    return image


def test_sd_upscale_through_webuiapi_is_the_sd_upscale_pipeline(webui: webuiapi.WebUIApi, own_stack: Stack,
                                                                  tiny_models: Path) -> None:
    names = [upscaler["name"] for upscaler in webui.get_upscalers()]
    lanczos = names.index("Lanczos")
    result = webui.img2img(images=[picture()], prompt="a sunflower", width=64, height=48, steps=3, seed=5,
                           denoising_strength=0.67, script_name="SD upscale",
                           script_args=[None, 16, lanczos, 1.25], alwayson_scripts={})
    assert result.image.size == (96, 80)  # 80x64 x 1.25, rounded down to multiples of 8: 2 x 2 tiles of 64x48
    assert result.info["seed"] == 5 and result.info["width"] == 64
    native = LocalRun(tiny_models).run(
        "sd_upscale", "tiny-sd", {"prompt": "a sunflower", "width": 64, "height": 48, "steps": 3, "strength": 0.67,
                                  "scheduler": "euler_a", "guidance_scale": 7.0, "upscaler": "lanczos",
                                  "scale": 1.25, "overlap": 16}, seed=5, images={"image": picture()})
    assert result.image.convert("RGB").tobytes() == native.images[0].tobytes()


def test_a_bad_script_arg_is_refused_naming_it(own_stack: Stack) -> None:
    body = {"init_images": [_b64(picture())], "prompt": "x", "width": 64, "height": 48, "steps": 2,
            "script_name": "SD upscale", "script_args": [None, 16, 999, 2]}
    status, answer = call("POST", f"{own_stack.api_url}/sdapi/v1/img2img", body, timeout=60)
    assert status == 400 and answer["error"]["field"] == "script_args.2", answer


def _b64(image: Image.Image) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def test_the_sync_answer_is_sized_at_the_upscaled_image() -> None:
    """Lambda's 6 MB response limit is checked against the upscaled image, not the tile: 1024² x 4 is refused before
    it runs, naming the scale factor; x 1 fits."""
    big = _b64(Image.new("RGB", (1024, 1024)))
    for scale, fits in ((4, False), (1, True)):
        body = {"init_images": [big], "prompt": "x", "width": 512, "height": 512, "script_name": "SD upscale",
                "script_args": [None, 64, 1, scale]}
        job = from_webui(body, "img2img", Names(models={"sd": "sd"}, default_model="sd"))
        try:
            check_answer_size(job, job.inputs, body, webui_parameters(body), "sd", 6_000_000)
            refused = None
        except ContractError as exc:
            refused = exc
        assert (refused is None) == fits and (fits or refused.field == "script_args.3"), (scale, refused)
