"""Where a later attempt of a job starts: the checkpoint to continue from, if there is a usable one.

An attempt records itself in the status before it saves a checkpoint, so a job no attempt has started has none to
read. A checkpoint whose fingerprint or digest does not match is ignored with a note, and the job starts from
the beginning; so does one that only says why its attempt could not save the state (a step-0 checkpoint, left
by the interruption policy: ``runtime.worker.handback``).
"""

from __future__ import annotations

import logging

from runtime.contract import JobSpec, StatusDoc
from runtime.plugins import Pipeline, StepState
from runtime.storage.jobstore import JobStore
from runtime.worker import checkpoint
from runtime.worker.checkpoint import CheckpointError

log = logging.getLogger("spotgen.worker")


def resume_state(store: JobStore, spec: JobSpec, pipeline: Pipeline, doc: StatusDoc) -> tuple[StepState | None, str]:
    """The checkpoint to continue from, if there is a usable one, and a note for the status."""
    again = "; restarted from the beginning"
    if not type(pipeline).checkpoints:
        return None, (f"pipeline {spec.pipeline!r} does not save checkpoints{again}" if doc.attempts else "")
    if not doc.attempts:  # no attempt has started (each records itself before it saves): nothing to read
        return None, ""
    try:
        data = store.get_checkpoint(spec.id, checkpoint.MAX_CHECKPOINT_BYTES)
        if data is None:
            return None, (f"no checkpoint was saved{again}" if doc.attempts else "")
        state = checkpoint.load(data, spec.fingerprint())
    except (CheckpointError, ValueError) as exc:
        log.warning("job %s: checkpoint ignored: %s", spec.id, exc)
        return None, f"checkpoint ignored ({exc}){again}"
    if state.step == 0:  # an attempt whose state could not be saved left only why
        reason = state.values.get("unsaved")
        return None, f"{reason if isinstance(reason, str) and reason else 'no checkpoint was saved'}{again}"
    log.info("job %s resumes at step %d", spec.id, state.step)
    return state, f"resumed at step {state.step} from a checkpoint"
