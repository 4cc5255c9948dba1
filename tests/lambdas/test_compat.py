"""The compatibility routes on a running ``spotgen dev``: the AWS sample's ``/v1alpha2`` and ``/v1alpha1``, and
SD WebUI's ``/sdapi/v1``. Requests go over HTTP to the real gateway and Lambda code, jobs run on a real worker
with the tiny models, notifications are read from the results queue. The mapping rules themselves are tested
one by one in ``tests/contract/test_webui.py`` and ``test_sample.py``; here, that each route serves them, what it
answers, and that every refusal names the field and leaves nothing behind.
"""

from __future__ import annotations

import base64
import dataclasses
import http.server
import io
import json
import ssl
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from PIL import Image

from lambdas import sample, sdapi, submit
from lambdas.common import Deployment
from lambdas.fetch import LoopbackForTests, fetch_image
from runtime.config import Settings
from runtime.contract import MAX_IMAGE_BYTES, SampleNotification
from runtime.local.devstack import EMULATOR_CREDENTIALS
from runtime.storage import aws
from runtime.storage.jobstore import JobStore
from tests.conftest import Stack
from tests.contract.test_sample import CAT_URL, V1ALPHA1_T2I_EKS, V1ALPHA2_I2I_EKS, V1ALPHA2_I2I_GUIDANCE, V1ALPHA2_T2I
from tests.harness.faultproxy import FaultProxy
from tests.lambdas.test_fetch import make_certificates
from tests.rest import call, wait_for
from tests.worker.test_e2e import drain


@pytest.fixture(scope="module")
def stack(own_stack: Stack) -> Stack:
    return own_stack


@pytest.fixture(scope="module")
def notes() -> dict[str, list[dict[str, Any]]]:
    return {}


def note_of(stack: Stack, notes: dict[str, Any], job_id: str) -> dict[str, Any]:
    """The one notification of the job, as its JSON body."""
    got = drain(stack, stack.state["results_queue_url"], notes, "notification", job_id, timeout=120)
    assert len(got) == 1, got
    return json.loads(got[0]["Body"])


def s3_json(stack: Stack, url: str) -> Any:
    bucket, key = url.removeprefix("s3://").split("/", 1)
    return json.loads(stack.s3.get_object(Bucket=bucket, Key=key)["Body"].read())


def nothing_kept(stack: Stack, job_id: str) -> None:
    """No status document and no stored input for the id: a refused request wrote nothing."""
    for bucket, prefix in ((stack.env["SPOTGEN_OUTPUT_BUCKET"], f"jobs/{job_id}/"),
                           (stack.env["SPOTGEN_INPUT_BUCKET"], f"inputs/{job_id}/")):
        assert stack.s3.list_objects_v2(Bucket=bucket, Prefix=prefix).get("KeyCount", 0) == 0, (bucket, prefix)


def forget(stack: Stack, job_id: str) -> None:
    """Remove a finished job's documents, as a retention rule would, so that its id can be used again."""
    bucket = stack.env["SPOTGEN_OUTPUT_BUCKET"]
    for obj in stack.s3.list_objects_v2(Bucket=bucket, Prefix=f"jobs/{job_id}/").get("Contents", []):
        stack.s3.delete_object(Bucket=bucket, Key=obj["Key"])


def small(text: str, **changes: Any) -> dict[str, Any]:
    """A sample request file, made small enough for the CPU (64 px, 4 steps), with a fresh id."""
    body = json.loads(text)
    content = body["task"]["content"] if "task" in body else body
    content.update({"width": 64, "height": 64, "steps": 4, **changes})
    if "task" in body:
        body["task"]["metadata"]["id"] = f"t-{uuid.uuid4().hex[:12]}"
    else:
        content["alwayson_scripts"]["id_task"] = f"t-{uuid.uuid4().hex[:12]}"
    return body


# -- the AWS sample's task API ---------------------------------------------------------------------------------


