"""The AWS sample's task API on a running ``spotgen dev``: ``/v1alpha2`` and ``/v1alpha1``, and image URLs.

Requests go over HTTP to the real gateway and Lambda code, or to the Lambda code in this process where a test
changes its settings; jobs run on a real worker with the tiny models, notifications are read from the results
queue. The sample's own files end with the sample's notification, a task that fails is announced as failed, every
refusal names the field and leaves nothing behind; image URLs are fetched by the submit Lambda where the allow-list
says so (a loopback server stands in for huggingface.co) and refused otherwise; and a runtime's pool routes its
jobs by an SNS filter policy. The mapping rules themselves are tested one by one in ``tests/contract/``
(``test_sample_*.py``); here, that each route serves them and what it answers.
"""

from __future__ import annotations

import base64
import dataclasses
import http.server
import io
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from PIL import Image

from lambdas import sample, submit
from lambdas.common import Deployment
from lambdas.fetch import LoopbackForTests, fetch_image
from runtime.config import Settings
from runtime.contract import MAX_IMAGE_BYTES, SampleNotification
from tests.conftest import Stack
from tests.contract.sample_cases import (
    CAT_URL,
    V1ALPHA1_T2I_EKS,
    V1ALPHA2_EXTRA,
    V1ALPHA2_I2I_EKS,
    V1ALPHA2_I2I_GUIDANCE,
    V1ALPHA2_PIPELINE,
    V1ALPHA2_T2I,
)
from tests.harness.tlsserver import tls_server
from tests.inbox import Queue, attribute_id
from tests.lambdas.compat_stack import PNG_B64, _png_b64, in_process, stack_fixture  # noqa: F401 - stack_fixture
from tests.rest import call, wait_for


def note_of(stack: Stack, job_id: str) -> dict[str, Any]:
    """The one notification of the job, as its JSON body."""
    got = stack.inbox.settled(job_id)
    assert len(got) == 1, got
    return got[0]


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


def test_the_samples_v1alpha2_t2i_file_ends_with_the_sample_notification(stack: Stack) -> None:
    status, answer = call("POST", f"{stack.api_url}/v1alpha2", json.loads(V1ALPHA2_T2I))  # 512 px, 16 steps
    bucket = stack.env["SPOTGEN_OUTPUT_BUCKET"]
    assert (status, answer) == (200, {"id": "test-t2i", "runtime": "sdruntime",
                                      "output_location": f"s3://{bucket}/output/test-t2i"})
    note = note_of(stack, "test-t2i")
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


def test_the_samples_v1alpha1_t2i_file_ends_with_the_sample_notification(stack: Stack) -> None:
    forget(stack, "test-t2i")  # the v1alpha2 file uses the same id; note_of saw its job settled
    stack.inbox.forget("test-t2i")
    status, answer = call("POST", f"{stack.api_url}/v1alpha1", json.loads(V1ALPHA1_T2I_EKS))
    bucket = stack.env["SPOTGEN_OUTPUT_BUCKET"]
    assert (status, answer) == (200, {"id_task": "test-t2i", "sd_model_checkpoint": "v1-5-pruned-emaonly.safetensors",
                                      "output_location": f"s3://{bucket}/outputs/test-t2i"})
    note = note_of(stack, "test-t2i")
    assert (note["result"], note["status"], note["runtime"]) == (True, "completed", "sdruntime")
    assert note["image_url"] == [f"s3://{bucket}/outputs/test-t2i/0.png"]
    assert s3_json(stack, note["output_url"])["parameters"]["id_task"] == "test-t2i"


def test_a_sample_task_that_fails_is_announced_as_failed(stack: Stack) -> None:
    body = small(V1ALPHA2_T2I, prompt="x")
    body["task"]["metadata"].update({"tasktype": "image-to-image", "context": {"order": 7}})
    missing = f"s3://{stack.env['SPOTGEN_INPUT_BUCKET']}/inputs/nobody/never.png"
    body["task"]["content"]["init_images"] = [missing]
    job_id = body["task"]["metadata"]["id"]
    assert call("POST", f"{stack.api_url}/v1alpha2", body)[0] == 200
    note = note_of(stack, job_id)
    assert (note["result"], note["status"], note["image_url"], note["context"]) == (False, "failed", [], {"order": 7})
    assert s3_json(stack, note["output_url"])["parameters"]["error_msg"]


