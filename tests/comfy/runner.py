"""How the comfy tests run a graph: the ``comfyui`` pipeline on the tiny models through the pipeline tests'
``Harness`` (its inputs checked as the worker checks them), seed 7; ``phases`` collects the passes it names."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from pipelines.comfyui import ComfyUI
from runtime.contract.comfy.inputs import ComfyInputs
from runtime.plugins import JobInterrupted, StepState
from runtime.worker import checkpoint
from tests.pipelines.harness import Harness, interrupter, png

WORKFLOWS = Path(__file__).parent / "workflows"
#: The image-graph tests' photo and its painted-out copy (LoadImage's alpha is the mask: the box is transparent).
PHOTO = "s3://inputs/comfy/ip-x/input/photo.png"
PAINTED = "s3://inputs/comfy/ip-x/input/painted.png"
BOX = (20, 16, 44, 32)  # left, top, right, bottom


def photos() -> dict[str, Image.Image]:
    """``PHOTO`` (64 x 48 of seeded noise) and ``PAINTED`` (the same with ``BOX`` transparent), by their URIs."""
    photo = Image.fromarray(np.random.default_rng(5).integers(0, 256, (48, 64, 3), dtype=np.uint8))
    painted = photo.convert("RGBA")
    painted.paste((0, 0, 0, 0), BOX)
    return {PHOTO: photo, PAINTED: painted}


def run(harness: Harness, graph: dict[str, Any], resume_from: StepState | None = None, on_step: Any = None,
        phases: list[str | None] | None = None) -> list[Any]:
    ctx = harness.context(seed=7, resume_from=resume_from, on_step=on_step)
    if phases is not None:
        ctx.on_begin_phase = phases.append
    return ComfyUI().run(ComfyInputs.model_validate({"graph": graph}), ctx)


def workflow(name: str) -> dict[str, Any]:
    return json.loads((WORKFLOWS / f"{name}.json").read_text())


def changed(graph: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """``graph`` with ``changes`` as ``{"<node>_<input>": value}`` set on its nodes' inputs (in place)."""
    for key, value in changes.items():
        node, name = key.split("_", 1)
        graph[node]["inputs"][name] = value
    return graph


def default_graph(model: str = "tiny-sd", **sampler: Any) -> dict[str, Any]:
    """ComfyUI's default graph at 64 x 48 (not square, so a width/height mix-up shows), 3 steps."""
    graph = workflow("default_txt2img")
    graph["4"]["inputs"]["ckpt_name"] = model
    graph["5"]["inputs"].update(width=64, height=48)
    graph["3"]["inputs"].update(seed=1234, steps=3, **sampler)
    return graph


def assert_resumes_alike(harness: Harness, graph: dict[str, Any], at: int = 2) -> None:
    """Interrupted after step ``at`` (its checkpoint through bytes, as between two workers), the graph resumes at
    the next step to the uninterrupted run's very bytes."""
    reference = png(run(harness, graph))
    saved: list[bytes] = []
    with pytest.raises(JobInterrupted):
        run(harness, graph, on_step=interrupter(at, saved))
    assert png(run(harness, graph, resume_from=checkpoint.load(saved[0], "f" * 64))) == reference
    assert harness.reports[0][0] == at + 1  # it went on from the saved step, not from the start
