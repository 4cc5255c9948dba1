"""The running job's hold on its SQS message: a visibility heartbeat, and handing the message back.

Neither Celery nor kombu extends visibility (celery#5935), so a job longer than the queue's visibility
timeout would be delivered to a second worker while it still runs; and a long timeout means a crashed
worker's job waits that long before anyone retries it. The lease sets the visibility to ``lease_s`` from
its heartbeat thread (so the job never waits for it) every ``heartbeat_s``: a job of any length (up to
``max_job_s``) is delivered once, and after a crash the message is back within ``lease_s``. The first
extension comes at once when the queue's own timeout is longer than the lease; when it is not, it waits
(``first_beat_s``), and a short job makes no extension at all.

An interrupted job is handed back as a *new* message (same body and attributes) before the original is
acked: it is visible at once, and the interruption does not count as a failed receive toward the
dead-letter queue's maxReceiveCount, which a spot fleet would otherwise exhaust.

No lock is held across an SQS call: a call can take minutes (botocore's 5 attempts of up to 30 s each, or an
answer trickled a byte at a time), and a forced exit must not wait for it. The lock only makes the hand-back
happen once. During an interruption the hand-back gets the time left before the forced exit starts
(``budget``, set by ``Interruption.hold``; ``runtime.worker.watchdog.bounded``), and ``release`` (the forced
exit's) runs on a thread the forced exit stops waiting for at the deadline.
"""

from __future__ import annotations

import contextvars
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from runtime.ops.observe import NOOP, Observer
from runtime.storage.retry import backoff
from runtime.worker.watchdog import bounded

log = logging.getLogger("spotgen.lease")


class Lease:
    def __init__(self, sqs: Any, queue_url: str, raw: dict[str, Any], heartbeat_s: float, lease_s: int,
                 max_job_s: int, observer: Observer = NOOP, first_beat_s: float = 0.0,
                 copy_delay: Callable[[], int] | None = None) -> None:
        self.sqs, self.queue_url, self.raw, self.observer = sqs, queue_url, raw, observer
        #: Seconds a handed-back copy stays hidden (``Hooks.copy_delay_s``: until this worker's last poll ended).
        self.copy_delay = copy_delay or (lambda: 0)
        #: When the first extension is due (``runtime.worker.app.first_beat_s``): 0 is at once.
        self.first_beat_s = first_beat_s
        self.heartbeat_s, self.lease_s, self.max_job_s = heartbeat_s, lease_s, max_job_s
        self.extensions = 0
        self.handed_back = False
        #: Seconds left for the hand-back (``Interruption.call_budget``, set by ``Interruption.hold``); None: no
        #: interruption under way, no bound.
        self.budget: Callable[[], float | None] = lambda: None
        self._handing_back = False
        self._lock = threading.Lock()  # the hand-back's check-and-set only; never held across an SQS call
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def receive_count(self) -> int:
        try:
            return int((self.raw.get("Attributes") or {}).get("ApproximateReceiveCount", 1))
        except (TypeError, ValueError):
            return 1

    def start(self) -> None:
        """Start the heartbeat (once; the runner starts it when the job is known, so that the thread runs in
        the job's context and its log lines name the job)."""
        if self._thread is not None:
            return
        log.debug("lease on message %s (receipt %s..., receive %d)", self.raw.get("MessageId"),
                  self.raw["ReceiptHandle"][:12], self.receive_count)
        # The first extension is the heartbeat thread's first beat, not a call made here: the job starts at once
        # even when SQS is slow or throttling, and the probes see a live heartbeat from the first moment.
        self._thread = threading.Thread(target=contextvars.copy_context().run, args=(self._beat,),
                                        name="visibility-heartbeat", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop extending (the message is then deleted, or left to come back when its visibility runs out)."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(self.budget())  # an extension hanging on SQS holds a shutdown no longer than that

    def __enter__(self) -> Lease:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def alive(self) -> bool:
        """For the liveness check: the heartbeat thread runs while a job does (or has not started yet: the job is
        being parsed)."""
        return self._thread is None or self._thread.is_alive() or self._stop.is_set()

    def _beat(self) -> None:
        """Extend every ``heartbeat_s``; after a failure, try again sooner (backoff with jitter, never later than
        the next beat), so a short outage does not eat into the time left before the message reappears."""
        started, failures, delay = time.monotonic(), 0, self.first_beat_s
        while not self._stop.wait(delay):
            if time.monotonic() - started > self.max_job_s:
                log.warning("job has run longer than max_job_s=%s; its message is no longer extended and may be "
                            "delivered again", self.max_job_s)
                return
            failures = 0 if self.extend() else failures + 1
            delay = min(self.heartbeat_s, backoff(failures, 0.5, 5.0)) if failures else self.heartbeat_s

    def extend(self) -> bool:
        """One visibility extension; False when it failed (the heartbeat tries again)."""
        if self.handed_back or self._stop.is_set():
            return True
        try:
            self.sqs.change_message_visibility(QueueUrl=self.queue_url, ReceiptHandle=self.raw["ReceiptHandle"],
                                               VisibilityTimeout=self.lease_s)
            self.extensions += 1
            self.observer.heartbeat(True)
            return True
        except Exception as exc:  # noqa: BLE001 - tried again soon; the job itself is unaffected
            log.warning("could not extend the visibility of message %s: %s: %s", self.raw.get("MessageId"),
                        type(exc).__name__, exc)
            self.observer.heartbeat(False)
            return False

    def requeue(self) -> None:
        """Send the job again as a new message, visible once this worker's own receive in flight has ended (at
        once when none is); the caller then acks the original. During an interruption the call gets the time
        left before the forced exit starts, and raises ``TimeoutError`` past it (the caller then leaves the
        original to come back after its lease)."""
        with self._lock:
            if self.handed_back:
                return
            if self._handing_back:  # never two at once: the caller must not ack the original on this one's word
                raise RuntimeError(f"message {self.raw.get('MessageId')} is being handed back already")
            self._handing_back = True
        try:
            attributes = {name: {"DataType": value["DataType"], "StringValue": value["StringValue"]}
                          for name, value in (self.raw.get("MessageAttributes") or {}).items()
                          if "StringValue" in value}
            delay = self.copy_delay()
            sent = bounded(lambda: self.sqs.send_message(QueueUrl=self.queue_url, MessageBody=self.raw["Body"],
                                                         MessageAttributes=attributes, DelaySeconds=delay),
                           self.budget(), f"handing message {self.raw.get('MessageId')} back")
            self.handed_back = True
        finally:
            self._handing_back = False
        log.info("message %s handed back as message %s%s", self.raw.get("MessageId"), sent.get("MessageId"),
                 f", visible in {delay} s (once this worker's last receive has ended)" if delay else "")

    def release(self) -> None:
        """Make the original message visible again as soon as this worker's own receive in flight has ended
        (forced exit: there is no time to ack it after a copy). Takes no lock: the forced exit calls it on a
        thread it stops waiting for at the deadline, whatever a hand-back in flight is doing (if both land, the
        job is delivered twice, which the exactly-once rules absorb)."""
        if self.handed_back:
            return
        self._stop.set()  # no extension after this one
        try:
            self.sqs.change_message_visibility(QueueUrl=self.queue_url, ReceiptHandle=self.raw["ReceiptHandle"],
                                               VisibilityTimeout=self.copy_delay())
            self.handed_back = True
        except Exception:  # noqa: BLE001 - then it comes back when the lease runs out
            log.warning("could not release message %s", self.raw.get("MessageId"), exc_info=True)
