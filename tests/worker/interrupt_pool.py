"""The stack and the worker processes that the interrupt tests signal, and what those tests do with them.

The stack starts no workers of its own: a ``Pool`` runs ``spotgen worker`` processes a test can SIGTERM or
SIGKILL, and reads the step log (one line per finished denoising step: pid, job, attempt, step) to know which
process runs a job and how far it got. Importing modules register the fixtures under the names the tests use
(``stack``, ``pool``) for the session's one interrupt stack and pool (``interrupt_stack`` and ``interrupt_pool`` in
tests/worker/conftest.py), which the modules that import them share (tests/scheduling.py runs them in one process).
"""

from __future__ import annotations

import contextlib
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from runtime.worker.steplog import read as read_steplog
from tests.conftest import Stack, spawn_worker
from tests.rest import call, wait_for
from tests.zygote import Forked

LEASE_S = 3
# One job in hand per worker (no receive-ahead): these tests keep both workers busy so that a job waits in the
# queue, and send jobs to the idle one; with receive-ahead a busy worker would take them too. The jobs in hand
# (received ahead, storing outputs) are tests/worker/test_handoff.py's and the chaos harness's.
ENV = {"SPOTGEN_HEARTBEAT_S": "0.5", "SPOTGEN_LEASE_S": str(LEASE_S), "SPOTGEN_PROGRESS_INTERVAL_S": "0.1",
       "SPOTGEN_MAX_RECEIVE_COUNT": "2", "SPOTGEN_CHECKPOINT_EVERY": "5", "SPOTGEN_RECEIVE_AHEAD": "false"}


class Pool:
    """Worker processes of one stack, by name, and the step log they all append to."""

    def __init__(self, stack: Stack, steplog: Path) -> None:
        self.stack, self.steplog = stack, steplog
        self.procs: dict[str, Forked] = {}
        self.count = 0

    def start(self, **env: str) -> Forked:
        self.count += 1
        # One torch thread each: two workers with two threads each on two cores mostly wait for each other.
        proc = spawn_worker(self.stack, str(self.count), {"SPOTGEN_STEP_LOG": str(self.steplog),
                                                          "OMP_NUM_THREADS": "1", **env})
        self.procs[str(self.count)] = proc
        return proc

    def log(self, proc: Forked) -> str:
        name = next(n for n, p in self.procs.items() if p is proc)
        path = self.stack.log_dir / f"worker-{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def wait_log(self, proc: Forked, text: str, timeout: float = 120) -> None:
        """Until the worker's log holds ``text``, while it runs."""
        deadline = time.monotonic() + timeout
        while text not in self.log(proc):
            assert proc.poll() is None and time.monotonic() < deadline, f"worker {proc.pid} never logged {text!r}"
            time.sleep(0.05)

    def wait_ready(self, proc: Forked, timeout: float = 120) -> None:
        """Until the worker consumes (its log says Celery is ready): before that, SIGTERM just kills it."""
        self.wait_log(proc, " ready.", timeout)

    def ensure(self, n: int = 2) -> None:
        alive = [p for p in self.procs.values() if p.poll() is None]
        for _ in range(n - len(alive)):
            self.start()

    def proc(self, pid: int) -> Forked:
        return next(p for p in self.procs.values() if p.pid == pid)

    def steps(self, job_id: str) -> list[tuple[int, int, int]]:
        """(pid, attempt, step) of every finished step of the job, in order."""
        if not self.steplog.exists():
            return []
        return [(pid, attempt, step) for pid, job, attempt, step in read_steplog(self.steplog) if job == job_id]

    def wait_step(self, job_id: str, at_least: int, timeout: float = 60) -> tuple[int, int, int]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            steps = self.steps(job_id)
            if steps and steps[-1][2] >= at_least:
                return steps[-1]
            time.sleep(0.02)
        raise AssertionError(f"job {job_id} did not reach step {at_least}: {self.steps(job_id)[-3:]}")

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
            proc.wait()


@pytest.fixture(scope="module", name="stack")
def stack_fixture(interrupt_stack: Stack) -> Stack:
    """The session's interrupt stack (tests/worker/conftest.py) under the name the tests use."""
    return interrupt_stack


@pytest.fixture(scope="module", name="pool")
def pool_fixture(interrupt_pool: Pool) -> Pool:
    return interrupt_pool


def submit(stack: Stack, request: dict[str, Any]) -> str:
    status, answer = call("POST", f"{stack.api_url}/v1/jobs", request)
    assert status == 202, answer
    return answer["id"]


def finished(stack: Stack, job_id: str, timeout: float = 120) -> dict[str, Any]:
    return wait_for(stack.api_url, job_id, timeout=timeout)


def notifications(stack: Stack, job_id: str) -> list[dict[str, Any]]:
    """Every notification the job will ever get (``Inbox.settled``)."""
    return stack.inbox.settled(job_id)


@contextlib.contextmanager
def no_workers(pool: Pool) -> Iterator[None]:
    """No worker of the pool consumes inside the block, so a job submitted there waits in the queue for certain
    (busy workers would not do: one that frees up early takes it), and a worker started there is the only one
    that can take it. The workers are stopped (SIGSTOP) and continued after, rather than replaced: a worker's
    start costs seconds of CPU. A receive one had in flight when stopped ends, empty, within the stack's long
    poll (``SPOTGEN_POLL_WAIT_S``), which is waited out before the block runs; nothing is submitted meanwhile."""
    alive = [proc for proc in pool.procs.values() if proc.poll() is None]
    for proc in alive:
        proc.send_signal(signal.SIGSTOP)
    time.sleep(float(pool.stack.env["SPOTGEN_POLL_WAIT_S"]) + 1)
    try:
        yield
    finally:
        for proc in alive:
            proc.send_signal(signal.SIGCONT)
