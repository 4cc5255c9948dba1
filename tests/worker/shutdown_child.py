"""A worker's shutdown machinery alone, in a process of its own that tests/worker/test_shutdown_deadline.py
watches exit.

Celery's own SIGTERM handler is installed with the worker's receiver (``Interruption.on_worker_shutting_down``,
as ``run_worker`` connects it), and the interruption holds a lease on a real SQS message. Then the main thread
takes one lock (the interruption's, as ``hold``/``drop`` do, or the lease's), sends itself SIGTERM inside it,
so that the handler runs on that thread while it holds the lock, and never lets go. The process must end by
itself, by its deadline.

    python -m tests.worker.shutdown_child {interruption|lease} DEADLINE_S ENDPOINT QUEUE_URL

The first line on stdout is ``signal <monotonic time>``, just before the signal (the clock is the machine's, the
same in the test's process).
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import time
from types import SimpleNamespace

import boto3
from celery import signals
from celery.apps.worker import install_worker_term_handler

from runtime.worker.interrupt import Interruption
from runtime.worker.lease import Lease


def main(which: str, deadline_s: float, endpoint: str, queue_url: str) -> None:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s")
    sqs = boto3.client("sqs", endpoint_url=endpoint, region_name="us-east-1")
    (raw,) = sqs.receive_message(QueueUrl=queue_url, AttributeNames=["All"], VisibilityTimeout=600,
                                 WaitTimeSeconds=5)["Messages"]
    interruption = Interruption(deadline_s)
    interruption.last_resort = True  # as run_worker sets it
    lease = Lease(sqs, queue_url, raw, heartbeat_s=1, lease_s=600, max_job_s=3600)
    interruption.hold(lease)
    signals.worker_shutting_down.connect(interruption.on_worker_shutting_down, weak=False)
    install_worker_term_handler(SimpleNamespace(hostname="shutdown-child"))
    lock = {"interruption": interruption._lock, "lease": lease._lock}[which]
    with lock:
        print(f"signal {time.monotonic()}", flush=True)
        os.kill(os.getpid(), signal.SIGTERM)  # the handler runs on this thread, here, with the lock held
        time.sleep(3600)  # the hang itself: only the watchdog can end this process, at the deadline


if __name__ == "__main__":
    main(sys.argv[1], float(sys.argv[2]), sys.argv[3], sys.argv[4])
