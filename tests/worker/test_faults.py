"""A small run of the network fault harness (tests/harness/faults.py) in `make test`: every kind of fault once,
short, on 2 workers behind the fault proxy.

In a subprocess, like the chaos run, because the harness's embedded stack sets process-wide environment
variables that the other tests' stacks must not inherit.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT


def test_faults_small(tiny_models: Path, tmp_path: Path) -> None:
    args = ["--scale", "small", "--repeat", "1", "--workers", "2", "--seed", "3", "--models", str(tiny_models),
            "--log-dir", str(tmp_path / "logs")]
    proc = subprocess.run([sys.executable, "-m", "tests.harness.faults", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=600)
    lines = proc.stdout.strip().splitlines()
    context = f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}\nworker logs: {tmp_path}/logs"
    assert lines, context
    figures = json.loads(lines[-1])
    kinds = {name.split(" (")[0] for name, _ in figures["fault_log"]}
    assert {"outage 3 s", "cut on a receive", "cut mid-denoise", "cut on an output upload",
            "cut on an ack, answer lost", "cut on a notification", "latency 200 ms", "slow trickle",
            "S3 SlowDown and SQS throttling"} <= kinds, context
    assert figures["jobs"] == figures["succeeded"] > 0 and figures["lost"] == 0, context
    assert figures["duplicate_outputs"] == 0 and figures["duplicate_notifications"] == 0, context
    assert figures["mismatched_outputs"] == 0, context
    assert figures["wedged_workers"] == 0 and figures["kubelet_restarts"] == 0, context
    assert figures["leftover_checkpoints"] == 0, context
    assert figures["ok"] is True and proc.returncode == 0, context
