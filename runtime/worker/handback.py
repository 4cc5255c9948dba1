"""The interruption policy: what each job in hand does when its worker is going away, in one place.

SIGTERM or a spot notice starts an interruption (``runtime.worker.interrupt``); from then on:

=========================  ==========================================================================
where the job is           what it does
=========================  ==========================================================================
received (prepare)         handed back untouched (``unstarted``): a copy of its message is sent, the
                           original acked; an interruption does not count toward maxReceiveCount
waiting for the device     the same, from ``runtime.worker.handoff``
generating                 at its next step boundary (``at_step``): a checkpoint of that step, waited
                           for, then the job stops; its status goes back to ``queued`` and it is handed
                           back the same way (``interrupted``). A state that cannot be checkpointed
                           leaves a step-0 checkpoint saying why, so the next attempt restarts with that
                           note. A pipeline without checkpoints keeps running: it may finish in time
storing its outputs        completes, and deletes its message
the deadline, a 2nd signal the process exits; every lease is released (``runtime.worker.interrupt``)
=========================  ==========================================================================
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from runtime.contract import JobState, Progress
from runtime.plugins import JobInterrupted, StepState
from runtime.worker import checkpoint

if TYPE_CHECKING:
    from runtime.worker.job import Job

log = logging.getLogger("spotgen.worker")


class HandBack:
    def __init__(self, interruption: Any | None) -> None:
        self.interruption = interruption

    @property
    def requested(self) -> bool:
        return self.interruption is not None and self.interruption.requested

    def unstarted(self, job: Job) -> bool:
        """A job that has not started generating, while the worker is going away: handed back untouched. True
        when it was (the job is over for this worker)."""
        if not self.requested or job.lease is None:
            return False
        job.info.outcome = job.info.outcome or "handed_back"
        job.lease.requeue()
        return True

    def at_step(self, job: Job, step: int, total: int, dump: Callable[[], bytes | None], unsaved: Callable[[], str],
                save: Callable[[bytes], bool], phase: str | None = None) -> None:
        """At a step boundary with state left to save: stop the job with a checkpoint of this step when the worker
        is going away. ``dump``: the checkpoint, None when this run's state cannot be saved (``unsaved`` says why);
        ``save``: store it and wait."""
        if not self.requested:
            return
        assert job.tracker is not None
        job.tracker.doc.progress = Progress(step=step, total=total, phase=phase)  # phase: the pass it stopped in
        data = dump()
        if data is None:
            log.warning("job %s interrupted at step %d without a checkpoint of it; the next attempt %s", job.id,
                        step, f"resumes at step {job.resume.step} again" if job.resume else "restarts")
        if data is None and job.resume is None:  # a step-0 checkpoint tells the next attempt why it restarts
            data = checkpoint.dump(StepState(step=0, values={"unsaved": unsaved()}), job.spec.fingerprint())
        if data is not None and not save(data):
            log.error("job %s: the interruption checkpoint could not be stored", job.id)
        raise JobInterrupted

    def interrupted(self, job: Job) -> None:
        """The job stopped at ``at_step``: back to ``queued``, and handed back."""
        assert job.tracker is not None
        job.tracker.write(state=JobState.queued, phase=None, interruptions=job.tracker.doc.interruptions + 1)
        if job.lease is not None:
            job.lease.requeue()
        log.warning("job %s interrupted at step %d and handed back", job.id, job.tracker.doc.progress.step)
        job.info.outcome = "interrupted"
