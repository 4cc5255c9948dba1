"""Embedded stacks one after another in one process (as tests and benchmarks start them) share moto's state: each
must start on a fresh one, or an earlier stack's leftovers act on the next one's messages."""

from __future__ import annotations

import contextlib
import sys
import threading
from pathlib import Path

from runtime.config import Settings
from runtime.local.devstack import DevStack
from runtime.storage import aws
from tests.events import until


def waiting_in_moto() -> set[int]:
    """The threads of this process that wait inside moto for a message (an SQS long poll moto is serving)."""
    found = set()
    for thread_id, frame in sys._current_frames().items():  # noqa: SLF001 - the only way to see another thread's stack
        while frame is not None:
            if frame.f_code.co_name == "wait_for_messages" and "moto" in frame.f_code.co_filename:
                found.add(thread_id)
                break
            frame = frame.f_back
    return found


def test_a_long_poll_left_by_a_stopped_stack_never_takes_the_next_stacks_message(tmp_path: Path) -> None:
    settings = Settings(models_dir=tmp_path)
    earlier = waiting_in_moto()  # (any an earlier test left behind are not this test's)
    first = DevStack(settings, port=0, aws_port=0, workers=0).start()
    sqs = aws.client("sqs", first.settings)

    def long_poll() -> None:  # as a worker's receive, cut off when its emulator stops
        with contextlib.suppress(Exception):  # the emulator goes away under it: what is tested is moto's side
            sqs.receive_message(QueueUrl=first.settings.queue_url, WaitTimeSeconds=3)

    threading.Thread(target=long_poll, daemon=True).start()
    ours = until("the long poll waiting inside moto", lambda: waiting_in_moto() - earlier, timeout=30)
    first.stop()
    with DevStack(settings, port=0, aws_port=0, workers=0) as second:
        client = aws.client("sqs", second.settings)
        client.send_message(QueueUrl=second.settings.queue_url, MessageBody="the next stack's job")
        # Had the cut-off poll waited on this queue, it would have taken the message and left; it leaves anyway
        # when its 3 s are up.
        until("the cut-off poll to leave moto", lambda: not waiting_in_moto() & ours, timeout=30)
        attributes = client.get_queue_attributes(QueueUrl=second.settings.queue_url,
                                                 AttributeNames=["ApproximateNumberOfMessages",
                                                                 "ApproximateNumberOfMessagesNotVisible"])
        assert attributes["Attributes"] == {"ApproximateNumberOfMessages": "1",
                                            "ApproximateNumberOfMessagesNotVisible": "0"}
