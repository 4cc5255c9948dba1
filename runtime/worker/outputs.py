"""The output stage: a job's images, its result document, its final status and its one notification.

Exactly-once as the client sees it: outputs go to keys derived from the job id (a second run writes the same
bytes to the same keys); the result document is created once (``If-None-Match``), so the first delivery to
finish decides the result; the status document is only changed by compare-and-swap (``runtime.worker.jobstatus``);
and the notification is claimed in the status before it is sent and recorded in ``notified_at`` after, so
neither a redelivery nor a second delivery running at the same time sends another.

A job of the AWS sample's API (``StatusDoc.sample``) ends the way the sample's clients expect: its ``.out``
document at ``{location}/{id}.out`` (written from the recorded result before the final status, so it is in place
when the notification points at it, and a second delivery writes the same bytes) and the sample's notification,
with a ``format`` attribute ``aws-sample`` for subscription filters, instead of spotgen's.

A finished image exists nowhere else, so every call of the stage is retried through an outage
(``runtime.storage.retry``) for ``SPOTGEN_STORE_RETRY_S`` in all, while the job's lease keeps its message
invisible. Past that budget the error propagates: the message is left for redelivery and the checkpoint is
kept, so the next delivery resumes instead of starting over.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextvars import ContextVar
from typing import Any

from PIL import Image
from pydantic import ValidationError

from runtime.config import Settings
from runtime.contract import JOB_ID_RE, JobErrorInfo, JobSpec, JobState, Notification, Progress, StatusDoc, utcnow
from runtime.contract.errors import ContractError
from runtime.contract.formats import content_type_of
from runtime.contract.jobs import SampleJob
from runtime.contract.outputcheck import output_options
from runtime.contract.sample import SampleNotification, sample_notification
from runtime.contract.webui_answer import sample_out_document
from runtime.ops.observe import NOOP, Observer
from runtime.storage import aws
from runtime.storage.jobstore import JobStore, output_key, result_key
from runtime.storage.retry import Retry
from runtime.worker.errors import PermanentError
from runtime.worker.images import encode_output
from runtime.worker.jobstatus import JobEnded, StatusTracker
from runtime.worker.webhooks import SecretSource, Webhooks

log = logging.getLogger("spotgen.worker")

#: Set by the output stage's holder (``runtime.worker.handoff``) for the job being stored: called once the job's
#: outputs, final status and notification are written, before its webhook is sent, so that a receiver that does not
#: answer holds only this job's message, never the next job's hand-off (and with it the device).
STORED: ContextVar[Callable[[], None] | None] = ContextVar("spotgen_stored", default=None)

#: The ``format`` message attribute of a sample job's notification (spotgen's own carry none).
SAMPLE_FORMAT = "aws-sample"


def sample_out_key(sample: SampleJob, job_id: str) -> str:
    """Where a sample job's ``.out`` document lies in the output bucket: beside its images, under ``location``."""
    return f"{sample.location}/{job_id}.out"


class NotifyingElsewhere(Exception):
    """Another delivery of the job claimed its notification and has not recorded it yet. Transient: the
    message comes back after its lease, and then the notification has gone out, or the claim is stale."""


