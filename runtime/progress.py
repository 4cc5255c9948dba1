"""Progress reports from the denoising loop, written to the status document off that loop.

Each write is a paid S3 PUT with tens of milliseconds of latency, and steps can be faster than that; so a
report is cheap for the pipeline: it is throttled to one per interval, and the write happens on a thread of
its own, latest value wins. Progress is best effort: a failed write is logged, never fails the job.
``close()`` waits for the last write, so a final status written afterwards is never overwritten by it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

log = logging.getLogger("spotgen.progress")


class ProgressWriter:
    def __init__(self, write: Callable[[int, int], None], interval_s: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.write, self.interval_s, self.clock = write, interval_s, clock
        self.last = clock()  # the `running` write has just said step 0
        self.writes = 0
        self._pending: tuple[int, int] | None = None
        self._closed = False
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="progress-writer", daemon=True)
        self._thread.start()

    def __call__(self, step: int, total: int) -> None:
        """Called by the pipeline at every step; never blocks on I/O. The last step is left to the final status."""
        now = self.clock()
        if step >= total or now - self.last < self.interval_s:
            return
        self.last = now
        with self._cond:
            self._pending = (step, total)
            self._cond.notify()

    def _run(self) -> None:
        while True:
            with self._cond:
                while self._pending is None and not self._closed:
                    self._cond.wait()
                if self._pending is None:
                    return
                step, total = self._pending
                self._pending = None
            try:
                self.write(step, total)
                self.writes += 1
            except Exception:  # noqa: BLE001 - progress must never fail a job
                log.warning("progress write %d/%d failed", step, total, exc_info=True)

    def close(self) -> None:
        """Flush the pending report and stop; idempotent."""
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join()
