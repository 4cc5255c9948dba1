"""A stack's results and dead-letter queues, read by job id, for tests that share one stack.

Every test of a stack reads its queues through the stack's one ``Inbox``: a message drained while one test waits
for its own job is kept for the test that wants it, so tests can share a stack without stealing each other's
notifications.

"No second notification" cannot be shown by listening a while: a late duplicate passes any fixed wait. It is shown
by an event instead. A worker publishes a job's notification before it deletes the job's message, and a message that
still exists (visible, in flight or delayed) is a delivery that may yet publish. So once the work queues hold no
message at all, every delivery has published whatever it was going to; one more drain then holds every
notification there will ever be (the emulator delivers SNS to SQS within the publish call).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from typing import Any

#: The attributes that count a queue's messages: waiting, leased to a consumer, and delayed.
COUNTS = ["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible",
          "ApproximateNumberOfMessagesDelayed"]


def notification_id(msg: dict[str, Any]) -> str:
    return str(json.loads(msg["Body"])["id"])


def attribute_id(msg: dict[str, Any]) -> str:
    """A dead letter's job id (or a test's ``marker`` attribute for a message that has none)."""
    attrs = msg.get("MessageAttributes", {})
    return str(attrs.get("job_id", attrs.get("marker", {})).get("StringValue", "?"))


class Queue:
    """One queue read into lists of messages by key; the messages are deleted as they are read."""

    def __init__(self, sqs: Any, url: str, key: Callable[[dict[str, Any]], str]) -> None:
        self.sqs, self.url, self.key = sqs, url, key
        self.seen: dict[str, list[dict[str, Any]]] = {}

    def poll(self, wait_s: int = 1) -> int:
        """One receive (a long poll: it returns as soon as a message is there); how many arrived."""
        msgs = self.sqs.receive_message(QueueUrl=self.url, MaxNumberOfMessages=10, WaitTimeSeconds=wait_s,
                                        MessageAttributeNames=["All"]).get("Messages", [])
        for msg in msgs:
            self.sqs.delete_message(QueueUrl=self.url, ReceiptHandle=msg["ReceiptHandle"])
            self.seen.setdefault(self.key(msg), []).append(msg)
        return len(msgs)

    def drain(self) -> None:
        """Everything that is on the queue now."""
        while self.poll(0):
            pass

    def wait(self, key: str, timeout: float = 120) -> list[dict[str, Any]]:
        """The messages of ``key`` once at least one arrived (those read so far: see ``Inbox.settled``)."""
        deadline = time.monotonic() + timeout
        while key not in self.seen:
            assert time.monotonic() < deadline, f"no message for {key} on {self.url} within {timeout:.0f} s"
            self.poll()
        return self.seen[key]


class Inbox:
    """A stack's results queue (notifications by job id) and dead-letter queue (dead letters by job id), and the
    work queues whose emptiness says that no more notifications can come."""

    def __init__(self, sqs: Any, results_url: str, dead_letter_url: str, work_urls: Sequence[str]) -> None:
        self.sqs, self.work_urls = sqs, list(work_urls)
        self.results = Queue(sqs, results_url, notification_id)
        self.dead = Queue(sqs, dead_letter_url, attribute_id)

    def notifications(self, job_id: str, timeout: float = 120) -> list[dict[str, Any]]:
        """The job's notifications (bodies) once one arrived. Enough to read the first; to count them, use
        ``settled``."""
        return [json.loads(m["Body"]) for m in self.results.wait(job_id, timeout)]

    def settled(self, job_id: str, timeout: float = 120) -> list[dict[str, Any]]:
        """Every notification the job will ever get (bodies): see ``settled_messages``."""
        return [json.loads(m["Body"]) for m in self.settled_messages(job_id, timeout)]

    def settled_messages(self, job_id: str, timeout: float = 120) -> list[dict[str, Any]]:
        """Every notification message the job will ever get: waits for the first, then until no delivery of any
        job is left on the work queues, then drains (see the module's docstring)."""
        self.results.wait(job_id, timeout)
        self.wait_idle(timeout)
        self.results.drain()
        return self.results.seen[job_id]

    def forget(self, job_id: str) -> None:
        """Drop what was read for the id, for a test that uses the id again."""
        self.results.seen.pop(job_id, None)

    def dead_letters(self, job_id: str, timeout: float = 60) -> list[dict[str, Any]]:
        return self.dead.wait(job_id, timeout)

    def wait_idle(self, timeout: float = 120) -> None:
        """Until the work queues hold no message, leased or not (jobs of earlier tests included)."""
        deadline = time.monotonic() + timeout
        while left := self.messages_left():
            assert time.monotonic() < deadline, f"the work queues still hold {left} messages after {timeout:.0f} s"
            time.sleep(0.1)

    def messages_left(self) -> int:
        return sum(int(self.sqs.get_queue_attributes(QueueUrl=url, AttributeNames=COUNTS)["Attributes"][name])
                   for url in self.work_urls for name in COUNTS)
