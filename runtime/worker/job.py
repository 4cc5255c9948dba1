"""One job's path through a worker, from its SQS message to its ack, and the object that carries it.

::

    SQS message ─▶ receive ─▶ prepare ─▶ generate ─▶ store ─▶ ack
                   Celery's task thread   │ the job's own thread (``runtime.worker.handoff``)
                   (``app.run_job``)      │ the device        │ no device   DeleteMessage

A ``Job`` carries the message (its ``lease``), the parsed request (``spec``), its status (``tracker``) and what
each stage leaves for the next. ``Job.stage`` names the stage to run next; ``JobRunner.advance`` runs it and
sets the one after, or ``Stage.done``. Every transition:

============  ==========================================================================  =============
stage         what happens                                                                next
============  ==========================================================================  =============
receive       the message is parsed (``JobRunner.receive``); a bad one fails               prepare
prepare       lease heartbeat on; the status read (``StatusTracker``)
              · already final (another delivery ended it): notification made sure of       done
              · the worker is going away: handed back untouched (interruption policy)      done
              · cancelled, or past its deadline: the final status                          done
              · pipeline, model and inputs checked, the checkpoint looked up               generate
(wait)        the task waits for the device (``Handoff.start``); the worker going away:
              handed back untouched (interruption policy)                                 done
generate      on the device: ``running`` recorded, the pipeline runs                       store
              · past its deadline, or cancelled: the final status                          done
              · ended by another delivery meanwhile                                        done
              · interrupted at a step: checkpoint, ``queued``, handed back                  done
store         PNGs, result document, final status, notification, checkpoint deleted        done
ack           the message is deleted: by the job's thread once stored (the task's ack only
              releases the delivery, ``Delivery.keep``), or by the task's ack when the job
              ended on its thread; a failure leaves it to come back, or dead-letters it
============  ==========================================================================  =============

A stage that raises goes through the failure policy (``runtime.worker.failures``): the runner records its
verdict in the status and on the job (``Job.verdict``), and the holder of the message acts on it
(``runtime.worker.deadletter.settle``). When a stage ends the job (``done``), its observation ends too
(``runtime.worker.stages.observing``), so metrics, logs and traces see one job from receive to ack.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from runtime.contract import JobSpec, StatusDoc
from runtime.ops.observe import JobInfo
from runtime.plugins import Pipeline, StepState
from runtime.worker.failures import Verdict
from runtime.worker.jobstatus import StatusTracker
from runtime.worker.lease import Lease
from runtime.worker.stages import Stage


@dataclass
class Job:
    """One delivery of a job, as it goes from stage to stage (and from thread to thread)."""

    spec: JobSpec
    #: The hold on the message (None when the job runs without one: a test, a tool).
    lease: Lease | None
    #: What observers know of the job; its ``outcome`` says how the delivery ended.
    info: JobInfo
    #: The observation (``job_begin`` ... ``job_end``), closed when the job is done.
    observation: contextlib.ExitStack
    stage: Stage = Stage.prepare
    tracker: StatusTracker | None = None
    # -- from prepare, for generate
    pipeline: Pipeline | None = None
    inputs: BaseModel | None = None
    resume: StepState | None = None
    note: str = ""
    # -- from generate, for store
    attempt: int = 0
    images: list[Any] = field(default_factory=list)
    #: A checkpoint of the job may exist, so its end deletes it.
    checkpointed: bool = False
    started: float = 0.0
    generated: float = 0.0
    # -- the end
    #: The final status this delivery recorded (None: another delivery ended it, or it was handed back).
    final: StatusDoc | None = None
    #: The failure policy's verdict, when a stage failed.
    verdict: Verdict | None = None

    @property
    def id(self) -> str:
        return self.spec.id

    @property
    def receive_count(self) -> int:
        return self.lease.receive_count if self.lease is not None else 1

    @property
    def done(self) -> bool:
        return self.stage is Stage.done

    def end(self, outcome: str) -> None:
        """End the job here, without running the rest (handed back unstarted), with ``outcome`` unless set."""
        self.stage = Stage.done
        self.info.outcome = self.info.outcome or outcome
        self.observation.close()

    def mark_generated(self) -> None:
        self.generated = time.perf_counter()
