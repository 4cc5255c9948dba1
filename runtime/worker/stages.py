"""A job in stages, each run by the thread that takes it next, and the observation that spans them.

A job is received and prepared on Celery's thread, generates on the device thread, and stores its outputs on
an output thread (``runtime.worker.handoff``); run from a test or the CLI, all three run one after the other
on one thread. A ``Stage`` is what is left of the job: calling it runs one part and returns the next stage,
or the end (the final status, or None when this delivery did not end the job). The job's observation
(``observing``: ``job_begin`` ... ``job_end``) travels with the stages and ends with the last one, however it
ends, so that metrics, logs and traces see one job from its receive to its notification.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from runtime.contract import StatusDoc
from runtime.ops.observe import JobInfo, Observer
from runtime.worker.errors import PermanentError
from runtime.worker.jobstatus import JobEnded


@dataclass
class Stage:
    #: This part of the job: returns the next part (a callable), a final status, or None.
    part: Callable[[], Any]
    #: The job's observation (``observing``), closed by the last part.
    stack: contextlib.ExitStack
    job: JobInfo
    #: What a delivery does when it finds the job ended by another (it only settles it).
    ended: Callable[[JobEnded], None]

    def __call__(self) -> Stage | StatusDoc | None:
        with self.stack:
            try:
                result = self.part()
            except JobEnded as exc:
                self.ended(exc)
                return None
            if callable(result):
                return Stage(result, self.stack.pop_all(), self.job, self.ended)
            if isinstance(result, StatusDoc):
                self.job.outcome = result.state.value
            return result

    def close(self, outcome: str) -> None:
        """End the job's observation without running the rest (the job was handed back unstarted)."""
        self.job.outcome = self.job.outcome or outcome
        self.stack.close()


def run_all(stage: Stage | StatusDoc | None) -> StatusDoc | None:
    """Every remaining stage, on this thread."""
    while isinstance(stage, Stage):
        stage = stage()
    return stage


@contextlib.contextmanager
def observing(observer: Observer, job: JobInfo) -> Iterator[JobInfo]:
    """``job_begin`` ... ``job_end`` around a delivery, with ``job.outcome`` set from how it ended."""
    observer.job_begin(job)
    try:
        yield job
    except JobEnded:
        job.outcome = job.outcome or "duplicate"
        raise
    except PermanentError:  # the runner has written `failed` before raising it
        job.outcome = job.outcome or "failed"
        raise
    except BaseException:  # the message is redelivered once its lease runs out
        job.outcome = job.outcome or "error"
        raise
    finally:
        job.outcome = job.outcome or "duplicate"
        observer.job_end(job)
