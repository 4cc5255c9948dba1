"""The whole request path with real processes: HTTP API -> SNS -> SQS -> Celery worker -> diffusers -> S3 + SNS."""

from __future__ import annotations

import base64
import io
import json
from typing import Any

from PIL import Image

from runtime.contract import JobState, StatusDoc, utcnow
from runtime.contract.envelope import build_celery_message
from runtime.local.demo import edge_map
from tests.conftest import Stack
from tests.lambdas.test_api import png_bytes
from tests.rest import call, download, wait_for

COMMON = {"width": 64, "height": 64, "steps": 6, "seed": 7}


def submit(stack: Stack, body: dict[str, Any]) -> str:
    status, answer = call("POST", f"{stack.api_url}/v1/jobs", body)
    assert status == 202, answer
    return answer["id"]


def run(stack: Stack, body: dict[str, Any], timeout: float = 120) -> dict[str, Any]:
    return wait_for(stack.api_url, submit(stack, body), timeout=timeout)


def first_png(doc: dict[str, Any]) -> bytes:
    assert doc["state"] == "succeeded", doc
    return download(doc["outputs"][0]["url"])


def notification(stack: Stack, job_id: str) -> list[dict[str, Any]]:
    """Every notification the job will ever get (``Inbox.settled``: read after no delivery is left)."""
    return stack.inbox.settled(job_id)


def dead_letters(stack: Stack, job_id: str) -> list[dict[str, Any]]:
    return stack.inbox.dead_letters(job_id)


def test_txt2img_end_to_end(stack: Stack) -> None:
    body = {"pipeline": "txt2img", "model": "tiny-sd", "context": {"user": "u-1"},
            "inputs": {"prompt": "a red fox", **COMMON, "num_images": 2, "scheduler": "dpmpp_2m"}}
    doc = run(stack, body)
    assert doc["state"] == "succeeded", doc
    assert doc["seed"] == 7 and doc["attempts"] == 1 and doc["context"] == {"user": "u-1"}
    assert doc["progress"] == {"step": 6, "total": 6}
    assert doc["started_at"] and doc["finished_at"] and doc["error"] is None
    assert len(doc["outputs"]) == 2
    image = Image.open(io.BytesIO(download(doc["outputs"][1]["url"])))
    assert (image.format, image.size) == ("PNG", (64, 64))
    params = json.loads(image.text["parameters"])
    assert params["prompt"] == "a red fox" and params["seed"] == 7 and params["scheduler"] == "dpmpp_2m"
    assert params["index"] == 1
    result = json.loads(stack.s3.get_object(Bucket=stack.env["SPOTGEN_OUTPUT_BUCKET"],
                                            Key=f"jobs/{doc['id']}/result.json")["Body"].read())
    assert result["state"] == "succeeded" and result["outputs"] == [o["key"] for o in doc["outputs"]]
    (note,) = notification(stack, doc["id"])
    assert note["state"] == "succeeded" and note["context"] == {"user": "u-1"} and note["error"] is None
    assert note["outputs"] == [f"s3://{stack.env['SPOTGEN_OUTPUT_BUCKET']}/{o['key']}" for o in doc["outputs"]]


def test_img2img_and_controlnet_from_inline_images(stack: Stack) -> None:
    init = png_bytes(64, 64)
    doc = run(stack, {"pipeline": "img2img", "model": "tiny-sd", "output_prefix": "team-a/run1", "inputs": {
        "prompt": "a fox", "image": base64.b64encode(init).decode(), "strength": 0.5, **COMMON}})
    out = Image.open(io.BytesIO(first_png(doc)))
    assert out.size == (64, 64)
    assert doc["outputs"][0]["key"] == f"team-a/run1/{doc['id']}/0.png"
    inputs = stack.s3.list_objects_v2(Bucket=stack.env["SPOTGEN_INPUT_BUCKET"], Prefix=f"inputs/{doc['id']}/")
    assert [o["Key"] for o in inputs["Contents"]] == [f"inputs/{doc['id']}/{doc['submission']}/image.png"]

    doc = run(stack, {"pipeline": "controlnet", "model": "tiny-sd", "inputs": {
        "prompt": "a fox", "control_image": "data:image/png;base64," + base64.b64encode(edge_map(init)).decode(),
        "controlnet": "tiny-controlnet", "controlnet_conditioning_scale": 0.8, "scheduler": "unipc", **COMMON}})
    assert Image.open(io.BytesIO(first_png(doc))).size == (64, 64)


def test_image_from_input_bucket_uri(stack: Stack) -> None:
    bucket = stack.env["SPOTGEN_INPUT_BUCKET"]
    stack.s3.put_object(Bucket=bucket, Key="uploads/init.png", Body=png_bytes(32, 32))
    doc = run(stack, {"pipeline": "img2img", "model": "tiny-sd", "inputs": {
        "prompt": "a fox", "image": f"s3://{bucket}/uploads/init.png", **COMMON}})
    assert doc["state"] == "succeeded", doc


def test_same_seed_and_inputs_give_identical_pngs(stack: Stack) -> None:
    body = {"pipeline": "txt2img", "model": "tiny-sd",
            "inputs": {"prompt": "same", **COMMON, "scheduler": "euler_a"}}
    first, second = first_png(run(stack, body)), first_png(run(stack, body))
    assert first == second
    other = first_png(run(stack, {**body, "inputs": {**body["inputs"], "seed": 8}}))
    assert other != first


