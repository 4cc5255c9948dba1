"""SD WebUI's API (``/sdapi/v1``) on a running ``spotgen dev``, as WebUI's clients call it.

Requests go over HTTP to the real gateway and Lambda code, or to the Lambda code in this process where a test
changes its settings; jobs run on a real worker with the tiny models. txt2img and img2img answer images and info
(a seed gives the same pixels), a bad body is refused naming its own field, the listings come from the catalog,
the options answer the fixed model, progress follows the caller's job and interrupt cancels it, and the sync wait
answers 504 naming the job when it runs out, and rides out an S3 outage. The mapping rules themselves are tested
one by one in ``tests/contract/`` (``test_webui_*.py``); here, that the route serves them and what it answers.
"""

from __future__ import annotations

import base64
import dataclasses
import io
import json
import threading
import time
from typing import Any
from urllib.parse import urlsplit

import pytest
from PIL import Image

from lambdas import sdapi
from runtime.config import Settings
from runtime.models.tiny import ALIASES, FLOW_MODELS
from runtime.storage import aws
from runtime.storage.jobstore import JobStore
from tests.conftest import Stack
from tests.harness.faultproxy import FaultProxy
from tests.lambdas.compat_stack import PNG_B64, _png_b64, in_process, stack_fixture  # noqa: F401 - stack_fixture
from tests.rest import call, wait_for

FLOW_TITLES = {model: ALIASES[model][0] for model in FLOW_MODELS}  # the tiny Flux and SD 3.5 models' file names

# -- SD WebUI's API --------------------------------------------------------------------------------------------


def txt2img(stack: Stack, **body: Any) -> tuple[int, Any]:
    return call("POST", f"{stack.api_url}/sdapi/v1/txt2img",
                {"prompt": "a red fox", "width": 64, "height": 64, "steps": 4, **body}, timeout=300)


def test_txt2img_answers_images_and_info_and_a_seed_gives_the_same_pixels(stack: Stack) -> None:
    status, first = txt2img(stack, seed=-1, batch_size=2, sampler_name="DPM++ 2M Karras")
    assert status == 200, first
    info = json.loads(first["info"])
    assert len(first["images"]) == 2 and info["all_seeds"] == [info["seed"], info["seed"] + 1]
    assert (info["sampler_name"], info["scheduler"], info["batch_size"]) == ("DPM++ 2M", "Karras", 2)
    assert first["parameters"]["seed"] == -1 and first["parameters"]["prompt"] == "a red fox"
    image = Image.open(io.BytesIO(base64.b64decode(first["images"][0])))
    assert image.size == (64, 64) and image.format == "PNG"
    status, again = txt2img(stack, seed=info["seed"], batch_size=2, sampler_name="DPM++ 2M Karras")
    assert status == 200 and again["images"] == first["images"]


def test_samples_format_answers_images_in_that_format_with_their_parameters(stack: Stack) -> None:
    """WebUI's API answers its images in ``samples_format`` (``jpeg_quality`` for lossy WebP), with the
    parameters in EXIF UserComment; spotgen's output format carries it (docs/api.md "Output formats")."""
    from spotgen.images import read_parameters

    status, answer = txt2img(stack, seed=5, override_settings={"samples_format": "webp", "jpeg_quality": 90})
    assert status == 200, answer
    data = base64.b64decode(answer["images"][0])
    assert Image.open(io.BytesIO(data)).format == "WEBP"
    params = json.loads(read_parameters(data) or "")
    assert (params["format"], params["quality"], params["seed"]) == ("webp", 90, 5)


def test_img2img_starts_from_the_init_image(stack: Stack) -> None:
    body = {"prompt": "a fox", "width": 64, "height": 64, "steps": 4, "seed": 3, "init_images": [PNG_B64],
            "denoising_strength": 0.5}
    status, answer = call("POST", f"{stack.api_url}/sdapi/v1/img2img", body, timeout=300)
    assert status == 200, answer
    assert answer["parameters"]["init_images"] is None  # WebUI leaves the images out of its echo
    assert json.loads(answer["info"])["denoising_strength"] == 0.5
    status, other = call("POST", f"{stack.api_url}/sdapi/v1/img2img", {**body, "init_images": [_png_b64(
        color=(10, 10, 240))]}, timeout=300)
    assert status == 200 and other["images"] != answer["images"]


