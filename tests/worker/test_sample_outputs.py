"""How a job of the AWS sample's API ends, with real workers: the sample's notification and its ``.out`` document.

The sample's clients read a notification of their own shape (``SampleNotification``) and follow its
``output_url`` to the ``.out`` document, so both must be in place, consistent and sent once, as spotgen's own
are. Jobs go straight onto the work queue (status document and Celery message, as the sample's API would write
them), so these tests hold without the API side. One stack with two workers serves the module: two copies of
one message run at the same time on both.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from runtime.config import Settings
from runtime.contract import JobErrorInfo, JobSpec, JobState, Notification, StatusDoc, Txt2ImgInputs, utcnow
from runtime.contract.envelope import build_celery_message
from runtime.contract.inputs import Img2ImgInputs
from runtime.contract.jobs import SampleJob
from runtime.contract.sample import SampleNotification
from runtime.contract.webui_answer import sample_out_document
from runtime.storage.jobstore import JobStore, output_key, status_key
from runtime.worker.jobstatus import JobEnded, StatusTracker
from runtime.worker.outputs import Outputs
from tests.conftest import Stack, start_stack, stop_stack

PREFIX = "sample-out"
SEED = 21
# No receive-ahead: two copies of one message then go to the two workers and run at the same time.
ENV = {"SPOTGEN_RECEIVE_AHEAD": "false", "SPOTGEN_PROGRESS_INTERVAL_S": "0.1"}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, tiny_models: Path) -> Iterator[Stack]:
    running = start_stack(tmp_path_factory.mktemp("sample"), tiny_models, ENV, workers=2)
    yield running
    stop_stack(running)


def sample_for(job_id: str, count: int = 2) -> SampleJob:
    """What the sample's API would attach: WebUI's parameters and info (seeds chosen), a context to echo."""
    seeds = [SEED + i for i in range(count)]
    return SampleJob(api_version="v1alpha2", runtime="sdruntime", context="ticket-7",
                     location=f"{PREFIX}/{job_id}",
                     parameters={"prompt": "a lighthouse", "steps": 4, "width": 64, "height": 64, "batch_size": count},
                     info={"prompt": "a lighthouse", "seed": seeds[0], "all_seeds": seeds, "steps": 4})


def spec_for(job_id: str, sample: SampleJob | None, pipeline: str = "txt2img", bucket: str | None = None,
             **extra: Any) -> JobSpec:
    model = Img2ImgInputs if pipeline == "img2img" else Txt2ImgInputs
    inputs = model.model_validate({"prompt": "a lighthouse", "width": 64, "height": 64, "steps": 4, "seed": SEED,
                                   "num_images": 2, **extra}, context={"input_bucket": bucket}).model_dump(mode="json")
    return JobSpec(id=job_id, pipeline=pipeline, model="tiny-sd", inputs=inputs, seed=SEED, output_prefix=PREFIX,
                   submitted_at=utcnow(), request_hash="0" * 64, sample=sample)


def store_of(stack: Stack) -> JobStore:
    return JobStore(stack.s3, Settings.from_env(stack.env))


def queued_doc(spec: JobSpec, **changes: Any) -> StatusDoc:
    now = utcnow()
    return StatusDoc(id=spec.id, state=JobState.queued, pipeline=spec.pipeline, model=spec.model, seed=spec.seed,
                     sample=spec.sample, created_at=now, updated_at=now, **changes)


def send(stack: Stack, spec: JobSpec, copies: int = 1) -> None:
    body = build_celery_message(spec.id, [spec.model_dump(mode="json")], queue=stack.env["SPOTGEN_QUEUE_NAME"])
    for _ in range(copies):
        stack.sqs.send_message(QueueUrl=stack.env["SPOTGEN_QUEUE_URL"], MessageBody=body, MessageAttributes={
            "job_id": {"DataType": "String", "StringValue": spec.id}})


def notifications(stack: Stack, job_id: str, timeout: float = 120) -> list[dict[str, Any]]:
    """Every message the results queue will ever get for the job (``Inbox.settled_messages``)."""
    return stack.inbox.settled_messages(job_id, timeout)


def attributes(msg: dict[str, Any]) -> dict[str, str]:
    return {name: value["StringValue"] for name, value in msg.get("MessageAttributes", {}).items()}


def out_document(stack: Stack, sample: SampleJob, job_id: str) -> tuple[bytes, str]:
    obj = stack.s3.get_object(Bucket=stack.env["SPOTGEN_OUTPUT_BUCKET"], Key=f"{sample.location}/{job_id}.out")
    return obj["Body"].read(), obj["ContentType"]


def sample_note(msg: dict[str, Any], state: str) -> SampleNotification:
    assert attributes(msg) == {"state": state, "format": "aws-sample"}
    return SampleNotification.model_validate_json(msg["Body"])


def test_succeeded_sample_job_gets_the_sample_notification_and_out_document(stack: Stack) -> None:
    job = f"sample-ok-{time.time_ns()}"
    sample = sample_for(job)
    spec = spec_for(job, sample)
    store_of(stack).create_status(queued_doc(spec))
    send(stack, spec)
    (msg,) = notifications(stack, job)
    note = sample_note(msg, "succeeded")
    bucket = stack.env["SPOTGEN_OUTPUT_BUCKET"]
    keys = [f"{sample.location}/{i}.png" for i in range(2)]
    assert [output_key(PREFIX, job, i) for i in range(2)] == keys  # the API's output_prefix puts images there
    assert (note.runtime, note.id, note.result, note.status) == ("sdruntime", job, True, "completed")
    assert note.image_url == [f"s3://{bucket}/{key}" for key in keys]
    assert note.output_url == f"s3://{bucket}/{sample.location}/{job}.out" and note.context == "ticket-7"
    for key in keys:
        assert stack.s3.get_object(Bucket=bucket, Key=key)["ContentType"] == "image/png"
    raw, content_type = out_document(stack, sample, job)
    out = json.loads(raw)
    assert content_type == "application/json"
    assert out["parameters"]["id_task"] == job and out["parameters"]["error_msg"] == ""
    assert out["parameters"]["image_seed"] == ",".join(str(s) for s in sample.info["all_seeds"]) == "21,22"
    assert out["parameters"]["prompt"] == "a lighthouse"
    assert isinstance(out["info"], str) and json.loads(out["info"]) == sample.info
    doc = store_of(stack).read_status(job)
    assert doc is not None and doc.state is JobState.succeeded and doc.sample == sample and doc.notified_at


def test_failed_sample_job_is_announced_failed_without_images(stack: Stack) -> None:
    job = f"sample-fail-{time.time_ns()}"
    sample = sample_for(job)
    bucket = stack.env["SPOTGEN_INPUT_BUCKET"]
    spec = spec_for(job, sample, "img2img", bucket, image=f"s3://{bucket}/nowhere/{job}.png", strength=0.5)
    store_of(stack).create_status(queued_doc(spec))
    send(stack, spec)
    (msg,) = notifications(stack, job)
    note = sample_note(msg, "failed")
    assert (note.result, note.status, note.image_url, note.context) == (False, "failed", [], "ticket-7")
    assert note.output_url.endswith(f"/{sample.location}/{job}.out")
    doc = store_of(stack).read_status(job)
    assert doc is not None and doc.state is JobState.failed and doc.error is not None
    # An image that is not there will not appear: the first delivery fails the job, naming the image.
    assert (doc.error.code, doc.attempts) == ("invalid_image", 1) and "does not exist" in doc.error.message
    out = json.loads(out_document(stack, sample, job)[0])
    assert out == sample_out_document(job, sample.parameters, sample.info, doc.error.message)
    assert out["parameters"]["error_msg"] == doc.error.message and out["info"] == ""


def test_two_deliveries_at_once_send_one_notification(stack: Stack) -> None:
    job = f"sample-twice-{time.time_ns()}"
    sample = sample_for(job)
    spec = spec_for(job, sample)
    store_of(stack).create_status(queued_doc(spec))
    send(stack, spec, copies=2)
    (msg,) = notifications(stack, job)
    assert sample_note(msg, "succeeded").result
    deadline = time.monotonic() + 30  # the other copy ends too: it stops at the final status or finds it recorded
    while stack.worker_log().count(f"job {job} ended:") < 2:
        assert time.monotonic() < deadline, "the second copy did not end"
        time.sleep(0.1)
    assert len(notifications(stack, job, timeout=1)) == 1
    out = json.loads(out_document(stack, sample, job)[0])
    assert out == sample_out_document(job, sample.parameters, sample.info, None)


def test_a_second_delivery_rewrites_the_same_out_bytes(stack: Stack) -> None:
    """Two deliveries finishing one job, the late one with another outcome: the late one writes the ``.out`` of
    the recorded result, byte for byte, and sends nothing."""
    job = f"sample-late-{time.time_ns()}"
    sample = sample_for(job)
    spec = spec_for(job, sample)
    store = store_of(stack)
    store.create_status(queued_doc(spec))
    doc, etag = store.read_status_tagged(job)
    assert doc is not None
    outputs = Outputs(Settings.from_env(stack.env), store, stack.sns)
    first, late = StatusTracker(store, doc, etag), StatusTracker(store, doc, etag)
    keys = [output_key(PREFIX, job, i) for i in range(2)]
    assert outputs.finish(first, JobState.succeeded, keys, None, checkpoint=False).state is JobState.succeeded
    written, _ = out_document(stack, sample, job)
    stack.s3.delete_object(Bucket=stack.env["SPOTGEN_OUTPUT_BUCKET"], Key=f"{sample.location}/{job}.out")
    with pytest.raises(JobEnded):
        outputs.finish(late, JobState.failed, [], JobErrorInfo(code="pipeline_error", message="late"))
    assert out_document(stack, sample, job)[0] == written
    (msg,) = notifications(stack, job, timeout=10)
    assert sample_note(msg, "succeeded").image_url == [f"s3://{stack.env['SPOTGEN_OUTPUT_BUCKET']}/{k}" for k in keys]


def test_sample_job_cancelled_while_queued_gets_its_out_document(stack: Stack) -> None:
    """The cancel API ends a queued job itself; the worker that receives its message announces it, and writes
    the ``.out`` the notification points at."""
    job = f"sample-cancel-{time.time_ns()}"
    sample = sample_for(job)
    spec = spec_for(job, sample)
    now = utcnow()
    store_of(stack).create_status(queued_doc(spec).model_copy(update={
        "state": JobState.cancelled, "finished_at": now, "cancel_requested_at": now}))
    send(stack, spec)
    (msg,) = notifications(stack, job)
    assert sample_note(msg, "cancelled").status == "failed"
    out = json.loads(out_document(stack, sample, job)[0])
    assert out["parameters"]["error_msg"] == "cancelled"


def test_sample_message_without_a_status_document_keeps_its_sample(stack: Stack) -> None:
    job = f"sample-bare-{time.time_ns()}"
    sample = sample_for(job)
    send(stack, spec_for(job, sample))
    (msg,) = notifications(stack, job)
    assert sample_note(msg, "succeeded").result
    doc = store_of(stack).read_status(job)
    assert doc is not None and doc.sample == sample
    assert json.loads(out_document(stack, sample, job)[0])["parameters"]["id_task"] == job


def test_native_job_keeps_spotgens_notification(stack: Stack) -> None:
    job = f"native-{time.time_ns()}"
    spec = spec_for(job, None)
    store_of(stack).create_status(queued_doc(spec, context={"user": "u-1"}))
    send(stack, spec)
    (msg,) = notifications(stack, job)
    assert attributes(msg) == {"state": "succeeded"}
    body = json.loads(msg["Body"])
    assert set(body) == set(Notification.model_fields) == {"id", "state", "outputs", "content_types", "error",
                                                           "context"}
    note = Notification.model_validate(body)
    bucket = stack.env["SPOTGEN_OUTPUT_BUCKET"]
    assert note.outputs == [f"s3://{bucket}/{PREFIX}/{job}/{i}.png" for i in range(2)]
    assert note.content_types == ["image/png", "image/png"]
    assert note.context == {"user": "u-1"} and note.error is None
    listing = stack.s3.list_objects_v2(Bucket=bucket, Prefix=f"{PREFIX}/{job}/")
    assert sorted(o["Key"] for o in listing["Contents"]) == [f"{PREFIX}/{job}/{i}.png" for i in range(2)]  # no .out


def test_a_finished_delivery_never_marks_a_new_job_under_its_id(stack: Stack) -> None:
    """A job's documents removed (a retention rule) and its id submitted again while the old delivery still
    finishes: the old delivery's claim and mark must not land on the new job's status, or the new job would end
    without a notification."""
    job = f"reused-{time.time_ns()}"
    spec = spec_for(job, None)
    store = store_of(stack)
    store.create_status(queued_doc(spec))
    doc, etag = store.read_status_tagged(job)
    assert doc is not None
    old = StatusTracker(store, doc, etag)
    old.write(state=JobState.succeeded, claim=True)
    stack.s3.delete_object(Bucket=stack.env["SPOTGEN_OUTPUT_BUCKET"], Key=status_key(job))
    assert store.create_status(queued_doc(spec))  # the same id again: a new job
    assert old.claim_notification(30) is True  # its own claim, made with the final status, still stands
    old.mark_notified()
    assert old.claim_notification(0) is False
    new = store.read_status(job)
    assert new is not None and new.state is JobState.queued
    assert new.notified_at is None and new.notify_claimed_at is None, new
