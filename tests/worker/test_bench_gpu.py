"""`make bench-gpu` (tests/harness/bench_gpu.py) runs here on the tiny models and the CPU: plain diffusers and a
worker per setting end to end. Its figures say nothing about speed on this machine; this checks that the script
works for the day it runs on a GPU. The compile setting is left out here: compiling on these two cores takes
most of a minute per process, and tests/pipelines/test_compile.py already compiles and reuses the cache from a
second process; ``python -m tests.harness.bench_gpu --tiny`` runs all of it (about 3 minutes).

Its ``ok`` and the benchmarks' goal verdicts can fail: ``tests.harness.verdicts`` is handed black, wrong-sized and
broken images, NaN and missing figures, and goals missed, without running anything."""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import run_harness
from tests.harness.verdicts import goal, goals_count, goals_missed, gpu_problems, image_problems


@pytest.mark.slow  # make test-slow; on a GPU machine, make bench-gpu itself
def test_the_gpu_benchmark_runs_on_the_tiny_models_and_prints_its_figures(tmp_path: Path) -> None:
    figures, context = run_harness("tests.harness.bench_gpu", ["--tiny", "--images", "2", "--steps", "4",
                                                               "--models", "sd15", "--settings",
                                                               "default,channels_last"], tmp_path, timeout=600)
    assert figures["bench"] == "gpu" and figures["tiny"] is True and figures["device"] == "cpu", context
    assert figures["ok"] is True and figures["problems"] == [], context
    assert figures["images_checked"] == 3 + 2 * 3, context  # plain's warm-up and 2; each worker's first job and 2
    row = figures["models"]["sd15"]
    assert row["model"] == "tiny-sd" and row["plain_images_per_s"] > 0, context
    for setting in ("default", "channels_last"):
        got = row[setting]
        assert got["images_per_s"] > 0 and got["first_job_s"] > 0, (setting, context)
        assert 0 <= got["device_idle_share"] < 1 and not math.isnan(got["ratio_to_plain"]), (setting, context)
        assert set(got["goals"]) == {"ratio_to_plain", "device_idle_share"}, (setting, context)
    assert "compile" not in row and "second_pod_first_job_s" not in row, context


def png(array: Any) -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.fromarray(array).save(out, format="PNG")
    return out.getvalue()


def test_images_that_are_not_images_are_found() -> None:
    import numpy as np

    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    assert image_problems(png(noise), 64) == []
    assert image_problems(png(np.zeros((64, 64, 3), np.uint8)), 64) == ["one flat colour"]  # NaN latents: black
    teal = np.broadcast_to(np.array([10, 140, 120], np.uint8), (64, 64, 3)).copy()  # a VAE whose output is its bias
    assert image_problems(png(teal), 64) == ["one flat colour"]
    assert image_problems(png(np.full((64, 64), 7, np.uint8)), 64) == ["one flat colour"]  # greyscale too
    assert image_problems(png(noise[:32]), 64) == ["64x32, not 64x64"]
    assert image_problems(png(noise)[:100], 64)[0].startswith("does not decode")
    assert image_problems(np.full((64, 64, 3), np.nan), 64) == ["NaN or infinite pixels"]


def gpu_figures() -> dict[str, Any]:
    """The figures of a --tiny run of sd15 with two settings where everything held."""
    setting = {"first_job_s": 1.2, "images_per_s": 3.0, "device_idle_share": 0.1, "ratio_to_plain": 0.4}
    return {"images_checked": 9, "image_problems": [], "models": {"sd15": {
        "plain_images_per_s": 7.5, "default": dict(setting), "channels_last": dict(setting)}}}


def test_a_gpu_run_is_ok_only_with_valid_images_and_finite_figures() -> None:
    settings = ["default", "channels_last"]
    assert gpu_problems(gpu_figures(), ["sd15"], settings) == []
    broken = gpu_figures() | {"image_problems": ["plain sd15, image 1: one flat colour"]}
    assert gpu_problems(broken, ["sd15"], settings) == ["plain sd15, image 1: one flat colour"]
    assert gpu_problems(gpu_figures() | {"images_checked": 0}, ["sd15"], settings) == ["no image was checked"]
    nan = gpu_figures()
    nan["models"]["sd15"]["default"]["device_idle_share"] = float("nan")  # no model phase in the spans
    assert gpu_problems(nan, ["sd15"], settings) == ["sd15 default: device_idle_share is nan"]
    zero = gpu_figures()
    zero["models"]["sd15"]["plain_images_per_s"] = 0.0
    assert gpu_problems(zero, ["sd15"], settings) == ["sd15: plain_images_per_s is 0.0"]
    missing = gpu_figures()
    del missing["models"]["sd15"]["channels_last"]["images_per_s"]
    assert gpu_problems(missing, ["sd15"], settings) == ["sd15 channels_last: images_per_s is None"]
    assert gpu_problems(gpu_figures(), ["sd15", "sdxl"], settings) == ["sdxl: no figures"]
    assert gpu_problems(gpu_figures(), ["sd15"], ["default", "compile"]) == [
        "sd15 compile: images_per_s is None", "sd15 compile: first_job_s is None",
        "sd15 compile: ratio_to_plain is None", "sd15 compile: device_idle_share is None",
        "sd15: compile_warmup_s is None", "sd15: second_pod_first_job_s is None"]


def test_goals_have_verdicts_and_the_misses_are_listed() -> None:
    """make bench and its modules put each goal's verdict beside its figure; a miss is listed, never hidden."""
    assert goal(0.83, ">=", 0.85) == {"value": 0.83, "goal": ">= 0.85", "met": False}
    assert goal(0.97, ">=", 0.97)["met"] and goal(8.0, "<=", 8)["met"] and not goal(0.01, "<", 0.01)["met"]
    assert goal(1.04, "~", 1.0, 0.05) == {"value": 1.04, "goal": "1 ± 0.05", "met": True}
    assert goal(3, "==", 2) == {"value": 3, "goal": "== 2", "met": False}  # a model copied twice from tier 0
    assert not goal(float("nan"), "<=", 8)["met"] and not goal(None, ">=", 0.85)["met"]  # no figure, no goal met
    figures = {"64px-20steps": {"ratio": 0.83, "goals": {"ratio": goal(0.83, ">=", 0.85)}},
               "device_of_its_own": {"64px-20steps": {"ratio": 0.9, "goals": {"ratio": goal(0.9, ">=", 0.85)}}},
               "aws_requests": {"no_latency": {"goals": {"requests_per_job_total": goal(9.0, "<=", 8),
                                                         "idle_ms_p50": goal(9.1, "<=", 15)}}}}
    assert goals_missed(figures) == ["64px-20steps.ratio: 0.83 (goal >= 0.85)",
                                     "aws_requests.no_latency.requests_per_job_total: 9.0 (goal <= 8)"]
    assert goals_count(figures) == 4
