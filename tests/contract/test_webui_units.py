"""The ControlNet extension's units as ``controlnets`` and ``ip_adapters`` (``runtime/contract/webui_units.py``).

Several units, units on img2img and inpainting, every preprocessor spotgen has by the extension's module names, and
IP-Adapter units as the extension takes them (module ``ip-adapter*``). One plain or Canny unit on txt2img stays the
``controlnet`` pipeline's (``test_webui_mapping``). Each job is validated as its pipeline's inputs.
"""

from __future__ import annotations

from typing import Any

import pytest

from runtime.contract import ContractError, webui_error
from runtime.contract.preprocessors import PREPROCESSORS
from tests.contract.webui_cases import NAMES, mapped, png, refused, unit, webuiapi_img2img, webuiapi_txt2img

IP = {"module": "ip-adapter_clip_sd15", "model": "ip-adapter_sd15 [6a3f6166]"}


def units(*args: dict[str, Any]) -> dict[str, Any]:
    return {"controlnet": {"args": list(args)}}


def test_several_units_are_controlnets_of_txt2img_in_their_order() -> None:
    first, second = png(512, 512), png(256, 256)
    job = mapped(webuiapi_txt2img(alwayson_scripts=units(
        unit(image=first, module="canny", threshold_a=80, threshold_b=160), unit(enabled=False),
        unit(image=second, weight=0.5, guidance_start=0.2, guidance_end=0.8, threshold_a=-1, threshold_b=-1))))
    assert job.pipeline == "txt2img" and "control_image" not in job.inputs
    assert job.inputs["controlnets"] == [
        {"id": "openpose-sd15", "image": first, "scale": 1.0, "start": 0.0, "end": 1.0, "preprocessor": "canny",
         "threshold_a": 80.0, "threshold_b": 160.0, "resolution": 512},
        {"id": "openpose-sd15", "image": second, "scale": 0.5, "start": 0.2, "end": 0.8, "preprocessor": "none"}]


@pytest.mark.parametrize(("changes", "task", "pipeline"), [
    ({}, "img2img", "img2img"), ({"mask": png(512, 512)}, "img2img", "inpaint"), ({"enable_hr": True}, "txt2img",
                                                                                   "txt2img"),
])
def test_a_unit_guides_img2img_inpainting_and_hires_fix_as_a_controlnet(changes: dict[str, Any], task: str,
                                                                          pipeline: str) -> None:
    body = (webuiapi_img2img if task == "img2img" else webuiapi_txt2img)(alwayson_scripts=units(unit()), **changes)
    job = mapped(body, task)
    assert (job.pipeline, len(job.inputs["controlnets"])) == (pipeline, 1)


@pytest.mark.parametrize("module", [m for m in PREPROCESSORS if m != "none"])
def test_every_preprocessor_spotgen_has_is_taken_by_its_module_name(module: str) -> None:
    scripts = units(unit(), unit(module=module, processor_res=384, pixel_perfect=False))
    read = mapped(webuiapi_txt2img(alwayson_scripts=scripts)).inputs["controlnets"][1]
    assert (read["preprocessor"], read["resolution"]) == (module, 384)


@pytest.mark.parametrize(("module", "preprocessor"), [
    ("invert (from white bg & black line)", "invert"), ("lineart_standard (from white bg & black line)",
                                                        "lineart_standard"),
    ("depth", "depth_midas"), ("hed", "softedge_hed"), ("pidinet", "softedge_pidinet"), ("None", "none"),
    ("Canny", "canny"),
])
def test_the_extensions_older_module_names_and_ui_labels(module: str, preprocessor: str) -> None:
    read = mapped(webuiapi_img2img(alwayson_scripts=units(unit(module=module))), "img2img").inputs["controlnets"][0]
    assert read["preprocessor"] == preprocessor


def test_pixel_perfect_runs_the_preprocessor_at_the_outputs_size() -> None:
    body = webuiapi_txt2img(width=768, height=512, alwayson_scripts=units(
        unit(image=png(768, 512), module="depth_midas", pixel_perfect=True, processor_res=512)))
    assert mapped(body).inputs["controlnets"][0]["resolution"] == 512
    body = webuiapi_txt2img(alwayson_scripts=units(unit(module="lineart_anime", processor_res=-1)))
    assert mapped(body).inputs["controlnets"][0]["resolution"] == 512  # the extension's -1: its default


def test_an_ip_adapter_unit_is_an_ip_adapter_by_its_files_name_or_alias() -> None:
    image = png(512, 512)
    job = mapped(webuiapi_txt2img(alwayson_scripts=units(unit(image=image, weight=0.6, **IP))))
    assert (job.pipeline, job.inputs["ip_adapters"]) == ("txt2img", [{"id": "ip-adapter_sd15", "image": image,
                                                                      "scale": 0.6}])
    assert "controlnets" not in job.inputs
    names = NAMES.model_copy(update={"ip_adapters": {"ip-adapter_sd15.safetensors": "ip-sd15"}})
    job = mapped(webuiapi_img2img(alwayson_scripts=units(unit(), unit(**{**IP, "module": "ip-adapter-auto"}))),
                 "img2img", names)
    assert (job.inputs["ip_adapters"][0]["id"], len(job.inputs["controlnets"])) == ("ip-sd15", 1)


def test_with_hires_fix_a_unit_guides_both_passes_and_another_hr_option_is_refused() -> None:
    body = webuiapi_txt2img(enable_hr=True, alwayson_scripts=units(unit(hr_option="Both")))
    assert len(mapped(body).inputs["controlnets"]) == 1
    for option in ("Low res only", "High res only"):
        body = webuiapi_txt2img(enable_hr=True, alwayson_scripts=units(unit(), unit(hr_option=option)))
        error = refused(body)
        assert (error.code, error.field) == ("unsupported_field", "alwayson_scripts.controlnet.args.1.hr_option")
    assert mapped(webuiapi_txt2img(alwayson_scripts=units(unit(hr_option="Low res only")))).pipeline == "controlnet"


@pytest.mark.parametrize(("job_field", "body_field"), [
    ("inputs.controlnets.0.id", "alwayson_scripts.ControlNet.args.2.model"),
    ("inputs.controlnets.1.image", "alwayson_scripts.ControlNet.args.4.input_image"),
    ("inputs.controlnets.1.resolution", "alwayson_scripts.ControlNet.args.4.processor_res"),
    ("inputs.ip_adapters.0.scale", "alwayson_scripts.ControlNet.args.3.weight"),
    ("inputs.ip_adapters.0", "alwayson_scripts.ControlNet.args.3"),
])
def test_an_error_in_a_unit_of_the_job_names_the_units_place_in_the_body(job_field: str, body_field: str) -> None:
    args = [unit(enabled=False), unit(enabled="false"), unit(), unit(**IP),
            {k: v for k, v in unit(input_image=png(), module="depth").items() if k != "image"}]
    body = webuiapi_txt2img(alwayson_scripts={"ControlNet": {"args": args}})
    error = webui_error(ContractError("invalid_field", f"{job_field}: bad", job_field), body)
    assert (error.field, error.message) == (body_field, f"{body_field}: bad")
    assert webui_error(ContractError("invalid_field", "x", "inputs.controlnets.5.id"), body).field == \
        "inputs.controlnets.5.id"  # no such unit: the job's own field
