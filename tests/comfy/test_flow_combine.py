"""ConditioningCombine on Flux and SD 3.5, as ComfyUI runs it: the flow's velocity predicted once per combined
conditioning (its own text, pooled vector and Flux guidance) and averaged (``pipelines.comfyui.combine``), on
ComfyUI's checkpoint examples (tests/comfy/test_flow_checkpoints.py) and on the UNETLoader graph's custom sampling.

Each combined input changes the image; a conditioning combined with itself gives its own pixels, and the order of
the two gives the same bytes (an average); a Flux part's own FluxGuidance matters; a combined negative works on SD
3.5's batched CFG and on Flux's true CFG, whose positive and negative run in calls of their own; an interrupted
combined graph resumes to the same bytes."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from tests.comfy.runner import assert_resumes_alike, run
from tests.comfy.test_flow_checkpoints import flux_checkpoint_graph, sd35_graph
from tests.comfy.test_flow_graphs import flux_graph
from tests.pipelines.harness import Harness, pixels, png

#: (graph, sampler node, its positive's source, the CLIP's node) per family.
FAMILY = {"flux": (flux_checkpoint_graph, "31", "35"), "sd3": (sd35_graph, "3", "16")}
OTHER = "a red fox in the snow"


def combined(family: str, first: list[Any] | None = None, second: list[Any] | None = None,
             side: str = "positive") -> dict[str, Any]:
    """The family's checkpoint example with ``side`` = ConditioningCombine(first, second); by default the example's
    positive and an encoding of ``OTHER`` (with Flux's guidance 3.5 on it, as the example's positive has)."""
    make, sampler, positive = FAMILY[family]
    graph = make()
    graph["70"] = {"class_type": "CLIPTextEncode", "inputs": {"text": OTHER, "clip": ["4", 1]}}
    other = ["70", 0]
    if family == "flux":
        graph["71"] = {"class_type": "FluxGuidance", "inputs": {"guidance": 3.5, "conditioning": ["70", 0]}}
        other = ["71", 0]
    graph["72"] = {"class_type": "ConditioningCombine", "inputs": {
        "conditioning_1": first or [positive, 0], "conditioning_2": second or other}}
    graph[sampler]["inputs"][side] = ["72", 0]
    return graph


@pytest.mark.parametrize("family", ["flux", "sd3"])
def test_a_combined_positive_is_the_average_of_its_parts_predictions(harness: Harness, family: str) -> None:
    make, sampler, positive = FAMILY[family]
    alone = png(run(harness, make()))
    both = png(run(harness, combined(family)))
    assert both != alone
    other = make()
    other["6" if family == "flux" else "16"]["inputs"]["text"] = OTHER
    assert both != png(run(harness, other))  # neither part alone
    graph = combined(family)
    first, second = graph["72"]["inputs"]["conditioning_1"], graph["72"]["inputs"]["conditioning_2"]
    assert png(run(harness, combined(family, second, first))) == both  # an average: the order does not matter
    assert png(run(harness, combined(family, [positive, 0], [positive, 0]))) == alone  # one text twice: itself


def test_each_flux_part_keeps_its_own_guidance(harness: Harness) -> None:
    base = pixels(run(harness, combined("flux")))
    graph = combined("flux")
    graph["71"]["inputs"]["guidance"] = 6.0
    assert not np.array_equal(pixels(run(harness, graph)), base)


@pytest.mark.parametrize("family", ["flux", "sd3"])
def test_a_combined_negative_runs_with_cfg(harness: Harness, family: str) -> None:
    """SD 3.5 batches the negative with the positive; Flux at cfg 2 runs its true CFG, a call per side, each step:
    a negative combined with itself gives the negative's own pixels, and with another text other pixels."""
    make, sampler, _ = FAMILY[family]
    negative = "40" if family == "sd3" else "33"

    def graph(second: list[Any] | None) -> dict[str, Any]:
        out = combined(family, [negative, 0], second, side="negative")
        out[sampler]["inputs"]["cfg"] = 2.0 if family == "flux" else 4.5
        return out

    plain = make()
    plain[sampler]["inputs"]["cfg"] = 2.0 if family == "flux" else 4.5
    alone = png(run(harness, plain))
    assert png(run(harness, graph([negative, 0]))) == alone
    assert png(run(harness, graph(["70", 0]))) != alone


def test_combined_conditioning_runs_in_custom_sampling_and_resumes_byte_identical(harness: Harness) -> None:
    graph = flux_graph()
    plain = pixels(run(harness, graph))
    graph["70"] = {"class_type": "CLIPTextEncode", "inputs": {"text": OTHER, "clip": ["11", 0]}}
    graph["72"] = {"class_type": "ConditioningCombine", "inputs": {"conditioning_1": ["26", 0],
                                                                    "conditioning_2": ["70", 0]}}
    graph["22"]["inputs"]["conditioning"] = ["72", 0]
    assert not np.array_equal(pixels(run(harness, graph)), plain)
    assert_resumes_alike(harness, combined("sd3"))
