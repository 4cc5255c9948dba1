"""``POST /v1/jobs/{id}/cancel``: end a queued job at once, ask a running one to stop.

A queued job is made ``cancelled`` here, so the worker that later receives its message finds a final state
and skips it. A running job only gets ``cancel_requested_at``: its worker owns the document while it runs
and ends the job itself within one step. Every write is conditional on the ETag just read (S3 ``If-Match``),
so a worker writing progress or finishing at the same moment is never overwritten: on a conflict the
document is read again and the decision made anew (the job may have finished meanwhile).
"""

from __future__ import annotations

import random
import time
from typing import Any

from lambdas.common import Deployment, deployment, error, response
from lambdas.status import bad_id, not_found, status_body
from runtime.contract import JobState, utcnow
from runtime.storage.jobstore import StatusConflict

#: Reads and conditional writes before giving up. A worker writes progress at most about once a second, so a try
#: loses only when a progress write lands between its read and its write; after a loss the next try waits a
#: random moment (up to ``PAUSE_MAX_S``, growing), so that it does not keep the same phase as the worker's writes
#: (on a slow store, where a read and a write take about a second together, five quick tries all lost).
MAX_TRIES = 10
PAUSE_MAX_S = 0.5


def cancel(dep: Deployment, job_id: str) -> dict[str, Any]:
    if (invalid := bad_id(job_id)) is not None:
        return invalid
    for attempt in range(MAX_TRIES):
        doc, etag = dep.store.read_status_tagged(job_id)
        if doc is None:
            return not_found(job_id)
        shown = doc.as_of(utcnow())  # a queued job past its deadline has ended too: no worker starts it
        if shown.state.final:
            return error(409, "job_finished", f"job {job_id!r} has already ended: it is {shown.state}", "id")
        if doc.state is JobState.running and doc.cancel_requested_at is not None:
            return response(202, status_body(dep, doc))  # asked before: the first request's time stands
        now = utcnow()
        if doc.state is JobState.queued:
            doc = doc.model_copy(update={"state": JobState.cancelled, "finished_at": now, "cancel_requested_at": now,
                                         "updated_at": now, "error": None})
        else:
            doc = doc.model_copy(update={"cancel_requested_at": now, "updated_at": now})
        try:
            dep.store.write_status(doc, if_match=etag)
        except StatusConflict:
            time.sleep(random.uniform(0, min(PAUSE_MAX_S, 0.05 * 2**attempt)))  # noqa: S311 - jitter, not a secret
            continue
        return response(200 if doc.state is JobState.cancelled else 202, status_body(dep, doc))
    return error(503, "conflict", f"job {job_id!r} changed during each of {MAX_TRIES} attempts to cancel it; retry",
                 "id")


def handler(event: dict[str, Any], context: Any = None) -> dict[str, Any]:
    """API Gateway HTTP API (payload 2.0) entry point; the body, if any, is ignored."""
    return cancel(deployment(), (event.get("pathParameters") or {}).get("id", ""))
