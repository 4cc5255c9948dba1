"""A background sender where the newest value wins: progress reports and checkpoints of the running job.

Each S3 write takes tens of milliseconds and the denoising loop must not wait for it; only the newest progress
or checkpoint is worth sending, so a value still waiting when a newer one comes is dropped. A failed send is
logged, never raised: it costs a progress update or some steps, never the job. ``close`` drains and joins, so
nothing is sent after it returns (a final status or a deleted checkpoint then stays as it is).
"""

from __future__ import annotations

import contextvars
import logging
import threading
from collections.abc import Callable
from typing import Generic, TypeVar

log = logging.getLogger("spotgen.worker")

T = TypeVar("T")


class LatestWins(Generic[T]):
    def __init__(self, send: Callable[[T], None], name: str) -> None:
        self.send, self.name = send, name
        self.sent = 0
        self._pending: T | None = None
        self._busy = self._closed = False
        self._error: BaseException | None = None
        self._cond = threading.Condition()
        # in a copy of the job's context: its log lines name the job, its S3 calls join the job's trace
        self._thread = threading.Thread(target=contextvars.copy_context().run, args=(self._run,), name=name,
                                        daemon=True)
        self._thread.start()

    def submit(self, value: T, wait: bool = False) -> bool:
        """Queue ``value``; with ``wait``, True once it (or a newer one) is sent, False if that failed."""
        with self._cond:
            self._pending, self._error = value, None
            self._cond.notify_all()
            if not wait:
                return True
            while self._pending is not None or self._busy:
                self._cond.wait()
            return self._error is None

    def close(self) -> None:
        """Send what is pending, then stop; idempotent."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join()

    def _run(self) -> None:
        while True:
            with self._cond:
                while self._pending is None and not self._closed:
                    self._cond.wait()
                if self._pending is None:
                    return
                value, self._pending, self._busy = self._pending, None, True
            error = None
            try:
                self.send(value)
            except Exception as exc:  # noqa: BLE001 - see the module's docstring
                # One line, not a traceback: during an outage this repeats every interval, and the cause is
                # in the exception's own message.
                log.warning("%s failed: %s: %s", self.name, type(exc).__name__, exc)
                error = exc
            with self._cond:
                self._busy, self._error = False, error
                if error is None:
                    self.sent += 1
                self._cond.notify_all()
