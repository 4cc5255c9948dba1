"""`make bench-gpu` (tests/harness/bench_gpu.py) runs here on the tiny models and the CPU: plain diffusers and a
worker per setting end to end. Its figures say nothing about speed on this machine; this checks that the script
works for the day it runs on a GPU. The compile setting is left out here: compiling on these two cores takes
most of a minute per process, and tests/pipelines/test_compile.py already compiles and reuses the cache from a
second process; ``python -m tests.harness.bench_gpu --tiny`` runs all of it (about 3 minutes).

The cold-start row (tests/harness/bench_gpu_coldstart.py) runs once on tiny-sd in ``make test`` (a fresh worker and
a fresh floors process: two imports of torch and diffusers are most of its cost), and on tiny-sd and tiny-flux in
the slow run through the script.

Its ``ok`` and the benchmarks' goal verdicts can fail: ``tests.harness.verdicts`` is handed black, wrong-sized and
broken images, NaN and missing figures, and goals missed, without running anything."""

from __future__ import annotations

import io
import math
import os
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import run_harness
from tests.harness import bench_gpu_coldstart
from tests.harness.bench_gpu import run_problems
from tests.harness.bench_gpu_coldstart import PHASES
from tests.harness.verdicts import goal, goals_count, goals_missed, gpu_problems, image_problems


@pytest.mark.slow  # make test-slow; on a GPU machine, make bench-gpu itself
def test_the_gpu_benchmark_runs_on_the_tiny_models_and_prints_its_figures(tmp_path: Path) -> None:
    figures, context = run_harness("tests.harness.bench_gpu", ["--tiny", "--images", "2", "--steps", "4",
                                                               "--models", "sd15", "--settings",
                                                               "default,channels_last", "--cold-start",
                                                               "sd15,flux-dev"], tmp_path, timeout=900)
    assert figures["bench"] == "gpu" and figures["tiny"] is True and figures["device"] == "cpu", context
    assert figures["ok"] is True and figures["problems"] == [], context
    # plain's warm-up and 2; each worker's first job and 2; each cold-start worker's first job
    assert figures["images_checked"] == 3 + 2 * 3 + 2, context
    row = figures["models"]["sd15"]
    assert row["model"] == "tiny-sd" and row["plain_images_per_s"] > 0, context
    for setting in ("default", "channels_last"):
        got = row[setting]
        assert got["images_per_s"] > 0 and got["first_job_s"] > 0, (setting, context)
        assert 0 <= got["device_idle_share"] < 1 and not math.isnan(got["ratio_to_plain"]), (setting, context)
        assert set(got["goals"]) == {"ratio_to_plain", "device_idle_share"}, (setting, context)
    assert "compile" not in row and "second_pod_first_job_s" not in row, context
    cold = figures["coldstart"]
    assert {name: got["model"] for name, got in cold.items()} == {"sd15": "tiny-sd", "flux-dev": "tiny-flux"}, context
    for got in cold.values():
        assert consistent(got) == [], (got, context)


def consistent(got: dict[str, Any]) -> list[str]:
    """What is wrong with one cold-start row's figures: each phase, the total and each floor a finite figure (the
    floors above 0), the fetch the model's bytes, one valid image; and the script's own checks (the phases within
    the total, the fetch's part during the set-up counted once)."""
    wrong = [f"{key}: {got.get(key)}" for key in (*PHASES, "total_s") if not 0 <= got.get(key, -1) < math.inf]
    floors = got["floors"]
    wrong += [f"floor {key}: {floors.get(key)}" for key in PHASES if not 0 < floors.get(key, 0) < math.inf]
    if not 0 < got["fetched_bytes"] == got["model_bytes"]:
        wrong.append(f"fetched {got['fetched_bytes']} of {got['model_bytes']} bytes")
    if got["images_checked"] != 1 or got["image_problems"]:
        wrong.append(f"images: {got['images_checked']}, {got['image_problems']}")
    return wrong + bench_gpu_coldstart.problems({"row": got}, ["row"])


def shared_tiny_models(factory: pytest.TempPathFactory) -> Path:
    """Where the session's ``tiny_models`` fixture keeps them (tests/conftest.py), without asking for it: the floors
    process copies tiny-sd from there, building them first if no test has (``build_tiny_models`` locks, and does
    nothing where they are built). It imports torch anyway; this process need not, which alone costs seconds."""
    base = factory.getbasetemp()
    return (base.parent if "PYTEST_XDIST_WORKER" in os.environ else base) / "tiny-models"


