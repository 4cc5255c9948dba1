"""The HTTP API on the running stack: every bad input is a 400 naming the field, and nothing is written."""

from __future__ import annotations

import base64
import io
import json
import struct
import urllib.request
import zlib
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from PIL import Image

from runtime.contract.envelope import read_celery_message
from tests.conftest import Stack
from tests.rest import call


def png_bytes(width: int = 16, height: int = 16) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), (10, 200, 30)).save(buf, format="PNG")
    return buf.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG signature and IHDR claiming a huge size: the header check must refuse it without decoding."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    return b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + chunk + struct.pack(">I", zlib.crc32(chunk))


B64_PNG = base64.b64encode(png_bytes()).decode()
BASE = {"pipeline": "txt2img", "model": "tiny-sd", "inputs": {"prompt": "a fox", "width": 64, "height": 64}}
IN_AN_HOUR = datetime.now(UTC) + timedelta(hours=1)


def with_inputs(pipeline: str = "txt2img", **inputs: Any) -> dict[str, Any]:
    return {"pipeline": pipeline, "model": "tiny-sd", "inputs": {"prompt": "a fox", "width": 64, "height": 64,
                                                                 **inputs}}


BAD_REQUESTS: list[tuple[str, Any, str]] = [
    ("unknown pipeline", {**BASE, "pipeline": "sketch"}, "pipeline"),
    ("missing pipeline", {"model": "tiny-sd", "inputs": {"prompt": "x"}}, "pipeline"),
    ("unknown model", {**BASE, "model": "sd-nonexistent"}, "model"),
    ("model id is a path", {**BASE, "model": "../../etc/passwd"}, "model"),
    ("model id is absolute", {**BASE, "model": "/models/x"}, "model"),
    ("width not multiple of 8", with_inputs(width=65), "inputs.width"),
    ("width zero", with_inputs(width=0), "inputs.width"),
    ("height negative", with_inputs(height=-64), "inputs.height"),
    ("width above limit", with_inputs(width=4096), "inputs.width"),
    ("pixel budget of the family", with_inputs(width=2048, height=2048), "inputs.width"),
    ("SDXL conditioning for an SD 1.x model", with_inputs(original_size=[1024, 1024]), "inputs.original_size"),
    ("unknown schedule", with_inputs(schedule="fancy"), "inputs.schedule"),
    ("schedule the sampler lacks", with_inputs(scheduler="ddim", schedule="karras"), "inputs.schedule"),
    ("clip_skip above limit", with_inputs(clip_skip=13), "inputs.clip_skip"),
    ("unknown LoRA", with_inputs(loras=[{"id": "tiny-lora-sd1"}, {"id": "nope"}]), "inputs.loras.1.id"),
    ("LoRA of another family", with_inputs(loras=[{"id": "tiny-lora-sdxl"}]), "inputs.loras.0.id"),
    ("too many LoRAs", with_inputs(loras=[{"id": f"l{i}"} for i in range(6)]), "inputs.loras"),
    ("LoRA weight out of range", with_inputs(loras=[{"id": "tiny-lora-sd1", "weight": 3}]), "inputs.loras.0.weight"),
    ("ControlNet of another family", with_inputs("controlnet", controlnet="tiny-sdxl-controlnet",
                                                 control_image=B64_PNG), "inputs.controlnet"),
    ("steps zero", with_inputs(steps=0), "inputs.steps"),
    ("steps above limit", with_inputs(steps=1000), "inputs.steps"),
    ("guidance out of range", with_inputs(guidance_scale=99), "inputs.guidance_scale"),
    ("too many images", with_inputs(num_images=64), "inputs.num_images"),
    ("unknown scheduler", with_inputs(scheduler="k_lms_turbo"), "inputs.scheduler"),
    ("strength zero", with_inputs("img2img", image=B64_PNG, strength=0), "inputs.strength"),
    ("strength above one", with_inputs("img2img", image=B64_PNG, strength=1.5), "inputs.strength"),
    ("img2img without image", with_inputs("img2img"), "inputs.image"),
    ("controlnet without control image", with_inputs("controlnet", controlnet="tiny-controlnet"),
     "inputs.control_image"),
    ("unknown controlnet", with_inputs("controlnet", controlnet="nope", control_image=B64_PNG), "inputs.controlnet"),
    ("base64 not an image", with_inputs("img2img", image=base64.b64encode(b"hello world").decode()), "inputs.image"),
    ("not base64", with_inputs("img2img", image="%%%not-base64%%%"), "inputs.image"),
    ("image too large", with_inputs("img2img", image=base64.b64encode(b"\0" * (4 * 1024 * 1024 + 100_000)).decode()),
     "inputs.image"),
    ("image too many pixels", with_inputs("img2img", image=base64.b64encode(png_header_only(5000, 5000)).decode()),
     "inputs.image"),
    ("s3 outside input bucket", with_inputs("img2img", image="s3://someone-elses-bucket/x.png"), "inputs.image"),
    ("s3 key traversal", with_inputs("img2img", image="s3://spotgen-inputs/../x.png"), "inputs.image"),
    ("http url", with_inputs("img2img", image="https://example.com/x.png"), "inputs.image"),
    ("bad idempotency key", {**BASE, "id": "a/b"}, "id"),
    ("idempotency key too long", {**BASE, "id": "x" * 65}, "id"),
    ("context too large", {**BASE, "context": {"blob": "x" * 5000}}, "context"),
    ("unknown top-level field", {**BASE, "priority": 9}, "priority"),
    ("unknown input field", with_inputs(colour="red"), "inputs.colour"),
    ("output prefix traversal", {**BASE, "output_prefix": "../secrets"}, "output_prefix"),
    ("output prefix reserved", {**BASE, "output_prefix": "checkpoints/mine"}, "output_prefix"),
    ("body not an object", [BASE], "body"),
    ("expires_at and ttl_seconds", {**BASE, "expires_at": IN_AN_HOUR.isoformat(), "ttl_seconds": 60}, "body"),
    ("expires_at in the past", {**BASE, "expires_at": "2020-01-01T00:00:00Z"}, "expires_at"),
    ("expires_at without time zone", {**BASE, "expires_at": IN_AN_HOUR.replace(tzinfo=None).isoformat()},
     "expires_at"),
    ("expires_at over a week away", {**BASE, "expires_at": (IN_AN_HOUR + timedelta(days=7)).isoformat()},
     "expires_at"),
    ("expires_at not a time", {**BASE, "expires_at": "tomorrow"}, "expires_at"),
    ("ttl_seconds zero", {**BASE, "ttl_seconds": 0}, "ttl_seconds"),
    ("ttl_seconds over a week", {**BASE, "ttl_seconds": 7 * 24 * 3600 + 1}, "ttl_seconds"),
    # strict JSON types: a value of another JSON type is refused, not converted
    ("width as a string", with_inputs(width="64"), "inputs.width"),
    ("steps as a boolean", with_inputs(steps=True), "inputs.steps"),
    ("steps as a float", with_inputs(steps=20.0), "inputs.steps"),
    ("prompt as a number", {**BASE, "inputs": {"prompt": 1}}, "inputs.prompt"),
    ("guidance as a string", with_inputs(guidance_scale="7.5"), "inputs.guidance_scale"),
    ("seed as a string", with_inputs(seed="42"), "inputs.seed"),
    ("LoRA weight as a string", with_inputs(loras=[{"id": "tiny-lora-sd1", "weight": "0.5"}]),
     "inputs.loras.0.weight"),
    ("ttl_seconds as a string", {**BASE, "ttl_seconds": "60"}, "ttl_seconds"),
    ("model as a number", {**BASE, "model": 1}, "model"),
]


