"""A small run of the chaos harness (tests/harness/chaos.py) in `make test`: 10 jobs, 2 workers, 3 SIGTERM + 3 SIGKILL.

In a subprocess, because the harness starts an embedded stack that sets process-wide environment variables
(step log, short leases) which the other tests' stacks must not inherit.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import run_harness

#: 128 px, not less: a periodic checkpoint is uploaded off the denoising loop, and a kill while an upload is
#: still in flight costs the steps run meanwhile too; steps of this size are slower than an upload to the emulator.
CHECKPOINT_EVERY = 5


@pytest.mark.heavy
def test_chaos_small(tiny_models: Path, tmp_path: Path) -> None:
    args = ["--jobs", "10", "--workers", "2", "--sigterm", "3", "--sigkill", "3", "--size", "128", "--steps", "20",
            "--checkpoint-every", str(CHECKPOINT_EVERY), "--seed", "7", "--models", str(tiny_models)]
    figures, context = run_harness("tests.harness.chaos", args, tmp_path / "logs", 400)
    assert figures["jobs"] == figures["succeeded"] == 10, context
    assert figures["lost"] == 0, context
    assert figures["duplicate_outputs"] == 0 and figures["duplicate_notifications"] == 0, context
    assert figures["mismatched_outputs"] == 0, context
    assert figures["sigterm_sent"] == 3 and figures["sigkill_sent"] == 3, context
    assert figures["sigterm"] >= 1 and figures["sigkill"] >= 1, context  # kills that hit a running job
    assert figures["max_steps_recomputed_sigterm"] <= 1, context
    # the last stored checkpoint: one interval back, two when the kill lands while the next one is uploading
    assert figures["max_steps_recomputed_sigkill"] <= 2 * CHECKPOINT_EVERY, context
    assert figures["unexpected_worker_exits"] == 0 and figures["sigterm_unclean_exits"] == 0, context
    assert figures["leftover_checkpoints"] == 0, context
    assert figures["ok"] is True, context