def test_the_samples_v1alpha2_t2i_file_ends_with_the_sample_notification(stack: Stack, notes: dict[str, Any]) -> None:
    status, answer = call("POST", f"{stack.api_url}/v1alpha2", json.loads(V1ALPHA2_T2I))  # 512 px, 16 steps
    bucket = stack.env["SPOTGEN_OUTPUT_BUCKET"]
    assert (status, answer) == (200, {"id": "test-t2i", "runtime": "sdruntime",
                                      "output_location": f"s3://{bucket}/output/test-t2i"})
    note = note_of(stack, notes, "test-t2i")
    SampleNotification.model_validate(note)
    assert (note["result"], note["status"], note["runtime"], note["context"]) == (True, "completed", "sdruntime", "")
    assert note["image_url"] == [f"s3://{bucket}/output/test-t2i/0.png"]
    out = s3_json(stack, note["output_url"])
    assert note["output_url"] == f"s3://{bucket}/output/test-t2i/test-t2i.out"
    info = json.loads(out["info"])
    assert out["parameters"]["id_task"] == "test-t2i" and out["parameters"]["prompt"] == "A dog"
    assert out["parameters"]["image_seed"] == str(info["seed"]) and info["width"] == 512 and info["steps"] == 16
    png = stack.s3.get_object(Bucket=bucket, Key="output/test-t2i/0.png")["Body"].read()
    assert Image.open(io.BytesIO(png)).size == (512, 512)

    # The same task again is the same job (the sample's clients retry): same answer, nothing runs twice.
    assert call("POST", f"{stack.api_url}/v1alpha2", json.loads(V1ALPHA2_T2I)) == (200, answer)
    other = json.loads(V1ALPHA2_T2I)
    other["task"]["content"]["prompt"] = "A cat"
    status, refused = call("POST", f"{stack.api_url}/v1alpha2", other)
    assert status == 409 and refused["error"]["code"] == "id_conflict"


def test_the_samples_v1alpha1_t2i_file_ends_with_the_sample_notification(stack: Stack, notes: dict[str, Any]) -> None:
    forget(stack, "test-t2i")  # the v1alpha2 file uses the same id
    notes.pop("test-t2i", None)
    status, answer = call("POST", f"{stack.api_url}/v1alpha1", json.loads(V1ALPHA1_T2I_EKS))
    bucket = stack.env["SPOTGEN_OUTPUT_BUCKET"]
    assert (status, answer) == (200, {"id_task": "test-t2i", "sd_model_checkpoint": "v1-5-pruned-emaonly.safetensors",
                                      "output_location": f"s3://{bucket}/outputs/test-t2i"})
    note = note_of(stack, notes, "test-t2i")
    assert (note["result"], note["status"], note["runtime"]) == (True, "completed", "sdruntime")
    assert note["image_url"] == [f"s3://{bucket}/outputs/test-t2i/0.png"]
    assert s3_json(stack, note["output_url"])["parameters"]["id_task"] == "test-t2i"


def test_a_sample_task_that_fails_is_announced_as_failed(stack: Stack, notes: dict[str, Any]) -> None:
    body = small(V1ALPHA2_T2I, prompt="x")
    body["task"]["metadata"].update({"tasktype": "image-to-image", "context": {"order": 7}})
    missing = f"s3://{stack.env['SPOTGEN_INPUT_BUCKET']}/inputs/nobody/never.png"
    body["task"]["content"]["init_images"] = [missing]
    job_id = body["task"]["metadata"]["id"]
    assert call("POST", f"{stack.api_url}/v1alpha2", body)[0] == 200
    note = note_of(stack, notes, job_id)
    assert (note["result"], note["status"], note["image_url"], note["context"]) == (False, "failed", [], {"order": 7})
    assert s3_json(stack, note["output_url"])["parameters"]["error_msg"]


def _png_b64(size: tuple[int, int] = (64, 64), color: tuple[int, int, int] = (200, 30, 30)) -> str:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


