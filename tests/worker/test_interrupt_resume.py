"""Spot interruptions and the visibility lease, with real worker processes we signal: the job goes on elsewhere.

SIGTERM mid-job checkpoints and hands the job back, and another worker resumes it; SIGTERM on an idle worker
exits at once; a job longer than the visibility timeout runs once, and one whose worker is SIGKILLed is delivered
again within the lease and resumes from its last stored checkpoint; a checkpoint that does not fit the job is
ignored; a pipeline without checkpoints is forced out at the deadline, as is any worker at a second SIGTERM; and a
spot notice from the instance metadata service does what SIGTERM does. The workers are those of
``tests/worker/interrupt_pool.py``, whose step log says which process runs a job and how far it got; outputs of
interrupted jobs are compared byte for byte with the same job run without interruption.
"""

from __future__ import annotations

import io
import json
import os
import signal
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import torch

from runtime.config import Settings
from runtime.contract import JobSpec, JobState, StatusDoc, Txt2ImgInputs, utcnow
from runtime.contract.envelope import build_celery_message
from runtime.contract.inputs import MAX_STEPS
from runtime.plugins import StepState
from runtime.storage.jobstore import JobStore, checkpoint_key
from runtime.worker import checkpoint
from runtime.worker.interrupt import FORCED_EXIT
from tests.conftest import Stack
from tests.pipelines.harness import EDGES, PHOTO, _input_images
from tests.rest import download
from tests.worker.interrupt_pool import (  # noqa: F401 - pool_fixture and stack_fixture are fixtures
    LEASE_S,
    Pool,
    finished,
    no_workers,
    notifications,
    pool_fixture,
    stack_fixture,
    submit,
)


@pytest.fixture(scope="module")
def images(stack: Stack) -> dict[str, str]:
    """Input images in the input bucket, referenced by URI so that every job's PNG parameters match."""
    bucket = stack.env["SPOTGEN_INPUT_BUCKET"]
    refs = {}
    inputs = _input_images()
    for name, image in (("photo", inputs[PHOTO]), ("edges", inputs[EDGES])):
        buf = io.BytesIO()
        image.save(buf, format="PNG")
        stack.s3.put_object(Bucket=bucket, Key=f"fixtures/{name}.png", Body=buf.getvalue())
        refs[name] = f"s3://{bucket}/fixtures/{name}.png"
    return refs


def body(pipeline: str, images: dict[str, str], scheduler: str = "euler", steps: int = 40, size: int = 96,
         **extra: Any) -> dict[str, Any]:
    inputs: dict[str, Any] = {"prompt": "a lighthouse at dusk", "width": size, "height": size, "steps": steps,
                              "seed": 11, "scheduler": scheduler, **extra}
    if pipeline == "img2img":
        inputs |= {"image": images["photo"], "strength": 0.8}
    if pipeline == "controlnet":
        inputs |= {"control_image": images["edges"], "controlnet": "tiny-controlnet"}
    return {"pipeline": pipeline, "model": "tiny-sd", "inputs": inputs}


def pngs(doc: dict[str, Any]) -> list[bytes]:
    assert doc["state"] == "succeeded", doc
    return [download(out["url"]) for out in doc["outputs"]]


def checkpoint_exists(stack: Stack, job_id: str, timeout: float = 10) -> bool:
    """Whether the job's checkpoint is still there once the worker is done (it is deleted just after the
    final status and the notification, so give it a moment)."""
    deadline = time.monotonic() + timeout
    while True:
        listing = stack.s3.list_objects_v2(Bucket=stack.env["SPOTGEN_OUTPUT_BUCKET"], Prefix=checkpoint_key(job_id))
        if listing.get("KeyCount", 0) == 0:
            return False
        if time.monotonic() > deadline:
            return True
        time.sleep(0.1)


# -- SIGTERM: checkpoint, hand back, resume elsewhere, byte-identical -------------------------------------

