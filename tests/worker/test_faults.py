"""A small run of the network fault harness (tests/harness/faults.py) in `make test`: every kind of fault once,
short, on 2 workers behind the fault proxy.

In a subprocess, like the chaos run, because the harness's embedded stack sets process-wide environment
variables that the other tests' stacks must not inherit.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import run_harness


@pytest.mark.heavy
def test_faults_small(tiny_models: Path, tmp_path: Path) -> None:
    args = ["--scale", "small", "--repeat", "1", "--workers", "2", "--seed", "3", "--models", str(tiny_models)]
    figures, context = run_harness("tests.harness.faults", args, tmp_path / "logs", 600)
    kinds = {name.split(" (")[0] for name, _ in figures["fault_log"]}
    assert {"outage 3 s", "cut on a receive", "cut mid-denoise", "cut on an output upload",
            "cut on an ack, answer lost", "cut on a notification", "latency 200 ms", "slow trickle",
            "S3 SlowDown and SQS throttling"} <= kinds, context
    assert figures["jobs"] == figures["succeeded"] > 0 and figures["lost"] == 0, context
    assert figures["duplicate_outputs"] == 0 and figures["duplicate_notifications"] == 0, context
    assert figures["mismatched_outputs"] == 0, context
    assert figures["wedged_workers"] == 0 and figures["kubelet_restarts"] == 0, context
    assert figures["leftover_checkpoints"] == 0, context
    assert figures["ok"] is True, context