class Outputs:
    """Writes what a job leaves behind, in the order a client relies on."""

    def __init__(self, settings: Settings, store: JobStore, sns: Any, observer: Observer = NOOP) -> None:
        self.settings, self.store, self.sns, self.observer = settings, store, sns, observer
        #: The jobs' own webhooks (``runtime.worker.webhooks``), sent after the notification.
        self.webhooks = Webhooks(settings, store, SecretSource(settings, lambda service: aws.client(service, settings)))

    def stage(self) -> Retry:
        """One budget for the calls of one output stage."""
        return Retry(self.settings.store_retry_s)

    def store_outputs(self, spec: JobSpec, images: list[Image.Image], retry: Retry | None = None) -> list[str]:
        retry = retry or self.stage()
        parameters = {"pipeline": spec.pipeline, "model": spec.model, "seed": spec.seed, **spec.inputs}
        try:  # checked at submit (every pipeline's); only a message that did not come through the API fails here
            options = output_options(spec.inputs)
        except ContractError as exc:
            raise PermanentError("invalid_inputs", exc.message, exc.field) from None
        keys = []
        for index, image in enumerate(images):
            key = output_key(spec.output_prefix, spec.id, index, options.extension)
            data = encode_output(image, {**parameters, "index": index}, options)
            retry(lambda key=key, data=data: self.store.put_output(key, data, options.content_type),
                  f"job {spec.id}: storing {key}")
            keys.append(key)
        return keys

    def finish(self, tracker: StatusTracker, state: JobState, keys: list[str],
               error: JobErrorInfo | None, retry: Retry | None = None, checkpoint: bool = True) -> StatusDoc:
        """Result document, final status, then the notification: in this order, so a client that hears the
        notification finds everything in place. The result document is created once: if another delivery
        got there first, its result stands."""
        retry = retry or self.stage()
        doc = tracker.doc
        progress = doc.progress if state != JobState.succeeded else Progress(step=doc.progress.total,
                                                                             total=doc.progress.total)
        now = utcnow()
        final = doc.model_copy(update={"state": state, "outputs": keys, "error": error, "progress": progress,
                                       "phase": None, "finished_at": now, "updated_at": now})
        key = result_key(doc.id)
        if not retry(lambda: self.store.create_json(key, final.model_dump(mode="json")), f"job {doc.id}: result"):
            recorded = StatusDoc.model_validate(retry(lambda: self.store.get_json(self.store.output_bucket, key),
                                                      f"job {doc.id}: reading the recorded result"))
            log.info("job %s: completion was already recorded as %s", doc.id, recorded.state)
            final = recorded
        if doc.sample is not None:  # before the final status: a client that sees the job end finds it in place
            self.write_out(final, doc.sample, retry)
        claim = bool(self.settings.results_topic_arn)  # the notification's claim rides on the final status
        hook = self.webhooks.claim_with_final(doc)  # and so does the webhook's (none without one: no extra field)
        retry(lambda: tracker.write(claim=claim, state=final.state, outputs=final.outputs, error=final.error,
                                    progress=final.progress, phase=None, finished_at=final.finished_at, **hook),
              f"job {doc.id}: final status")
        self.settle(tracker, retry, checkpoint, out_written=doc.sample is not None)
        return tracker.doc

    def write_out(self, final: StatusDoc, sample: SampleJob, retry: Retry) -> None:
        """The sample's ``.out`` document of a job that ended as ``final``: WebUI's ``parameters`` with the seeds,
        or the error. Overwritten rather than created once, since it follows the recorded end: every delivery
        derives it from the same result, so a second write stores the same bytes."""
        error = None
        if final.state is not JobState.succeeded:
            error = final.error.message if final.error is not None else final.state.value
        body = sample_out_document(final.id, sample.parameters, sample.info, error)
        key = sample_out_key(sample, final.id)
        retry(lambda: self.store.put_json(key, body), f"job {final.id}: storing {key}")

    def settle(self, tracker: StatusTracker, retry: Retry | None = None, checkpoint: bool = True,
               out_written: bool = False) -> None:
        """For a final job: the one notification, and no checkpoint left behind (``checkpoint``: there may be
        one; False when no attempt can have saved any, which spares a DELETE). ``out_written``: this delivery
        just stored a sample job's ``.out`` for this very end; otherwise it is stored again from the status, since
        the job may have been ended elsewhere (the cancel API ends a queued job) and the notification points at
        it."""
        retry = retry or self.stage()
        doc = tracker.doc
        if doc.notified_at is None:
            if doc.sample is not None and not out_written:
                self.write_out(doc, doc.sample, retry)
            # Claimed (renewed before each attempt), so that two deliveries finishing at once (a copy of the
            # message, or one that reappeared during an outage) do not both publish. A claim lives as long as a
            # lease: the delivery that finds a live one comes back after its own lease, and finds the
            # notification sent or the claim abandoned.
            def publish() -> bool:
                if self.settings.results_topic_arn and not tracker.claim_notification(self.settings.lease_s):
                    return False
                self.notify(tracker.doc)
                return True

            if retry(publish, f"job {doc.id}: notification"):
                retry(tracker.mark_notified, f"job {doc.id}: recording the notification")
            elif tracker.doc.notified_at is None:
                raise NotifyingElsewhere(f"job {doc.id}: another delivery is sending the notification; this "
                                         "message comes back to check that it went out")
        if self.webhooks.pending(tracker.doc, "completed"):
            if (stored := STORED.get()) is not None:
                stored()  # the next job may store its outputs while this one's receiver is waited for
            self.send_webhook(tracker, retry)
        if not checkpoint:
            return
        try:  # retried like the rest of the stage: a cut here would otherwise leave the checkpoint behind
            retry(lambda: self.store.delete_checkpoint(doc.id), f"job {doc.id}: deleting its checkpoint")
        except Exception:  # noqa: BLE001 - past the budget, a leftover checkpoint only costs storage (lifecycle)
            log.warning("job %s: could not delete its checkpoint", doc.id, exc_info=True)

    def send_webhook(self, tracker: StatusTracker, retry: Retry) -> None:
        """The job's ``completed`` webhook, once (``runtime.worker.webhooks``): after the notification, on this
        thread (the device is another's by now). A receiver that fails only costs the webhook's own budget;
        another delivery sending it meanwhile leaves this message to come back and find it settled."""
        if self.webhooks.deliver(tracker, retry=retry) is None:
            raise NotifyingElsewhere(f"job {tracker.doc.id}: another delivery is sending the webhook; this message "
                                     "comes back to check that it went out")

    def notify(self, doc: StatusDoc) -> None:
        """Publish the job's notification: spotgen's, or the sample's for a job of the sample's API (the
        ``format`` attribute tells them apart without parsing the body)."""
        if not self.settings.results_topic_arn:
            return
        urls = [f"s3://{self.store.output_bucket}/{key}" for key in doc.outputs]
        attributes = {"state": {"DataType": "String", "StringValue": doc.state.value}}
        if doc.sample is None:
            body = Notification(id=doc.id, state=doc.state, error=doc.error, context=doc.context, outputs=urls,
                                content_types=[content_type_of(key) for key in doc.outputs]).model_dump_json()
        else:
            body = self.sample_note(doc, doc.sample, urls).model_dump_json()
            attributes["format"] = {"DataType": "String", "StringValue": SAMPLE_FORMAT}
        with self.observer.phase("notify", state=doc.state.value):
            self.sns.publish(TopicArn=self.settings.results_topic_arn, Message=body, MessageAttributes=attributes)
        # Until ``notified_at`` is stored, a crash leaves a redelivery to send it again (at least once, never lost)
        log.info("job %s: notification published", doc.id)

    def sample_note(self, doc: StatusDoc, sample: SampleJob, urls: list[str]) -> SampleNotification:
        """The sample's notification of a final job: its images, and its ``.out`` document as ``output_url``."""
        output_url = f"s3://{self.store.output_bucket}/{sample_out_key(sample, doc.id)}"
        return sample_notification(runtime=sample.runtime, job_id=doc.id, succeeded=doc.state is JobState.succeeded,
                                   image_urls=urls, output_url=output_url, context=sample.context)

    def fail_foreign(self, job_id: str | None, code: str, message: str) -> None:
        """A message the worker could not even parse: fail its job if it names one that is still open."""
        if not job_id or not JOB_ID_RE.match(job_id):
            return
        try:
            doc, etag = self.store.read_status_tagged(job_id)
        except (ValueError, ValidationError):
            return
        if doc is None:
            return
        tracker = StatusTracker(self.store, doc, etag)
        try:
            if doc.state.final:
                self.settle(tracker)
            else:
                self.finish(tracker, JobState.failed, [], JobErrorInfo(code=code, message=message))
        except JobEnded:
            self.settle(tracker)
