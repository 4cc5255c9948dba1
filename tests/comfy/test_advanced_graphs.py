"""KSamplerAdvanced on the tiny models (``pipelines/comfyui/advanced.py``): ComfyUI's SDXL base + refiner example
(tests/comfy/workflows/sdxl_refiner.json, as ComfyUI writes it: the base's steps 0..N with leftover noise, then
the refiner's N..end without adding noise) at 64 x 48 and 5 steps.

The two samplers are two passes planned together; an interruption inside either resumes to the uninterrupted run's
bytes; each input of the slice changes the pixels, and the seed of a sampler that adds no noise does not; the whole
schedule is KSampler's run, and a schedule cut in two on one model with Euler is the uncut run; values that cannot
run are refused naming the input, before any step runs (Flux and SD 3.5 models: test_flow_advanced.py)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from pipelines.comfyui.executor import Execution
from runtime.contract import ContractError
from tests.comfy.runner import assert_resumes_alike, changed, default_graph, run, workflow
from tests.pipelines.harness import Harness, pixels, png

#: The refiner model the graph's second loader names in the tests (an ordinary SDXL model is a refiner too).
REFINER = "tiny-sdxl"


def refiner_graph(refiner: str = REFINER, steps: int = 5, switch: int = 3, **changes: Any) -> dict[str, Any]:
    """The refiner example at 64 x 48, the base's steps 0..``switch`` of ``steps``, the refiner's the rest, on a
    prompt of its own (so that where the switch is shows on one model too); ``changes``: ``{"<node>_<input>":
    value}``."""
    graph = workflow("sdxl_refiner")
    graph["15"]["inputs"]["text"] = "a glass bottle"
    graph["4"]["inputs"]["ckpt_name"] = "tiny-sdxl"
    graph["12"]["inputs"]["ckpt_name"] = refiner
    graph["5"]["inputs"].update(width=64, height=48)
    graph["10"]["inputs"].update(steps=steps, end_at_step=switch, noise_seed=1234)
    graph["11"]["inputs"].update(steps=steps, start_at_step=switch)
    return changed(graph, changes)


def test_the_refiner_graph_runs_a_pass_per_sampler_planned_together(harness: Harness) -> None:
    phases: list[str | None] = []
    out = run(harness, refiner_graph(), phases=phases)
    assert [image.size for image in out] == [(64, 48)]
    assert phases == ["ksampleradvanced-10", "ksampleradvanced-11"]
    assert harness.reports == [(step, 5) for step in range(1, 6)]  # 3 + 2 steps, one count from the start
    assert png(run(harness, refiner_graph())) == png(out)


def test_the_refiner_checkpoint_takes_over_from_the_base(harness: Harness) -> None:
    """The catalog's SDXL refiner (its second text encoder alone, an aesthetic score in its conditioning) as the
    second sampler's model."""
    out = pixels(run(harness, refiner_graph("tiny-sdxl-refiner")))
    assert out.shape == (1, 48, 64, 3)
    assert not np.array_equal(out, pixels(run(harness, refiner_graph())))


@pytest.mark.parametrize("stop", [2, 4])  # inside the base's pass (3 steps), inside the refiner's (its first)
def test_an_interruption_inside_either_sampler_resumes_to_the_same_bytes(harness: Harness, stop: int) -> None:
    """Euler ancestral draws noise at every step: the generators are resumed too."""
    graph = refiner_graph(**{"10_sampler_name": "euler_ancestral", "11_sampler_name": "euler_ancestral",
                             "11_noise_seed": 99})
    assert_resumes_alike(harness, graph, at=stop)


CHANGES = [
    {"10_start_at_step": 1},
    {"10_end_at_step": 2, "11_start_at_step": 2},
    {"10_end_at_step": 2},  # the refiner then starts on a latent noisier than its schedule says
    {"10_add_noise": "disable"},
    {"10_return_with_leftover_noise": "disable"},
    {"10_noise_seed": 4321},
    {"11_add_noise": "enable"},
    {"11_start_at_step": 4},
    {"11_end_at_step": 4},
    {"11_end_at_step": 4, "11_return_with_leftover_noise": "enable"},
    {"11_sampler_name": "dpmpp_2m"},
]


def test_every_input_of_the_slice_changes_the_pixels(harness: Harness) -> None:
    reference = pixels(run(harness, refiner_graph()))
    seen = [reference]
    for change in CHANGES:
        out = pixels(run(harness, refiner_graph(**change)))
        assert all(not np.array_equal(out, other) for other in seen), change
        seen.append(out)


def test_the_seed_of_a_sampler_that_adds_no_noise_changes_nothing(harness: Harness) -> None:
    """Euler draws nothing after the start, so with add_noise disable the refiner's seed goes unused, as in
    ComfyUI (an ancestral sampler's per-step noise does read it)."""
    assert png(run(harness, refiner_graph(**{"11_noise_seed": 5}))) == png(run(harness, refiner_graph()))


