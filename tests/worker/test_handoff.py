"""The next job generates while the one before stores its outputs (runtime.worker.handoff), and nothing that
guarantees exactly-once is given up for it: SIGTERM and SIGKILL in the middle of an output stage.

The fault proxy holds one chosen request (the PUT of a job's PNG) for as long as a test says, so each test
knows which stage every job is in, without timing anything.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable

from tests.conftest import Stack
from tests.harness.faultproxy import FaultProxy, Request
from tests.worker.test_outages import (
    final,
    notifications,
    outputs,
    start_worker,
    status_of,
    stop_worker,
    submit,
    wait_for,
)

SHORT = {"prompt": "a red fox", "width": 64, "height": 64, "steps": 4}


def png_put(job_id: str) -> Callable[[Request], bool]:
    return lambda r: r.method == "PUT" and f"/outputs/{job_id}/" in r.path


def status_get(job_id: str) -> Callable[[Request], bool]:
    return lambda r: r.method == "GET" and f"/jobs/{job_id}/status.json" in r.path


def queue_empty(stack: Stack) -> bool:
    """No message left, visible or in flight: each job's message was deleted, none waits for its lease."""
    return stack.inbox.messages_left() == 0


def one_notification_each(stack: Stack, job_ids: list[str]) -> None:
    for job_id in job_ids:
        assert notifications(stack, job_id) == ["succeeded"], job_id


def test_the_next_job_generates_while_the_one_before_stores_its_outputs(env: tuple[Stack, FaultProxy]) -> None:
    stack, proxy = env
    worker = start_worker(stack, proxy, "overlapping")
    release = threading.Event()
    try:
        first = submit(stack, "txt2img", {**SHORT, "seed": 1})
        held = proxy.hold(png_put(first), release)
        wait_for("the first job's PNG upload", held.is_set, 90)
        # submitted now, not with the first: a standard queue may hand out messages sent together in either order
        second = submit(stack, "txt2img", {**SHORT, "seed": 2})
        # while that upload is held, the second job is received, prepared and started on the device
        wait_for("the second job to start", lambda: f"job {second} started" in worker.text(), 60)
        assert status_of(stack, first)["state"] != "succeeded"
        release.set()
        docs = [final(stack, first), final(stack, second)]
        assert [d["state"] for d in docs] == ["succeeded", "succeeded"], docs
        assert docs[0]["finished_at"] <= docs[1]["finished_at"]  # outputs are stored in the order jobs ran
        assert all(len(outputs(stack, job)) == 1 for job in (first, second))
        one_notification_each(stack, [first, second])
        wait_for("both messages deleted", lambda: queue_empty(stack), 60)
    finally:
        release.set()
        stop_worker(worker)


def test_without_receive_ahead_the_next_message_waits_in_the_queue(env: tuple[Stack, FaultProxy]) -> None:
    """SPOTGEN_RECEIVE_AHEAD=false: the next job stays in the queue, for any worker, until this one has
    generated; its output stage still overlaps the next job."""
    stack, proxy = env
    worker = start_worker(stack, proxy, "no-receive-ahead", SPOTGEN_RECEIVE_AHEAD="false")
    release, seen = threading.Event(), threading.Event()
    seen.set()
    try:
        first = submit(stack, "slow", {"prompt": "slow", "steps": 20, "delay": 0.25})
        wait_for("the first job to start", lambda: f"job {first} started" in worker.text(), 60)
        second = submit(stack, "txt2img", {**SHORT, "seed": 7})
        received = proxy.hold(status_get(second), seen)
        wait_for("the first job's progress", lambda: status_of(stack, first).get("progress", {}).get("step", 0) >= 2)
        assert not received.is_set()  # 18 steps (4.5 s) of the first job to go, and the second is still queued
        assert [final(stack, job)["state"] for job in (first, second)] == ["succeeded", "succeeded"]
        assert received.is_set()
    finally:
        release.set()
        stop_worker(worker)


