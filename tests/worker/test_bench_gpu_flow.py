"""`make bench-gpu`'s Flux.1 and SD 3.5 rows (tests/harness/bench_gpu_flow.py) run here on their tiny stand-ins and
the CPU, in this process: the figures say nothing about speed; this checks that every row's script works for the
day it runs on a GPU, and that a row whose images or figures are worthless is reported, not read."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from tests.harness import bench_gpu_flow
from tests.harness.bench_gpu_flow import WORKLOADS, problems


def test_every_flow_workload_runs_on_its_tiny_model_against_plain_diffusers(tiny_models: Path,
                                                                            tmp_path: Path) -> None:
    rows = {name: bench_gpu_flow.run(name, tiny_models, tmp_path, 1, "cpu") for name in WORKLOADS}
    assert problems(rows, list(WORKLOADS), cuda=False) == []
    for name, row in rows.items():
        workload = WORKLOADS[name]
        assert (row["model"], row["family"], row["variant"]) == (workload.tiny, workload.family, workload.variant)
        assert row["images_checked"] == 4 and row["size"] == 64, row  # a warm-up and one timed image a side
        assert row["spotgen_peak_gib"] is None and set(row["goals"]) == {"ratio_to_plain"}, row
    lines = bench_gpu_flow.report(rows)
    assert len(lines) == len(WORKLOADS) and "peak GPU memory" not in "".join(lines)


def row(**changes: Any) -> dict[str, Any]:
    return {"spotgen_images_per_s": 1.0, "plain_images_per_s": 1.1, "ratio_to_plain": 0.91, "spotgen_peak_gib": 30.5,
            "plain_peak_gib": 30.4, "image_problems": [], **changes}


def test_a_row_is_read_only_with_valid_images_and_finite_figures() -> None:
    assert problems({"flux-dev": row()}, ["flux-dev"], cuda=True) == []
    assert problems({}, ["flux-dev"], cuda=True) == ["flux-dev: no figures"]
    flat = row(image_problems=["spotgen flux-dev, image 1: one flat colour"])
    assert problems({"flux-dev": flat}, ["flux-dev"], cuda=True) == ["spotgen flux-dev, image 1: one flat colour"]
    assert problems({"flux-dev": row(ratio_to_plain=float("nan"))}, ["flux-dev"], cuda=True) == [
        "flux-dev: ratio_to_plain is nan"]
    no_peak = row(spotgen_peak_gib=None, plain_peak_gib=None)  # what a CPU run has; a GPU run must not
    assert problems({"flux-dev": no_peak}, ["flux-dev"], cuda=False) == []
    assert problems({"flux-dev": no_peak}, ["flux-dev"], cuda=True) == ["flux-dev: spotgen_peak_gib is None",
                                                                        "flux-dev: plain_peak_gib is None"]


def test_black_images_are_found(tiny_models: Path, tmp_path: Path, monkeypatch: Any) -> None:
    """A pipeline that makes black images (NaN latents in bfloat16 decode so) measures nothing: the row says so."""
    from PIL import Image

    from pipelines.txt2img import Txt2Img

    monkeypatch.setattr(Txt2Img, "run", lambda self, inputs, ctx: [Image.fromarray(np.zeros((64, 64, 3), np.uint8))])
    got = bench_gpu_flow.run("flux-schnell", tiny_models, tmp_path, 1, "cpu")
    assert problems({"flux-schnell": got}, ["flux-schnell"], cuda=False) == [
        "spotgen tiny-flux-schnell, image 0: one flat colour", "spotgen tiny-flux-schnell, image 1: one flat colour"]


def test_a_row_serves_its_model_in_the_entry_form(tiny_models: Path, tmp_path: Path, monkeypatch: Any) -> None:
    """The GPU path (a model built in the process, not read from files) in small on the CPU: flux-dev-fp8's form
    reaches the built transformer as the loader gives it to files, fp8 storage and all (half its bytes or less)."""
    from dataclasses import replace

    from diffusers import FluxPipeline

    def build(device: str) -> Any:
        return FluxPipeline.from_pretrained(tiny_models / "tiny-flux", local_files_only=True).to(device)

    for name, workload in (("flux-dev", WORKLOADS["flux-dev"]), ("flux-dev-fp8", WORKLOADS["flux-dev-fp8"])):
        monkeypatch.setitem(WORKLOADS, name, replace(workload, size=64, steps=2, build=build, dtype="float32"))
    plain, fp8 = (bench_gpu_flow.run(name, None, tmp_path, 1, "cpu") for name in ("flux-dev", "flux-dev-fp8"))
    assert problems({"flux-dev-fp8": fp8}, ["flux-dev-fp8"], cuda=False) == []
    assert 0 < fp8["transformer_bytes"] <= plain["transformer_bytes"] / 2, (fp8, plain)
