"""A job's message until SNS has it: kept in S3 first, published, then published again if its submit died.

A submit can die (Lambda's timeout, a crash) or lose its connection after any AWS call. So the message is written
to ``pending/{id}/{submission}.json`` before the ``queued`` status is created (which records the submission), and
deleted once SNS took the message: the object still there says the job may not have been published. A job found
``queued`` with no attempt yet (``StatusDoc.maybe_unpublished``) and its pending object still there is published
from that object by whoever finds it once its submit cannot be running any more (``WINDOW_S`` after
``created_at``): a retry of the request with the same id (``lambdas/submit.py``) or the sweep
(``lambdas/sweep.py``). Nothing is written to the status after the publish: the worker may have read it already,
and a write would make the worker's first conditional write fail and read again (two requests more per job).
Publishing twice is safe: the messages are the same job, and the worker runs a job once however many messages
carry it. docs/architecture.md tells the whole order.
"""

from __future__ import annotations

import logging
import threading
from datetime import datetime, timedelta
from enum import Enum
from typing import Any

from botocore.exceptions import ConnectTimeoutError, EndpointConnectionError
from pydantic import ValidationError

from lambdas import telemetry
from lambdas.common import Deployment
from runtime.contract import JobErrorInfo, JobSpec, JobState, StatusDoc
from runtime.contract.envelope import build_celery_message
from runtime.storage.jobstore import StatusConflict, pending_key

log = logging.getLogger("spotgen.api")

#: The longest a function that creates jobs runs: API Gateway's HTTP APIs wait 30 s for an integration, so no
#: route needs longer, and tests/infra holds the creating functions' ``Timeout`` to it.
CREATOR_MAX_S = 30
#: Clock skew allowed between the function that created a job and the one that finds it unpublished.
CLOCK_SKEW_S = 5
#: After this long from ``created_at`` the submit that created a job is certainly gone (Lambda ended it), so
#: publishing its job cannot race its own publish or its undo: only then does anyone else publish it.
WINDOW_S = CREATOR_MAX_S + CLOCK_SKEW_S


class Published(Enum):
    """What a failed publish left behind, from the client's side of the connection."""

    yes = "yes"
    no = "no"  # every try was answered with an error, or never connected: SNS has no message
    unknown = "unknown"  # a try was sent and its answer lost: SNS may have the message


def spec_document(spec: JobSpec, pool: str | None) -> dict[str, Any]:
    # Without a digest the field is left out, so that workers of the version before it (which refuse fields they do
    # not know) still take every job while an upgrade rolls out.
    job = spec.model_dump(mode="json", exclude={"schema_digest"} if spec.schema_digest is None else None)
    return {"spec": job, "pool": pool}


def keep(dep: Deployment, spec: JobSpec, pool: str | None, submission: str) -> None:
    """Write the message's content where a retry or the sweep finds it (before the status exists)."""
    dep.store.put_json(pending_key(spec.id, submission), spec_document(spec, pool))


def publish(dep: Deployment, spec: JobSpec, pool: str | None = None) -> None:
    """One SNS message: a Celery task message as body, routing attributes for the subscription filters. The
    message headers carry the trace (``traceparent``), which the worker's Celery instrumentation continues."""
    with telemetry.span("spotgen.publish", "PRODUCER", job_id=spec.id, pipeline=spec.pipeline, model=spec.model):
        job = spec_document(spec, pool)["spec"]
        body = build_celery_message(spec.id, [job], queue=dep.settings.queue_name, extra_headers=telemetry.carrier())
        attributes = {
            "pipeline": {"DataType": "String", "StringValue": spec.pipeline},
            "model": {"DataType": "String", "StringValue": spec.model},
            "job_id": {"DataType": "String", "StringValue": spec.id},
            "contract_version": {"DataType": "Number", "StringValue": str(spec.version)},
        }
        if pool:  # a runtime's own worker pool: an SNS filter policy on it routes the job (docs/deploy.md)
            attributes["pool"] = {"DataType": "String", "StringValue": pool}
        dep.sns.publish(TopicArn=dep.settings.jobs_topic_arn, Message=body, MessageAttributes=attributes)


_tries = threading.local()
#: A try that failed with these never reached SNS: no connection was made.
_UNSENT = (EndpointConnectionError, ConnectTimeoutError)


def _note_try(caught_exception: BaseException | None = None, **_: Any) -> None:
    """botocore's ``needs-retry`` event, after every try of a call: note a try that was sent and lost its answer."""
    if caught_exception is not None and not isinstance(caught_exception, _UNSENT):
        _tries.unanswered = True


def publish_tracked(dep: Deployment, spec: JobSpec, pool: str | None) -> tuple[Published, Exception | None]:
    """``publish``, and if it failed, whether SNS may have the message all the same: a try that connected and
    lost its answer may have been published (botocore reports only the last try's error, so every try is noted;
    the clients are shared by the threads of the local gateway, so the note is the thread's own)."""
    dep.sns.meta.events.register("needs-retry.sns.Publish", _note_try, unique_id="spotgen-outbox-tries")
    _tries.unanswered = False
    try:
        publish(dep, spec, pool)
        return Published.yes, None
    except Exception as exc:  # noqa: BLE001 - any failure: what matters is whether a try may have landed
        return (Published.unknown if _tries.unanswered else Published.no), exc


def finish(dep: Deployment, doc: StatusDoc) -> None:
    """After SNS took the message: the pending message goes. A failure here costs nothing but a second message
    later (the sweep or a retry publishes what it finds)."""
    if doc.submission is not None:
        dep.store.delete_pending(doc.id, doc.submission)


def pending(dep: Deployment, doc: StatusDoc) -> dict[str, Any] | None:
    """The job's pending message, or None when there is none: SNS took it (or the job has no submission)."""
    if doc.submission is None:
        return None
    found = dep.store.get_json(dep.store.output_bucket, pending_key(doc.id, doc.submission))
    return found if found is not None else None


def stranded(doc: StatusDoc, now: datetime) -> bool:
    """Queued and never published, by a submit that can no longer be running."""
    return (doc.state is JobState.queued and doc.maybe_unpublished
            and now >= doc.created_at + timedelta(seconds=WINDOW_S))


def recover(dep: Deployment, doc: StatusDoc, etag: str | None, now: datetime) -> StatusDoc:
    """Publish a ``stranded`` job from its pending message; nothing when that is gone (SNS took it), and fail
    the job with the reason when it is unreadable (nothing else could run it). The status as it is now."""
    assert doc.submission is not None
    data = pending(dep, doc)
    if data is None:
        return doc
    try:
        spec = JobSpec.model_validate(data["spec"]) if isinstance(data, dict) else None
    except (KeyError, ValidationError):
        spec = None
    if spec is None or spec.id != doc.id:
        error = JobErrorInfo(code="enqueue_failed", message="the job's submit ended before its message was "
                             "published, and the message it kept is unreadable; submit it again")
        failed = doc.model_copy(update={"state": JobState.failed, "error": error, "finished_at": now,
                                        "updated_at": now})
        try:
            dep.store.write_status(failed, if_match=etag)
        except StatusConflict:
            return dep.store.read_status(doc.id) or doc
        log.warning("job %s: failed, its pending message is missing or unreadable", doc.id)
        return failed
    publish(dep, spec, data.get("pool"))
    log.info("job %s: published again, its submit (%s) ended before it could", doc.id, doc.submission)
    finish(dep, doc)
    return doc
