"""A job handed back at an interruption reaches another worker at once, not after a visibility timeout.

A worker going away stops consuming, but its last long poll is still open at SQS (its process is alive while the
job checkpoints). SQS, the emulator too, may answer that poll with the copy the worker has just sent, to a
consumer that will never read it: the copy then stays hidden for the queue's visibility timeout (a minute of
delay for the resumed job, seen in tests/ops/test_ops.py). So the copy is sent with a delay until that poll has
ended (``Hooks.copy_delay_s``, from the receive chain's ``receive_started``). Here the abandoned poll is a
plain ReceiveMessage on the emulator, and the copy is sent by the worker's ``Lease``.
"""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace
from typing import Any

import boto3
import pytest

from runtime.worker.app import Hooks
from runtime.worker.lease import Lease

POLL_S = 2  # the abandoned poll's wait


@pytest.fixture
def sqs(emulator: str) -> Any:
    return boto3.client("sqs", endpoint_url=emulator, region_name="us-east-1", aws_access_key_id="testing",
                        aws_secret_access_key="testing")


def worker_hooks(sqs: Any) -> Hooks:
    """The worker's hooks; of the interruption, they read only whether it was requested."""
    return Hooks(settings=None, sqs=sqs, runner=lambda: None,  # type: ignore[arg-type]
                 interruption=SimpleNamespace(requested=False))  # type: ignore[arg-type]


def hand_back_during_a_poll(sqs: Any, name: str, copy_delay: Any) -> tuple[list[Any], Any]:
    """A running job's message, a long poll left open by its worker, then the hand-back: what that poll got, and
    the copy as another worker receives it next."""
    url = sqs.create_queue(QueueName=name, Attributes={"VisibilityTimeout": "60"})["QueueUrl"]
    sqs.send_message(QueueUrl=url, MessageBody='{"job": 1}')
    (raw,) = sqs.receive_message(QueueUrl=url, AttributeNames=["All"])["Messages"]
    abandoned: list[Any] = []
    poll = threading.Thread(target=lambda: abandoned.extend(
        sqs.receive_message(QueueUrl=url, WaitTimeSeconds=POLL_S).get("Messages", [])))
    poll.start()
    time.sleep(0.3)  # the poll is open at the emulator (ordering only: a late start would hide the bug, not fake it)
    Lease(sqs, url, raw, 1, 60, 600, copy_delay=copy_delay).requeue()
    sqs.delete_message(QueueUrl=url, ReceiptHandle=raw["ReceiptHandle"])
    poll.join()
    taken = sqs.receive_message(QueueUrl=url, WaitTimeSeconds=POLL_S + 5, AttributeNames=["All"]).get("Messages", [])
    return abandoned, taken[0] if taken else None


def test_the_copy_waits_until_the_workers_last_poll_has_ended(sqs: Any) -> None:
    hooks = worker_hooks(sqs)
    assert hooks.receive_started(time.monotonic() + POLL_S + 1.0)  # the worker's last receive, as the chain starts it
    hooks.interruption.requested = True  # SIGTERM (a real Interruption would also arm its forced exit)
    assert not hooks.receive_started(time.monotonic() + POLL_S)  # going away: no receive after that one
    abandoned, copy = hand_back_during_a_poll(sqs, "hand-back-delayed", hooks.copy_delay_s)
    assert abandoned == []
    assert copy is not None and copy["Body"] == '{"job": 1}'
    assert copy["Attributes"]["ApproximateReceiveCount"] == "1"  # the next worker is the first to receive it


def test_without_the_delay_the_abandoned_poll_takes_the_copy(sqs: Any) -> None:
    """The broken variant: a copy visible at once goes to the open poll, and nobody else gets it."""
    abandoned, copy = hand_back_during_a_poll(sqs, "hand-back-at-once", None)
    assert [m["Body"] for m in abandoned] == ['{"job": 1}']
    assert copy is None


def test_no_delay_when_no_receive_is_in_flight() -> None:
    hooks = worker_hooks(None)
    assert hooks.copy_delay_s() == 0
    hooks.receive_started(time.monotonic() - 1)  # a poll that has ended
    assert hooks.copy_delay_s() == 0