# Every pipeline and every scheduler of the allow-list, each at least once.
# One per pipeline, with a multistep, a first-order and an ancestral sampler: the handoff between workers is the
# same for every sampler, whose own state is checked pair by pair in tests/pipelines/test_schedulers.py. And a
# Flux.1 job (flow matching, a transformer), whose resume after every step tests/pipelines/test_flow_families.py
# checks in-process.
CASES = [("txt2img", "dpmpp_2m", "tiny-sd"), ("img2img", "euler", "tiny-sd"), ("controlnet", "euler_a", "tiny-sd"),
         ("txt2img", "euler", "tiny-flux")]


@pytest.mark.parametrize(("pipeline", "scheduler", "model"), CASES)
def test_sigterm_mid_job_resumes_on_another_worker_byte_identical(
        stack: Stack, pool: Pool, images: dict[str, str], pipeline: str,
        scheduler: str, model: str) -> None:
    pool.ensure(2)
    # Long enough that the signal, sent once step 3 is logged, lands mid-job on a loaded machine: the most steps a
    # job may have (about 2 s of an SD job here, 1.5 s of the tiny Flux model's shorter steps). A job that ended
    # first (0.5 s to spare failed so on CI) would leave nothing to hand back.
    request = {**body(pipeline, images, scheduler, steps=MAX_STEPS), "model": model}
    job, reference = submit(stack, request), submit(stack, request)
    pid, _, step = pool.wait_step(job, 3)
    os.kill(pid, signal.SIGTERM)
    pool.start()  # the replacement starts up while the victim checkpoints and exits
    assert pool.proc(pid).wait(30) == 0  # a graceful exit

    doc, ref = finished(stack, job), finished(stack, reference)
    assert pngs(doc) == pngs(ref)
    assert (doc["attempts"], doc["interruptions"]) == (2, 1)
    first = [s for p, _, s in pool.steps(job) if p == pid]
    assert doc["resume"]["from_step"] == first[-1] >= step  # the checkpoint is the last step done: none redone
    assert "resumed at step" in doc["resume"]["note"]
    assert not checkpoint_exists(stack, job)
    assert [n["state"] for n in notifications(stack, job)] == ["succeeded"]


def test_sigterm_on_an_idle_worker_exits_promptly(pool: Pool) -> None:
    proc = pool.start()
    pool.wait_ready(proc)
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(20) == 0
    assert time.monotonic() - started < 20


# -- the lease ----------------------------------------------------------------------------------------


def test_job_longer_than_the_visibility_timeout_runs_once(stack: Stack, pool: Pool) -> None:
    pool.ensure(2)
    job = submit(stack, {"pipeline": "slow", "model": "tiny-sd",
                         "inputs": {"prompt": "long", "steps": 20, "delay": 0.3}})  # 6 s; visibility is 2 s
    doc = finished(stack, job)
    assert doc["state"] == "succeeded" and doc["attempts"] == 1
    steps = pool.steps(job)
    assert [s for _, _, s in steps] == list(range(1, 21)) and len({p for p, _, _ in steps}) == 1
    assert len(notifications(stack, job)) == 1


def test_sigkill_mid_job_is_redelivered_within_the_lease(stack: Stack, pool: Pool, images: dict[str, str]) -> None:
    pool.ensure(2)
    for proc in pool.procs.values():
        if proc.poll() is None:
            pool.wait_ready(proc)
    request = body("txt2img", images, "dpmpp_2m", steps=60)
    job = submit(stack, request)
    pool.wait_step(job, 13)
    # the step-10 checkpoint is uploaded off the denoising loop; on a loaded machine that may take a few steps
    deadline = time.monotonic() + 30
    while stored_step(stack, job) < 10:
        assert time.monotonic() < deadline, "the step-10 checkpoint was never stored"
        time.sleep(0.02)
    pid = pool.steps(job)[-1][0]
    os.kill(pid, signal.SIGKILL)
    killed = time.monotonic()
    pool.proc(pid).wait()
    # the last step the killed worker logged, read once it is dead: it may have run (and checkpointed) more
    # steps between the read above and the kill
    step = max(s for p, _, s in pool.steps(job) if p == pid)
    # The other worker is idle: the message is visible again when the lease runs out (LEASE_S after the last
    # extension), then taken at its next poll. How soon says nothing about correctness on a loaded machine: wait
    # for the event, a step by another worker, with a deadline far past the lease.
    deadline = killed + 60
    while not any(p != pid for p, _, _ in pool.steps(job)):
        assert time.monotonic() < deadline, f"the job was not redelivered within 60 s of the kill (lease {LEASE_S} s)"
        time.sleep(0.05)
    pool.ensure(2)
    reference = submit(stack, request)
    doc, ref = finished(stack, job), finished(stack, reference)
    assert pngs(doc) == pngs(ref)
    assert doc["attempts"] == 2 and doc["interruptions"] == 0
    assert doc["resume"]["from_step"] % 5 == 0 and 10 <= doc["resume"]["from_step"] <= step