BAD_SAMPLE_TASKS: list[tuple[str, str, Any, str, str]] = [
    # (what, route, change to a small v1alpha2 t2i task or v1alpha1 body, field, phrase in the message)
    ("no content", "v1alpha2", lambda b: b["task"].pop("content"), "task.content", "required"),
    ("metadata not an object", "v1alpha2", lambda b: b["task"].update(metadata=[]), "task.metadata", "object"),
    ("unknown runtime", "v1alpha2", lambda b: b["task"]["metadata"].update(runtime="sdxl-ghost"),
     "task.metadata.runtime", "sdruntime"),
    ("a generation body as an extras task", "v1alpha2",
     lambda b: b["task"]["metadata"].update(tasktype="extra-single-image"), "task.content.alwayson_scripts",
     "unknown field"),
    ("the batch upscaler", "v1alpha2", lambda b: b["task"]["metadata"].update(tasktype="extra-batch-images"),
     "task.metadata.tasktype", "not supported"),
    ("a WebUI body as a ComfyUI graph", "v1alpha2", lambda b: b["task"]["metadata"].update(tasktype="pipeline"),
     "task.content", "class_type"),
    ("unknown checkpoint", "v1alpha2",
     lambda b: b["task"]["content"].update(override_settings={"sd_model_checkpoint": "ghost.safetensors"}),
     "task.content.override_settings.sd_model_checkpoint", "ghost"),
    ("unknown LoRA tag", "v1alpha2", lambda b: b["task"]["content"].update(prompt="a dog <lora:ghost:0.8>"),
     "task.content.prompt", "ghost"),
    ("unknown ControlNet module", "v1alpha2", lambda b: b["task"]["content"]["alwayson_scripts"].update(
        controlnet={"args": [{"enabled": True, "module": "reference_only", "model": "control_v11p_sd15_canny",
                              "image": PNG_B64}]}), "task.content.alwayson_scripts.controlnet.args.0.module",
     "reference_only"),
    ("unknown ControlNet model", "v1alpha2", lambda b: b["task"]["content"]["alwayson_scripts"].update(
        controlnet={"args": [{"enabled": True, "module": "canny", "model": "ghost-net", "image": PNG_B64}]}),
     "task.content.alwayson_scripts.controlnet.args.0.model", "ghost-net"),
    ("face restoration", "v1alpha2", lambda b: b["task"]["content"].update(restore_faces=True),
     "task.content.restore_faces", "restore_faces"),
    ("a field WebUI does not have", "v1alpha2", lambda b: b["task"]["content"].update(sharpness=3),
     "task.content.sharpness", "sharpness"),
    ("steps as a word", "v1alpha2", lambda b: b["task"]["content"].update(steps="four"), "task.content.steps",
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
    with tls_server(tmp_path_factory.mktemp("hf-tls"), _HuggingFace, ("huggingface.co",)) as served:
        yield served


def fetching(dep: Deployment, port: int, ca_file: Path, address: str = "127.0.0.1") -> Deployment:
    """``dep`` with the production fetcher under its settings, except that DNS answers ``address`` and the
    test's loopback server (on its own port, with its own CA) stands in for the host: the test-only switch."""
    def fetch(url: str, field: str, timeout_s: float) -> bytes:
        parts = urlsplit(url)
        moved = parts._replace(netloc=f"{parts.hostname}:{port}").geturl()
        return fetch_image(moved, dep.settings, field, timeout_s=timeout_s, resolve=lambda host, _port: [address],
                           loopback_for_tests=LoopbackForTests(str(ca_file)))

    return dataclasses.replace(dep, fetcher=fetch)


def test_the_samples_i2i_file_works_when_its_host_is_allowed(stack: Stack,
                                                             huggingface: tuple[int, Path],
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    dep = fetching(in_process(stack, monkeypatch, fetch_allowed_hosts=["huggingface.co"]), *huggingface)
    answer = sample.v1alpha2(dep, V1ALPHA2_I2I_GUIDANCE.encode())  # unchanged: init_images is the cat's URL
    assert answer["statusCode"] == 200, answer["body"]
    stored = stack.s3.list_objects_v2(Bucket=stack.env["SPOTGEN_INPUT_BUCKET"], Prefix="inputs/test-i2i/")
    submission = json.loads(stack.s3.get_object(Bucket=stack.env["SPOTGEN_OUTPUT_BUCKET"],
                                                Key="jobs/test-i2i/status.json")["Body"].read())["submission"]
    assert [o["Key"] for o in stored["Contents"]] == [f"inputs/test-i2i/{submission}/image.png"]  # as an inline image
    note = note_of(stack, "test-i2i")
    assert (note["result"], note["status"]) == (True, "completed") and len(note["image_url"]) == 1
    # The older file of the EKS sample names the image in alwayson_scripts.image_link.
    eks = json.loads(V1ALPHA2_I2I_EKS)
    eks["task"]["metadata"]["id"] = "test-i2i-eks"
    eks["task"]["content"].update(width=64, height=64, steps=4)
    assert sample.v1alpha2(dep, json.dumps(eks).encode())["statusCode"] == 200
    assert note_of(stack, "test-i2i-eks")["result"] is True


def test_the_samples_extras_file_upscales_and_ends_with_the_sample_notification(
        stack: Stack, huggingface: tuple[int, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """``extra-single-image`` (issue 29, item 5): its cat (96x64 here) by 4 with the deployment's "R-ESRGAN 4x+"
    (an alias of tiny-esrgan), as /sdapi/v1/extra-single-image would; the sample's notification and .out document,
    whose parameters are the body without its image."""
    dep = fetching(in_process(stack, monkeypatch, fetch_allowed_hosts=["huggingface.co"],
                              aliases={"R-ESRGAN 4x+": "tiny-esrgan"}), *huggingface)
    answer = sample.v1alpha2(dep, V1ALPHA2_EXTRA.encode())
    assert answer["statusCode"] == 200, answer["body"]
    note = note_of(stack, "test-extra")
    bucket = stack.env["SPOTGEN_OUTPUT_BUCKET"]
    assert (note["result"], note["image_url"]) == (True, [f"s3://{bucket}/output/test-extra/0.png"]), note
    png = stack.s3.get_object(Bucket=bucket, Key="output/test-extra/0.png")["Body"].read()
    assert Image.open(io.BytesIO(png)).size == (384, 256)
    out = s3_json(stack, note["output_url"])
    assert out["parameters"]["upscaler_1"] == "R-ESRGAN 4x+" and "image" not in out["parameters"]
    assert out["parameters"]["id_task"] == "test-extra"
    unknown = json.loads(V1ALPHA2_EXTRA)
    unknown["task"]["metadata"]["id"], unknown["task"]["content"]["upscaler_1"] = "test-extra-2", "SwinIR 4x"
    refused = sample.v1alpha2(dep, json.dumps(unknown).encode())
    assert refused["statusCode"] == 400 and json.loads(refused["body"])["error"]["field"] == "task.content.upscaler_1"
    nothing_kept(stack, "test-extra-2")


def test_the_samples_pipeline_file_runs_its_comfyui_graph_and_ends_with_the_sample_notification(stack: Stack) -> None:
    """v1alpha2's ``pipeline`` task: the sample's own file, one ``comfyui`` job whose image lies where the
    sample puts it, announced as the sample announces a task; a graph with a broken node is refused naming it in
    the envelope, and nothing is kept."""
    status, answer = call("POST", f"{stack.api_url}/v1alpha2", json.loads(V1ALPHA2_PIPELINE))
    bucket = stack.env["SPOTGEN_OUTPUT_BUCKET"]
    assert (status, answer) == (200, {"id": "test-pipeline", "runtime": "sdruntime",
                                      "output_location": f"s3://{bucket}/output/test-pipeline"})
    note = note_of(stack, "test-pipeline")
    SampleNotification.model_validate(note)
    assert (note["result"], note["runtime"], note["image_url"]) == (
        True, "sdruntime", [f"s3://{bucket}/output/test-pipeline/0.png"]), note
    png = stack.s3.get_object(Bucket=bucket, Key="output/test-pipeline/0.png")["Body"].read()
    assert Image.open(io.BytesIO(png)).size == (512, 512)
    assert s3_json(stack, note["output_url"])["parameters"]["id_task"] == "test-pipeline"
    broken = json.loads(V1ALPHA2_PIPELINE)
    broken["task"]["metadata"]["id"] = "test-pipeline-2"
    broken["task"]["content"]["3"]["inputs"]["sampler_name"] = "no_such_sampler"
    status, answer = call("POST", f"{stack.api_url}/v1alpha2", broken)
    assert status == 400 and answer["error"]["field"] == "task.content.3.inputs.sampler_name", answer
    nothing_kept(stack, "test-pipeline-2")


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


def test_a_runtimes_pool_routes_its_jobs_by_an_sns_filter_policy(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
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
    got = Queue(stack.sqs, url, attribute_id).wait(bodies[1]["task"]["metadata"]["id"])
    assert got[0]["MessageAttributes"]["pool"]["StringValue"] == "xl"
    assert got[0]["MessageAttributes"]["model"]["StringValue"] == "tiny-sdxl"  # the runtime's own model
    assert not stack.sqs.receive_message(QueueUrl=url, WaitTimeSeconds=1).get("Messages")  # the other job: not here