PNG_B64 = _png_b64()


BAD_SAMPLE_TASKS: list[tuple[str, str, Any, str, str]] = [
    # (what, route, change to a small v1alpha2 t2i task or v1alpha1 body, field, phrase in the message)
    ("no content", "v1alpha2", lambda b: b["task"].pop("content"), "task.content", "required"),
    ("metadata not an object", "v1alpha2", lambda b: b["task"].update(metadata=[]), "task.metadata", "object"),
    ("unknown runtime", "v1alpha2", lambda b: b["task"]["metadata"].update(runtime="sdxl-ghost"),
     "task.metadata.runtime", "sdruntime"),
    ("the upscaler", "v1alpha2", lambda b: b["task"]["metadata"].update(tasktype="extra-single-image"),
     "task.metadata.tasktype", "not supported"),
    ("ComfyUI", "v1alpha2", lambda b: b["task"]["metadata"].update(tasktype="pipeline"),
     "task.metadata.tasktype", "not supported"),
    ("unknown checkpoint", "v1alpha2",
     lambda b: b["task"]["content"].update(override_settings={"sd_model_checkpoint": "ghost.safetensors"}),
     "task.content.override_settings.sd_model_checkpoint", "ghost"),
    ("unknown LoRA tag", "v1alpha2", lambda b: b["task"]["content"].update(prompt="a dog <lora:ghost:0.8>"),
     "task.content.prompt", "ghost"),
    ("unknown ControlNet module", "v1alpha2", lambda b: b["task"]["content"]["alwayson_scripts"].update(
        controlnet={"args": [{"enabled": True, "module": "openpose", "model": "control_v11p_sd15_canny",
                              "image": PNG_B64}]}), "task.content.alwayson_scripts.controlnet.args.0.module",
     "openpose"),
    ("unknown ControlNet model", "v1alpha2", lambda b: b["task"]["content"]["alwayson_scripts"].update(
        controlnet={"args": [{"enabled": True, "module": "canny", "model": "ghost-net", "image": PNG_B64}]}),
     "task.content.alwayson_scripts.controlnet.args.0.model", "ghost-net"),
    ("hires fix", "v1alpha2", lambda b: b["task"]["content"].update(enable_hr=True), "task.content.enable_hr",
     "enable_hr"),
    ("a field WebUI does not have", "v1alpha2", lambda b: b["task"]["content"].update(sharpness=3),
     "task.content.sharpness", "sharpness"),
    ("steps as a string", "v1alpha2", lambda b: b["task"]["content"].update(steps="4"), "task.content.steps",
     "integer"),
    ("a URL to a host that is not allowed", "v1alpha2", lambda b: (
        b["task"]["metadata"].update(tasktype="image-to-image"),
        b["task"]["content"].update(init_images=["https://images.example.com/cat.png"])),
     "task.content.init_images.0", "URL"),
    ("v1alpha1 without id_task", "v1alpha1", lambda b: b["alwayson_scripts"].pop("id_task"),
     "alwayson_scripts.id_task", "required"),
    ("v1alpha1 unknown checkpoint", "v1alpha1",
     lambda b: b["alwayson_scripts"].update(sd_model_checkpoint="ghost.ckpt"), "alwayson_scripts.sd_model_checkpoint",
     "ghost"),
]


@pytest.mark.parametrize(("what", "route", "change", "field", "phrase"), BAD_SAMPLE_TASKS,
                         ids=[case[0] for case in BAD_SAMPLE_TASKS])
