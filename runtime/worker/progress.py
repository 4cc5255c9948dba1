"""Progress reports from the denoising loop, written to the status document off that loop.

Each write is a paid S3 PUT with tens of milliseconds of latency, and steps can be faster than that; so a
report is cheap for the pipeline: it is throttled to one per interval, and the write happens on a thread of
its own, latest value wins. Progress is best effort: a failed write is logged, never fails the job.
``close()`` waits for the last write, so a final status written afterwards is never overwritten by it.
A job of several passes says which one its steps are in (``begin``): each report carries it, as ``progress.phase``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from runtime.worker.latest import LatestWins


class ProgressWriter:
    def __init__(self, write: Callable[..., None], interval_s: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.interval_s, self.clock = interval_s, clock
        self.last = clock()  # the first report waits an interval: the `running` status goes with it
        #: The pass the steps now reported belong to (``RunContext.begin_phase``); None for a job of one pass.
        self.phase: str | None = None
        # write(step, total), and the phase after them while a job of several passes names one
        self._sender: LatestWins[tuple[Any, ...]] = LatestWins(lambda report: write(*report), "progress write")

    @property
    def writes(self) -> int:
        return self._sender.sent

    def __call__(self, step: int, total: int) -> None:
        """Called by the pipeline at every step; never blocks on I/O. The last step is left to the final status."""
        now = self.clock()
        if step >= total or now - self.last < self.interval_s:
            return
        self.last = now
        self._sender.submit((step, total) if self.phase is None else (step, total, self.phase))

    def begin(self, phase: str | None) -> None:
        """The steps reported from now on are pass ``phase``'s (``RunContext.on_begin_phase``)."""
        self.phase = phase

    def close(self) -> None:
        """Flush the pending report and stop; idempotent."""
        self._sender.close()
