"""A worker killed while it sends a job's ``completed`` webhook (after the final status, before the receiver's
answer): the message comes back, the next delivery finds the job final and its webhook claimed by a sender that
is gone, waits the claim out, and sends the webhook once, with the same ``webhook-id``. On the outage tests' stack
(no workers of its own; ``spotgen dev`` allows loopback receivers), as tests/worker/test_handoff.py kills."""

from __future__ import annotations

import signal

from tests.conftest import Stack
from tests.harness.faultproxy import FaultProxy
from tests.harness.webhook_receiver import Receiver
from tests.worker.test_handoff import queue_empty
from tests.worker.test_outages import final, notifications, start_worker, status_of, stop_worker, submit, wait_for

SHORT = {"prompt": "a red fox", "width": 64, "height": 64, "steps": 2}
#: A short lease and claim, so that the message and the webhook come back within seconds; a POST may wait long
#: (the receiver holds it until the test has killed the sender).
FAST = {"SPOTGEN_LEASE_S": "6", "SPOTGEN_HEARTBEAT_S": "1", "SPOTGEN_WEBHOOK_RETRY_S": "2",
        "SPOTGEN_WEBHOOK_TIMEOUT_S": "2"}


def test_a_sender_killed_mid_webhook_leaves_it_to_the_next_delivery_which_sends_it_once(
        env: tuple[Stack, FaultProxy]) -> None:
    stack, proxy = env
    receiver = Receiver(stack.env["SPOTGEN_WEBHOOK_SECRET"]).start()
    worker = start_worker(stack, proxy, "webhook-killed", **{**FAST, "SPOTGEN_WEBHOOK_TIMEOUT_S": "30"})
    rescuer = None
    try:
        job = submit(stack, "txt2img", {**SHORT, "seed": 21}, webhook={"url": receiver.url("/hold/1")})
        assert receiver.arrived.wait(120), worker.text()[-3000:]
        assert status_of(stack, job)["state"] == "succeeded"  # the final status is written before the webhook
        worker.proc.send_signal(signal.SIGKILL)
        worker.proc.wait(30)
        receiver.release.set()
        rescuer = start_worker(stack, proxy, "webhook-rescuer", **FAST)
        doc = wait_for("the webhook delivered by the next delivery", lambda: (d := status_of(stack, job)).get(
            "webhooks", {}).get("completed", {}).get("delivered") and d, 120, 0.3)
        assert receiver.accepted(job) == {"completed": 1}
        posts = receiver.of(job)
        assert len(posts) == 2 and posts[0].status is None and len({p.id for p in posts}) == 1, posts
        assert all(p.verified for p in posts)
        assert [a["status"] for a in doc["webhook_attempts"]] == [200]  # the killed sender recorded nothing
        assert final(stack, job)["attempts"] == 1  # the job ran once: only its webhook was left
        assert notifications(stack, job) == ["succeeded"]
        wait_for("the message deleted", lambda: queue_empty(stack), 60)
    finally:
        receiver.stop()
        stop_worker(worker)
        if rescuer is not None:
            stop_worker(rescuer)
