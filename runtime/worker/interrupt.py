"""Graceful interruption: SIGTERM or a spot notice stops intake, checkpoints the job, and exits in time.

On EKS a spot interruption reaches the pod as SIGTERM (Karpenter drains the node), as do KEDA/HPA
scale-in and a rolling update; EC2 takes the node 120 s after its notice whatever happens. So the first
SIGTERM starts an interruption: Celery's warm shutdown stops taking messages, the running job sees
``requested`` at its next step boundary, saves a checkpoint and hands its message back, and the process
exits once the job before it has stored its outputs (``runtime.worker.handoff``). A second SIGTERM ends it at
once. A forced exit releases the messages of the jobs in hand first, so none is lost: the running one continues
from an older checkpoint, the storing one is stored again.

**The signal path.** A Python signal handler runs on the main thread between two bytecodes, wherever that
thread is: inside ``hold``, say, holding a lock. So the handler (Celery's, which calls ``request`` through
``on_worker_shutting_down``) only records the signal, with the time it came, in a list, and writes a byte to a
pipe. Neither takes a lock. The interruption's own thread wakes on that byte and does the rest: the log line,
the readiness state, the deadline.

**The deadline is a hard bound.** ``deadline_s`` (``SPOTGEN_INTERRUPT_DEADLINE_S``) after the first signal the
process has ended, whatever still hangs. ``EXIT_RESERVE_S`` before it the forced exit starts: it releases the
messages of the jobs in hand, each call on a thread of its own, and ends the process at the deadline whether
or not they answered (``runtime.worker.watchdog``). Until then, the graceful path's final SQS call (a job's
hand-back) is bounded by the time left before the forced exit starts (``call_budget``, through
``Lease.budget``), and nothing waits on a lock held across an SQS call. A release that did not answer costs
only time: the message comes back within the lease (``SPOTGEN_LEASE_S``). Past the deadline, faulthandler's
C thread ends the process even if the GIL never comes free (``LAST_RESORT_S``; exit status 1).

The EC2 metadata notice (``spot/instance-action``) is an optional extra: pods usually cannot reach IMDS
(hop limit 1), so when enabled a poller simply sends this process the SIGTERM Kubernetes would.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
import select
import signal
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

from runtime.worker import watchdog

log = logging.getLogger("spotgen.interrupt")

#: Exit status of a forced exit (EX_SOFTWARE): the job was released, not finished.
FORCED_EXIT = 70
#: How long before the deadline the forced exit starts (a quarter of a deadline shorter than 8 s): the time its
#: final SQS calls (releasing the messages in hand) get. A ChangeMessageVisibility takes tens of milliseconds.
EXIT_RESERVE_S = 2.0
#: How long past the deadline faulthandler's watchdog ends a process whose GIL never came free.
LAST_RESORT_S = 0.5
#: How long a forced exit waits for the lock of ``hold``/``drop`` before copying the list without it.
LOCK_WAIT_S = 0.05


class Interruption:
    """Process-wide: one per worker process, created at start-up. ``exit`` ends the process (``os._exit``; a
    test passes its own)."""

    def __init__(self, deadline_s: float, exit: Callable[[int], Any] = os._exit) -> None:  # noqa: A002
        self.deadline_s = deadline_s
        self.reason = ""
        #: The leases this process holds (the generating job's, the one whose outputs are being stored, the one
        #: waiting for the device), released on a forced exit.
        self.leases: list[Any] = []
        #: Arm faulthandler's watchdog too (``run_worker``): it ends the whole process, so not in a test's.
        self.last_resort = False
        self._exit = exit
        #: All a signal handler does: (reason, monotonic time) appended, then a byte to the pipe.
        self._signals: list[tuple[str, float]] = []
        self._event = threading.Event()  # set by the interruption's thread once it has taken the first signal
        self._lock = threading.Lock()  # hold/drop: never taken in a signal handler
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        threading.Thread(target=self._run, name="interruption", daemon=True).start()

    def hold(self, lease: Any) -> None:
        lease.budget = self.call_budget  # the lease's hand-back is bounded by the time left
        with self._lock:
            self.leases.append(lease)

    def drop(self, lease: Any) -> None:
        with self._lock:
            if lease in self.leases:
                self.leases.remove(lease)

    @property
    def requested(self) -> bool:
        """True from the moment the signal handler ran."""
        return bool(self._signals) or self._event.is_set()

    @property
    def started_at(self) -> float | None:
        """When the first signal came (monotonic), or None."""
        return self._signals[0][1] if self._signals else None

    @property
    def reserve_s(self) -> float:
        return min(EXIT_RESERVE_S, self.deadline_s / 4)

    def call_budget(self) -> float | None:
        """Seconds a final SQS call of the graceful path may take: until the forced exit starts. None while no
        interruption is under way (no bound)."""
        started = self.started_at
        if started is None:
            return None
        return max(0.0, started + self.deadline_s - self.reserve_s - time.monotonic())

    def request(self, reason: str) -> None:
        """Start an interruption; a second request forces the exit now. Safe in a signal handler: it appends to a
        list and writes one byte to a non-blocking pipe, and takes no lock."""
        self._signals.append((reason, time.monotonic()))
        if not self.reason:
            self.reason = reason
        with contextlib.suppress(OSError):  # a full pipe already holds a wake-up
            os.write(self._wake_w, b"\0")

    def leave(self, why: str) -> None:
        """End this worker the way a drain does (SIGTERM to itself: no more intake, the jobs in hand handed back,
        exit 0), so that Kubernetes starts the container again. For a failure the process cannot recover from: a
        lost device leaves its CUDA context broken, and every later job would fail on it."""
        if self.requested:
            return
        log.warning("leaving: %s; the container starts again on a fresh process", why)
        os.kill(os.getpid(), signal.SIGTERM)

    def on_worker_shutting_down(self, sig: str = "", how: str = "", **_: Any) -> None:
        """Celery's ``worker_shutting_down`` receiver, called from Celery's own signal handler."""
        self.request(f"{sig or 'signal'}, {how.lower() or 'warm'} shutdown")

    def _run(self) -> None:
        """The interruption's thread: wakes on the pipe, or when the forced exit is due."""
        seen = 0
        while True:
            started = self.started_at
            due = None if started is None or not self._event.is_set() else \
                started + self.deadline_s - self.reserve_s
            wait = None if due is None else max(0.0, due - time.monotonic())
            readable, _, _ = select.select([self._wake_r], [], [], wait)
            if readable:
                os.read(self._wake_r, 4096)
            count = len(self._signals)
            for reason, at in self._signals[seen:count]:
                if not self._event.is_set():
                    self._begin(reason, at)
                else:
                    log.warning("second interruption (%s): exiting now", reason)
                    self.force_exit("a second signal", until=time.monotonic() + self.reserve_s)
                    return
            seen = count
            if due is not None and time.monotonic() >= due:
                self.force_exit(f"the {self.deadline_s:g} s deadline")
                return

    def _begin(self, reason: str, at: float) -> None:
        self._event.set()
        left = at + self.deadline_s - time.monotonic()
        log.warning("interruption (%s): no new jobs; the running job checkpoints at its next step; forced exit "
                    "in %.1f s", reason, left)
        if self.last_resort:
            try:
                watchdog.last_resort(left + LAST_RESORT_S)
            except (RuntimeError, ValueError, AttributeError, OSError):  # no usable stderr: the watchdog alone
                log.warning("faulthandler's watchdog could not be armed", exc_info=True)

    def force_exit(self, why: str, until: float | None = None) -> None:
        """Release the messages of the jobs in hand, all at once, and end the process: at ``until`` at the
        latest (monotonic; by default the deadline), whatever still hangs."""
        started = self.started_at
        deadline = started + self.deadline_s if started is not None else time.monotonic() + self.reserve_s
        until = min(deadline, until if until is not None else deadline)
        leases = self._in_hand()
        watchdog.all_until([lease.release for lease in leases], until)
        released = sum(bool(getattr(lease, "handed_back", False)) for lease in leases)
        said = f"; the messages of {released} of {len(leases)} job(s) in hand were released or handed back" \
            if leases else ""

        def last_words() -> None:
            log.error("forced exit after %s%s", why, said)
            _flush()

        # The log line and the flush get what is left: a blocked log stream must not hold the exit either.
        watchdog.all_until([last_words], max(until, time.monotonic() + 0.05))
        self._exit(FORCED_EXIT)

    def stopped(self, code: int = 0) -> None:
        """The worker has stopped (Celery's ``worker_main`` returned). After an interruption, end the process here:
        the interpreter's teardown that would follow (modules and the models' objects garbage-collected) can take
        seconds, and no thread of this process runs during it, so nothing could hold the deadline then. The exit
        handlers (``atexit``: trace and log flushes) run first, within the deadline."""
        started = self.started_at
        if started is None:
            return

        def exit_handlers() -> None:
            atexit._run_exitfuncs()  # noqa: SLF001 - what the interpreter's exit would run
            _flush()

        watchdog.all_until([exit_handlers], started + self.deadline_s)
        self._exit(code)

    def _in_hand(self) -> list[Any]:
        """The leases held now. ``hold`` and ``drop`` keep the lock only for a list operation; if it is not free at
        once, the thread holding it is stuck, and a copy without it is as good (atomic under the GIL)."""
        if self._lock.acquire(timeout=LOCK_WAIT_S):
            try:
                return list(self.leases)
            finally:
                self._lock.release()
        return list(self.leases)