@pytest.mark.slow  # two fresh processes that import torch (20 s of CPU); the script's slow test runs it too
def test_a_cold_start_row_runs_on_a_tiny_model(tmp_path_factory: pytest.TempPathFactory, tmp_path: Path) -> None:
    """One row on tiny-sd, as bench_gpu --tiny runs it: a floors process that builds tier 0, then a worker from its
    start to its first image. Its figures say nothing about speed here; they must be there and add up."""
    rows = bench_gpu_coldstart.figures(["sd15"], shared_tiny_models(tmp_path_factory), tmp_path, 2)
    got = rows["sd15"]
    assert "error" not in got, got.get("error")
    assert (got["model"], got["size"], got["steps"], got["node_cache"]) == ("tiny-sd", 64, 2, "local disk"), got
    assert consistent(got) == [], got
    assert set(got["over_floor"]) == set(PHASES) and got["files"] > 1, got
    assert not (tmp_path / "sd15").exists()  # the models are gone once the row is done; the logs stay
    assert (tmp_path / "logs" / "worker-cold-sd15.log").is_file()
    assert len(bench_gpu_coldstart.report(rows)) == 2


def cold_row(**changes: Any) -> dict[str, Any]:
    """A cold-start row where everything held."""
    floors = {"set_up_s": 4.0, "fetch_s": 0.5, "load_s": 0.5, "first_job_s": 0.2}
    return {"model": "tiny-sd", "set_up_s": 6.0, "fetch_s": 0.7, "load_s": 1.0, "first_job_s": 0.4, "total_s": 8.2,
            "fetched_bytes": 1000, "model_bytes": 1000, "images_checked": 1, "image_problems": [], "floors": floors,
            **changes}


def test_a_cold_start_row_is_read_only_with_its_figures_and_image() -> None:
    assert bench_gpu_coldstart.problems({"sd15": cold_row()}, ["sd15"]) == []
    assert bench_gpu_coldstart.problems({}, ["sd15"]) == ["cold start sd15: no figures"]
    failed = {"model": "tiny-sd", "error": "RuntimeError: the floors process failed (exit 1):\n..."}
    assert bench_gpu_coldstart.problems({"sd15": failed}, ["sd15"]) == [
        "cold start sd15: RuntimeError: the floors process failed (exit 1):"]
    assert bench_gpu_coldstart.problems({"sd15": cold_row(load_s=float("nan"))}, ["sd15"]) == [
        "cold start sd15: load_s is nan"]
    missing = cold_row()
    del missing["first_job_s"]
    assert bench_gpu_coldstart.problems({"sd15": missing}, ["sd15"]) == ["cold start sd15: first_job_s is None"]
    no_floor = cold_row(floors={**cold_row()["floors"], "set_up_s": float("inf")})
    assert bench_gpu_coldstart.problems({"sd15": no_floor}, ["sd15"]) == ["cold start sd15: floor set_up_s is inf"]
    assert bench_gpu_coldstart.problems({"sd15": cold_row(total_s=2.0)}, ["sd15"]) == [
        "cold start sd15: the phases add up to 8.100 s, more than the total 2.000 s"]
    # the fetch ran during the set-up (the worker's fetch ahead): only its part after it counts towards the total
    assert bench_gpu_coldstart.problems({"sd15": cold_row(total_s=7.4, fetch_during_set_up_s=0.7)}, ["sd15"]) == []
    assert bench_gpu_coldstart.problems({"sd15": cold_row(fetched_bytes=0)}, ["sd15"]) == [
        "cold start sd15: fetched 0 bytes of a model of 1000"]  # the node cache was not empty
    black = cold_row(image_problems=["tiny-sd first image: one flat colour"])
    assert bench_gpu_coldstart.problems({"sd15": black}, ["sd15"]) == ["tiny-sd first image: one flat colour"]
    assert bench_gpu_coldstart.problems({"sd15": cold_row(images_checked=0)}, ["sd15"]) == [
        "cold start sd15: no image checked"]
    assert bench_gpu_coldstart.unknown(["sd15", "flux-dev", "flux-def"]) == ["flux-def"]  # refused before a run
    # in the script's verdict: "ok" is false, and the problem names the row and the figure
    found = {"settings": [], "flow": {}, "tiny": True, "images_checked": 1, "image_problems": [],
             "coldstart": {"sd15": cold_row(fetch_s=float("nan"))}}
    assert run_problems(found, [], ["sd15"]) == ["cold start sd15: fetch_s is nan"]
    assert run_problems(found | {"coldstart": {}}, [], ["sd15"]) == ["cold start sd15: no figures"]
    assert run_problems(found | {"coldstart": {"sd15": cold_row()}}, [], ["sd15"]) == []


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
