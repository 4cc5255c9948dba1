"""KSamplerAdvanced on Flux and SD 3.5 models (``pipelines/comfyui/flowadvanced.py``), on tiny-flux and tiny-sd3:
ComfyUI's Flux dev and SD 3.5 graphs (tests/comfy/test_flow_graphs.py's, 64 x 48) sampled by KSamplerAdvanced,
and a Flux graph cut in two as the SDXL refiner example cuts its schedule: steps 0..k with leftover noise on one
model, then k..n without adding noise on a second (tiny-flux again, loaded by its own nodes).

The whole schedule is KSampler's bytes; an interruption inside either of the two samplers resumes to the
uninterrupted run's bytes; every input of the slice changes the pixels; a schedule cut in two on one model with
Euler is the uncut run up to ComfyUI's scaling of the handed-over latent (``x / (1 - sigma)``, then times
``1 - sigma``), whose float rounding is all that differs; values that cannot run are refused naming the input."""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import pytest
import torch
from diffusers import FluxPipeline

from pipelines.comfyui.executor import Execution
from runtime.contract import ContractError
from tests.comfy.runner import assert_resumes_alike, changed, run
from tests.comfy.test_flow_graphs import GRAPHS
from tests.pipelines.harness import Harness, pixels, png

#: Per family: the sampler node, its model, positive, negative and latent nodes, and its cfg.
WIRING = {"flux": ("13", "30", "26", "26", "27", 1.0), "sd3": ("3", "13", "6", "40", "53", 4.5)}
ADVANCED = "KSamplerAdvanced"


def advanced_graph(family: str, steps: int = 3, **inputs: Any) -> dict[str, Any]:
    """The family's graph with its sampler a KSamplerAdvanced of the whole schedule (``inputs`` change it)."""
    graph = GRAPHS[family]()
    node, model, positive, negative, latent, cfg = WIRING[family]
    graph[node] = {"class_type": ADVANCED, "inputs": {
        "model": [model, 0], "add_noise": "enable", "noise_seed": 1234, "steps": steps, "cfg": cfg,
        "sampler_name": "euler", "scheduler": graph["17"]["inputs"]["scheduler"], "positive": [positive, 0],
        "negative": [negative, 0], "latent_image": [latent, 0], "start_at_step": 0, "end_at_step": 10000,
        "return_with_leftover_noise": "disable", **inputs}}
    return graph


def ksampler_graph(family: str, sampler: str) -> dict[str, Any]:
    graph = advanced_graph(family)
    node = WIRING[family][0]
    inputs = graph[node]["inputs"]
    graph[node] = {"class_type": "KSampler", "inputs": {
        **{name: inputs[name] for name in ("model", "steps", "cfg", "scheduler", "positive", "negative",
                                           "latent_image")},
        "seed": 1234, "sampler_name": sampler, "denoise": 1.0}}
    return graph


@pytest.mark.parametrize(("family", "sampler"), [("flux", "euler"), ("flux", "dpmpp_2m"), ("sd3", "euler"),
                                                 ("sd3", "heun")])
def test_the_whole_schedule_with_noise_is_ksamplers_run(harness: Harness, family: str, sampler: str) -> None:
    graph = advanced_graph(family)
    graph[WIRING[family][0]]["inputs"]["sampler_name"] = sampler
    phases: list[str | None] = []
    out = png(run(harness, graph, phases=phases))
    assert phases == [f"ksampleradvanced-{WIRING[family][0]}"]
    assert out == png(run(harness, ksampler_graph(family, sampler)))