def test_a_bad_sample_task_is_refused_naming_the_field(stack: Stack, what: str, route: str, change: Any, field: str,
                                                       phrase: str) -> None:
    body = small(V1ALPHA2_T2I if route == "v1alpha2" else V1ALPHA1_T2I_EKS)
    job_id = body["task"]["metadata"]["id"] if route == "v1alpha2" else body["alwayson_scripts"]["id_task"]
    change(body)
    status, answer = call("POST", f"{stack.api_url}/{route}", body)
    assert status == 400, answer
    assert answer["error"]["field"] == field and phrase.lower() in answer["error"]["message"].lower(), answer
    nothing_kept(stack, job_id)


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
    for body, field in (({"steps": "4"}, "steps"), ({"cfg_scale": 99.0}, "cfg_scale"), ({"batch_size": 99},
                        "batch_size"), ({"restore_faces": True}, "restore_faces"), ({"bogus": 1}, "bogus")):
        status, answer = txt2img(stack, **body)
        assert status == 400 and answer["error"]["field"] == field, (body, answer)


def test_the_listings_come_from_the_catalog(stack: Stack) -> None:
    status, models = call("GET", f"{stack.api_url}/sdapi/v1/sd-models")
    assert status == 200
    titles = {m["model_name"]: m["title"] for m in models}
    assert titles == {"tiny-sd": "v1-5-pruned-emaonly.safetensors", "tiny-sdxl": "sd_xl_turbo_1.0.safetensors"}
    loras = call("GET", f"{stack.api_url}/sdapi/v1/loras")[1]
    assert {lora["alias"] for lora in loras} >= {"tiny-lora-sd1", "tiny-lora-sdxl"}
    samplers = {s["name"] for s in call("GET", f"{stack.api_url}/sdapi/v1/samplers")[1]}
    assert {"Euler a", "DPM++ 2M", "UniPC"} <= samplers
    schedulers = {s["label"] for s in call("GET", f"{stack.api_url}/sdapi/v1/schedulers")[1]}
    assert schedulers == {"Automatic", "Karras", "Exponential", "SGM Uniform"}
    # A model listed by title is one a body can name.
    status, answer = txt2img(stack, override_settings={"sd_model_checkpoint": titles["tiny-sdxl"]})
    assert status == 200 and json.loads(answer["info"])["sd_model_name"] == titles["tiny-sdxl"]


def test_options_answer_the_fixed_model_and_refuse_a_change(stack: Stack) -> None:
    status, options = call("GET", f"{stack.api_url}/sdapi/v1/options")
    assert status == 200 and options["sd_model_checkpoint"] == "v1-5-pruned-emaonly.safetensors"
    same = {"sd_model_checkpoint": options["sd_model_checkpoint"]}
    assert call("POST", f"{stack.api_url}/sdapi/v1/options", same)[0] == 200
    status, answer = call("POST", f"{stack.api_url}/sdapi/v1/options",
                          {"sd_model_checkpoint": "sd_xl_turbo_1.0.safetensors"})
    assert status == 400 and "override_settings" in answer["error"]["message"]
    assert answer["error"]["field"] == "options.sd_model_checkpoint"
    assert call("GET", f"{stack.api_url}/sdapi/v1/txt2img")[0] == 405
    assert call("GET", f"{stack.api_url}/sdapi/v1/extra-single-image")[0] == 404


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


def in_process(stack: Stack, monkeypatch: pytest.MonkeyPatch, **settings: Any) -> Deployment:
    """The stack's deployment as a Lambda of this process sees it, with ``settings`` changed."""
    for name, value in EMULATOR_CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    config = Settings.from_env(stack.env).model_copy(update=settings)
    return Deployment(config, JobStore(aws.client("s3", config), config), aws.client("sns", config))


