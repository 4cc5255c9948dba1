"""The worker zygote (tests/zygote.py): what the worker tests rely on of a started process holds for a forked one."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest

from runtime.local.devstack import EMULATOR_CREDENTIALS
from tests.conftest import ROOT, zygote
from tests.events import until


def test_a_worker_that_cannot_start_exits_1_with_its_reason_in_its_own_log(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPOTGEN_")}
    proc = zygote().spawn({**env, "PYTHONPATH": str(ROOT)}, tmp_path / "worker.log")
    assert proc.wait(60) == 1 and proc.poll() == 1  # SystemExit("..."): the message, then 1, as the interpreter
    assert "SPOTGEN_QUEUE_URL is not set" in (tmp_path / "worker.log").read_text()


def test_a_forked_worker_has_its_own_session_and_folder_and_dies_by_the_signal(tmp_path: Path) -> None:
    """A worker still trying to reach its queue: signals reach it by pid and by process group, and its exit
    status is Popen's (minus the signal's number)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), **EMULATOR_CREDENTIALS, "SPOTGEN_METRICS_PORT": "0",
           "SPOTGEN_AWS_ENDPOINT_URL": "http://127.0.0.1:9", "SPOTGEN_QUEUE_URL": "http://127.0.0.1:9/1/q"}
    proc = zygote().spawn(env, tmp_path / "worker.log", cwd=tmp_path)
    try:
        assert os.getsid(proc.pid) == proc.pid  # as start_new_session=True: killpg(pid) reaches it alone
        assert Path(f"/proc/{proc.pid}/cwd").resolve() == tmp_path.resolve()
        with pytest.raises(subprocess.TimeoutExpired):
            proc.wait(0.5)
        until("the worker's start-up in its log", lambda: (tmp_path / "worker.log").read_text())
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
    assert proc.wait(30) == -signal.SIGKILL and proc.returncode == -signal.SIGKILL
    proc.send_signal(signal.SIGTERM)  # after the exit: nothing is signalled (the pid may be reused)
