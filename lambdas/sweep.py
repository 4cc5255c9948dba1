"""The sweep: every job whose submit died before SNS took its message is published, or failed with the reason.

A scheduled function (``SweepFunction`` in lambdas/template.yaml, every ``SWEEP_INTERVAL_S``; ``spotgen dev`` runs the
same on a timer) lists ``pending/`` in the output bucket: one small object per job whose message may not have been
published yet (``lambdas/outbox.py``), so the list is as long as the submits of the last moments plus the stranded
jobs, never the bucket. For each:

* its job is ``queued`` with no attempt yet, and its submit is gone (``WINDOW_S`` after ``created_at``): publish
  it from the object and delete the object; an unreadable object fails the job (``enqueue_failed``);
* its job was published, has started or ended: the object is left over, and goes;
* no status, or one of another submission (it lost the id to a concurrent request, or was rolled back), once its
  submit is gone: the object goes (its inline images expire with the input bucket's lifecycle rule);
* anything younger than ``WINDOW_S``: its submit may still be running, and is left alone.

So a job nobody retries is published within ``SWEEP_BOUND_S`` of its ``created_at``. Two sweeps at once, or a sweep
and a client's retry, may both publish a job: the worker runs it once.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from datetime import datetime, timedelta
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from lambdas.common import Deployment, deployment, function_timeout_s
from lambdas.outbox import WINDOW_S, recover, stranded
from runtime.contract import JobState, utcnow

log = logging.getLogger("spotgen.sweep")

#: How often the sweep runs: the template's schedule (``rate(1 minute)``, EventBridge's shortest).
SWEEP_INTERVAL_S = 60
#: The sweep function's timeout (the template's ``Timeout``).
SWEEP_TIMEOUT_S = 60
#: A job nobody retries is published (or failed) at most this long after its ``created_at``: its submit is gone
#: after ``WINDOW_S``, the next sweep starts within ``SWEEP_INTERVAL_S`` and ends within ``SWEEP_TIMEOUT_S``.
SWEEP_BOUND_S = WINDOW_S + SWEEP_INTERVAL_S + SWEEP_TIMEOUT_S


def sweep(dep: Deployment, now: datetime | None = None, deadline: float | None = None) -> dict[str, int]:
    """One pass over ``pending/``; what it did, by outcome. ``deadline`` (``time.monotonic()``): start nothing
    after it, so that the function answers before Lambda ends it (the next pass goes on)."""
    now = now or utcnow()
    done: Counter[str] = Counter()
    for job_id, submission, written in dep.store.list_pending():
        if deadline is not None and time.monotonic() > deadline:
            done["left_for_next"] += 1
            continue
        try:
            done[_one(dep, job_id, submission, written, now)] += 1
        except (BotoCoreError, ClientError) as exc:  # the next pass tries again
            log.warning("job %s: the sweep could not settle it: %s", job_id, exc)
            done["errors"] += 1
    return dict(done)


def _one(dep: Deployment, job_id: str, submission: str, written: datetime, now: datetime) -> str:
    doc, etag = dep.store.read_status_tagged(job_id)
    gone = now >= written + timedelta(seconds=WINDOW_S)  # the submit that wrote the object has ended
    if doc is None or doc.submission != submission:
        if not gone:
            return "in_flight"
        dep.store.delete_pending(job_id, submission)
        return "abandoned"
    if doc.state is JobState.queued and doc.maybe_unpublished:
        if not stranded(doc, now):
            return "in_flight"
        after = recover(dep, doc, etag, now)
        return "failed" if after.state is JobState.failed else "published"
    dep.store.delete_pending(job_id, submission)
    return "left_over"


def handler(event: dict[str, Any], context: Any = None) -> dict[str, int]:
    """EventBridge's schedule entry point."""
    remaining = context.get_remaining_time_in_millis() / 1000 if context is not None else function_timeout_s()
    # start no job in the second half: its calls are bounded (aws.bounded), and should Lambda still end a pass
    # mid-job, the next pass finds the same objects and finishes (every step can be done twice)
    deadline = time.monotonic() + remaining * 0.5
    done = sweep(deployment(), deadline=deadline)
    if set(done) - {"in_flight"}:
        log.info("sweep: %s", done)
    return done