def _flush() -> None:
    """What ``os._exit`` would lose: the log handlers' buffers and the standard streams'."""
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()


def spot_notice(base_url: str, timeout_s: float = 2.0) -> dict[str, Any] | None:
    """The pending spot interruption from IMDSv2 (token first), or None when there is none."""
    token_req = urllib.request.Request(f"{base_url}/latest/api/token", method="PUT",
                                       headers={"X-aws-ec2-metadata-token-ttl-seconds": "300"})
    with urllib.request.urlopen(token_req, timeout=timeout_s) as resp:  # noqa: S310 - configured IMDS URL
        token = resp.read().decode()
    req = urllib.request.Request(f"{base_url}/latest/meta-data/spot/instance-action",
                                 headers={"X-aws-ec2-metadata-token": token})
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as resp:  # noqa: S310
            notice = json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as exc:
        if exc.code == 404:  # no interruption scheduled
            return None
        raise
    return notice if isinstance(notice, dict) and notice.get("action") in ("terminate", "stop", "hibernate") \
        else None


def watch_imds(base_url: str, interval_s: float, stop: threading.Event | None = None) -> threading.Thread:
    """Poll for a spot notice; on one, send this process SIGTERM (the same path as a Kubernetes drain)."""

    def poll() -> None:
        failures = 0
        while not (stop and stop.is_set()):
            try:
                notice = spot_notice(base_url)
                failures = 0
            except (OSError, ValueError) as exc:
                failures += 1
                if failures in (1, 10):  # unreachable IMDS is normal in a pod; say it once, then rarely
                    log.info("spot notice poll failed (%s); IMDS may be unreachable from this pod", exc)
                notice = None
            if notice:
                log.warning("spot interruption notice: %s", notice)
                os.kill(os.getpid(), signal.SIGTERM)
                return
            time.sleep(interval_s)

    thread = threading.Thread(target=poll, name="imds-spot-notice", daemon=True)
    thread.start()
    return thread