def split_graph(steps: int = 4, switch: int = 2, **changes: Any) -> dict[str, Any]:
    """The Flux graph's schedule cut in two: node 13 runs steps 0..``switch`` of ``steps`` with leftover noise, node
    44 the rest without adding noise, on a model of its own nodes (40: UNETLoader, 41: ModelSamplingFlux) and a
    prompt of its own (43), its image saved; ``changes``: ``{"<node>_<input>": value}``."""
    graph = advanced_graph("flux", steps, end_at_step=switch, return_with_leftover_noise="enable")
    graph["40"] = {"class_type": "UNETLoader", "inputs": {"unet_name": "tiny-flux", "weight_dtype": "default"}}
    graph["41"] = {"class_type": "ModelSamplingFlux", "inputs": {**graph["30"]["inputs"], "model": ["40", 0]}}
    graph["43"] = {"class_type": "CLIPTextEncode", "inputs": {"text": "a red fox in the snow", "clip": ["11", 0]}}
    graph["44"] = {"class_type": ADVANCED, "inputs": {
        **graph["13"]["inputs"], "model": ["41", 0], "positive": ["43", 0], "negative": ["43", 0],
        "latent_image": ["13", 0], "add_noise": "disable", "noise_seed": 99, "start_at_step": switch,
        "end_at_step": 10000, "return_with_leftover_noise": "disable"}}
    graph["8"]["inputs"]["samples"] = ["44", 0]
    return changed(graph, changes)


def test_the_two_samplers_are_two_passes_planned_together(harness: Harness) -> None:
    phases: list[str | None] = []
    out = run(harness, split_graph(), phases=phases)
    assert [image.size for image in out] == [(64, 48)]
    assert phases == ["ksampleradvanced-13", "ksampleradvanced-44"]
    assert harness.reports == [(step, 4) for step in range(1, 5)]  # 2 + 2 steps, one count from the start


@pytest.mark.parametrize("stop", [1, 2, 3])  # inside the first pass (2 steps), at its end, inside the second
def test_an_interruption_inside_either_sampler_resumes_to_the_same_bytes(harness: Harness, stop: int) -> None:
    assert_resumes_alike(harness, split_graph(), at=stop)


def test_an_interruption_inside_an_sd3_slice_resumes_to_the_same_bytes(harness: Harness) -> None:
    """Heun's two stages per step, a slice that ends on the denoised prediction."""
    assert_resumes_alike(harness, advanced_graph("sd3", 4, sampler_name="heun", start_at_step=1, end_at_step=3,
                                                 add_noise="enable"), at=2)


def latent_of(harness: Harness, graph: dict[str, Any], node: str) -> torch.Tensor:
    ex = Execution(graph, harness.context(seed=7))
    ex.run()
    return ex.values[node][0].samples  # type: ignore[no-any-return]


def test_a_schedule_cut_in_two_on_one_model_is_the_uncut_run_up_to_comfyuis_scaling(harness: Harness) -> None:
    """Euler keeps no history, so steps 0..2 then 2..4 on one model and prompt are steps 0..4 but for ComfyUI's
    hand-over: the first pass gives ``x / (1 - sigma)``, the second takes it times ``1 - sigma``, which float32
    rounds to within an ulp of ``x`` rather than to ``x`` exactly; so the two runs' latents agree to that rounding
    carried through two steps, and their pixels to 1 of 255. What the first hands on is the uncut run's latent at
    the cut divided by ``1 - sigma`` there."""
    split = split_graph(**{"44_model": ["30", 0], "44_positive": ["26", 0], "44_negative": ["26", 0]})
    whole = advanced_graph("flux", 4)
    cut, uncut = latent_of(harness, split, "44"), latent_of(harness, whole, "13")
    assert torch.allclose(cut, uncut, rtol=1e-5, atol=1e-5), (cut - uncut).abs().max()
    gap = np.abs(pixels(run(harness, split)).astype(int) - pixels(run(harness, whole)).astype(int))
    assert gap.max() <= 1
    steps: dict[int, torch.Tensor] = {}
    Execution(whole, harness.context(seed=7, on_step=lambda step, state: steps.update(
        {step: state().tensors["latents"]}))).run()
    at_cut = FluxPipeline._unpack_latents(steps[2], 48, 64, 8)  # the uncut run's x after step 2
    handed = latent_of(harness, split, "13")
    scale = float((handed / at_cut).median())  # 1 / (1 - sigma) at the cut
    assert scale > 1.5 and torch.allclose(handed, at_cut * scale, rtol=1e-5, atol=1e-6)


