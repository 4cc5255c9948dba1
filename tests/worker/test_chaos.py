"""A small run of the chaos harness (tests/harness/chaos.py) in `make test-slow`: 10 jobs, 2 workers, 3 SIGTERM + 3
SIGKILL. Marked ``slow``: it starts eight workers (each imports torch and diffusers), about 100 s of CPU, for
what test_interrupt_resume.py and test_handoff.py check one signal at a time in `make test`; its verdict
function stays in `make test` below.

In a subprocess, because the harness starts an embedded stack that sets process-wide environment variables
(step log, short leases) which the other tests' stacks must not inherit.

Its verdict can fail: ``tests.harness.verdicts.chaos_checks`` is handed the figures of a run whose kills hit
no running job, without a stack.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.conftest import run_harness
from tests.harness.chaos import recomputed
from tests.harness.verdicts import chaos_checks

#: 128 px, not less: a periodic checkpoint is uploaded off the denoising loop, and a kill while an upload is
#: still in flight costs the steps run meanwhile too; steps of this size are slower than an upload to the emulator.
CHECKPOINT_EVERY = 5


@pytest.mark.slow
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
    assert figures["kills_hit_running_job"] == figures["sigterm"] + figures["sigkill"], context
    assert figures["max_steps_recomputed_sigterm"] <= 1, context
    # the last stored checkpoint: one interval back, two when the kill lands while the next one is uploading
    assert figures["max_steps_recomputed_sigkill"] <= 2 * CHECKPOINT_EVERY, context
    assert figures["unexpected_worker_exits"] == 0 and figures["sigterm_unclean_exits"] == 0, context
    assert figures["leftover_checkpoints"] == 0, context
    assert figures["ok"] is True, context


def good_figures() -> dict[str, Any]:
    """The figures of a run of 3 SIGTERM + 3 SIGKILL where everything held."""
    return {"jobs": 10, "succeeded": 10, "lost": 0, "duplicate_outputs": 0, "duplicate_notifications": 0,
            "mismatched_outputs": 0, "sigterm_sent": 3, "sigkill_sent": 3, "sigterm": 2, "sigkill": 3,
            "max_steps_recomputed_sigterm": 1, "max_steps_recomputed_sigkill": 6, "unexpected_worker_exits": 0,
            "sigterm_unclean_exits": 0, "leftover_checkpoints": 0}


def failed(figures: dict[str, Any], sigterm: int = 3, sigkill: int = 3) -> set[str]:
    checks = chaos_checks(figures, sigterm, sigkill, CHECKPOINT_EVERY, 20)
    return {name for name, ok in checks.items() if not ok}


def test_the_chaos_verdict_passes_a_run_where_everything_held() -> None:
    assert failed(good_figures()) == set()


def test_kills_that_hit_no_running_job_fail_the_run() -> None:
    """Every kill sent, every job fine, but no SIGTERM (or no SIGKILL) interrupted a job: the run tested no
    interruption of that kind. It used to pass."""
    hit = "every planned kind of kill hit a running job"
    assert failed(good_figures() | {"sigterm": 0}) == {hit}
    assert failed(good_figures() | {"sigkill": 0}) == {hit}
    assert failed(good_figures() | {"sigterm": 0, "sigkill": 0}) == {hit}
    # a kind that was not planned need not hit
    assert failed(good_figures() | {"sigterm": 0, "sigterm_sent": 0}, sigterm=0) == set()
    # not every kill can hit (the job may finish before the signal lands): one per kind is enough
    assert failed(good_figures() | {"sigterm": 1, "sigkill": 1}) == set()


def test_steps_recomputed_are_charged_to_the_delivery_that_was_killed() -> None:
    # chaos-0053 in a run of make chaos: a delivery SIGKILLed after 5 steps, before its status recorded the attempt,
    # so the next delivery ran as attempt 1 too; SIGTERMed at step 2, it checkpointed, and attempt 2 went on at 3.
    # The SIGTERM cost nothing; the 5 steps are the SIGKILL's (merged by attempt, they were charged to the SIGTERM).
    records = [(10, "j", 1, s) for s in range(1, 6)] + [(11, "j", 1, s) for s in (1, 2)] + \
        [(12, "j", 2, s) for s in range(3, 8)]
    assert recomputed(records, [(10, "KILL"), (11, "TERM")]) == {"TERM": [0], "KILL": [5]}