def test_sigterm_mid_output_stage_stores_it_and_hands_the_others_back(env: tuple[Stack, FaultProxy]) -> None:
    """Three jobs in hand at once: one storing its outputs, one generating, one received and waiting for the
    device. SIGTERM: the first completes, the second checkpoints and is handed back, the third is handed back
    unstarted, at once; the worker exits 0 and another worker finishes both."""
    stack, proxy = env
    worker = start_worker(stack, proxy, "terminated", SPOTGEN_INTERRUPT_DEADLINE_S="60")
    release, seen = threading.Event(), threading.Event()
    seen.set()  # the third job's status read is only watched for, not held
    rescuer = None
    try:
        # Each job is submitted once the one before is where it must be: a standard queue does not keep the order of
        # messages sent together (the generating job was once received first and ran 30 s before the others).
        storing = submit(stack, "txt2img", {**SHORT, "seed": 3})
        held = proxy.hold(png_put(storing), release)
        wait_for("the first job's PNG upload", held.is_set, 90)
        # 30 s of steps however fast the CPU denoises: still generating when the signal comes, on a loaded machine
        # too (150 real steps ended first there, and the job waiting behind it started before the SIGTERM); resumed,
        # the rest takes a second
        generating = submit(stack, "slow-resumable", {"prompt": "long", "steps": 150, "delay": 0.2,
                                                       "resumed_delay": 0.005})
        wait_for("the second job to start", lambda: f"job {generating} started" in worker.text(), 60)
        # watched before the third job exists: the worker may receive and prepare it as soon as it is submitted
        prepared = proxy.hold(lambda r: r.method == "GET" and r.path.endswith("/status.json")
                              and storing not in r.path and generating not in r.path, seen)
        waiting = submit(stack, "txt2img", {**SHORT, "seed": 4})
        wait_for("the third job to be received and prepared", prepared.is_set, 60)
        worker.proc.send_signal(signal.SIGTERM)
        wait_for("the interruption", lambda: "interruption (" in worker.text(), 30)
        release.set()  # the output stage in flight goes on after SIGTERM
        assert worker.proc.wait(60) == 0, worker.text()[-3000:]
        assert final(stack, storing, 60)["state"] == "succeeded"
        assert f"job {waiting} started" not in worker.text()  # handed back before it touched the device
        rescuer = start_worker(stack, proxy, "rescuer")
        docs = {job: final(stack, job) for job in (storing, generating, waiting)}
        assert {d["state"] for d in docs.values()} == {"succeeded"}, docs
        assert docs[waiting]["attempts"] == 1 and docs[storing]["attempts"] == 1
        assert docs[generating]["attempts"] == 2 and docs[generating]["interruptions"] == 1
        assert docs[generating]["resume"]["from_step"] > 0  # from the checkpoint it saved when interrupted
        assert f"job {storing}" not in rescuer.text()  # its message was deleted: never delivered again
        assert all(len(outputs(stack, job)) == 1 for job in docs)
        one_notification_each(stack, list(docs))
        wait_for("every message deleted", lambda: queue_empty(stack), 60)
    finally:
        release.set()
        stop_worker(worker)
        if rescuer is not None:
            stop_worker(rescuer)


def test_sigkill_mid_output_stage_loses_nothing(env: tuple[Stack, FaultProxy]) -> None:
    stack, proxy = env
    worker = start_worker(stack, proxy, "killed", SPOTGEN_LEASE_S="6", SPOTGEN_HEARTBEAT_S="1")
    release = threading.Event()
    rescuer = None
    try:
        job = submit(stack, "txt2img", {**SHORT, "seed": 5})
        held = proxy.hold(png_put(job), release)
        wait_for("the PNG upload", held.is_set, 90)
        worker.proc.send_signal(signal.SIGKILL)
        worker.proc.wait(30)
        release.set()
        rescuer = start_worker(stack, proxy, "after-kill")
        doc = final(stack, job, 60)  # the message came back after its lease and ran again
        assert doc["state"] == "succeeded", doc
        assert f"job {job} started" in rescuer.text()
        assert len(outputs(stack, job)) == 1
        one_notification_each(stack, [job])
        wait_for("the message deleted", lambda: queue_empty(stack), 60)
    finally:
        release.set()
        stop_worker(worker)
        if rescuer is not None:
            stop_worker(rescuer)
