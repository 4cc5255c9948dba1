"""The tests' duplicate-notification check (``tests.inbox``) catches a late duplicate, which listening a while
does not: a delivery that is still leased publishes its copy after the listener gave up."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import boto3
import pytest

from tests.inbox import Inbox


@pytest.fixture(scope="module")
def sqs(emulator: str) -> Any:
    return boto3.client("sqs", endpoint_url=emulator, region_name="us-east-1", aws_access_key_id="testing",
                        aws_secret_access_key="testing")


def test_a_late_duplicate_is_caught_where_listening_a_while_misses_it(sqs: Any) -> None:
    work, results, dead = (sqs.create_queue(QueueName=f"inbox-{name}")["QueueUrl"]
                           for name in ("work", "results", "dead"))
    inbox = Inbox(sqs, results, dead, [work])
    note = json.dumps({"id": "job-1", "state": "succeeded"})
    sqs.send_message(QueueUrl=results, MessageBody=note)  # the first delivery's notification
    sqs.send_message(QueueUrl=work, MessageBody="a second delivery of job-1")
    (leased,) = sqs.receive_message(QueueUrl=work, VisibilityTimeout=60)["Messages"]  # a worker runs it

    def second_delivery() -> None:  # a broken worker: it notifies again, then acks
        time.sleep(3)
        sqs.send_message(QueueUrl=results, MessageBody=note)
        sqs.delete_message(QueueUrl=work, ReceiptHandle=leased["ReceiptHandle"])

    late = threading.Thread(target=second_delivery)
    late.start()
    assert len(inbox.notifications("job-1")) == 1
    inbox.results.poll(2)  # what the old checks did: listen 1-2 s for a second one
    assert len(inbox.results.seen["job-1"]) == 1  # ... and it had not come yet
    assert len(inbox.settled("job-1", timeout=30)) == 2  # the copy is counted once no delivery is left
    late.join()
