"""Past the retry budget (SPOTGEN_STORE_RETRY_S): a worker that gives up loses nothing and redoes little.

A stack of its own, so that the one worker here, with a budget of 2 s, is the only one that can take the jobs.
"""

from __future__ import annotations

from tests.conftest import Stack
from tests.harness.faultproxy import FaultProxy
from tests.worker.test_outages import (  # noqa: F401 - healthy_network is a fixture
    TXT2IMG,
    final,
    healthy_network,
    notifications,
    operation,
    outputs,
    start_worker,
    status_of,
    stop_worker,
    submit,
    wait_for,
)


def test_past_the_retry_budget_nothing_is_lost_and_little_is_redone(env: tuple[Stack, FaultProxy]) -> None:
    """The output stage gives up (a budget of 2 s, an outage of 6 s). After the final status, before the
    notification: the message comes back when its lease runs out, and that delivery only notifies. During the
    output upload: the checkpoint is kept, and the next delivery resumes from it."""
    stack, proxy = env
    impatient = start_worker(stack, proxy, "impatient", SPOTGEN_STORE_RETRY_S="2", SPOTGEN_LEASE_S="3",
                             SPOTGEN_HEARTBEAT_S="1", SPOTGEN_CHECKPOINT_EVERY="2")
    try:
        proxy.on(operation("sns", "Publish"), seconds=6)
        job = submit(stack, "solid", {"prompt": "notify me once"})
        doc = final(stack, job)
        assert doc["state"] == "succeeded"
        assert notifications(stack, job) == ["succeeded"]
        assert "redelivered" in impatient.text()
        assert status_of(stack, job)["attempts"] == 1  # the second delivery ran nothing

        # Past the budget during the output upload: the checkpoint is kept, and the next delivery resumes.
        reference = submit(stack, "txt2img", TXT2IMG)
        assert final(stack, reference)["state"] == "succeeded"
        proxy.on(operation("s3", "PutObject", "/outputs/"), seconds=6)
        job = submit(stack, "txt2img", TXT2IMG)
        doc = final(stack, job)
        assert doc["state"] == "succeeded" and doc["attempts"] == 2, doc
        assert doc["resume"]["from_step"] == 4 and "resumed at step 4" in doc["resume"]["note"], doc["resume"]
        assert outputs(stack, job) == outputs(stack, reference)
    finally:
        stop_worker(impatient)
