"""The ControlNet extension's own routes (``/controlnet/version``, ``model_list``, ``module_list``, ``detect``):
through the real ``webuiapi`` client against the compat group's ``spotgen dev`` (``own_stack``, behind its API key
like ``/sdapi/v1``), ``detect`` running a real ``controlnet_detect`` job whose map is the preprocessor's own; and the
body's rules (``runtime.contract.controlnet_ext``) without a stack."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import pytest
import webuiapi
from PIL import Image, ImageDraw

from lambdas.authorizer import COMPAT_PATH_RE
from pipelines.preprocess import preprocess
from runtime.contract import ContractError
from runtime.contract.controlnet_ext import detect_error, detect_jobs
from runtime.contract.preprocessors import WEIGHT_FREE
from tests.conftest import Stack


@pytest.fixture(scope="module")
def api(own_stack: Stack) -> webuiapi.WebUIApi:
    url = urlsplit(own_stack.api_url)
    return webuiapi.WebUIApi(host=url.hostname, port=url.port)


def shapes() -> Image.Image:
    """An ellipse on a noisy gradient: edges of every strength, so that each threshold changes the map."""
    rng = np.random.default_rng(5)
    y, x = np.mgrid[0:64, 0:96]
    base = np.stack([x * 2, y * 3, (x + y)], -1) + rng.normal(0, 25, (64, 96, 3))
    image = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8))
    ImageDraw.Draw(image).ellipse((20, 10, 70, 55), fill=(220, 200, 40))
    return image


def test_the_listings_are_the_extensions_with_what_spotgen_has(api: webuiapi.WebUIApi) -> None:
    assert api.controlnet_version() == 2
    assert "control_v11p_sd15_canny" in api.controlnet_model_list()  # the tiny ControlNet's alias: a unit's model
    assert api.controlnet_module_list() == list(WEIGHT_FREE)
    detail = api.custom_get("controlnet/module_list")["module_detail"]
    assert detail["canny"] == {"model_free": False, "sliders": []}
    types = api.custom_get("controlnet/control_types")["control_types"]
    assert list(types)[:3] == ["All", "Canny", "Depth"] and len(types) == 21  # the extension's, in its order
    assert types["Canny"] == {"module_list": ["none", "canny"], "default_option": "canny",
                              "model_list": ["None", "control_v11p_sd15_canny", "controlnet-canny-sdxl-1.0"],
                              "default_model": "control_v11p_sd15_canny"}
    assert types["All"]["module_list"] == list(WEIGHT_FREE) and types["All"]["default_model"] == "None"
    assert types["Depth"] == {"module_list": ["none"], "model_list": ["None"], "default_option": "none",
                              "default_model": "None"}  # nothing of that type here: an honest empty list
    assert types["Tile/Blur"]["module_list"] == ["none", "tile_resample", "tile_colorfix", "tile_colorfix+sharp",
                                                 "blur_gaussian"]
    assert api.custom_get("controlnet/settings") == {"control_net_unit_count": 4}


def test_detect_answers_the_preprocessors_map(api: webuiapi.WebUIApi) -> None:
    """The client's call (its ``controlnet_images``, threshold 64/64, resolution 512), then the extension's own
    field names with the thresholds at -1 (the module's defaults): each map is ``preprocess``'s."""
    image = shapes()
    answer = api.controlnet_detect([image], module="canny", processor_res=64, threshold_a=50, threshold_b=150)
    assert answer.json["info"] == "Success" and set(answer.json) == {"info", "images"}
    (canny,) = answer.images
    assert np.array_equal(np.asarray(canny), np.asarray(preprocess(image, "canny", 50, 150, 64)))
    assert not np.array_equal(np.asarray(canny), np.asarray(preprocess(image, "canny", None, 150, 64)))
    body = {"controlnet_module": "blur_gaussian", "controlnet_input_images": [webuiapi.raw_b64_img(image)] * 2,
            "controlnet_threshold_a": -1, "controlnet_processor_res": "80"}
    answer = api.custom_post("controlnet/detect", body)
    expected = np.asarray(preprocess(image, "blur_gaussian", None, None, 80))
    assert [np.array_equal(np.asarray(m.convert("RGB")), expected) for m in answer.images] == [True, True]


@pytest.mark.parametrize(("body", "field", "code"), [
    ({"controlnet_module": "openpose"}, "controlnet_module", "unsupported_preprocessor"),
    ({"controlnet_module": "warp"}, "controlnet_module", "invalid_field"),
    ({"controlnet_module": "canny"}, "controlnet_input_images", "invalid_field"),
    ({"controlnet_module": "canny", "controlnet_input_images": ["bm90IGFuIGltYWdl"]}, "controlnet_input_images.0",
     "invalid_field"),
    ({"controlnet_module": "canny", "controlnet_processor_res": 10}, "controlnet_processor_res", "invalid_field"),
    ({"controlnet_module": "canny", "pixel_perfect": True}, "pixel_perfect", "unknown_field"),
])
def test_detect_refuses_naming_the_field(api: webuiapi.WebUIApi, body: dict[str, Any], field: str,
                                         code: str) -> None:
    if "controlnet_input_images" not in body and field != "controlnet_input_images":
        body = {**body, "controlnet_input_images": [webuiapi.raw_b64_img(shapes())]}
    with pytest.raises(RuntimeError) as raised:
        api.post_and_get_api_result(f"{api.baseurl.removesuffix('/sdapi/v1')}/controlnet/detect", body, False)
    status, answer = raised.value.args
    error = json.loads(answer)["error"]
    assert (status, error["code"], error["field"]) == (400, code, field), error


def test_the_routes_take_the_api_key_and_other_methods_are_refused(own_stack: Stack) -> None:
    import urllib.error
    import urllib.request

    for path in ("/controlnet/version", "/controlnet/detect", "/controlnet/anything"):
        assert COMPAT_PATH_RE.match(path), path
    request = urllib.request.Request(f"{own_stack.api_url}/controlnet/detect", method="GET")
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(request, timeout=30)
    assert caught.value.code == 405 and caught.value.headers["Allow"] == "POST"
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(f"{own_stack.api_url}/controlnet/render_openpose_json", timeout=30)
    assert caught.value.code == 404 and b"control_types" in caught.value.read()  # it names the routes served


def test_minus_one_is_the_modules_default_and_errors_name_the_bodys_field() -> None:
    (inputs, field), = detect_jobs({"controlnet_module": "canny", "controlnet_input_images": ["x"]})
    assert inputs == {"image": "x", "preprocessor": "canny", "resolution": 512, "threshold_a": None,
                      "threshold_b": None} and field == "controlnet_input_images.0"
    error = detect_error(ContractError("invalid_field", "inputs.resolution: too big", "inputs.resolution"), field)
    assert (error.field, error.message) == ("controlnet_processor_res", "controlnet_processor_res: too big")
    with pytest.raises(ContractError) as caught:
        detect_jobs({"controlnet_module": "canny", "controlnet_input_images": ["x"] * 9})
    assert caught.value.field == "controlnet_input_images"
