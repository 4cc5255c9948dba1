"""Moving messages that can never succeed to the dead-letter queue, at once.

kombu leaves a rejected message in a queue that has a redrive policy, so SQS would hand it out again
maxReceiveCount times, one visibility timeout apart, before moving it. A message that fails the same way on
every worker (foreign, malformed, unknown pipeline, a pipeline error) is instead copied to the dead-letter
queue as received (body and attributes, plus the reason) and then deleted. Transient failures still
take the redrive path.

The hooks are Celery's own extension points: a Consumer subclass for messages that never become a task,
and a Request subclass for tasks that fail.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

from celery.worker.consumer import Consumer
from celery.worker.request import Request
from vine import promise

from runtime.worker import failures, sqs

log = logging.getLogger("spotgen.deadletter")

MAX_SQS_ATTRIBUTES = 10
#: SQS's longest visibility timeout (12 hours).
MAX_VISIBILITY_S = 12 * 3600
#: The name under which a task's request carries its ``Delivery`` (``JobRequest.on_accepted``).
DELIVERY = "spotgen_delivery"


@dataclass
class Delivery:
    """One SQS message as its task received it: the original (for the lease), and how its ack ends it."""

    raw: dict[str, Any] | None
    message: Any

    def keep(self) -> None:
        """The task's ack only releases the delivery, without deleting the message: the job's own thread deletes
        it once the outputs are stored (``runtime.worker.handoff``), or it comes back (a failure to retry)."""
        self.message.delivery_info[sqs.DEFERRED] = True


def sqs_message(message: Any) -> dict[str, Any] | None:
    """The SQS original (body, attributes, receipt handle) of a received kombu message."""
    return (getattr(message, "delivery_info", None) or {}).get("sqs_message")


def dead_letter(sqs: Any, dlq_url: str, raw: dict[str, Any] | None, code: str, reason: str) -> bool:
    """Copy a received SQS message to the dead-letter queue; True when it was sent."""
    if not raw or not dlq_url:
        log.error("cannot dead-letter a message without its SQS original or a dead-letter queue URL (%s)", code)
        return False
    attributes = {k: {"DataType": v["DataType"], "StringValue": v["StringValue"]}
                  for k, v in (raw.get("MessageAttributes") or {}).items() if "StringValue" in v}
    attributes = dict(list(attributes.items())[: MAX_SQS_ATTRIBUTES - 2])
    attributes["error_code"] = {"DataType": "String", "StringValue": code[:256]}
    attributes["error_message"] = {"DataType": "String", "StringValue": reason[:1024] or code}
    try:
        sqs.send_message(QueueUrl=dlq_url, MessageBody=raw["Body"], MessageAttributes=attributes)
    except Exception:  # noqa: BLE001 - the caller leaves the message to the redrive policy instead
        log.exception("could not send message %s to the dead-letter queue", raw.get("MessageId"))
        return False
    log.warning("message %s moved to the dead-letter queue: %s: %s", raw.get("MessageId"), code, reason)
    return True


def job_id_attribute(raw: dict[str, Any] | None) -> str | None:
    return ((raw or {}).get("MessageAttributes") or {}).get("job_id", {}).get("StringValue")


def fail_status(hooks: Any, raw: dict[str, Any] | None, code: str, reason: str) -> None:
    """Fail the status of the job the message names, if any. Never raises: this runs inside Celery's
    consumer, where an exception would stop the worker; the message is in the dead-letter queue already."""
    try:
        hooks.runner().outputs.fail_foreign(job_id_attribute(raw), code, reason)
    except Exception:  # noqa: BLE001
        log.exception("could not mark the job of a dead-lettered message failed")


def move(hooks: Any, raw: dict[str, Any] | None, code: str, reason: str) -> bool:
    """Dead-letter, then fail the job's status if the message names one; True when the original may be
    deleted (False: it is left to SQS's redrive policy rather than lost)."""
    if not dead_letter(hooks.sqs, hooks.settings.dead_letter_queue_url, raw, code, reason):
        return False
    hooks.observer.dead_lettered(code)
    fail_status(hooks, raw, code, reason)
    return True


def reject_permanently(app: Any, message: Any, code: str, reason: str) -> None:
    """Dead-letter, fail the job's status if the message names one, then delete the original."""
    if move(app.spotgen, sqs_message(message), code, reason):
        message.ack()
    else:
        message.reject(requeue=False)


def settle(hooks: Any, raw: dict[str, Any] | None, verdict: failures.Verdict) -> bool:
    """Act on the failure policy's verdict (``runtime.worker.failures``) for the message: dead-letter it when the
    job ended for good (and fail the job it names, if not done yet), else hide it for the verdict's backoff (the
    job's lease must have stopped: its heartbeat would extend it again). True when the message may be deleted;
    False leaves it to come back."""
    if verdict.error is not None:
        return move(hooks, raw, verdict.error.code, verdict.error.message)
    delay = math.ceil(verdict.retry_in_s or 0)
    if raw and delay:
        try:
            hooks.sqs.change_message_visibility(QueueUrl=hooks.settings.queue_url, ReceiptHandle=raw["ReceiptHandle"],
                                                VisibilityTimeout=min(delay, MAX_VISIBILITY_S))
        except Exception as exc:  # noqa: BLE001 - then it comes back when its lease runs out
            log.warning("could not set the retry backoff of message %s: %s: %s", raw.get("MessageId"),
                        type(exc).__name__, exc)
            delay = 0
    log.warning("job failed (%s); its message is redelivered %s", verdict.failure.message,
                f"in {delay} s" if delay else "when the lease runs out")
    return False


def verdict_on(hooks: Any, raw: dict[str, Any] | None, exc: BaseException) -> failures.Verdict:
    """The verdict on a failure outside any job's stages (a message that is not a job)."""
    return failures.judge(failures.classify(exc), receive_count(raw), hooks.settings.max_receive_count)


class DeadLetterConsumer(Consumer):
    """Messages that are not tasks of this worker go to the dead-letter queue instead of looping."""

    def create_task_handler(self, promise: Any = promise) -> Any:
        handler = super().create_task_handler(promise)
        queue = self.app.spotgen.settings.queue_name

        def on_task_received(message: Any) -> Any:
            # kombu acks through the queue named by the routing key *in the message body*; a body naming a
            # queue this worker does not know stops the worker (UndefinedQueueException). The message came
            # from our one queue, whatever its body says.
            message.delivery_info["routing_key"] = queue
            return handler(message)

        return on_task_received

    def on_unknown_message(self, body: Any, message: Any) -> None:
        reject_permanently(self.app, message, "foreign_message", "the message is not a Celery task message")

    def on_unknown_task(self, body: Any, message: Any, exc: Exception) -> None:
        task = (message.headers or {}).get("task")
        reject_permanently(self.app, message, "unknown_task", f"this worker has no task {task!r}")

    def on_invalid_task(self, body: Any, message: Any, exc: Exception) -> None:
        reject_permanently(self.app, message, "invalid_message", f"invalid task message: {exc}")

    def on_decode_error(self, message: Any, exc: Exception) -> None:
        reject_permanently(self.app, message, "invalid_message", f"the message cannot be decoded: {exc}")


def receive_count(raw: dict[str, Any] | None) -> int:
    try:
        return int(((raw or {}).get("Attributes") or {}).get("ApproximateReceiveCount", 1))
    except (TypeError, ValueError):
        return 1


class JobRequest(Request):
    """Tells the task which SQS message it runs for (Celery passes the task a filtered copy of the delivery
    information without the receipt handle the lease needs): a ``Delivery`` in the task's request. A task that
    fails outside its job's stages (a message that is not one job) is judged by the failure policy: dead-lettered,
    then its message deleted, or left to come back (``task_acks_on_failure_or_timeout`` is off)."""

    def on_accepted(self, pid: Any, time_accepted: float) -> None:
        # The solo pool calls this just before it runs the task, in the same thread, with the very dict the task's
        # request is built from (Celery replaces ``execute_using_pool`` in a generated subclass, so that is no place
        # for a hook).
        raw = sqs_message(self._message)
        self._request_dict[DELIVERY] = Delivery(raw, self._message)
        # X-Ray interop: a message without a W3C traceparent continues the trace of SQS's AWSTraceHeader
        # (the header name the X-Ray propagator reads from the task request, which Celery builds from this dict).
        xray = ((raw or {}).get("Attributes") or {}).get("AWSTraceHeader")
        if xray and "traceparent" not in self._request_dict:
            self._request_dict["X-Amzn-Trace-Id"] = xray
        super().on_accepted(pid, time_accepted)

    def on_failure(self, exc_info: Any, send_failed_event: bool = True, return_ok: bool = False) -> None:
        exc = getattr(exc_info.exception, "exc", exc_info.exception)
        hooks = self.task.app.spotgen
        raw = sqs_message(self._message)
        if settle(hooks, raw, verdict_on(hooks, raw, exc)):
            self.acknowledge()
        return super().on_failure(exc_info, send_failed_event, return_ok)
