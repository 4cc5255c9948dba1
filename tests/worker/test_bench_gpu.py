"""`make bench-gpu` (tests/harness/bench_gpu.py) runs here on the tiny models and the CPU: plain diffusers and a
worker per setting end to end. Its figures say nothing about speed on this machine; this checks that the script
works for the day it runs on a GPU. The compile setting is left out here: compiling on these two cores takes
most of a minute per process, and tests/pipelines/test_compile.py already compiles and reuses the cache from a
second process; ``python -m tests.harness.bench_gpu --tiny`` runs all of it (about 3 minutes)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from tests.conftest import run_harness


@pytest.mark.slow  # make test-slow; on a GPU machine, make bench-gpu itself
def test_the_gpu_benchmark_runs_on_the_tiny_models_and_prints_its_figures(tmp_path: Path) -> None:
    figures, context = run_harness("tests.harness.bench_gpu", ["--tiny", "--images", "2", "--steps", "4",
                                                               "--models", "sd15", "--settings",
                                                               "default,channels_last"], tmp_path, timeout=600)
    assert figures["bench"] == "gpu" and figures["tiny"] is True and figures["device"] == "cpu", context
    row = figures["models"]["sd15"]
    assert row["model"] == "tiny-sd" and row["plain_images_per_s"] > 0, context
    for setting in ("default", "channels_last"):
        got = row[setting]
        assert got["images_per_s"] > 0 and got["first_job_s"] > 0, (setting, context)
        assert 0 <= got["device_idle_share"] < 1 and not math.isnan(got["ratio_to_plain"]), (setting, context)
    assert "compile" not in row and "second_pod_first_job_s" not in row, context
