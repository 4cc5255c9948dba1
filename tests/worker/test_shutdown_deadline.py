"""A shutdown always ends within its deadline (``SPOTGEN_INTERRUPT_DEADLINE_S``, runtime.worker.interrupt).

That bound is the product's promise: Kubernetes kills the pod at its grace period, and a worker that hangs past it
loses its checkpoint and holds its job until the lease runs out. So each test here checks that the process exited
within the deadline plus 1 s (for the process to end and the test to see it), counted from the signal.

- SIGTERM while the main thread holds a lock: the interruption's (which ``hold`` and ``drop`` take) or the
  lease's. A signal handler runs on the main thread wherever it is; one that took the same lock deadlocked the
  worker, and a forced exit that waited on the lease's lock waited for as long as that was held. A process of its
  own (tests/worker/shutdown_child.py) with Celery's real handler sends itself the signal inside the lock and never
  lets go; it must exit by its deadline with the message of its job in hand released, visible again at once.
- The hand-back (SendMessage) of a job during an interruption, in process while every SQS call hangs: it gives
  up when the forced exit is due, instead of botocore's 5 attempts of up to 30 s.
- SIGTERM on a real worker while every SQS call hangs behind the fault proxy: the hand-back, the heartbeat and
  the release never answer. The worker exits by its deadline, and the job, whose checkpoint went to S3, resumes
  from it on another worker once its lease has run out.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import boto3
import pytest

from runtime.local.devstack import EMULATOR_CREDENTIALS
from runtime.worker.interrupt import FORCED_EXIT, Interruption
from runtime.worker.lease import Lease
from tests.conftest import ROOT, Stack
from tests.harness.faultproxy import FaultProxy
from tests.worker.interrupt_pool import (  # noqa: F401 - pool_fixture and stack_fixture are fixtures
    Pool,
    finished,
    no_workers,
    pool_fixture,
    stack_fixture,
    submit,
)
from tests.zygote import Forked

#: The child's SPOTGEN_INTERRUPT_DEADLINE_S (what its Interruption gets), and the worker's.
CHILD_DEADLINE_S = 2.0
WORKER_DEADLINE_S = 3.0
#: What the promise allows past the deadline: the process ending, and the test seeing it.
MARGIN_S = 1.0
#: Enough one-shot holds at the proxy for every SQS call a worker makes until it exits.
HOLDS = 500


def exit_status(proc: subprocess.Popen[bytes] | Forked, signalled_at: float, deadline_s: float, log: str | Path) -> int:
    """The exit status, once the process has exited within ``deadline_s`` + ``MARGIN_S`` of the signal; fails
    otherwise (and kills it)."""
    try:
        return proc.wait(max(0.0, signalled_at + deadline_s + MARGIN_S - time.monotonic()))
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        text = Path(log).read_text(errors="replace")[-3000:]
        pytest.fail(f"still running {deadline_s + MARGIN_S:g} s after SIGTERM (SPOTGEN_INTERRUPT_DEADLINE_S="
                    f"{deadline_s:g}):\n{text}")


@pytest.mark.parametrize("lock", ["interruption", "lease"])
def test_sigterm_while_the_main_thread_holds_a_lock_exits_by_the_deadline(emulator: str, lock: str,
                                                                          tmp_path: Path) -> None:
    sqs = boto3.client("sqs", endpoint_url=emulator, region_name="us-east-1",
                       aws_access_key_id="testing", aws_secret_access_key="testing")
    url = sqs.create_queue(QueueName=f"shutdown-{lock}-{time.time_ns()}")["QueueUrl"]
    sqs.send_message(QueueUrl=url, MessageBody='{"job": 1}')
    log = tmp_path / "child.log"
    with open(log, "wb") as stderr:
        proc = subprocess.Popen([sys.executable, "-m", "tests.worker.shutdown_child", lock, str(CHILD_DEADLINE_S),
                                 emulator, url], cwd=ROOT, stdout=subprocess.PIPE, stderr=stderr,
                                env={**os.environ, "PYTHONPATH": str(ROOT), **EMULATOR_CREDENTIALS})
    try:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 60)  # a hang, never a measurement
        line = proc.stdout.readline().decode() if ready else ""
        assert line.startswith("signal "), f"the child never signalled itself:\n{log.read_text()[-3000:]}"
        status = exit_status(proc, float(line.split()[1]), CHILD_DEADLINE_S, log)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        proc.stdout.close()
    text = log.read_text()
    assert status == FORCED_EXIT, text[-3000:]
    assert "forced exit after the 2 s deadline; the messages of 1 of 1 job(s) in hand were released or handed back" \
        in text
    back = sqs.receive_message(QueueUrl=url, WaitTimeSeconds=2).get("Messages", [])  # it was hidden for 600 s
    assert [m["Body"] for m in back] == ['{"job": 1}']


def hang_sqs(proxy: FaultProxy, release: threading.Event) -> list[threading.Event]:
    """From now on, every SQS request waits at the proxy (until ``release``). Returns, for each hold, whether it
    caught a request."""
    return [proxy.hold(lambda r: r.service == "sqs", release, timeout_s=600) for _ in range(HOLDS)]


def test_the_hand_back_gets_the_time_left_before_the_forced_exit(emulator: str) -> None:
    """In process, against the emulator behind the proxy: once every SQS call hangs, a hand-back during an
    interruption gives up when the forced exit is due, and the forced exit ends the process by the deadline."""
    upstream = urlsplit(emulator)
    release, exits, exited = threading.Event(), [], threading.Event()
    try:
        with FaultProxy((upstream.hostname, upstream.port)) as proxy:
            sqs = boto3.client("sqs", endpoint_url=proxy.url, region_name="us-east-1",
                               aws_access_key_id="testing", aws_secret_access_key="testing")
            url = sqs.create_queue(QueueName=f"shutdown-hand-back-{time.time_ns()}")["QueueUrl"]
            sqs.send_message(QueueUrl=url, MessageBody='{"job": 1}')
            (raw,) = sqs.receive_message(QueueUrl=url, VisibilityTimeout=600)["Messages"]
            interruption = Interruption(CHILD_DEADLINE_S, exit=lambda code: (exits.append(code), exited.set()))
            lease = Lease(sqs, url, raw, heartbeat_s=1, lease_s=600, max_job_s=3600)
            interruption.hold(lease)
            hang_sqs(proxy, release)
            interruption.request("SIGTERM")
            outcome: list[BaseException] = []
            hand_back = threading.Thread(target=lambda: outcome.append(pytest.raises(TimeoutError, lease.requeue)
                                                                       .value), daemon=True)
            hand_back.start()
            hand_back.join(CHILD_DEADLINE_S + MARGIN_S)
            assert not hand_back.is_alive(), "the hand-back waited past the deadline"
            assert outcome and "no answer within" in str(outcome[0]), outcome
            assert not exits  # it gave up when the forced exit started, which then waits for the release
            assert exited.wait(CHILD_DEADLINE_S + MARGIN_S) and exits == [FORCED_EXIT]
            assert not lease.handed_back
    finally:
        release.set()


def test_sigterm_while_every_sqs_call_hangs_exits_by_the_deadline_and_the_job_resumes(stack: Stack,
                                                                                      pool: Pool) -> None:
    emulator = urlsplit(stack.state["aws_endpoint_url"])
    release = threading.Event()
    # SIGTERM, sent as soon as step 6 is logged, lands mid-job (past step 5, the periodic checkpoint of
    # SPOTGEN_CHECKPOINT_EVERY in tests/worker/interrupt_pool.py) with 5 s to spare. A txt2img job of 40 steps ran
    # in 0.5 s: on a loaded machine it had ended before the test sent the signal.
    request = {"pipeline": "slow-resumable", "model": "tiny-sd", "inputs": {"prompt": "x", "steps": 40, "delay": 0.15}}
    try:
        with FaultProxy((emulator.hostname, emulator.port)) as proxy, no_workers(pool):
            # the victim alone consumes, so it takes the job, and nobody takes it back before it has exited
            victim = pool.start(SPOTGEN_AWS_ENDPOINT_URL=proxy.url,
                                SPOTGEN_INTERRUPT_DEADLINE_S=f"{WORKER_DEADLINE_S:g}")
            pool.wait_ready(victim)
            job = submit(stack, request)
            pool.wait_step(job, 6)
            holds = hang_sqs(proxy, release)
            victim.send_signal(signal.SIGTERM)
            signalled_at = time.monotonic()
            status = exit_status(victim, signalled_at, WORKER_DEADLINE_S,
                                 stack.log_dir / f"worker-{pool.count}.log")
            assert status in (0, FORCED_EXIT), pool.log(victim)[-3000:]
            held = [what for _, what in proxy.log if what.startswith("holding sqs")]
            assert "holding sqs SendMessage" in held and holds[0].is_set(), held  # the hand-back hung
        # the proxy is down: what it held is dropped, never forwarded
    finally:
        release.set()
    doc = finished(stack, job)  # by another worker of the pool, once the lease has run out
    assert doc["state"] == "succeeded", doc
    assert doc["attempts"] == 2 and doc["resume"]["from_step"] >= 5, doc
    assert [pid for pid, _, _ in pool.steps(job)][-1] != victim.pid
