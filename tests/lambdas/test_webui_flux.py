"""Flux.1 and SD 3.5 checkpoints through the compatibility routes, as Forge serves them (``webui_families``).

``/sdapi/v1`` and the AWS sample's ``/v1alpha2`` name these models by the files people download
(``flux1-dev.safetensors``, ``sd3.5_large_turbo.safetensors``: the tiny catalog's aliases) and take Forge's
``distilled_cfg_scale``. The refusals are checked on the routes' Lambda code in this process against the stack's
emulator (nothing runs); the jobs run on the compatibility modules' shared ``spotgen dev``: the real ``webuiapi``
client with a Flux dev and a Flux schnell checkpoint at its own defaults (cfg_scale 7, which an unguided model does
not get), and a v1alpha2 task with a Flux checkpoint.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest
import webuiapi

from lambdas import compat, sample, sdapi
from lambdas.common import Deployment
from runtime.config import Runtime
from runtime.contract import WEBUI_SAMPLERS, from_webui
from runtime.contract.families import FAMILIES
from tests.conftest import Stack
from tests.lambdas.compat_stack import in_process, stack_fixture  # noqa: F401 - stack_fixture
from tests.lambdas.test_compat_sample import note_of, s3_json
from tests.rest import call

DEV, SCHNELL, FILL = "flux1-dev.safetensors", "flux1-schnell.safetensors", "flux1-fill-dev.safetensors"
MEDIUM, TURBO = "sd3.5_medium.safetensors", "sd3.5_large_turbo.safetensors"
SMALL: dict[str, Any] = {"prompt": "a red fox", "width": 64, "height": 64, "steps": 4}


@pytest.fixture(scope="module")
def dep(stack: Stack) -> Iterator[Deployment]:
    """The stack's Lambda code in this process, shared by the module's refusals (they store nothing)."""
    with pytest.MonkeyPatch.context() as monkeypatch:
        yield in_process(stack, monkeypatch)


def txt2img(dep: Deployment, checkpoint: str, **body: Any) -> tuple[int, dict[str, Any]]:
    """``POST /sdapi/v1/txt2img`` on the Lambda code: refused ones answer before anything is queued."""
    settings = {"sd_model_checkpoint": checkpoint, **body.pop("override_settings", {})}
    event = {"body": json.dumps({**SMALL, "override_settings": settings, **body}),
             "requestContext": {"http": {"method": "POST", "sourceIp": "127.0.0.28"}}}
    answer = sdapi.generate(dep, event, "txt2img")
    return answer["statusCode"], json.loads(answer["body"])


def test_the_checkpoints_are_named_by_their_files_as_forge_lists_them(stack: Stack, dep: Deployment) -> None:
    listed = {m["model_name"]: m for m in call("GET", f"{stack.api_url}/sdapi/v1/sd-models")[1]}
    expected = {"tiny-flux": DEV, "tiny-flux-schnell": SCHNELL, "tiny-flux-fill": FILL, "tiny-sd3": MEDIUM,
                "tiny-sd3-turbo": TURBO}
    assert {model: (listed[model]["title"], listed[model]["filename"]) for model in expected} == {
        model: (name, name) for model, name in expected.items()}
    names = compat.names(dep.settings).model_copy(update={"variants": {}})  # the names alone (Fill is refused)
    for model, name in expected.items():  # a title, a bare name, a title with Forge's short hash, a folder
        for written in (name, name.removesuffix(".safetensors"), f"{name} [a1b2c3d4e5]", f"Flux/{name}"):
            job = from_webui({**SMALL, "override_settings": {"sd_model_checkpoint": written}}, "txt2img", names)
            assert job.model == model, written


def test_distilled_cfg_scale_is_flux_guidance_and_cfg_scale_skips_unguided_models(dep: Deployment) -> None:
    names = compat.names(dep.settings)

    def inputs(checkpoint: str, **body: Any) -> dict[str, Any]:
        body = {**SMALL, "cfg_scale": 7.0, **body, "override_settings": {"sd_model_checkpoint": checkpoint}}
        return from_webui(body, "txt2img", names).inputs

    assert (inputs(DEV)["guidance"], inputs(DEV)["guidance_scale"]) == (3.5, 7.0)  # Forge's default; true CFG
    assert (inputs(DEV, distilled_cfg_scale=2.5, cfg_scale=1)["guidance"]) == 2.5
    for unguided in (SCHNELL, TURBO):  # the 7 every WebUI client sends is not forwarded
        assert inputs(unguided)["guidance_scale"] == 1.0 and "guidance" not in inputs(unguided)
    assert inputs(MEDIUM)["guidance_scale"] == 7.0 and "guidance" not in inputs(MEDIUM)
    assert inputs(DEV, scheduler="Simple")["schedule"] == "default"  # Forge's Flux schedule is the model's own
    for sampler in FAMILIES["flux"].samplers or {}:  # Automatic: the model's own, not WebUI's Karras for DPM++ 2M
        assert inputs(DEV, sampler_name=WEBUI_SAMPLERS[sampler])["schedule"] == "default", sampler
    assert inputs("v1-5-pruned-emaonly.safetensors", sampler_name="DPM++ 2M")["schedule"] == "karras"
    assert inputs(DEV, enable_hr=False, hr_cfg=1.0, hr_distilled_cfg=3.5)  # Forge's, which hires fix off ignores


@pytest.mark.parametrize(("checkpoint", "body", "field", "phrase"), [
    (SCHNELL, {"distilled_cfg_scale": 3.5}, "distilled_cfg_scale", "without guidance"),
    (MEDIUM, {"distilled_cfg_scale": 3.5}, "distilled_cfg_scale", "only flux models"),
    ("v1-5-pruned-emaonly.safetensors", {"distilled_cfg_scale": 2.0}, "distilled_cfg_scale", "only flux models"),
    (DEV, {"sampler_name": "Euler a"}, "sampler_name", "'Euler a' is not one of them"),
    (MEDIUM, {"sampler_index": "DDIM", "eta": 0}, "sampler_index", "'DDIM' is not one of them"),
    (TURBO, {"scheduler": "SGM Uniform"}, "scheduler", "Automatic, Karras, Exponential"),
    ("v1-5-pruned-emaonly.safetensors", {"scheduler": "Simple"}, "scheduler", "Flux and SD 3.5"),
    (DEV, {"width": 72}, "width", "multiples of 16"),
    (TURBO, {"height": 40}, "height", "multiples of 16"),
    (DEV, {"override_settings": {"CLIP_stop_at_last_layers": 2}}, "override_settings.CLIP_stop_at_last_layers",
     "not for flux models"),
    (FILL, {}, "override_settings.sd_model_checkpoint", "an inpainting model"),
    ("sd_xl_refiner_1.0.safetensors", {}, "override_settings.sd_model_checkpoint", "SDXL's refiner"),
])
def test_what_the_family_cannot_run_is_refused_naming_the_webui_field(
        dep: Deployment, checkpoint: str, body: dict[str, Any], field: str, phrase: str) -> None:
    status, answer = txt2img(dep, checkpoint, **body)
    assert status == 400 and answer["error"]["field"] == field, answer
    assert phrase in answer["error"]["message"] and answer["error"]["message"].startswith(field), answer


@pytest.mark.parametrize(("checkpoint", "body", "field"), [
    (SCHNELL, {"distilled_cfg_scale": 4.0}, "task.content.distilled_cfg_scale"),
    (FILL, {}, "task.content.alwayson_scripts.sd_model_checkpoint"),
])
def test_the_sample_route_names_the_field_in_its_envelope(dep: Deployment, checkpoint: str, body: dict[str, Any],
                                                          field: str) -> None:
    task = {"task": {"metadata": {"id": f"t-{uuid.uuid4().hex[:12]}", "runtime": "sdruntime",
                                  "tasktype": "text-to-image", "prefix": "output"},
                     "content": {**SMALL, **body, "alwayson_scripts": {"sd_model_checkpoint": checkpoint}}}}
    answer = sample.v1alpha2(dep, json.dumps(task).encode())
    error = json.loads(answer["body"])["error"]
    assert answer["statusCode"] == 400 and error["field"] == field, error


def test_options_serve_a_flux_runtime(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    """A deployment whose ``/sdapi/v1`` runtime is Flux dev: the options name its file, setting it (or another
    Flux checkpoint, kept for the caller) is accepted, and a body naming no checkpoint runs on it with Forge's
    distilled guidance."""
    dep = in_process(stack, monkeypatch, runtimes={"sdruntime": Runtime(model="tiny-flux")})
    assert sdapi.options(dep)["sd_model_checkpoint"] == DEV
    event = {"body": json.dumps({"sd_model_checkpoint": DEV}),
             "requestContext": {"http": {"method": "POST", "sourceIp": "127.0.0.29"}}}
    assert sdapi.set_options(dep, event)["statusCode"] == 200
    event["body"] = json.dumps({"sd_model_checkpoint": SCHNELL})  # a change: kept for this caller
    assert sdapi.set_options(dep, event)["statusCode"] == 200
    assert sdapi.options(dep, event)["sd_model_checkpoint"] == SCHNELL
    event["body"] = json.dumps({"sd_model_checkpoint": DEV})
    assert sdapi.set_options(dep, event)["statusCode"] == 200
    job = from_webui(dict(SMALL), "txt2img", compat.names(dep.settings, "tiny-flux"))
    assert (job.model, job.inputs["guidance"]) == ("tiny-flux", 3.5)


# -- jobs on the worker ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def api(stack: Stack) -> webuiapi.WebUIApi:
    url = urlsplit(stack.api_url)
    return webuiapi.WebUIApi(host=url.hostname, port=url.port, sampler="Euler", steps=4)  # Flux's one sampler


def test_webuiapi_txt2img_with_flux_dev_and_schnell(api: webuiapi.WebUIApi) -> None:
    """The client's own defaults (cfg_scale 7, eta 1, every field it sends), as its users call it."""
    dev = api.txt2img(prompt="a red fox", width=64, height=64, seed=7, alwayson_scripts={},
                      override_settings={"sd_model_checkpoint": DEV})
    assert dev.image.size == (64, 64) and dev.info["sd_model_name"] == DEV
    assert (dev.info["cfg_scale"], dev.info["distilled_cfg_scale"]) == (7.0, 3.5)
    assert "CFG scale: 7.0, Distilled CFG Scale: 3.5, Seed: 7," in dev.info["infotexts"][0]
    schnell = api.txt2img(prompt="a red fox", width=64, height=64, seed=7, alwayson_scripts={},
                          override_settings={"sd_model_checkpoint": SCHNELL})
    assert schnell.image.size == (64, 64) and schnell.info["cfg_scale"] == 1.0  # not the 7 the client sent
    infotext = schnell.info["infotexts"][0]
    assert "CFG scale: 1.0, Seed: 7," in infotext and "Distilled" not in infotext
    assert schnell.image.tobytes() != dev.image.tobytes()


def test_a_v1alpha2_task_with_a_flux_checkpoint(stack: Stack) -> None:
    job_id = f"t-{uuid.uuid4().hex[:12]}"
    task = {"task": {"metadata": {"id": job_id, "runtime": "sdruntime", "tasktype": "text-to-image",
                                  "prefix": "output", "context": ""},
                     "content": {**SMALL, "sampler_name": "Euler", "cfg_scale": 1, "distilled_cfg_scale": 5.0,
                                 "alwayson_scripts": {"sd_model_checkpoint": DEV}}}}
    status, answer = call("POST", f"{stack.api_url}/v1alpha2", task)
    assert status == 200 and answer["id"] == job_id, answer
    note = note_of(stack, job_id)
    assert note["status"] == "completed" and len(note["image_url"]) == 1, note
    info = json.loads(s3_json(stack, note["output_url"])["info"])
    assert info["sd_model_name"] == DEV and "CFG scale: 1.0, Distilled CFG Scale: 5.0," in info["infotexts"][0]