def test_a_bad_webui_body_is_refused_naming_its_own_field(stack: Stack) -> None:
    for body, field in (({"steps": "four"}, "steps"), ({"cfg_scale": 99.0}, "cfg_scale"), ({"batch_size": 99},
                        "batch_size"), ({"restore_faces": True}, "restore_faces"), ({"bogus": 1}, "bogus")):
        status, answer = txt2img(stack, **body)
        assert status == 400 and answer["error"]["field"] == field, (body, answer)


def test_the_listings_come_from_the_catalog(stack: Stack) -> None:
    status, models = call("GET", f"{stack.api_url}/sdapi/v1/sd-models")
    assert status == 200
    titles = {m["model_name"]: m["title"] for m in models}
    assert titles == {"tiny-sd": "v1-5-pruned-emaonly.safetensors", "tiny-sdxl": "sd_xl_turbo_1.0.safetensors",
                      "tiny-sd-inpainting": "sd-v1-5-inpainting.safetensors",
                      "tiny-sdxl-inpainting": "sd_xl_base_1.0_inpainting_0.1.safetensors",
                      "tiny-sdxl-refiner": "sd_xl_refiner_1.0.safetensors", **FLOW_TITLES}
    loras = call("GET", f"{stack.api_url}/sdapi/v1/loras")[1]
    assert {lora["alias"] for lora in loras} >= {"tiny-lora-sd1", "tiny-lora-sdxl"}
    embeddings = call("GET", f"{stack.api_url}/sdapi/v1/embeddings")[1]
    listed = Settings.from_env(stack.env).embeddings
    assert set(embeddings["loaded"]) == set(listed) >= {"tiny-emb-sd1", "tiny-emb-sdxl"}
    assert embeddings["skipped"] == {}
    samplers = {s["name"] for s in call("GET", f"{stack.api_url}/sdapi/v1/samplers")[1]}
    assert {"Euler a", "DPM++ 2M", "UniPC"} <= samplers
    schedulers = {s["label"] for s in call("GET", f"{stack.api_url}/sdapi/v1/schedulers")[1]}
    assert schedulers == {"Automatic", "Karras", "Exponential", "SGM Uniform"}
    # A model listed by title is one a body can name.
    status, answer = txt2img(stack, override_settings={"sd_model_checkpoint": titles["tiny-sdxl"]})
    assert status == 200 and json.loads(answer["info"])["sd_model_name"] == titles["tiny-sdxl"]


def test_options_answer_the_runtimes_model_and_refuse_an_unknown_one(stack: Stack) -> None:
    """Per-caller options are tested in test_sdapi_options.py; here the route over HTTP."""
    status, options = call("GET", f"{stack.api_url}/sdapi/v1/options")
    assert status == 200 and options["sd_model_checkpoint"] == "v1-5-pruned-emaonly.safetensors"
    same = {"sd_model_checkpoint": options["sd_model_checkpoint"]}
    assert call("POST", f"{stack.api_url}/sdapi/v1/options", same)[0] == 200
    status, answer = call("POST", f"{stack.api_url}/sdapi/v1/options", {"sd_model_checkpoint": "nope.safetensors"})
    assert status == 400 and answer["error"]["field"] == "options.sd_model_checkpoint"
    assert call("GET", f"{stack.api_url}/sdapi/v1/txt2img")[0] == 405
    assert call("GET", f"{stack.api_url}/sdapi/v1/extra-single-image")[0] == 405  # POST only
    assert call("GET", f"{stack.api_url}/sdapi/v1/interrogate")[0] == 404  # not served


def test_progress_follows_the_callers_job_and_interrupt_cancels_it(stack: Stack) -> None:
    answers: list[tuple[int, Any]] = []
    thread = threading.Thread(target=lambda: answers.append(txt2img(stack, steps=150, prompt="long")))
    thread.start()
    deadline = time.monotonic() + 120
    while True:
        progress = call("GET", f"{stack.api_url}/sdapi/v1/progress")[1]
        if progress["state"]["sampling_step"] > 0:
            break
        assert time.monotonic() < deadline and thread.is_alive(), progress
        time.sleep(0.05)
    assert progress["state"]["job_count"] == 1 and progress["state"]["sampling_steps"] == 150
    assert 0 < progress["progress"] < 1 and progress["eta_relative"] > 0
    assert call("POST", f"{stack.api_url}/sdapi/v1/interrupt", {})[0] == 200
    thread.join(120)
    status, answer = answers[0]
    assert status == 409 and answer["error"]["code"] == "cancelled", answer
    assert call("GET", f"{stack.api_url}/sdapi/v1/progress")[1]["state"]["job_count"] == 0
    assert call("POST", f"{stack.api_url}/sdapi/v1/interrupt", {})[0] == 200  # nothing running: WebUI's 200 too