def test_server_chooses_and_reports_the_seed(stack: Stack) -> None:
    status, answer = call("POST", f"{stack.api_url}/v1/jobs", {"pipeline": "txt2img", "model": "tiny-sd",
                                                               "inputs": {"prompt": "x", "width": 64, "height": 64,
                                                                          "steps": 2}})
    assert status == 202 and isinstance(answer["seed"], int)
    doc = wait_for(stack.api_url, answer["id"])
    assert doc["state"] == "succeeded" and doc["seed"] == answer["seed"]
    params = json.loads(Image.open(io.BytesIO(first_png(doc))).text["parameters"])
    assert params["seed"] == answer["seed"]


def test_failing_pipeline_ends_failed_in_dead_letter_queue(stack: Stack) -> None:
    doc = run(stack, {"pipeline": "always-fails", "model": "tiny-sd", "inputs": {"prompt": "boom"}})
    assert doc["state"] == "failed"
    assert doc["error"]["code"] == "pipeline_error" and "always fails (boom)" in doc["error"]["message"]
    (letter,) = dead_letters(stack, doc["id"])
    assert letter["MessageAttributes"]["error_code"]["StringValue"] == "pipeline_error"
    (note,) = notification(stack, doc["id"])
    assert note["state"] == "failed" and note["error"]["code"] == "pipeline_error"
    # the worker keeps serving
    assert run(stack, {"pipeline": "solid", "model": "tiny-sd", "inputs": {"prompt": "ok"}})["state"] == "succeeded"


def test_foreign_message_goes_to_dead_letter_queue(stack: Stack) -> None:
    queue = stack.env["SPOTGEN_QUEUE_URL"]
    bodies = {"foreign-1": "hello, I am not a celery message", "foreign-2": json.dumps({"task": "x", "args": "no"})}
    for marker, body in bodies.items():
        stack.sqs.send_message(QueueUrl=queue, MessageBody=body,
                               MessageAttributes={"marker": {"DataType": "String", "StringValue": marker}})
    for marker, body in bodies.items():
        (letter,) = dead_letters(stack, marker)
        assert letter["Body"] == body  # moved as received, attributes and all
        assert letter["MessageAttributes"]["error_code"]["StringValue"] == "foreign_message"
    assert run(stack, {"pipeline": "solid", "model": "tiny-sd", "inputs": {"prompt": "ok"}})["state"] == "succeeded"


def test_invalid_task_message_fails_its_job(stack: Stack) -> None:
    """A well-formed Celery message whose job breaks the contract: the worker validates it again."""
    now = utcnow()
    queued = StatusDoc(id="tampered", state=JobState.queued, pipeline="txt2img", model="tiny-sd", seed=1,
                       created_at=now, updated_at=now)
    stack.s3.put_object(Bucket=stack.env["SPOTGEN_OUTPUT_BUCKET"], Key="jobs/tampered/status.json",
                        Body=queued.model_dump_json())
    spec = {"version": 1, "id": "tampered", "pipeline": "txt2img", "model": "tiny-sd", "seed": 1,
            "inputs": {"prompt": "x", "width": 4096, "height": 64}, "output_prefix": "outputs",
            "submitted_at": now.isoformat(), "request_hash": "0" * 64}
    stack.sqs.send_message(QueueUrl=stack.env["SPOTGEN_QUEUE_URL"],
                           # the body names a queue this worker does not have: it must not matter
                           MessageBody=build_celery_message("tampered", [spec], queue="x"),
                           MessageAttributes={"job_id": {"DataType": "String", "StringValue": "tampered"}})
    doc = wait_for(stack.api_url, "tampered", timeout=60)
    assert doc["state"] == "failed" and doc["error"]["code"] == "invalid_inputs"
    assert doc["error"]["field"] == "inputs.width"
    (letter,) = dead_letters(stack, "tampered")
    assert letter["MessageAttributes"]["error_code"]["StringValue"] == "invalid_inputs"


def test_duplicate_delivery_does_not_run_twice(stack: Stack) -> None:
    doc = run(stack, {"pipeline": "solid", "model": "tiny-sd", "inputs": {"prompt": "dup"}})
    assert len(notification(stack, doc["id"])) == 1
    spec_msg = {"version": 1, "id": doc["id"], "pipeline": "solid", "model": "tiny-sd", "seed": doc["seed"],
                "inputs": {"prompt": "dup"}, "output_prefix": "outputs", "submitted_at": doc["created_at"],
                "request_hash": "0" * 64}
    stack.sqs.send_message(QueueUrl=stack.env["SPOTGEN_QUEUE_URL"],
                           MessageBody=build_celery_message(doc["id"], [spec_msg], queue="x"))
    # a job queued after the duplicate finishing proves the duplicate was consumed
    assert run(stack, {"pipeline": "solid", "model": "tiny-sd", "inputs": {"prompt": "after"}})["state"] == "succeeded"
    again = wait_for(stack.api_url, doc["id"])
    assert again["updated_at"] == doc["updated_at"] and again["attempts"] == 1
    assert len(notification(stack, doc["id"])) == 1
