"""WebUI's extras through the real ``webuiapi`` client (0.9.17) against ``/sdapi/v1`` of the compat group's
``spotgen dev`` (``own_stack``): ``extra_single_image`` and ``extra_batch_images`` with every default the client
sends, answered synchronously with what the worker's ``upscale`` job made, byte for byte what the pipeline's
upscalers make of the image here (so the job really ran the upscaler it was named), and refusals as the client
raises them (``RuntimeError(status, body)``) naming the field."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import pytest
import webuiapi
from PIL import Image

from pipelines.upscalers import upscale
from runtime.models.store import ModelStore
from tests.conftest import Stack


@pytest.fixture(scope="module")
def api(own_stack: Stack) -> webuiapi.WebUIApi:
    url = urlsplit(own_stack.api_url)
    return webuiapi.WebUIApi(host=url.hostname, port=url.port)


@pytest.fixture(scope="module")
def store(tiny_models: Path) -> ModelStore:
    return ModelStore(tiny_models)


def photo(width: int = 60, height: int = 44, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x * 4, y * 5, (x + y) * 2], -1) % 256 + rng.normal(0, 12, (height, width, 3))
    return Image.fromarray(np.clip(base, 0, 255).astype(np.uint8))


def same(a: Image.Image, b: Image.Image) -> bool:
    return a.size == b.size and np.array_equal(np.asarray(a.convert("RGB")), np.asarray(b.convert("RGB")))


def refusal(call: Any) -> tuple[int, dict[str, Any]]:
    with pytest.raises(RuntimeError) as raised:
        call()
    status, body = raised.value.args
    return status, json.loads(body)["error"]


def test_a_single_image_is_upscaled_by_the_named_upscaler(api: webuiapi.WebUIApi, store: ModelStore) -> None:
    """60x44 by 2 with tiny-esrgan: WebUI's 120x88 (multiples of 8), the model's own pixels."""
    image = photo()
    result = api.extra_single_image(image, upscaler_1="tiny-esrgan", upscaling_resize=2)
    (out,) = result.images
    assert same(out, upscale(store, "tiny-esrgan", image, (120, 88)))
    assert result.info == "<p>Postprocess upscale by: 2.0, Postprocess upscaler: tiny-esrgan</p>"


def test_a_second_upscaler_and_a_target_size_with_crop(api: webuiapi.WebUIApi, store: ModelStore) -> None:
    """To 100x100: covering means 100/44 = 2.27 times, 136x96 once rounded down to 8 as WebUI rounds; pasted
    centred on a black 100x100 canvas, as WebUI's "crop to fit". tiny-compact is blended over Lanczos at 0.25."""
    image = photo()
    result = api.extra_single_image(image, resize_mode=1, upscaling_resize_w=100, upscaling_resize_h=100,
                                    upscaler_1="Lanczos", upscaler_2="tiny-compact", extras_upscaler_2_visibility=0.25)
    blended = Image.blend(upscale(store, "lanczos", image, (136, 96)),
                          upscale(store, "tiny-compact", image, (136, 96)), 0.25)
    canvas = Image.new("RGB", (100, 100))
    canvas.paste(blended, (50 - 68, 50 - 48))
    assert same(result.images[0], canvas)
    assert "Postprocess upscaler 2: tiny-compact" in result.info


def test_a_batch_answers_every_image_in_order_and_none_leaves_them_as_they_are(api: webuiapi.WebUIApi) -> None:
    images = [photo(seed=1), photo(40, 24, seed=2)]
    result = api.extra_batch_images(images, name_list=["a.png", "b.png"], upscaler_1="Nearest", upscaling_resize=3)
    assert [out.size for out in result.images] == [(176, 128), (120, 72)]
    untouched = api.extra_batch_images(images, upscaler_1="None", upscaling_resize=3)
    assert all(same(out, image) for out, image in zip(untouched.images, images, strict=True))
    assert untouched.info == "<p></p>"


