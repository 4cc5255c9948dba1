"""Failures that say whether to retry (runtime/worker/failures.py), with a real worker on the tiny models.

A model directory that storage could not show for a moment, and an out-of-memory error, cost a retry, not the
job; a bad input still fails at once, naming its field. The stack is this module's own: its worker registers
the test pipeline that runs out of memory, and its models directory is a copy with a model only these tests use
(``tiny-sd-hidden``), so hiding it touches no other test. Short leases bring a retried message back quickly.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from runtime.contract import JobState, StatusDoc, utcnow
from runtime.contract.envelope import build_celery_message
from tests.conftest import Stack, spawn_worker, start_stack, stop_stack
from tests.events import until
from tests.rest import call, wait_for
from tests.worker.test_outages import free_port

HIDDEN = "tiny-sd-hidden"
PLUGINS = ("tests.plugins:AlwaysFails,tests.plugins:SolidColor,tests.plugins:SlowSteps,tests.plugins:Flaky,"
           "tests.worker.failure_plugins:OutOfMemoryOnce,tests.worker.failure_plugins:DeviceLostHere")
ENV = {"SPOTGEN_PLUGINS": PLUGINS, "SPOTGEN_EXTRA_PIPELINES": "always-fails,solid,slow,flaky,oom-once,device-lost",
       "SPOTGEN_MODELS": f"tiny-sd,tiny-sdxl,{HIDDEN}", "SPOTGEN_HEARTBEAT_S": "0.5", "SPOTGEN_LEASE_S": "3",
       "SPOTGEN_MAX_RECEIVE_COUNT": "3"}


@pytest.fixture(scope="module")
def models(tiny_models: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny models and ``tiny-sd-hidden``, a copy of tiny-sd in a directory of its own."""
    root = tmp_path_factory.mktemp("failure-models") / "models"
    shutil.copytree(tiny_models, root)
    shutil.copytree(root / "tiny-sd", root / HIDDEN)
    catalog = json.loads((root / "catalog.json").read_text())
    catalog["models"][HIDDEN] = {**catalog["models"]["tiny-sd"], "path": HIDDEN, "aliases": []}
    (root / "catalog.json").write_text(json.dumps(catalog))
    return root


@pytest.fixture(scope="module")
def stack(models: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    running = start_stack(tmp_path_factory.mktemp("failures"), models, ENV, args=("--visibility-timeout", "3"))
    yield running
    stop_stack(running)


def submit(stack: Stack, body: dict[str, Any]) -> str:
    status, answer = call("POST", f"{stack.api_url}/v1/jobs", body)
    assert status == 202, answer
    return answer["id"]


def states_until(stack: Stack, job_id: str, state: str, timeout: float = 60) -> dict[str, Any]:
    """The job's status once it is ``state``; fails as soon as the job is final in another state."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _, doc = call("GET", f"{stack.api_url}/v1/jobs/{job_id}")
        if doc.get("state") == state:
            return doc
        assert not JobState(doc["state"]).final, f"the job ended {doc['state']} without being {state}: {doc}"
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} was never {state}")


def test_a_model_directory_missing_for_a_moment_costs_one_retry(stack: Stack, models: Path) -> None:
    directory, away = models / HIDDEN, models / f".{HIDDEN}.away"
    directory.rename(away)  # storage (EFS) could not show it for a moment
    try:
        job = submit(stack, {"pipeline": "txt2img", "model": HIDDEN,
                             "inputs": {"prompt": "a fox", "width": 64, "height": 64, "steps": 2}})
        retrying = states_until(stack, job, "retrying")
    finally:
        away.rename(directory)
    assert retrying["error"]["code"] == "model_missing" and HIDDEN in retrying["error"]["message"]
    doc = wait_for(stack.api_url, job, timeout=60)
    assert doc["state"] == "succeeded" and doc["attempts"] == 2 and doc["error"] is None, doc
    assert [note["state"] for note in stack.inbox.settled(job)] == ["succeeded"]


def test_out_of_memory_frees_memory_and_runs_again_in_the_process(stack: Stack) -> None:
    job = submit(stack, {"pipeline": "oom-once", "model": "tiny-sd", "inputs": {"prompt": "big"}})
    doc = wait_for(stack.api_url, job, timeout=60)
    assert doc["state"] == "succeeded" and doc["attempts"] == 1, doc  # the same delivery ran it again
    assert f"job {job}: out of memory" in stack.worker_log()


def test_a_bad_input_fails_at_once_naming_its_field(stack: Stack) -> None:
    """Past the API (a message sent to the queue as another producer would): the worker refuses it on its first
    delivery, without a retry."""
    job, now = "bad-input-once", utcnow()
    queued = StatusDoc(id=job, state=JobState.queued, pipeline="txt2img", model="tiny-sd", seed=1, created_at=now,
                       updated_at=now)
    stack.s3.put_object(Bucket=stack.env["SPOTGEN_OUTPUT_BUCKET"], Key=f"jobs/{job}/status.json",
                        Body=queued.model_dump_json())
    spec = {"version": 1, "id": job, "pipeline": "txt2img", "model": "tiny-sd", "seed": 1,
            "inputs": {"prompt": "x", "width": 4096, "height": 64}, "output_prefix": "outputs",
            "submitted_at": now.isoformat(), "request_hash": "0" * 64}
    stack.sqs.send_message(QueueUrl=stack.env["SPOTGEN_QUEUE_URL"],
                           MessageBody=build_celery_message(job, [spec], queue="x"),
                           MessageAttributes={"job_id": {"DataType": "String", "StringValue": job}})
    doc = wait_for(stack.api_url, job, timeout=60)
    assert doc["state"] == "failed" and doc["error"]["code"] == "invalid_inputs", doc
    assert doc["error"]["field"] == "inputs.width"
    (letter,) = stack.inbox.dead_letters(job)
    assert letter["MessageAttributes"]["error_code"]["StringValue"] == "invalid_inputs"


def test_a_worker_that_loses_its_device_leaves_and_another_runs_the_job(stack: Stack) -> None:
    """A lost device leaves the process's CUDA context broken: the job is retried elsewhere, and the worker leaves
    as a drained one does (exit 0), so that Kubernetes starts a fresh process instead of one that fails every job.
    Only the extra worker loses its device; jobs go to whichever worker polls first, so they are sent one by one
    until it has taken one."""
    port = free_port()
    lost = spawn_worker(stack, "device-lost", {**ENV, "SPOTGEN_TEST_DEVICE_LOST": "1",
                                               "SPOTGEN_METRICS_PORT": str(port)})
    log = stack.log_dir / "worker-device-lost.log"
    try:
        until("the extra worker to be ready", lambda: lost.poll() is not None or " ready." in log.read_text(), 120)
        for _ in range(20):
            job = submit(stack, {"pipeline": "device-lost", "model": "tiny-sd", "inputs": {"prompt": "x"}})
            doc = wait_for(stack.api_url, job, timeout=90)
            assert doc["state"] == "succeeded", doc
            if doc["attempts"] == 2:
                break
        else:
            raise AssertionError("the extra worker never took a job")
        assert lost.wait(60) == 0, log.read_text()[-3000:]
        text = log.read_text()
        assert f"leaving: job {job} lost the device" in text and "CUDA error" in text
        assert [note["state"] for note in stack.inbox.settled(job)] == ["succeeded"]
    finally:
        if lost.poll() is None:
            lost.kill()