def test_a_wait_that_runs_out_is_a_504_naming_the_job_which_still_finishes(stack: Stack,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    # a wait far shorter than any job (received, 60 steps, stored): the first status read is the only one; 0.3 s
    # was not, once a tiny model's 60 steps took less than that
    dep = in_process(stack, monkeypatch, sync_wait_s=0.01)
    event = {"body": json.dumps({"prompt": "slow", "width": 64, "height": 64, "steps": 60}),
             "requestContext": {"http": {"method": "POST", "sourceIp": "127.0.0.9"}}}
    answer = sdapi.generate(dep, event, "txt2img")
    body = json.loads(answer["body"])
    assert answer["statusCode"] == 504 and body["error"]["code"] == "still_running"
    url = f"{stack.api_url}/sdapi/v1/spotgen/jobs/{body['id']}"  # behind the API key, as the route it answers
    assert answer["headers"]["Location"] == body["status_url"] == url
    assert wait_for(stack.api_url, body["id"])["state"] == "succeeded"
    status, doc = call("GET", url)
    assert status == 200 and doc["state"] == "succeeded" and doc["status_url"] == url and len(doc["outputs"]) == 1



def test_the_sync_wait_rides_out_an_s3_outage_and_says_when_the_images_cannot_be_read(
        stack: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    """The Lambda's S3 calls go through a fault proxy: an outage while it polls is a missed poll, and images it
    cannot read after the job succeeded are a 503 naming the job, not a crash that loses the answer."""
    upstream = urlsplit(stack.state["aws_endpoint_url"])
    with FaultProxy((str(upstream.hostname), int(upstream.port or 80))) as proxy:
        dep = in_process(stack, monkeypatch)
        through = dep.settings.model_copy(update={"aws_endpoint_url": proxy.url})
        dep = dataclasses.replace(dep, store=JobStore(aws.client("s3", through), dep.settings))
        event = {"body": json.dumps({"prompt": "blink", "width": 64, "height": 64, "steps": 4, "seed": 5}),
                 "requestContext": {"http": {"method": "POST", "sourceIp": "127.0.0.10"}}}
        proxy.on(lambda r: r.service == "s3" and r.method == "GET" and r.path.endswith("/status.json"), 2.0)
        answer = sdapi.generate(dep, event, "txt2img")
        assert answer["statusCode"] == 200, answer["body"]
        assert [what for _, what in proxy.log].count("down") == 1 and len(json.loads(answer["body"])["images"]) == 1

        proxy.on(lambda r: r.service == "s3" and r.method == "GET" and r.path.endswith(".png"), 120.0)
        answer = sdapi.generate(dep, event, "txt2img")
        proxy.up()
        body = json.loads(answer["body"])
        assert answer["statusCode"] == 503 and body["error"]["code"] == "images_unavailable", body
        assert answer["headers"]["Location"] == body["status_url"]
        assert wait_for(stack.api_url, body["id"])["state"] == "succeeded"


def test_a_webui_body_with_a_webhook_gets_it_signed_from_the_worker(stack: Stack) -> None:
    """The documented extra field (docs/api.md "Webhooks"): a top-level ``webhook`` in a /sdapi/v1 body, taken out
    before WebUI's fields are read, and sent by the worker as on the native route."""
    from tests.harness.webhook_receiver import Receiver

    receiver = Receiver(stack.env["SPOTGEN_WEBHOOK_SECRET"]).start()
    try:
        status, answer = txt2img(stack, seed=5, webhook={"url": receiver.url("/ok/webui")})
        assert status == 200 and len(answer["images"]) == 1, answer
        receiver.wait_for("the completed webhook", lambda: [r for r in receiver.received if r.path == "/ok/webui"
                                                            and r.status == 200] or None, 60)
        (record,) = [r for r in receiver.received if r.path == "/ok/webui"]
        body = json.loads(record.body)
        assert record.verified and body["type"] == "job.completed" and body["state"] == "succeeded", body
    finally:
        receiver.stop()
