"""Spot interruptions, the visibility lease, cancel and deadlines, with real worker processes we signal.

The stack here starts no workers of its own: each test runs `spotgen worker` processes it can SIGTERM or
SIGKILL, and reads the step log (one line per finished denoising step: pid, job, attempt, step) to know
which process runs a job and how far it got. Outputs of interrupted jobs are compared byte for byte with
the same job run without interruption.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import torch

from runtime.config import Settings
from runtime.contract import JobSpec, JobState, StatusDoc, Txt2ImgInputs, utcnow
from runtime.contract.envelope import build_celery_message
from runtime.plugins import StepState
from runtime.storage.jobstore import JobStore, checkpoint_key
from runtime.worker import checkpoint
from runtime.worker.interrupt import FORCED_EXIT
from runtime.worker.steplog import read as read_steplog
from tests.conftest import Stack, spawn_worker, start_stack, stop_stack
from tests.pipelines.harness import _input_images
from tests.rest import call, download, wait_for
from tests.worker.test_e2e import drain

LEASE_S = 3
# One job in hand per worker (no receive-ahead): these tests keep both workers busy so that a job waits in the
# queue, and send jobs to the idle one; with receive-ahead a busy worker would take them too. The jobs in hand
# (received ahead, storing outputs) are tests/worker/test_handoff.py's and the chaos harness's.
ENV = {"SPOTGEN_HEARTBEAT_S": "0.5", "SPOTGEN_LEASE_S": str(LEASE_S), "SPOTGEN_PROGRESS_INTERVAL_S": "0.1",
       "SPOTGEN_MAX_RECEIVE_COUNT": "2", "SPOTGEN_CHECKPOINT_EVERY": "5", "SPOTGEN_RECEIVE_AHEAD": "false"}


class Pool:
    """Worker processes of one stack, by name, and the step log they all append to."""

    def __init__(self, stack: Stack, steplog: Path) -> None:
        self.stack, self.steplog = stack, steplog
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.count = 0

    def start(self, **env: str) -> subprocess.Popen[bytes]:
        self.count += 1
        # One torch thread each: two workers with two threads each on two cores mostly wait for each other.
        proc = spawn_worker(self.stack, str(self.count), {"SPOTGEN_STEP_LOG": str(self.steplog),
                                                          "OMP_NUM_THREADS": "1", **env})
        self.procs[str(self.count)] = proc
        return proc

    def wait_ready(self, proc: subprocess.Popen[bytes], timeout: float = 120) -> None:
        """Until the worker consumes (its log says Celery is ready): before that, SIGTERM just kills it."""
        name = next(n for n, p in self.procs.items() if p is proc)
        log = self.stack.log_dir / f"worker-{name}.log"
        deadline = time.monotonic() + timeout
        while not (log.exists() and " ready." in log.read_text(errors="replace")):
            assert proc.poll() is None and time.monotonic() < deadline, f"worker {name} did not start"
            time.sleep(0.1)

    def ensure(self, n: int = 2) -> None:
        alive = [p for p in self.procs.values() if p.poll() is None]
        for _ in range(n - len(alive)):
            self.start()

    def proc(self, pid: int) -> subprocess.Popen[bytes]:
        return next(p for p in self.procs.values() if p.pid == pid)

    def steps(self, job_id: str) -> list[tuple[int, int, int]]:
        """(pid, attempt, step) of every finished step of the job, in order."""
        if not self.steplog.exists():
            return []
        return [(pid, attempt, step) for pid, job, attempt, step in read_steplog(self.steplog) if job == job_id]

    def wait_step(self, job_id: str, at_least: int, timeout: float = 60) -> tuple[int, int, int]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            steps = self.steps(job_id)
            if steps and steps[-1][2] >= at_least:
                return steps[-1]
            time.sleep(0.02)
        raise AssertionError(f"job {job_id} did not reach step {at_least}: {self.steps(job_id)[-3:]}")

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, tiny_models: Path) -> Iterator[Stack]:
    running = start_stack(tmp_path_factory.mktemp("interrupt"), tiny_models, ENV,
                          args=("--workers", "0", "--visibility-timeout", "2"))
    yield running
    stop_stack(running)


@pytest.fixture(scope="module")
def pool(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pool]:
    workers = Pool(stack, tmp_path_factory.mktemp("steps") / "steps.log")
    workers.ensure(2)
    yield workers
    workers.stop()


@pytest.fixture(scope="module")
def images(stack: Stack) -> dict[str, str]:
    """Input images in the input bucket, referenced by URI so that every job's PNG parameters match."""
    bucket = stack.env["SPOTGEN_INPUT_BUCKET"]
    refs = {}
    for name, image in zip(("photo", "edges"), _input_images().values(), strict=True):
        buf = io.BytesIO()
        image.save(buf, format="PNG")
        stack.s3.put_object(Bucket=bucket, Key=f"fixtures/{name}.png", Body=buf.getvalue())
        refs[name] = f"s3://{bucket}/fixtures/{name}.png"
    return refs


