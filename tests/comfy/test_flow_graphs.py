"""Flux and SD 3.5 graphs on the tiny models, in-process: ComfyUI's Flux dev example (UNETLoader, DualCLIPLoader,
VAELoader, FluxGuidance, ModelSamplingFlux, custom sampling, EmptySD3LatentImage) and an SD 3.5 graph through the
same loaders with CFGGuider (tests/comfy/workflows/), at tiny sizes and few steps.

Each gives an image of the asked size, the same bytes twice, and other pixels when its seed, guidance, steps or
prompt changes; Flux's graph gives spotgen's own Flux txt2img pixels; an interruption inside the sampler resumes to
the bytes of an uninterrupted run, through checkpoint bytes as the worker stores them; a wrong model for a loader
is refused naming the node's input, before any step runs."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pipelines.comfyui import ComfyUI
from runtime.contract import ContractError
from runtime.contract.comfy.inputs import ComfyInputs
from runtime.models.store import ModelStore
from runtime.plugins import JobInterrupted, StepState
from runtime.worker import checkpoint
from tests.comfy.test_interpreter import workflow
from tests.pipelines.harness import Harness, pixels, png

KEY = "f" * 64
FLUX_LOADERS = {"12": "unet_name", "11": "clip_name1", "10": "vae_name"}


def flux_graph(model: str = "tiny-flux") -> dict[str, Any]:
    """ComfyUI's Flux dev example at 64 x 48 (not square, so a width/height mix-up shows), 3 steps."""
    graph = workflow("flux_dev")
    for node, name in FLUX_LOADERS.items():
        graph[node]["inputs"][name] = model
    graph["11"]["inputs"]["clip_name2"] = model
    graph["27"]["inputs"].update(width=64, height=48)
    graph["30"]["inputs"].update(width=64, height=48)
    graph["17"]["inputs"]["steps"] = 3
    graph["25"]["inputs"]["noise_seed"] = 1234
    return graph


def sd3_graph(model: str = "tiny-sd3") -> dict[str, Any]:
    """SD 3.5 through UNETLoader, DualCLIPLoader and VAELoader, CFGGuider at 4.5 with a zeroed negative; 64 x 48,
    3 steps."""
    graph = workflow("sd35_custom_sampling")
    for node, name in FLUX_LOADERS.items():
        graph[node]["inputs"][name] = model
    graph["11"]["inputs"]["clip_name2"] = model
    graph["53"]["inputs"].update(width=64, height=48)
    graph["17"]["inputs"]["steps"] = 3
    graph["25"]["inputs"]["noise_seed"] = 1234
    return graph


GRAPHS = {"flux": flux_graph, "sd3": sd3_graph}


@pytest.fixture(scope="module")
def harness(tiny_models: Path) -> Harness:
    return Harness(ModelStore(tiny_models, "cpu"))


def run(harness: Harness, graph: dict[str, Any], resume_from: StepState | None = None, on_step: Any = None,
        phases: list[str | None] | None = None) -> list[Any]:
    ctx = harness.context(seed=7, resume_from=resume_from, on_step=on_step)
    if phases is not None:
        ctx.on_begin_phase = phases.append
    return ComfyUI().run(ComfyInputs.model_validate({"graph": graph}), ctx)


@pytest.mark.parametrize("family", ["flux", "sd3"])
def test_a_flow_graph_gives_the_asked_size_the_same_bytes_twice_in_one_pass(harness: Harness, family: str) -> None:
    graph = GRAPHS[family]()
    phases: list[str | None] = []
    out = run(harness, graph, phases=phases)
    assert [image.size for image in out] == [(64, 48)]
    assert phases == ["samplercustomadvanced-13" if family == "flux" else "samplercustomadvanced-3"]
    assert [step for step, _ in harness.reports] == [1, 2, 3]
    assert png(run(harness, graph)) == png(out)