CHANGES = [
    {"13_start_at_step": 1},
    {"13_end_at_step": 3, "44_start_at_step": 3},
    {"13_end_at_step": 1},  # the second pass then starts on a latent noisier than its schedule says
    {"13_add_noise": "disable"},
    {"13_return_with_leftover_noise": "disable"},
    {"13_noise_seed": 4321},
    {"13_sampler_name": "dpmpp_2m"},
    {"13_cfg": 3.0, "13_negative": ["43", 0]},
    {"44_add_noise": "enable"},
    {"44_start_at_step": 3},
    {"44_end_at_step": 3},
    {"44_end_at_step": 3, "44_return_with_leftover_noise": "enable"},
    {"13_steps": 5, "44_steps": 5},
    {"44_scheduler": "exponential"},
    {"13_scheduler": "karras"},
    {"44_positive": ["26", 0], "44_negative": ["26", 0]},
]


def test_every_input_of_the_slice_changes_the_pixels(harness: Harness) -> None:
    reference = pixels(run(harness, split_graph()))
    seen = [reference]
    for change in CHANGES:
        out = pixels(run(harness, split_graph(**change)))
        assert all(not np.array_equal(out, other) for other in seen), change
        seen.append(out)


def test_the_seed_of_a_sampler_that_adds_no_noise_changes_nothing(harness: Harness) -> None:
    assert png(run(harness, split_graph(**{"44_noise_seed": 5}))) == png(run(harness, split_graph()))


def test_a_slice_ends_on_the_denoised_prediction_in_the_steps_planned(harness: Harness) -> None:
    """Steps 0..3 of 4 without leftover noise, on SD 3.5's Euler and Heun (after its last step's first stage)."""
    for sampler, planned in (("euler", 3), ("heun", 5)):
        ex = Execution(advanced_graph("sd3", 4, sampler_name=sampler, end_at_step=3), harness.context())
        ex.run()
        assert ex.phases is not None and ex.phases.planned["ksampleradvanced-3"] == planned, sampler
        assert harness.reports[-1] == (planned, planned), sampler
        assert torch.isfinite(ex.values["3"][0].samples).all(), sampler


@pytest.mark.parametrize(("change", "field"), [
    ({"44_sampler_name": "dpmpp_2m"}, "inputs.graph.44.inputs.sampler_name"),  # img2img runs Euler only
    ({"44_sampler_name": "lms"}, "inputs.graph.44.inputs.sampler_name"),
    ({"44_scheduler": "karras", "44_sampler_name": "dpmpp_2m"}, "inputs.graph.44.inputs.scheduler"),
    ({"13_start_at_step": 2}, "inputs.graph.13.inputs.start_at_step"),  # start == end: no step to run
    ({"44_add_noise": "maybe"}, "inputs.graph.44.inputs.add_noise"),
    ({"13_steps": 0}, "inputs.graph.13.inputs.steps"),
    ({"13_positive": ["99", 0]}, "inputs.graph.13.inputs.positive"),
])
def test_values_that_cannot_run_are_refused_naming_the_input(harness: Harness, change: dict[str, Any],
                                                             field: str) -> None:
    """On the worker, as a graph that skipped the API's checks; before any step runs."""
    graph = split_graph(**change)
    graph["97"] = {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "tiny-sd"}}
    graph["99"] = {"class_type": "CLIPTextEncode", "inputs": {"text": "sd", "clip": ["97", 1]}}
    steps: list[int] = []
    with pytest.raises(ContractError) as caught:
        Execution(copy.deepcopy(graph), harness.context(on_step=lambda step, state: steps.append(step))).run()
    assert caught.value.field == field and not steps, caught.value
