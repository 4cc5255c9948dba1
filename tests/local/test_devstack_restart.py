"""Embedded stacks one after another in one process (as tests and benchmarks start them) share moto's state: each
must start on a fresh one, or an earlier stack's leftovers act on the next one's messages."""

from __future__ import annotations

import contextlib
import threading
import time
from pathlib import Path

from runtime.config import Settings
from runtime.local.devstack import DevStack
from runtime.storage import aws


def test_a_long_poll_left_by_a_stopped_stack_never_takes_the_next_stacks_message(tmp_path: Path) -> None:
    settings = Settings(models_dir=tmp_path)
    first = DevStack(settings, port=0, aws_port=0, workers=0).start()
    sqs = aws.client("sqs", first.settings)
    polling = threading.Event()

    def long_poll() -> None:  # as a worker's receive, cut off when its emulator stops
        polling.set()
        with contextlib.suppress(Exception):  # the emulator goes away under it: what is tested is moto's side
            sqs.receive_message(QueueUrl=first.settings.queue_url, WaitTimeSeconds=3)

    poller = threading.Thread(target=long_poll, daemon=True)
    poller.start()
    polling.wait(10)
    time.sleep(0.5)  # the request is inside moto, waiting on the queue
    first.stop()
    with DevStack(settings, port=0, aws_port=0, workers=0) as second:
        client = aws.client("sqs", second.settings)
        client.send_message(QueueUrl=second.settings.queue_url, MessageBody="the next stack's job")
        time.sleep(3.5)  # past the cut-off poll's wait: had it been on this queue, it would have taken the message
        attributes = client.get_queue_attributes(QueueUrl=second.settings.queue_url,
                                                 AttributeNames=["ApproximateNumberOfMessages",
                                                                 "ApproximateNumberOfMessagesNotVisible"])
        assert attributes["Attributes"] == {"ApproximateNumberOfMessages": "1",
                                            "ApproximateNumberOfMessagesNotVisible": "0"}
