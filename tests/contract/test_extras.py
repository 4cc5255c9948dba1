"""WebUI's extras bodies (``/sdapi/v1/extra-single-image``, ``extra-batch-images``) as ``upscale`` jobs: what each
field of WebUI 1.10's ``ExtrasBaseRequest`` becomes, its coercions and defaults, the refusals naming the field,
and WebUI's ``html_info`` (``scripts/postprocessing_upscale.py``'s infotext through ``plaintext_to_html``)."""

from __future__ import annotations

from typing import Any

import pytest

from runtime.contract import ContractError, UpscaleInputs
from runtime.contract.extras import extras_error, extras_html_info, extras_jobs, upscaler_names

NAMES = upscaler_names(["tiny-esrgan", "tiny-compact"], {"R-ESRGAN 4x+": "tiny-esrgan", "sd15": "tiny-sd"})
IMAGE = "iVBORw0KGgo="  # the image is judged by the upscale job's contract, not here


def jobs(body: dict[str, Any], batch: bool = False) -> list[tuple[str, dict[str, Any]]]:
    found, _ = extras_jobs({"image": IMAGE, **body} if not batch else body, batch, NAMES)
    return [(job.model, job.inputs) for job in found]


def test_webuis_names_reach_the_upscalers_and_nothing_else() -> None:
    assert NAMES == {"Lanczos": "lanczos", "Nearest": "nearest", "lanczos": "lanczos", "nearest": "nearest",
                     "tiny-esrgan": "tiny-esrgan", "tiny-compact": "tiny-compact", "R-ESRGAN 4x+": "tiny-esrgan"}


def test_scale_by_is_the_scale_with_webuis_rounding_to_eight() -> None:
    assert jobs({"upscaler_1": "R-ESRGAN 4x+", "upscaling_resize": 3}) == [
        ("tiny-esrgan", {"image": IMAGE, "multiple_of": 8, "scale": 3.0})]
    assert jobs({"upscaler_1": "Lanczos"}) == [("lanczos", {"image": IMAGE, "multiple_of": 8, "scale": 2.0})]


def test_scale_to_covers_the_size_and_crops_unless_told_not_to() -> None:
    body = {"upscaler_1": "tiny-compact", "resize_mode": 1, "upscaling_resize_w": 640, "upscaling_resize_h": 480}
    assert jobs(body) == [("tiny-compact", {"image": IMAGE, "multiple_of": 8, "width": 640, "height": 480,
                                            "crop": True})]
    assert jobs({**body, "upscaling_crop": False})[0][1]["crop"] is False


def test_the_second_upscaler_is_blended_only_when_visible() -> None:
    body = {"upscaler_1": "Nearest", "upscaler_2": "R-ESRGAN 4x+", "extras_upscaler_2_visibility": 0.4}
    assert jobs(body)[0][1] == {"image": IMAGE, "multiple_of": 8, "scale": 2.0, "upscaler_2": "tiny-esrgan",
                                "upscaler_2_visibility": 0.4}
    assert "upscaler_2" not in jobs({**body, "extras_upscaler_2_visibility": 0})[0][1]


def test_no_first_upscaler_leaves_the_image_as_it_is() -> None:
    """WebUI returns before upscaling (its second upscaler and a target size too)."""
    body = {"upscaler_1": "None", "upscaler_2": "Lanczos", "extras_upscaler_2_visibility": 1, "resize_mode": 1}
    assert jobs(body) == [("nearest", {"image": IMAGE, "scale": 1.0})]


def test_pydantic_v1s_coercions_are_webuis() -> None:
    """Clients send numbers as strings and 0/1 for booleans; WebUI's models (pydantic v1) take them."""
    body = {"upscaler_1": "Lanczos", "upscaling_resize": "1.5", "upscaling_crop": 0, "upscale_first": "true",
            "show_extras_results": 1, "resize_mode": 1, "upscaling_resize_w": "64", "upscaling_resize_h": 32.0}
    assert jobs(body)[0][1] == {"image": IMAGE, "multiple_of": 8, "width": 64, "height": 32, "crop": False}


def test_a_batch_is_one_job_per_image_named_by_its_place() -> None:
    body = {"upscaler_1": "Lanczos", "imageList": [{"data": IMAGE, "name": "a.png"}, {"data": "x", "name": "b"}]}
    found, _ = extras_jobs(body, True, NAMES)
    assert [job.image_field for job in found] == ["imageList.0.data", "imageList.1.data"]
    assert [job.inputs["image"] for job in found] == [IMAGE, "x"]