@pytest.fixture(scope="module")
def notes() -> dict[str, list[dict[str, Any]]]:
    return {}


def body(pipeline: str, images: dict[str, str], scheduler: str = "euler", steps: int = 40, size: int = 96,
         **extra: Any) -> dict[str, Any]:
    inputs: dict[str, Any] = {"prompt": "a lighthouse at dusk", "width": size, "height": size, "steps": steps,
                              "seed": 11, "scheduler": scheduler, **extra}
    if pipeline == "img2img":
        inputs |= {"image": images["photo"], "strength": 0.8}
    if pipeline == "controlnet":
        inputs |= {"control_image": images["edges"], "controlnet": "tiny-controlnet"}
    return {"pipeline": pipeline, "model": "tiny-sd", "inputs": inputs}


def submit(stack: Stack, request: dict[str, Any]) -> str:
    status, answer = call("POST", f"{stack.api_url}/v1/jobs", request)
    assert status == 202, answer
    return answer["id"]


def finished(stack: Stack, job_id: str, timeout: float = 120) -> dict[str, Any]:
    return wait_for(stack.api_url, job_id, timeout=timeout)


def pngs(doc: dict[str, Any]) -> list[bytes]:
    assert doc["state"] == "succeeded", doc
    return [download(out["url"]) for out in doc["outputs"]]


def notifications(stack: Stack, notes: dict[str, Any], job_id: str) -> list[dict[str, Any]]:
    drain(stack, stack.state["results_queue_url"], notes, "notification", job_id, timeout=15)
    drain(stack, stack.state["results_queue_url"], notes, "notification", "-none-", timeout=1)  # any second one
    return [json.loads(m["Body"]) for m in notes.get(job_id, [])]


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
# same for every sampler, whose own state is checked pair by pair in tests/pipelines/test_schedulers.py.
CASES = [("txt2img", "dpmpp_2m"), ("img2img", "euler"), ("controlnet", "euler_a")]


@pytest.mark.parametrize(("pipeline", "scheduler"), CASES)
def test_sigterm_mid_job_resumes_on_another_worker_byte_identical(
        stack: Stack, pool: Pool, images: dict[str, str], notes: dict[str, Any], pipeline: str,
        scheduler: str) -> None:
    pool.ensure(2)
    request = body(pipeline, images, scheduler, steps=80)  # long enough that the signal lands mid-job
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
    assert [n["state"] for n in notifications(stack, notes, job)] == ["succeeded"]


def test_sigterm_on_an_idle_worker_exits_promptly(pool: Pool) -> None:
    proc = pool.start()
    pool.wait_ready(proc)
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(20) == 0
    assert time.monotonic() - started < 20


# -- the lease ----------------------------------------------------------------------------------------


def test_job_longer_than_the_visibility_timeout_runs_once(stack: Stack, pool: Pool, notes: dict[str, Any]) -> None:
    pool.ensure(2)
    job = submit(stack, {"pipeline": "slow", "model": "tiny-sd",
                         "inputs": {"prompt": "long", "steps": 20, "delay": 0.3}})  # 6 s; visibility is 2 s
    doc = finished(stack, job)
    assert doc["state"] == "succeeded" and doc["attempts"] == 1
    steps = pool.steps(job)
    assert [s for _, _, s in steps] == list(range(1, 21)) and len({p for p, _, _ in steps}) == 1
    assert len(notifications(stack, notes, job)) == 1


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
    pid, _, step = pool.steps(job)[-1]
    os.kill(pid, signal.SIGKILL)
    killed = time.monotonic()
    pool.proc(pid).wait()
    deadline = killed + 60
    while not any(p != pid for p, _, _ in pool.steps(job)) and time.monotonic() < deadline:
        time.sleep(0.05)
    # The other worker is idle: visible again within the lease, then taken at its next poll (1 s here).
    assert time.monotonic() - killed < LEASE_S + 6
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