def test_a_wait_that_runs_out_is_a_504_naming_the_job_which_still_finishes(stack: Stack,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    dep = in_process(stack, monkeypatch, sync_wait_s=0.3)
    event = {"body": json.dumps({"prompt": "slow", "width": 64, "height": 64, "steps": 60}),
             "requestContext": {"http": {"method": "POST", "sourceIp": "127.0.0.9"}}}
    answer = sdapi.generate(dep, event, "txt2img")
    body = json.loads(answer["body"])
    assert answer["statusCode"] == 504 and body["error"]["code"] == "still_running"
    assert answer["headers"]["Location"] == body["status_url"] == f"{stack.api_url}/v1/jobs/{body['id']}"
    assert wait_for(stack.api_url, body["id"])["state"] == "succeeded"


# -- image URLs, fetched by the submit Lambda where the allow-list says so ------------------------------------


class _HuggingFace(http.server.BaseHTTPRequestHandler):
    """Stands in for huggingface.co on loopback: the sample's cat, and an image over the size limit."""

    def do_GET(self) -> None:  # noqa: N802 - the base class's name
        path = urlsplit(self.path).path
        body = {urlsplit(CAT_URL).path: base64.b64decode(_png_b64((96, 64), (120, 90, 60))),
                "/huge.png": b"\x89PNG\r\n\x1a\n" + b"x" * MAX_IMAGE_BYTES}.get(path)
        self.send_response(200 if body else 404)
        self.send_header("Content-Length", str(len(body or b"")))
        self.end_headers()
        self.wfile.write(body or b"")

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass


@pytest.fixture(scope="module")
def huggingface(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, Path]]:
    ca_file, cert_file, key_file = make_certificates(tmp_path_factory.mktemp("hf-tls"), hosts=("huggingface.co",))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_file, key_file)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _HuggingFace)
    server.daemon_threads = True
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    yield server.server_address[1], ca_file
    server.shutdown()
    server.server_close()


def fetching(dep: Deployment, port: int, ca_file: Path, address: str = "127.0.0.1") -> Deployment:
    """``dep`` with the production fetcher under its settings, except that DNS answers ``address`` and the
    test's loopback server (on its own port, with its own CA) stands in for the host: the test-only switch."""
    def fetch(url: str, field: str, timeout_s: float) -> bytes:
        parts = urlsplit(url)
        moved = parts._replace(netloc=f"{parts.hostname}:{port}").geturl()
        return fetch_image(moved, dep.settings, field, timeout_s=timeout_s, resolve=lambda host, _port: [address],
                           loopback_for_tests=LoopbackForTests(str(ca_file)))

    return dataclasses.replace(dep, fetcher=fetch)