@pytest.mark.parametrize("sampler", ["euler", "dpmpp_2m", "heun"])
def test_the_whole_schedule_with_noise_is_ksamplers_run(harness: Harness, sampler: str) -> None:
    simple = default_graph("tiny-sd", sampler_name=sampler)
    advanced = default_graph("tiny-sd")
    advanced["3"] = {"class_type": "KSamplerAdvanced", "inputs": {
        **{name: simple["3"]["inputs"][name] for name in ("model", "steps", "cfg", "scheduler", "positive",
                                                           "negative", "latent_image", "sampler_name")},
        "add_noise": "enable", "noise_seed": simple["3"]["inputs"]["seed"], "start_at_step": 0,
        "end_at_step": 10000, "return_with_leftover_noise": "disable"}}
    assert png(run(harness, advanced)) == png(run(harness, simple))


def test_a_schedule_cut_in_two_on_one_model_is_the_uncut_run(harness: Harness) -> None:
    """Euler keeps no history: steps 0..3 with leftover noise, then 3..5 without adding any, is steps 0..5 (on
    DPM++ 2M the second pass starts its history afresh, as ComfyUI's does)."""
    split = refiner_graph(**{"11_model": ["4", 0], "11_positive": ["6", 0], "11_negative": ["7", 0],
                             "17_vae": ["4", 2]})
    whole = refiner_graph(**{"10_end_at_step": 10000, "10_return_with_leftover_noise": "disable",
                             "11_start_at_step": 5})  # the refiner hands its latent on: a start past the end
    assert png(run(harness, split)) == png(run(harness, whole))


def test_a_sampler_on_scaled_latents_hands_over_the_noise_level_eulers_does(harness: Harness) -> None:
    """DDIM steps on ``x / sqrt(1 + sigma^2)`` and is Euler's update there, so its leftover latent, scaled back to
    ``x0 + sigma * noise``, is Euler's: what the refiner takes, whichever sampler the base ran."""
    handed = []
    for sampler in ("euler", "ddim"):
        ex = Execution(refiner_graph(**{"10_sampler_name": sampler}), harness.context())
        ex.run()
        handed.append(ex.values["10"][0].samples)
    assert torch.allclose(handed[0], handed[1], rtol=1e-4, atol=1e-4)


def advanced_graph(sampler: str, **inputs: Any) -> dict[str, Any]:
    """The default graph on tiny-sd with its KSampler made a KSamplerAdvanced of 4 steps."""
    graph = default_graph("tiny-sd")
    core = {name: graph["3"]["inputs"][name] for name in ("model", "cfg", "scheduler", "positive", "negative",
                                                          "latent_image")}
    graph["3"] = {"class_type": "KSamplerAdvanced", "inputs": {
        **core, "sampler_name": sampler, "steps": 4, "add_noise": "enable", "noise_seed": 1234, "start_at_step": 0,
        "end_at_step": 10000, "return_with_leftover_noise": "disable", **inputs}}
    return graph


def test_every_sampler_ends_a_slice_on_the_denoised_prediction(harness: Harness) -> None:
    """Steps 0..3 of 4 without leftover noise: the last step ends on the model's prediction of the clean latent, on
    every sampler (a second-order one after its last step's first stage), in the steps planned; DDIM's, on scaled
    latents, is Euler's, on unscaled ones."""
    final = {}
    for sampler in ("euler", "euler_ancestral", "heun", "dpm_2", "dpm_2_ancestral", "lms", "dpmpp_sde", "dpmpp_2m",
                    "dpmpp_2m_sde", "ddim", "uni_pc", "lcm"):
        ex = Execution(advanced_graph(sampler, end_at_step=3), harness.context())
        ex.run()
        planned = ex.phases.planned["ksampleradvanced-3"] if ex.phases else 0
        assert planned == (5 if sampler in ("heun", "dpm_2", "dpm_2_ancestral", "dpmpp_sde") else 3), sampler
        assert harness.reports[-1] == (planned, planned), sampler
        final[sampler] = ex.values["3"][0].samples
        assert torch.isfinite(final[sampler]).all(), sampler
    assert torch.allclose(final["euler"], final["ddim"], rtol=1e-4, atol=1e-4)
    leftover = Execution(advanced_graph("euler", end_at_step=3, return_with_leftover_noise="enable"),
                         harness.context())
    leftover.run()
    assert not torch.equal(leftover.values["3"][0].samples, final["euler"])  # the noise of step 3 still in it


@pytest.mark.parametrize(("change", "field"), [
    ({"10_start_at_step": 3}, "inputs.graph.10.inputs.start_at_step"),  # start == end: no step to run
    ({"11_start_at_step": 10000}, "inputs.graph.11.inputs.start_at_step"),
    ({"10_add_noise": "maybe"}, "inputs.graph.10.inputs.add_noise"),
    ({"11_return_with_leftover_noise": True}, "inputs.graph.11.inputs.return_with_leftover_noise"),
    ({"10_steps": 0}, "inputs.graph.10.inputs.steps"),
    ({"11_sampler_name": "lcm", "11_steps": 51, "11_start_at_step": 3}, "inputs.graph.11.inputs.steps"),
])
def test_values_that_cannot_run_are_refused_naming_the_input(harness: Harness, change: dict[str, Any],
                                                             field: str) -> None:
    """On the worker, as a graph that skipped the API's checks (which refuse the out-of-range ones first)."""
    steps: list[int] = []
    ctx = harness.context(on_step=lambda step, state: steps.append(step))
    with pytest.raises(ContractError) as caught:
        Execution(refiner_graph(**change), ctx).run()
    assert caught.value.field == field and not steps, caught.value