def stored_step(stack: Stack, job_id: str) -> int:
    """The step of the job's stored checkpoint (0: none yet), from its header."""
    try:
        data = stack.s3.get_object(Bucket=stack.env["SPOTGEN_OUTPUT_BUCKET"], Key=checkpoint_key(job_id))["Body"].read()
    except stack.s3.exceptions.NoSuchKey:
        return 0
    return int(json.loads(checkpoint._metadata(data)["spotgen"])["step"])


# -- checkpoints that must not be used ---------------------------------------------------------------------


def spec_for(job_id: str, request: dict[str, Any], **changes: Any) -> JobSpec:
    inputs = Txt2ImgInputs.model_validate({**request["inputs"], **changes}).model_dump(mode="json")
    return JobSpec(id=job_id, pipeline="txt2img", model="tiny-sd", inputs=inputs, seed=inputs["seed"],
                   output_prefix="outputs", submitted_at=utcnow(), request_hash="0" * 64)


def retry_of_an_earlier_attempt(stack: Stack, spec: JobSpec) -> None:
    """Queue ``spec`` as SQS would deliver it again after an attempt that ran (its status says so)."""
    now = utcnow()
    JobStore(stack.s3, Settings.from_env(stack.env)).create_status(StatusDoc(
        id=spec.id, state=JobState.queued, pipeline=spec.pipeline, model=spec.model, seed=spec.seed, attempts=1,
        created_at=now, updated_at=now))
    stack.sqs.send_message(QueueUrl=stack.env["SPOTGEN_QUEUE_URL"], MessageAttributes={
        "job_id": {"DataType": "String", "StringValue": spec.id}}, MessageBody=build_celery_message(
        spec.id, [spec.model_dump(mode="json")], queue=stack.env["SPOTGEN_QUEUE_NAME"]))


def planted(kind: str, job_id: str, request: dict[str, Any]) -> bytes:
    state = StepState(step=4, tensors={"latents": torch.zeros(1, 4, 16, 16)}, values={})
    if kind == "other-job":
        return checkpoint.dump(state, spec_for("another-job", request).fingerprint())
    if kind == "changed-inputs":
        return checkpoint.dump(state, spec_for(job_id, request, prompt="something else").fingerprint())
    data = checkpoint.dump(state, spec_for(job_id, request).fingerprint())
    if kind == "tampered":
        return data[:-8] + bytes(8)
    assert kind == "incomplete"  # intact and for this job, but without the scheduler and generator state
    return data


@pytest.mark.parametrize("kind", ["other-job", "changed-inputs", "tampered", "incomplete"])
def test_a_checkpoint_that_does_not_fit_is_ignored(stack: Stack, pool: Pool, images: dict[str, str],
                                                     kind: str) -> None:
    pool.ensure(2)
    request = body("txt2img", images, "euler_a", steps=8)
    job = f"planted-{kind}-{time.time_ns()}"
    stack.s3.put_object(Bucket=stack.env["SPOTGEN_OUTPUT_BUCKET"], Key=checkpoint_key(job),
                        Body=planted(kind, job, request))
    retry_of_an_earlier_attempt(stack, spec_for(job, request))  # only a later attempt looks for a checkpoint
    doc, ref = finished(stack, job), finished(stack, submit(stack, request))
    assert pngs(doc) == pngs(ref)
    assert [s for _, _, s in pool.steps(job)] == list(range(1, 9))  # from the beginning
    assert f"job {job}: checkpoint ignored" in stack.worker_log()
    assert not checkpoint_exists(stack, job)