@pytest.mark.parametrize(("body", "field", "code"), [
    ({"gfpgan_visibility": 0.5}, "gfpgan_visibility", "unsupported_field"),
    ({"codeformer_visibility": 1}, "codeformer_visibility", "unsupported_field"),
    ({"gfpgan_visibility": 1.5}, "gfpgan_visibility", "invalid_field"),  # WebUI's own bound
    ({"upscaler_1": "SwinIR 4x"}, "upscaler_1", "unknown_model"),
    ({"upscaler_1": "sd15"}, "upscaler_1", "unknown_model"),  # an alias of a base model is no upscaler
    ({"upscaler_1": "Lanczos", "upscaler_2": "LDSR"}, "upscaler_2", "unknown_model"),
    ({"upscaling_resize": 9}, "upscaling_resize", "invalid_field"),
    ({"upscaling_resize": "big"}, "upscaling_resize", "invalid_field"),
    ({"resize_mode": 2}, "resize_mode", "invalid_field"),
    ({"upscaling_resize_w": 0}, "upscaling_resize_w", "invalid_field"),
    ({"extras_upscaler_2_visibility": -0.1}, "extras_upscaler_2_visibility", "invalid_field"),
    ({"max_side_length": 1024}, "max_side_length", "unknown_field"),  # not in WebUI 1.10's API model
])
def test_refusals_name_the_field(body: dict[str, Any], field: str, code: str) -> None:
    with pytest.raises(ContractError) as caught:
        jobs({"upscaler_1": "Lanczos", **body})
    assert (caught.value.code, caught.value.field) == (code, field), caught.value.message
    assert field in caught.value.message


def test_a_batch_without_images_or_a_body_that_is_no_object_is_refused() -> None:
    for body, batch, field in (({"imageList": []}, True, "imageList"), ({}, True, "imageList"), ([], False, "body")):
        with pytest.raises(ContractError) as caught:
            extras_jobs(body, batch, NAMES)
        assert caught.value.field == field


def test_a_jobs_error_names_the_body_field() -> None:
    found, _ = extras_jobs({"upscaler_1": "Lanczos", "imageList": [{"data": "a", "name": ""}] * 2}, True, NAMES)
    error = extras_error(ContractError("invalid_field", "inputs.image: not an image", "inputs.image"), found[1])
    assert (error.field, error.message) == ("imageList.1.data", "imageList.1.data: not an image")
    error = extras_error(ContractError("invalid_field", "inputs.scale: too big", "inputs.scale"), found[0])
    assert (error.field, error.message) == ("upscaling_resize", "upscaling_resize: too big")


@pytest.mark.parametrize(("body", "html"), [
    ({"upscaler_1": "R-ESRGAN 4x+"}, "<p>Postprocess upscale by: 2.0, Postprocess upscaler: R-ESRGAN 4x+</p>"),
    ({"upscaler_1": "Lanczos", "upscaler_2": "Nearest", "extras_upscaler_2_visibility": 0.5, "resize_mode": 1,
      "upscaling_resize_w": 640, "upscaling_resize_h": 480},
     "<p>Postprocess upscale to: 640x480, Postprocess crop to: 640x480, Postprocess upscaler: Lanczos, "
     "Postprocess upscaler 2: Nearest</p>"),
    ({"upscaler_1": "None"}, "<p></p>"),
])
def test_html_info_is_webuis(body: dict[str, Any], html: str) -> None:
    _, request = extras_jobs({"image": IMAGE, **body}, False, NAMES)
    assert extras_html_info(request) == html


def test_every_job_is_a_valid_upscale_job() -> None:
    import base64
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, format="PNG")
    png = base64.b64encode(buffer.getvalue()).decode()
    for body in ({"upscaler_1": "tiny-esrgan", "resize_mode": 1, "upscaler_2": "Lanczos",
                  "extras_upscaler_2_visibility": 0.3}, {"upscaler_1": "None"}, {"upscaler_1": "Nearest"}):
        found, _ = extras_jobs({**body, "image": png}, False, NAMES)
        fields = UpscaleInputs.model_validate(found[0].inputs, context={"input_bucket": "inputs"})
        assert fields.image == png
