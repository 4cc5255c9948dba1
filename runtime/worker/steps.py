"""What the runtime does at each step of a pipeline's run: the pipeline's ``RunContext.report``.

Each step is observed (metrics, the step log), its progress reported (throttled, off the loop); a job ended by
another delivery or cancelled stops; at a boundary with state to save, the interruption policy may stop it
(``runtime.worker.handback``), and every ``SPOTGEN_CHECKPOINT_EVERY`` steps a checkpoint is saved off the loop.
A run whose state cannot be checkpointed (its sampler, say) is noted once and restarts after an interruption.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from runtime.ops.observe import Observer, PhaseClock
from runtime.plugins import JobCancelled, JobSuperseded
from runtime.worker import checkpoint
from runtime.worker.checkpoint import CheckpointError, Saver
from runtime.worker.handback import HandBack
from runtime.worker.progress import ProgressWriter
from runtime.worker.steplog import StepLog

if TYPE_CHECKING:
    from runtime.worker.job import Job

log = logging.getLogger("spotgen.worker")


class StepHook:
    def __init__(self, job: Job, observer: Observer, steplog: StepLog, handback: HandBack, report: ProgressWriter,
                 saver: Saver, every: int | None, clock: PhaseClock) -> None:
        self.job, self.observer, self.steplog, self.handback = job, observer, steplog, handback
        self.report, self.saver, self.every, self.clock = report, saver, every, clock
        self.fingerprint = job.spec.fingerprint()
        #: Why this run's state cannot be checkpointed, once a try has failed (then no more tries).
        self.unsaved: str | None = None

    def dump(self, state: Callable[[], Any]) -> bytes | None:
        if self.unsaved is not None:
            return None
        try:
            return checkpoint.dump(state(), self.fingerprint)
        except CheckpointError as exc:  # the pipeline cannot save this run (its sampler, say): restart instead
            sampler = getattr(self.job.inputs, "scheduler", None)
            what = f"sampler {sampler}" if isinstance(sampler, str) else f"pipeline {self.job.spec.pipeline!r}"
            self.unsaved = f"{what} cannot be checkpointed ({exc})"
            log.warning("job %s: %s; an interruption will restart it from the beginning", self.job.id, self.unsaved)
            return None

    def __call__(self, step: int, total: int, state: Any) -> None:
        job, tracker = self.job, self.job.tracker
        assert tracker is not None
        self.observer.step(job.info, step, total, self.clock.step(step, total))
        self.report(step, total)
        self.steplog.write(job.id, job.attempt, step)
        if tracker.ended is not None:
            raise JobSuperseded
        if tracker.cancel_requested:
            raise JobCancelled
        if state is None or step >= total:  # nothing to save, or only decoding is left: finish instead
            return
        self.handback.at_step(job, step, total, lambda: self.dump(state), lambda: self.unsaved or "",
                              lambda data: self.saver.save(data, wait=True), self.report.phase)
        if self.every and step % self.every == 0 and (data := self.dump(state)) is not None:
            self.saver.save(data)