@contextlib.contextmanager
def no_workers(pool: Pool) -> Iterator[None]:
    """No worker consumes inside the block, so a job submitted there waits in the queue for certain (busy
    workers would not do: a worker left over from an earlier test, or one that frees up early, takes it)."""
    for proc in pool.procs.values():
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in pool.procs.values():
        proc.wait(30)
    yield
    pool.ensure(2)
    for proc in [p for p in pool.procs.values() if p.poll() is None]:
        pool.wait_ready(proc)  # consuming again before the test goes on to wait for what they do


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
    job = submit(stack, {"pipeline": "slow", "model": "tiny-sd", "inputs": {"prompt": "x", "steps": 40,
                                                                             "delay": 0.1}})
    pid, _, _ = pool.wait_step(job, 2)
    os.kill(pid, signal.SIGTERM)
    time.sleep(0.3)
    os.kill(pid, signal.SIGTERM)
    assert pool.proc(pid).wait(10) == FORCED_EXIT
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
        pool.ensure(0)
        for proc in pool.procs.values():  # only the worker that watches IMDS may take the job
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                proc.wait(30)
        victim = pool.start(SPOTGEN_IMDS_POLL_S="0.2", SPOTGEN_IMDS_URL=f"http://127.0.0.1:{server.server_port}")
        job = submit(stack, body("txt2img", images, "unipc", steps=60))
        pool.wait_step(job, 3)
        FakeIMDS.notice = {"action": "terminate", "time": "2026-11-24T12:00:00Z"}
        assert victim.wait(30) == 0
        pool.ensure(2)
        doc = finished(stack, job)
        assert doc["state"] == "succeeded" and doc["interruptions"] == 1 and doc["resume"]["from_step"] >= 3
    finally:
        FakeIMDS.notice = None
        server.shutdown()


# -- cancel, deadlines, retries ----------------------------------------------------------------------


def test_cancel_a_running_job_stops_it_within_a_step(stack: Stack, pool: Pool, notes: dict[str, Any]) -> None:
    pool.ensure(2)
    job = submit(stack, {"pipeline": "slow", "model": "tiny-sd", "inputs": {"prompt": "x", "steps": 100,
                                                                             "delay": 0.1}})
    pool.wait_step(job, 3)
    status, answer = call("POST", f"{stack.api_url}/v1/jobs/{job}/cancel")
    assert status == 202, answer
    at_cancel = pool.steps(job)[-1][2]
    doc = finished(stack, job)
    assert doc["state"] == "cancelled" and doc["outputs"] == []
    # Noticed at the next progress write (every 0.1 s here), then the job stops at the next step.
    assert pool.steps(job)[-1][2] <= at_cancel + 3
    assert [n["state"] for n in notifications(stack, notes, job)] == ["cancelled"]


def test_cancel_a_queued_job_skips_it(stack: Stack, pool: Pool, notes: dict[str, Any]) -> None:
    with no_workers(pool):
        job = submit(stack, {"pipeline": "slow", "model": "tiny-sd", "inputs": {"prompt": "x", "steps": 5}})
        status, answer = call("POST", f"{stack.api_url}/v1/jobs/{job}/cancel")
        assert status == 200 and answer["state"] == "cancelled", answer
    # The worker that takes the message finds the job final: no step runs, one notification goes out.
    assert [n["state"] for n in notifications(stack, notes, job)] == ["cancelled"]
    assert pool.steps(job) == []


def test_job_past_its_deadline_expires_without_running(stack: Stack, pool: Pool, notes: dict[str, Any]) -> None:
    with no_workers(pool):
        job = submit(stack, {"pipeline": "slow", "model": "tiny-sd", "ttl_seconds": 1,
                             "inputs": {"prompt": "x", "steps": 5}})
        deadline = datetime.fromisoformat(call("GET", f"{stack.api_url}/v1/jobs/{job}")[1]["expires_at"])
        while utcnow() <= deadline:  # past it before any worker can see the job
            time.sleep(0.1)
    doc = finished(stack, job)
    assert doc["state"] == "expired" and doc["error"]["code"] == "expired"
    assert pool.steps(job) == []
    assert [n["state"] for n in notifications(stack, notes, job)] == ["expired"]


def test_retryable_failure_ends_failed_after_max_receive_count(stack: Stack, pool: Pool) -> None:
    pool.ensure(2)
    job = submit(stack, {"pipeline": "flaky", "model": "tiny-sd", "inputs": {"prompt": "x"}})
    doc = finished(stack, job, timeout=60)
    assert doc["state"] == "failed" and doc["error"]["code"] == "retries_exhausted"
    assert "upstream service is unavailable" in doc["error"]["message"] and doc["attempts"] == 2
    dead = drain(stack, stack.env["SPOTGEN_DEAD_LETTER_QUEUE_URL"], {}, "attr", job)
    assert len(dead) == 1 and dead[0]["MessageAttributes"]["error_code"]["StringValue"] == "retries_exhausted"
