"""The named stages of a job, and the observation that spans them.

A job is received and prepared on Celery's thread, generates on the device thread, and stores its outputs on
the same thread once it has given the device up (``runtime.worker.handoff``); run from a test or the CLI, all of
them run one after the other on one thread. ``runtime.worker.job`` draws the whole path. The job's observation
(``observing``: ``job_begin`` ... ``job_end``) travels with the stages and ends with the last one, however it
ends, so that metrics, logs and traces see one job from its receive to its notification.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from enum import StrEnum

from runtime.ops.observe import JobInfo, Observer
from runtime.worker.errors import PermanentError
from runtime.worker.jobstatus import JobEnded


class Stage(StrEnum):
    """What a job runs next (``Job.stage``); ``done``: nothing, the delivery is over."""

    prepare = "prepare"
    generate = "generate"
    store = "store"
    done = "done"


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