def post_raw(stack: Stack, data: bytes) -> tuple[int, Any]:
    request = urllib.request.Request(f"{stack.api_url}/v1/jobs", data=data, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


@pytest.fixture(scope="module")
def spy(stack: Stack) -> str:
    """A queue subscribed to the jobs topic with no filter: it sees every message the API publishes."""
    url = stack.sqs.create_queue(QueueName="spy-jobs")["QueueUrl"]
    arn = stack.sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    stack.sns.subscribe(TopicArn=stack.env["SPOTGEN_JOBS_TOPIC_ARN"], Protocol="sqs", Endpoint=arn,
                        Attributes={"RawMessageDelivery": "true"})
    return url


def snapshot(stack: Stack) -> set[str]:
    keys = set()
    for bucket in (stack.env["SPOTGEN_INPUT_BUCKET"], stack.env["SPOTGEN_OUTPUT_BUCKET"]):
        for obj in stack.s3.list_objects_v2(Bucket=bucket).get("Contents", []):
            keys.add(f"{bucket}/{obj['Key']}")
    return keys


def assert_nothing_written(stack: Stack, spy: str, before: set[str]) -> None:
    assert snapshot(stack) == before
    assert "Messages" not in stack.sqs.receive_message(QueueUrl=spy, WaitTimeSeconds=0)


@pytest.mark.parametrize(("case", "body", "field"), BAD_REQUESTS, ids=[c[0] for c in BAD_REQUESTS])
def test_bad_request_is_400_naming_the_field(stack: Stack, spy: str, case: str, body: Any, field: str) -> None:
    before = snapshot(stack)
    status, answer = call("POST", f"{stack.api_url}/v1/jobs", body)
    assert status == 400, answer
    assert answer["error"]["field"] == field, answer
    assert answer["error"]["code"] and answer["error"]["message"]
    if " as a " in case:  # what was wrong with the type, in words
        assert answer["error"]["message"].startswith(f"{field}: must be "), answer
    assert_nothing_written(stack, spy, before)


@pytest.mark.parametrize(("data", "code"), [
    (b"{not json", "invalid_json"),
    (b"\xff\xfe\x00garbage", "invalid_json"),
])
def test_unparseable_body_is_400(stack: Stack, spy: str, data: bytes, code: str) -> None:
    before = snapshot(stack)
    status, answer = post_raw(stack, data)
    assert (status, answer["error"]["code"], answer["error"]["field"]) == (400, code, "body")
    assert_nothing_written(stack, spy, before)


def test_a_body_over_lambdas_request_limit_never_reaches_the_handler(stack: Stack, spy: str) -> None:
    """As on AWS: the event would be over Lambda's 6 MB, so the gateway answers 413 itself."""
    before = snapshot(stack)
    status, answer = post_raw(stack, b"{" + b" " * (7 * 1024 * 1024) + b"}")
    assert (status, answer) == (413, {"message": "Request Too Long"})
    assert_nothing_written(stack, spy, before)


def test_unknown_route_is_404_and_wrong_method_is_405(stack: Stack) -> None:
    status, answer = call("GET", f"{stack.api_url}/v2/things")
    assert (status, answer["error"]["code"]) == (404, "not_found")
    status, answer = call("DELETE", f"{stack.api_url}/v1/jobs/abc")
    assert (status, answer["error"]["code"]) == (405, "method_not_allowed")
    status, answer = call("PUT", f"{stack.api_url}/v1/jobs", {})
    assert status == 405


def test_status_of_unknown_job_is_404(stack: Stack) -> None:
    status, answer = call("GET", f"{stack.api_url}/v1/jobs/no-such-job")
    assert (status, answer["error"]["field"]) == (404, "id")


def test_idempotent_resubmission_returns_the_same_job(stack: Stack, spy: str) -> None:
    stack.sqs.purge_queue(QueueUrl=spy)
    body = {**BASE, "id": "idem-1", "inputs": {**BASE["inputs"], "steps": 2}}
    first = call("POST", f"{stack.api_url}/v1/jobs", body)
    second = call("POST", f"{stack.api_url}/v1/jobs", body)
    assert first[0] == 202 and second[0] == 200
    assert first[1]["id"] == second[1]["id"] == "idem-1"
    assert first[1]["seed"] == second[1]["seed"]  # server-chosen once, reported back both times
    assert second[1]["existing"] is True
    published = stack.sqs.receive_message(QueueUrl=spy, MaxNumberOfMessages=10, WaitTimeSeconds=0)
    assert len(published.get("Messages", [])) == 1
    conflict = call("POST", f"{stack.api_url}/v1/jobs", {**body, "inputs": {**body["inputs"], "prompt": "other"}})
    assert conflict[0] == 409 and conflict[1]["error"]["field"] == "id"


def test_deadline_errors_say_what_to_fix(stack: Stack) -> None:
    url = f"{stack.api_url}/v1/jobs"
    both = call("POST", url, {**BASE, "expires_at": IN_AN_HOUR.isoformat(), "ttl_seconds": 60})[1]["error"]
    assert "expires_at" in both["message"] and "ttl_seconds" in both["message"]
    past = call("POST", url, {**BASE, "expires_at": "2020-01-01T00:00:00Z"})[1]["error"]
    assert "past" in past["message"]
    naive = call("POST", url, {**BASE, "expires_at": "2030-01-01T00:00:00"})[1]["error"]
    assert "time zone" in naive["message"]


def published_spec(stack: Stack, spy: str, job_id: str) -> dict[str, Any]:
    """The job as the API published it (other tests' messages on the spy queue are left alone)."""
    for _ in range(10):
        for message in stack.sqs.receive_message(QueueUrl=spy, MaxNumberOfMessages=10, WaitTimeSeconds=1,
                                                 VisibilityTimeout=0).get("Messages", []):
            _headers, [spec], _kwargs = read_celery_message(message["Body"])
            if spec["id"] == job_id:
                stack.sqs.delete_message(QueueUrl=spy, ReceiptHandle=message["ReceiptHandle"])
                return spec
    raise AssertionError(f"no message for job {job_id} on the spy queue")


def test_ttl_seconds_sets_the_deadline(stack: Stack, spy: str) -> None:
    before = datetime.now(UTC)
    status, answer = call("POST", f"{stack.api_url}/v1/jobs",
                          {"pipeline": "solid", "model": "tiny-sd", "inputs": {"prompt": "soon"}, "ttl_seconds": 600})
    assert status == 202, answer
    doc = call("GET", f"{stack.api_url}/v1/jobs/{answer['id']}")[1]
    expires_at = datetime.fromisoformat(doc["expires_at"])
    assert expires_at == datetime.fromisoformat(doc["created_at"]) + timedelta(seconds=600)
    assert before + timedelta(seconds=600) <= expires_at <= datetime.now(UTC) + timedelta(seconds=600)
    spec = published_spec(stack, spy, answer["id"])
    assert datetime.fromisoformat(spec["expires_at"]) == expires_at  # the worker gets the same deadline


def test_expires_at_is_kept_as_given(stack: Stack) -> None:
    deadline = (datetime.now(UTC) + timedelta(minutes=30)).astimezone(timezone(timedelta(hours=2)))
    status, answer = call("POST", f"{stack.api_url}/v1/jobs", {"pipeline": "solid", "model": "tiny-sd",
                                                                "inputs": {"prompt": "later"},
                                                                "expires_at": deadline.isoformat()})
    assert status == 202, answer
    doc = call("GET", f"{stack.api_url}/v1/jobs/{answer['id']}")[1]
    assert datetime.fromisoformat(doc["expires_at"]) == deadline
