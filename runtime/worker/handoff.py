"""Keeping the device busy: the next job is received and prepared while one generates, and a job's outputs are
stored while the next one generates.

A job runs in stages (``runtime.worker.job`` draws them): prepared on Celery's thread (its message parsed, its
status read, its inputs and checkpoint checked), generated on a device thread, stored on the same thread once
it has given the device up (PNGs, result document, final status, notification, checkpoint delete, and last,
the SQS DeleteMessage). The Celery task runs only the first stage: it waits for the device, hands the job to
a thread of its own and returns. Celery acks the task, and the ack only releases kombu's delivery
(``runtime.worker.sqs.DEFERRED``), so the consumer receives the next message while this one generates; that
message's task prepares it and waits for the device. So between two jobs of a backlog the device waits for
nothing but a thread switch: the receive, the status read and the whole output stage happen meanwhile.

Why this design, of those the Celery model allows:

- **The stages own the SQS delete; prefetch stays 1.** Each message stays invisible under its lease (the
  heartbeat goes on) until its job is stored, so a crash at any moment leaves it to come back, and its
  redelivery finds the job final (only settling it) or not (and runs it again, writing the same bytes to the
  same keys). Nothing is lost and nothing is doubled, as when the task did it all.
- *Prefetch 2* would hold the second message without a lease while the first job runs, and with the solo
  pool, whose task blocks the event loop, it would not even save the receive: here the waiting message is
  leased from the moment it is received, and the task blocks only while it waits for the device.
- *A thread or process pool* would let two jobs touch the GPU at once, which the worker forbids.

With ``SPOTGEN_RECEIVE_AHEAD=false`` the task returns only once its job has generated: the next message stays in
the queue for any worker until then (the receive and the status read are back between two jobs; the output
stage still overlaps). With a short queue and several workers that lets an idle worker take it at once
instead of one waiting behind a running job.

Bounds: one job on the device; one storing its outputs (a job that finished generating keeps the device
until the one before it is stored: back-pressure when S3 is slow); one prepared and waiting. A stored job whose
webhook is still being sent gives the storing slot up first (``outputs.STORED``): its receiver holds only its own
message, never the next job's hand-off. On SIGTERM the
waiting one is handed back at once (``Lease.requeue``: a copy, visible at once, that does not count toward
maxReceiveCount as ChangeMessageVisibility 0 would), the generating one checkpoints at its next step and is
handed back, the storing one completes; ``wait`` (from Celery's ``worker_shutdown``) joins them within the
interruption's deadline, and a forced exit releases the messages of all three.
"""

from __future__ import annotations

import contextvars
import logging
import threading
from collections.abc import Callable
from typing import Any

from runtime.worker.handback import HandBack
from runtime.worker.job import Job
from runtime.worker.outputs import STORED
from runtime.worker.sqs import delete_message
from runtime.worker.stages import Stage

log = logging.getLogger("spotgen.worker")

#: How often a task waiting for the device looks for an interruption, in seconds.
WAIT_TICK_S = 0.05


class Handoff:
    def __init__(self, sqs: Any, queue_url: str, delete_retry_s: float, interruption: Any,
                 advance: Callable[[Job], None], failed: Callable[[Job, BaseException], bool],
                 receive_ahead: bool = True) -> None:
        """``advance(job)``: run the job's next stage (``JobRunner.advance``). ``failed(job, error)``: a stage
        raised; True when the message must be deleted anyway (the job ended for good and the message was
        dead-lettered), False to leave it to come back. ``receive_ahead`` (``SPOTGEN_RECEIVE_AHEAD``): False keeps
        the next message in the queue until this job has generated (only the output stage overlaps), for other
        workers to take meanwhile."""
        self.sqs, self.queue_url, self.delete_retry_s = sqs, queue_url, delete_retry_s
        self.interruption, self.handback = interruption, HandBack(interruption)
        self.advance, self.failed, self.receive_ahead = advance, failed, receive_ahead
        self._device = threading.Lock()  # the GPU: one job at a time
        self._storing = threading.Lock()  # one output stage at a time
        self._threads: list[threading.Thread] = []

    def start(self, job: Job, context: contextvars.Context) -> bool:
        """Wait for the device, then generate and store the job on a thread of its own, in the job's
        ``context`` (its log fields and trace). True: the job and its message are the thread's now. False: an
        interruption came first, and the job was handed back unstarted."""
        assert job.lease is not None and job.stage is Stage.generate
        while not self._device.acquire(timeout=WAIT_TICK_S):
            if self.interruption.requested:
                context.run(self._hand_back, job)
                return False
        if self.interruption.requested:  # the device came free because the job before was interrupted
            self._device.release()
            context.run(self._hand_back, job)
            return False
        generated = threading.Event()
        thread = threading.Thread(target=self._run, args=(job, context, generated), name="job", daemon=True)
        self._threads = [t for t in self._threads if t.is_alive()] + [thread]
        thread.start()
        if not self.receive_ahead:
            generated.wait()
        return True

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for the jobs in hand to end; True when none is left."""
        for thread in list(self._threads):
            thread.join(timeout)
        return not self.busy

    @property
    def busy(self) -> bool:
        return any(t.is_alive() for t in self._threads)

    def _hand_back(self, job: Job) -> None:
        try:
            self.handback.unstarted(job)
        finally:
            job.end("handed_back")

    def _run(self, job: Job, context: contextvars.Context, generated: threading.Event) -> None:
        lease = job.lease
        assert lease is not None
        device, delete = True, True
        try:
            context.run(self.advance, job)  # generate
            if job.stage is Stage.store:
                self._storing.acquire()  # the job before has stored its outputs
                self._device.release()
                device = False
                generated.set()
                stored = _once(self._storing.release)  # early, before a webhook (``outputs.STORED``)
                try:
                    context.run(self._store, job, stored)
                finally:
                    stored()
        except Exception as exc:  # noqa: BLE001 - the message comes back (or is dead-lettered); never raised here
            delete = self._failed(job, exc)
        finally:
            if device:
                self._device.release()
            generated.set()
            lease.stop()
        try:  # ack
            if delete:
                delete_message(self.sqs, self.queue_url, lease.raw["ReceiptHandle"], self.delete_retry_s)
        except Exception:  # noqa: BLE001 - AccessDenied: the message comes back, and the error is on record
            log.exception("could not delete message %s", lease.raw.get("MessageId"))
        finally:
            self.interruption.drop(lease)

    def _store(self, job: Job, stored: Callable[[], None]) -> None:
        STORED.set(stored)  # in the job's own context (a copy per thread run)
        self.advance(job)

    def _failed(self, job: Job, exc: BaseException) -> bool:
        try:
            return self.failed(job, exc)
        except Exception:  # noqa: BLE001
            log.exception("handling a failed job failed; its message comes back")
            return False


def _once(call: Callable[[], None]) -> Callable[[], None]:
    """``call`` the first time only (the storing slot is released early, or at the end, never twice)."""
    done = threading.Event()
    guard = threading.Lock()

    def once() -> None:
        with guard:
            if done.is_set():
                return
            done.set()
        call()
    return once