def test_the_samples_i2i_file_works_when_its_host_is_allowed(stack: Stack, notes: dict[str, Any],
                                                             huggingface: tuple[int, Path],
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    dep = fetching(in_process(stack, monkeypatch, fetch_allowed_hosts=["huggingface.co"]), *huggingface)
    answer = sample.v1alpha2(dep, V1ALPHA2_I2I_GUIDANCE.encode())  # unchanged: init_images is the cat's URL
    assert answer["statusCode"] == 200, answer["body"]
    stored = stack.s3.list_objects_v2(Bucket=stack.env["SPOTGEN_INPUT_BUCKET"], Prefix="inputs/test-i2i/")
    assert [o["Key"] for o in stored["Contents"]] == ["inputs/test-i2i/image.png"]  # kept like an inline image
    note = note_of(stack, notes, "test-i2i")
    assert (note["result"], note["status"]) == (True, "completed") and len(note["image_url"]) == 1
    # The older file of the EKS sample names the image in alwayson_scripts.image_link.
    eks = json.loads(V1ALPHA2_I2I_EKS)
    eks["task"]["metadata"]["id"] = "test-i2i-eks"
    eks["task"]["content"].update(width=64, height=64, steps=4)
    assert sample.v1alpha2(dep, json.dumps(eks).encode())["statusCode"] == 200
    assert note_of(stack, notes, "test-i2i-eks")["result"] is True


@pytest.mark.parametrize(("url", "address", "hosts", "code"), [
    (CAT_URL, "127.0.0.1", ["images.example.com"], "url_not_allowed"),  # allowed hosts, but not this one
    (CAT_URL, "10.1.2.3", ["huggingface.co"], "url_not_allowed"),  # DNS says a private address
    (CAT_URL, "169.254.169.254", ["huggingface.co"], "url_not_allowed"),  # the metadata service
    ("https://huggingface.co/huge.png", "127.0.0.1", ["huggingface.co"], "image_too_large"),
    ("https://huggingface.co/missing.png", "127.0.0.1", ["huggingface.co"], "fetch_failed"),
], ids=["host not allowed", "private address", "metadata address", "oversized", "not found"])
def test_an_image_url_against_the_rules_is_refused_and_nothing_is_kept(
        stack: Stack, huggingface: tuple[int, Path], monkeypatch: pytest.MonkeyPatch, url: str, address: str,
        hosts: list[str], code: str) -> None:
    dep = fetching(in_process(stack, monkeypatch, fetch_allowed_hosts=hosts), *huggingface, address=address)
    body = small(V1ALPHA2_I2I_GUIDANCE, init_images=[url])
    answer = sample.v1alpha2(dep, json.dumps(body).encode())
    error = json.loads(answer["body"])["error"]
    assert answer["statusCode"] == 400 and error["code"] == code, error
    assert error["field"] == "task.content.init_images.0", error
    nothing_kept(stack, body["task"]["metadata"]["id"])


def test_the_native_api_fetches_an_allowed_image_url_too(stack: Stack, huggingface: tuple[int, Path],
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    dep = fetching(in_process(stack, monkeypatch, fetch_allowed_hosts=["huggingface.co"]), *huggingface)
    request = {"pipeline": "img2img", "model": "tiny-sd", "inputs": {"prompt": "a cat", "image": CAT_URL,
                                                                     "width": 64, "height": 64, "steps": 3}}
    answer = submit.submit(dep, json.dumps(request).encode())
    assert answer["statusCode"] == 202, answer["body"]
    job_id = json.loads(answer["body"])["id"]
    assert wait_for(stack.api_url, job_id)["state"] == "succeeded"
    refused = submit.submit(dataclasses.replace(dep, settings=dep.settings.model_copy(
        update={"fetch_allowed_hosts": []})), json.dumps(request).encode())
    assert refused["statusCode"] == 400 and json.loads(refused["body"])["error"]["field"] == "inputs.image"


def test_a_runtimes_pool_routes_its_jobs_by_an_sns_filter_policy(stack: Stack, monkeypatch: pytest.MonkeyPatch,
                                                                  notes: dict[str, Any]) -> None:
    """A queue subscribed with a filter on ``pool`` (as a deployment's pool queue would be) gets the runtime's
    jobs and no others."""
    url = stack.sqs.create_queue(QueueName=f"pool-xl-{uuid.uuid4().hex[:8]}")["QueueUrl"]
    arn = stack.sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    stack.sns.subscribe(TopicArn=stack.env["SPOTGEN_JOBS_TOPIC_ARN"], Protocol="sqs", Endpoint=arn,
                        Attributes={"RawMessageDelivery": "true", "FilterPolicy": json.dumps({"pool": ["xl"]})})
    runtimes = {"sdruntime": {"model": "tiny-sd"}, "sdruntime-xl": {"model": "tiny-sdxl", "pool": "xl"}}
    dep = in_process(stack, monkeypatch)
    settings = Settings.model_validate({**dep.settings.model_dump(), "runtimes": runtimes})
    dep = dataclasses.replace(dep, settings=settings)
    bodies = [small(V1ALPHA2_T2I), small(V1ALPHA2_T2I)]
    bodies[1]["task"]["metadata"]["runtime"] = "sdruntime-xl"
    for body in bodies:
        assert sample.v1alpha2(dep, json.dumps(body).encode())["statusCode"] == 200
    got = drain(stack, url, {}, "attr", bodies[1]["task"]["metadata"]["id"])
    assert got[0]["MessageAttributes"]["pool"]["StringValue"] == "xl"
    assert got[0]["MessageAttributes"]["model"]["StringValue"] == "tiny-sdxl"  # the runtime's own model
    assert not stack.sqs.receive_message(QueueUrl=url, WaitTimeSeconds=1).get("Messages")  # the other job: not here


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