@pytest.mark.parametrize(("call", "field", "code"), [
    ({"gfpgan_visibility": 0.5}, "gfpgan_visibility", "unsupported_field"),
    ({"codeformer_visibility": 0.2, "codeformer_weight": 0.5}, "codeformer_visibility", "unsupported_field"),
    ({"upscaler_1": "R-ESRGAN 4x+"}, "upscaler_1", "unknown_model"),  # the client's name, not served here
    ({"upscaler_1": "Lanczos", "resize_mode": 1, "upscaling_resize_w": 8000, "upscaling_resize_h": 8000},
     "upscaling_resize_w", "invalid_field"),  # more pixels than an image may have
])
def test_refusals_name_the_field(api: webuiapi.WebUIApi, call: dict[str, Any], field: str, code: str) -> None:
    status, error = refusal(lambda: api.extra_single_image(photo(), **call))
    assert (status, error["code"], error["field"]) == (400, code, field), error
    assert field in error["message"]


def test_a_bad_image_of_a_batch_is_named_by_its_place(api: webuiapi.WebUIApi) -> None:
    body = {"upscaler_1": "Lanczos", "imageList": [{"data": webuiapi.raw_b64_img(photo()), "name": "a"},
                                                   {"data": "bm90IGFuIGltYWdl", "name": "b"}]}
    with pytest.raises(RuntimeError) as raised:
        api.post_and_get_api_result(f"{api.baseurl}/extra-batch-images", body, False)
    status, answer = raised.value.args
    assert status == 400 and json.loads(answer)["error"]["field"] == "imageList.1.data", answer


def test_the_api_refuses_a_second_upscaler_it_does_not_serve_naming_it() -> None:
    """``POST /v1/jobs`` too: ``lambdas/edits.py`` checks ``upscaler_2`` as it checks the model."""
    from lambdas.edits import check_edits
    from runtime.config import Settings
    from runtime.contract import ContractError, UpscaleInputs

    settings = Settings()
    for accepted in ("lanczos", "tiny-compact"):
        check_edits(settings, "nearest", UpscaleInputs.model_construct(image="s3://b/k.png", upscaler_2=accepted))
    with pytest.raises(ContractError) as caught:
        check_edits(settings, "nearest", UpscaleInputs.model_construct(image="s3://b/k.png", upscaler_2="tiny-sd"))
    assert caught.value.field == "inputs.upscaler_2" and "unknown upscaler 'tiny-sd'" in caught.value.message


def test_an_alias_may_name_an_upscaler() -> None:
    """``SPOTGEN_ALIASES`` gives a catalog upscaler WebUI's name (runtime/config.py accepts upscaler targets)."""
    from types import SimpleNamespace

    from lambdas.extras import names
    from runtime.config import Settings

    settings = Settings(aliases={"R-ESRGAN 4x+": "tiny-esrgan"})
    assert names(SimpleNamespace(settings=settings))["R-ESRGAN 4x+"] == "tiny-esrgan"  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="not one of the models, ControlNets, LoRAs or upscalers"):
        Settings(aliases={"SwinIR 4x": "swinir"})


def test_a_wait_that_runs_out_names_the_job_still_running_and_all_of_them() -> None:
    """As ``/sdapi/v1/txt2img``: a 504 whose body and ``Location`` give the job's status URL (the key's route)."""
    from types import SimpleNamespace

    from lambdas.extras import collect
    from lambdas.submit import Queued

    dep = SimpleNamespace(settings=SimpleNamespace(public_url="https://api.example/", sync_wait_s=25.0))
    waited: list[str] = []
    answer = collect(dep, [Queued("job-a", 1, False), Queued("job-b", 2, False)],  # type: ignore[arg-type]
                     lambda _, job_id, seconds: waited.append(job_id))  # type: ignore[func-returns-value]
    assert isinstance(answer, dict) and answer["statusCode"] == 504 and waited == ["job-a"]
    body = json.loads(answer["body"])
    assert body["status_url"] == answer["headers"]["Location"] == "https://api.example/sdapi/v1/spotgen/jobs/job-a"
    assert body["ids"] == ["job-a", "job-b"] and "25 s (SPOTGEN_SYNC_WAIT_S)" in body["error"]["message"]