# -- forced exits ------------------------------------------------------------------------------------------


def test_deadline_forces_exit_and_releases_the_message(stack: Stack, pool: Pool) -> None:
    """A pipeline without checkpoints keeps running after SIGTERM (it may finish in time); at the deadline
    the worker exits and the job starts again elsewhere, saying why in its status."""
    with no_workers(pool):  # the victim alone consumes, so it takes the job (however long the others take to start)
        victim = pool.start(SPOTGEN_INTERRUPT_DEADLINE_S="1")
        job = submit(stack, {"pipeline": "slow", "model": "tiny-sd", "inputs": {"prompt": "x", "steps": 16,
                                                                                 "delay": 0.25}})
        pool.wait_step(job, 1)
        victim.send_signal(signal.SIGTERM)
        assert victim.wait(15) == FORCED_EXIT
    doc = finished(stack, job)
    assert doc["state"] == "succeeded" and doc["attempts"] == 2
    assert "does not save checkpoints" in doc["resume"]["note"] and doc["resume"]["from_step"] == 0


def test_second_sigterm_exits_at_once(stack: Stack, pool: Pool) -> None:
    pool.ensure(2)
    # 12 s: the job (no checkpoints: it runs on after the first signal) outlasts a loaded machine's delays
    job = submit(stack, {"pipeline": "slow", "model": "tiny-sd", "inputs": {"prompt": "x", "steps": 120,
                                                                             "delay": 0.1}})
    pid, _, _ = pool.wait_step(job, 2)
    os.kill(pid, signal.SIGTERM)
    pool.wait_log(pool.proc(pid), "interruption (")  # the first is being handled: the second comes now
    os.kill(pid, signal.SIGTERM)
    assert pool.proc(pid).wait(60) == FORCED_EXIT
    assert "forced exit after a second signal" in pool.log(pool.proc(pid))
    pool.ensure(2)
    assert finished(stack, job)["state"] == "succeeded"


# -- the spot notice from the instance metadata service ------------------------------------------------


class FakeIMDS(BaseHTTPRequestHandler):
    """IMDSv2 as EC2 serves it: a token first, then 404 until a spot interruption is scheduled."""

    notice: dict[str, str] | None = None

    def do_PUT(self) -> None:  # noqa: N802
        self._reply(200, b"token-1") if self.path == "/latest/api/token" else self._reply(404, b"")

    def do_GET(self) -> None:  # noqa: N802
        if self.headers.get("X-aws-ec2-metadata-token") != "token-1":
            return self._reply(401, b"")
        if self.path == "/latest/meta-data/spot/instance-action" and FakeIMDS.notice:
            return self._reply(200, json.dumps(FakeIMDS.notice).encode())
        return self._reply(404, b"")

    def _reply(self, code: int, data: bytes) -> None:
        self.send_response(code)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: Any) -> None:
        pass


def test_spot_notice_from_imds_checkpoints_and_hands_the_job_back(stack: Stack, pool: Pool,
                                                                   images: dict[str, str]) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeIMDS)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        pool.ensure(2)
        with no_workers(pool):  # only the worker that watches IMDS may take the job
            victim = pool.start(SPOTGEN_IMDS_POLL_S="0.2",
                                SPOTGEN_IMDS_URL=f"http://127.0.0.1:{server.server_port}")
            job = submit(stack, body("txt2img", images, "unipc", steps=60))
            pool.wait_step(job, 3)
            FakeIMDS.notice = {"action": "terminate", "time": "2026-11-24T12:00:00Z"}
            assert victim.wait(60) == 0
        doc = finished(stack, job)  # resumed by the pool's workers
        assert doc["state"] == "succeeded" and doc["interruptions"] == 1 and doc["resume"]["from_step"] >= 3
    finally:
        FakeIMDS.notice = None
        server.shutdown()
