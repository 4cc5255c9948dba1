"""WebUI bodies read as WebUI 1.10's pydantic v1 models read them (``runtime/contract/webui_coerce.py``).

Clients send ``"inpainting_mask_invert": false``, ``"width": "512"`` or ``"cfg_scale": 7`` and WebUI answers with
an image: pydantic v1 turns them into the declared types. These bodies map here as on WebUI, and what pydantic v1
refuses is refused naming the field (``test_webui_refusals``).
"""

from __future__ import annotations

from typing import Any

import pytest

from runtime.contract import ContractError
from runtime.contract.webui_coerce import coerce
from tests.contract.webui_cases import mapped, unit, webuiapi_img2img, webuiapi_txt2img


@pytest.mark.parametrize(("kind", "value", "expected"), [
    ("int", "64", 64), ("int", " 64\n", 64), ("int", "+7", 7), ("int", 7.9, 7), ("int", -7.9, -7), ("int", True, 1),
    ("int", False, 0), ("num", 7, 7.0), ("num", "7.5", 7.5), ("num", "1e1", 10.0), ("num", True, 1.0),
    ("str", 5, "5"), ("str", 7.5, "7.5"), ("str", True, "True"), ("bool", 0, False), ("bool", 1.0, True),
    ("bool", "Yes", True), ("bool", "off", False), ("bool", "T", True), ("bool", "0", False),
    ("list", [], []), ("dict", [], {}), ("dict", [["k", 1]], {"k": 1}),
])
def test_pydantic_v1s_coercions(kind: str, value: Any, expected: Any) -> None:
    got = coerce(value, kind, "f")
    assert (got, type(got)) == (expected, type(expected))


@pytest.mark.parametrize(("kind", "value"), [
    ("int", "7.5"), ("int", "1e3"), ("int", "abc"), ("int", ""), ("int", [1]), ("int", None), ("num", "abc"),
    ("num", [1.0]), ("num", {}), ("str", []), ("str", {}), ("bool", 2), ("bool", 0.5), ("bool", "maybe"),
    ("bool", ""), ("bool", []), ("list", "abc"), ("list", {}), ("list", 1), ("dict", 1), ("dict", ["abc"]),
])
def test_what_pydantic_v1_refuses(kind: str, value: Any) -> None:
    with pytest.raises(ContractError) as caught:
        coerce(value, kind, "f")
    assert (caught.value.code, caught.value.field) == ("invalid_field", "f")


@pytest.mark.parametrize(("changes", "key", "expected"), [
    ({"width": "256", "height": 320.0}, "width", 256), ({"height": 320.0}, "height", 320),
    ({"steps": "30"}, "steps", 30), ({"steps": 20.9}, "steps", 20), ({"cfg_scale": "7.5"}, "guidance_scale", 7.5),
    ({"cfg_scale": 7}, "guidance_scale", 7.0), ({"cfg_scale": True}, "guidance_scale", 1.0),
    ({"seed": "7"}, "seed", 7), ({"prompt": 1}, "prompt", "1"), ({"negative_prompt": 5}, "negative_prompt", "5"),
    ({"batch_size": "2", "n_iter": True}, "num_images", 2),
])
def test_txt2img_values_are_read_as_webuis_models_read_them(changes: dict[str, Any], key: str,
                                                            expected: Any) -> None:
    got = mapped(webuiapi_txt2img(**changes)).inputs[key]
    assert (got, type(got)) == (expected, type(expected))


@pytest.mark.parametrize("changes", [
    {"restore_faces": 0}, {"restore_faces": "false"}, {"tiling": "no"}, {"enable_hr": 0}, {"styles": None},
    {"override_settings": []}, {"s_noise": "1"}, {"subseed_strength": "0"}, {"send_images": 1},
    {"save_images": "off"}, {"override_settings_restore_afterwards": "true"}, {"seed_resize_from_h": "-1"},
])
def test_defaults_written_in_other_types_are_still_the_defaults(changes: dict[str, Any]) -> None:
    assert mapped(webuiapi_txt2img(**changes)).inputs == mapped(webuiapi_txt2img()).inputs


@pytest.mark.parametrize("changes", [
    {"inpainting_mask_invert": False, "mask": None}, {"inpainting_mask_invert": "0"}, {"inpaint_full_res": 1},
    {"mask_blur": "4"}, {"inpainting_fill": 1.0}, {"include_init_images": "false"}, {"resize_mode": False},
])
def test_img2img_takes_booleans_where_webui_declares_integers_and_the_like(changes: dict[str, Any]) -> None:
    job = mapped(webuiapi_img2img(**changes), "img2img")
    assert job.inputs == mapped(webuiapi_img2img(), "img2img").inputs
    assert mapped(webuiapi_img2img(denoising_strength="0.5"), "img2img").inputs["strength"] == 0.5


def test_a_controlnet_units_fields_are_read_as_the_extensions_pydantic_model_reads_them() -> None:
    scripts = {"controlnet": {"args": [unit(enabled="true", weight="0.5", guidance_end=1)]}}
    inputs = mapped(webuiapi_txt2img(alwayson_scripts=scripts)).inputs
    assert (inputs["controlnet_conditioning_scale"], inputs["control_guidance_end"]) == (0.5, 1.0)
    assert "control_image" not in mapped(webuiapi_txt2img(alwayson_scripts={"controlnet": {"args": [
        unit(enabled="off")]}})).inputs
