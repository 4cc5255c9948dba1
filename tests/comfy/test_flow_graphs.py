"""Flux and SD 3.5 graphs on the tiny models, in-process: ComfyUI's Flux dev example (UNETLoader, DualCLIPLoader,
VAELoader, FluxGuidance, ModelSamplingFlux, custom sampling, EmptySD3LatentImage) and an SD 3.5 graph through the
same loaders with CFGGuider (tests/comfy/workflows/), at tiny sizes and few steps.

Each gives an image of the asked size, the same bytes twice, and other pixels when its seed, guidance, steps or
prompt changes; Flux's graph gives spotgen's own Flux txt2img pixels; an interruption inside the sampler resumes to
the bytes of an uninterrupted run, through checkpoint bytes as the worker stores them; a wrong model for a loader
is refused naming the node's input, before any step runs; KSampler on their models is the custom-sampling set of
its inputs (tests/comfy/test_flow_checkpoints.py runs ComfyUI's checkpoint examples of these families)."""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import pytest

from pipelines.comfyui.pipeline import run_graph
from runtime.contract import ContractError
from runtime.plugins import JobInterrupted
from runtime.worker import checkpoint
from tests.comfy.runner import default_graph, run, workflow
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


@pytest.mark.parametrize("family", ["flux", "sd3"])
def test_a_flow_graph_gives_the_asked_size_the_same_bytes_twice_in_one_pass(harness: Harness, family: str) -> None:
    graph = GRAPHS[family]()
    phases: list[str | None] = []
    out = run(harness, graph, phases=phases)
    assert [image.size for image in out] == [(64, 48)]
    assert phases == ["samplercustomadvanced-13" if family == "flux" else "samplercustomadvanced-3"]
    assert [step for step, _ in harness.reports] == [1, 2, 3]
    assert png(run(harness, graph)) == png(out)


def test_the_flux_graph_gives_spotgens_own_flux_txt2img_pixels(harness: Harness) -> None:
    """Without ModelSamplingFlux the model's own schedule (shifted by the image's size) runs, as a Flux job's."""
    graph = flux_graph()
    graph["17"]["inputs"]["model"] = ["12", 0]
    graph["22"]["inputs"]["model"] = ["12", 0]
    out = pixels(run(harness, graph))
    native = harness.run("txt2img", job_seed=1234, model="tiny-flux", prompt=graph["6"]["inputs"]["text"],
                         guidance=3.5, steps=3)
    assert np.array_equal(out, pixels(native))


@pytest.mark.parametrize(("family", "node", "changes"), [
    ("flux", "25", {"noise_seed": 1235}), ("flux", "26", {"guidance": 5.0}), ("flux", "17", {"steps": 4}),
    ("flux", "6", {"text": "a red fox in the snow"}), ("flux", "30", {"max_shift": 2.0}),
    ("flux", "30", {"width": 1024}), ("flux", "16", {"sampler_name": "dpmpp_2m"}),
    ("flux", "17", {"scheduler": "karras"}),
    ("sd3", "25", {"noise_seed": 1235}), ("sd3", "22", {"cfg": 2.0}), ("sd3", "17", {"steps": 4}),
    ("sd3", "6", {"text": "a red fox in the snow"}), ("sd3", "13", {"shift": 1.5}),
    ("sd3", "16", {"sampler_name": "heun"}),
])
def test_every_input_changes_the_pixels(harness: Harness, family: str, node: str, changes: dict[str, Any]) -> None:
    base = pixels(run(harness, GRAPHS[family]()))
    graph = GRAPHS[family]()
    graph[node]["inputs"].update(changes)
    out = pixels(run(harness, graph))
    assert out.shape == base.shape and not np.array_equal(out, base), changes


def test_flux_cfg_guider_batches_and_the_sd3_basic_guider(harness: Harness) -> None:
    """Flux's true CFG with a negative (CFGGuider) differs from BasicGuider's; a batch of two gives two images
    (image 0 from the same noise as a batch of one, but not the same bytes: the transformer's batched arithmetic
    rounds otherwise on the CPU); SD 3.5 with BasicGuider (no CFG) and a single CLIPLoader runs."""
    graph = flux_graph()
    plain = pixels(run(harness, graph))
    guided = copy.deepcopy(graph)
    guided["40"] = {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": ["11", 0]}}
    guided["22"] = {"class_type": "CFGGuider", "inputs": {"model": ["30", 0], "positive": ["26", 0],
                                                          "negative": ["40", 0], "cfg": 2.0}}
    assert not np.array_equal(pixels(run(harness, guided)), plain)
    batch = copy.deepcopy(graph)
    batch["27"]["inputs"]["batch_size"] = 2
    two = pixels(run(harness, batch))
    assert two.shape == (2, 48, 64, 3) and not np.array_equal(two[0], two[1])
    assert np.abs(two[:1].astype(int) - plain).max() <= 2
    sd3 = sd3_graph()
    cfg = pixels(run(harness, sd3))
    sd3["22"] = {"class_type": "BasicGuider", "inputs": {"model": ["13", 0], "conditioning": ["6", 0]}}
    sd3["11"] = {"class_type": "CLIPLoader", "inputs": {"clip_name": "tiny-sd3", "type": "sd3"}}
    out = run(harness, sd3)
    assert [image.size for image in out] == [(64, 48)] and not np.array_equal(pixels(out), cfg)


@pytest.mark.parametrize("family", ["flux", "sd3"])
def test_an_interruption_inside_the_sampler_resumes_byte_identical(harness: Harness, family: str) -> None:
    """Checkpoints after each step, saved as bytes and resumed from; and one real interruption."""
    graph = GRAPHS[family]()
    saved: dict[int, bytes] = {}

    def snapshot(step: int, state: Any) -> None:
        saved[step] = checkpoint.dump(state(), KEY)

    reference = png(run(harness, graph, on_step=snapshot))
    assert sorted(saved) == [1, 2, 3]
    for stop in (1, 2):
        resumed = png(run(harness, graph, resume_from=checkpoint.load(saved[stop], KEY)))
        assert harness.reports[0] == (stop + 1, 3), stop
        assert resumed == reference, f"resumed after step {stop}"

    def interrupt(step: int, state: Any) -> None:
        if step == 2:
            saved[0] = checkpoint.dump(state(), KEY)
            raise JobInterrupted

    with pytest.raises(JobInterrupted):
        run(harness, graph, on_step=interrupt)
    assert png(run(harness, graph, resume_from=checkpoint.load(saved[0], KEY))) == reference


@pytest.mark.parametrize(("change", "field"), [
    (lambda g: g["12"]["inputs"].update(unet_name="tiny-sd"), "inputs.graph.12.inputs.unet_name"),
    (lambda g: g["12"]["inputs"].update(unet_name="tiny-flux-fill"), "inputs.graph.12.inputs.unet_name"),
    (lambda g: g["10"]["inputs"].update(vae_name="tiny-sd3"), "inputs.graph.10.inputs.vae_name"),
    (lambda g: g["11"]["inputs"].update(clip_name2="tiny-sd3"), "inputs.graph.11.inputs.clip_name2"),
    (lambda g: g["11"]["inputs"].update(type="sd3"), "inputs.graph.11.inputs.type"),
    (lambda g: g["30"]["inputs"].update(model=["99", 0]) or g.update(
        {"99": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "tiny-sd"}}}),
     "inputs.graph.30.inputs.model"),
    (lambda g: g["16"]["inputs"].update(sampler_name="lms"), "inputs.graph.16.inputs.sampler_name"),
])
def test_what_a_flux_graph_may_not_run_is_refused_naming_the_input(harness: Harness, change: Any,
                                                                  field: str) -> None:
    graph = flux_graph()
    change(graph)
    steps: list[int] = []
    with pytest.raises(ContractError) as caught:
        run(harness, graph, on_step=lambda step, state: steps.append(step))
    assert caught.value.field == field and not steps, caught.value


@pytest.mark.parametrize("family", ["flux", "sd3"])
def test_a_core_sampler_on_the_unet_loaders_model_is_the_custom_sampling_set_of_its_inputs(harness: Harness,
                                                                                          family: str) -> None:
    """ComfyUI's KSampler is RandomNoise, CFGGuider, KSamplerSelect and BasicScheduler of its own inputs: the same
    pixels (cfg 1 on Flux: the positive alone, as BasicGuider)."""
    graph = GRAPHS[family]()
    reference = pixels(run(harness, graph))
    first, model, positive, negative, latent = ("13", "30", "26", "26", "27") if family == "flux" else \
        ("3", "13", "6", "40", "53")
    graph[first] = {"class_type": "KSampler", "inputs": {
        "model": [model, 0], "seed": 1234, "steps": 3, "cfg": 1.0 if family == "flux" else 4.5,
        "sampler_name": "euler", "scheduler": graph["17"]["inputs"]["scheduler"], "positive": [positive, 0],
        "negative": [negative, 0], "latent_image": [latent, 0], "denoise": 1.0}}
    phases: list[str | None] = []
    assert np.array_equal(pixels(run(harness, graph, phases=phases)), reference)
    assert phases == [f"ksampler-{first}"]


def two_pass_graph(family: str) -> dict[str, Any]:
    """The first image scaled to 96 x 64, encoded again and denoised at 0.6 in 2 steps by a second sampler with
    the first's guider and noise: an img2img pass after a txt2img one."""
    graph = GRAPHS[family]()
    first, decode, model = ("13", "8", "30") if family == "flux" else ("3", "8", "13")
    graph["61"] = {"class_type": "ImageScale", "inputs": {"image": [decode, 0], "upscale_method": "bilinear",
                                                          "width": 96, "height": 64, "crop": "disabled"}}
    graph["62"] = {"class_type": "VAEEncode", "inputs": {"pixels": ["61", 0], "vae": ["10", 0]}}
    graph["63"] = {"class_type": "BasicScheduler", "inputs": {"model": [model, 0], "scheduler": "simple", "steps": 2,
                                                              "denoise": 0.6}}
    graph["64"] = {"class_type": CUSTOM, "inputs": {**graph[first]["inputs"], "sigmas": ["63", 0],
                                                    "latent_image": ["62", 0]}}
    graph["65"] = {"class_type": "VAEDecode", "inputs": {"samples": ["64", 0], "vae": ["10", 0]}}
    graph["66"] = {"class_type": "SaveImage", "inputs": {"images": ["65", 0], "filename_prefix": "second"}}
    return graph


CUSTOM = "SamplerCustomAdvanced"


@pytest.mark.parametrize("family", ["flux", "sd3"])
def test_a_second_sampler_runs_img2img_and_resumes_inside_either_pass(harness: Harness, family: str) -> None:
    graph = two_pass_graph(family)
    saved: dict[int, bytes] = {}
    phases: list[str | None] = []

    def snapshot(step: int, state: Any) -> None:
        saved[step] = checkpoint.dump(state(), KEY)

    out = run(harness, graph, on_step=snapshot, phases=phases)
    assert [image.size for image in out] == [(64, 48), (96, 64)]
    first = "13" if family == "flux" else "3"
    assert phases == [f"samplercustomadvanced-{first}", "samplercustomadvanced-64"]
    assert harness.reports[-1] == (5, 5) and sorted(saved) == [1, 2, 3, 4, 5]
    reference = png(out)
    for stop in (2, 3, 4):
        assert png(run(harness, graph, resume_from=checkpoint.load(saved[stop], KEY))) == reference, stop
    stronger = copy.deepcopy(graph)
    stronger["63"]["inputs"]["denoise"] = 0.9
    again = run(harness, stronger)
    assert np.array_equal(np.asarray(again[0]), np.asarray(out[0]))
    assert not np.array_equal(np.asarray(again[1]), np.asarray(out[1]))
    multistep = copy.deepcopy(graph)
    multistep["67"] = {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "dpmpp_2m"}}
    multistep["64"]["inputs"]["sampler"] = ["67", 0]
    with pytest.raises(ContractError) as caught:
        run(harness, multistep)
    assert caught.value.field == "inputs.graph.67.inputs.sampler_name", caught.value


def custom_default_graph(model: str = "tiny-sd") -> dict[str, Any]:
    """ComfyUI's default txt2img graph with its KSampler split into the custom-sampling nodes."""
    graph = default_graph(model)
    ks = graph.pop("3")["inputs"]
    graph["3"] = {"class_type": CUSTOM, "inputs": {"noise": ["20", 0], "guider": ["21", 0], "sampler": ["22", 0],
                                                   "sigmas": ["23", 0], "latent_image": ks["latent_image"]}}
    graph["20"] = {"class_type": "RandomNoise", "inputs": {"noise_seed": ks["seed"]}}
    graph["21"] = {"class_type": "CFGGuider", "inputs": {"model": ks["model"], "positive": ks["positive"],
                                                         "negative": ks["negative"], "cfg": ks["cfg"]}}
    graph["22"] = {"class_type": "KSamplerSelect", "inputs": {"sampler_name": ks["sampler_name"]}}
    graph["23"] = {"class_type": "BasicScheduler", "inputs": {"model": ks["model"], "scheduler": ks["scheduler"],
                                                              "steps": ks["steps"], "denoise": ks["denoise"]}}
    return graph


@pytest.mark.parametrize("model", ["tiny-sd", "tiny-sdxl"])
def test_custom_sampling_on_sd_models_is_ksamplers_run_in_a_pass_of_its_own(harness: Harness, model: str) -> None:
    graph = custom_default_graph(model)
    phases: list[str | None] = []
    out = pixels(run(harness, graph, phases=phases))
    assert phases == ["samplercustomadvanced-3"]
    assert np.array_equal(out, pixels(run(harness, default_graph(model))))
    basic = copy.deepcopy(graph)
    basic["21"] = {"class_type": "BasicGuider", "inputs": {"model": ["4", 0], "conditioning": ["6", 0]}}
    assert not np.array_equal(pixels(run(harness, basic)), out)
    euler_a = copy.deepcopy(graph)
    euler_a["22"]["inputs"]["sampler_name"] = "euler_ancestral"
    assert not np.array_equal(pixels(run(harness, euler_a)), out)


def test_custom_sampling_on_sd_resumes_byte_identical_and_refuses_naming_its_nodes(harness: Harness) -> None:
    graph = custom_default_graph()
    saved: dict[int, bytes] = {}
    reference = png(run(harness, graph, on_step=lambda step, state: saved.update({step: checkpoint.dump(
        state(), KEY)})))
    assert png(run(harness, graph, resume_from=checkpoint.load(saved[2], KEY))) == reference
    bad = copy.deepcopy(graph)
    bad["22"]["inputs"]["sampler_name"] = "euler_ancestral"
    bad["23"]["inputs"]["scheduler"] = "karras"
    with pytest.raises(ContractError) as caught:  # a graph the API's check did not see (it refuses it first)
        run_graph(bad, harness.context(seed=7))
    assert caught.value.field == "inputs.graph.23.inputs.scheduler", caught.value


def test_a_graph_with_both_kinds_of_sampler_runs_and_resumes_inside_either_and_a_wrong_model_sampling_is_refused(
        harness: Harness) -> None:
    graph = custom_default_graph()
    graph["30"] = {"class_type": "KSampler", "inputs": {
        "model": ["4", 0], "seed": 1, "steps": 2, "cfg": 8.0, "sampler_name": "euler", "scheduler": "normal",
        "positive": ["6", 0], "negative": ["7", 0], "latent_image": ["3", 0], "denoise": 0.5}}
    graph["31"] = {"class_type": "VAEDecode", "inputs": {"samples": ["30", 0], "vae": ["4", 2]}}
    graph["32"] = {"class_type": "SaveImage", "inputs": {"images": ["31", 0], "filename_prefix": "x"}}
    phases: list[str | None] = []
    saved: dict[int, bytes] = {}
    reference = png(run(harness, graph, phases=phases, on_step=lambda step, state: saved.update({
        step: checkpoint.dump(state(), KEY)})))
    assert phases == ["samplercustomadvanced-3", "ksampler-30"]
    total = harness.reports[-1][1]
    assert total == 3 + 2 and sorted(saved) == list(range(1, total + 1))
    assert png(run(harness, graph)) == reference
    for stop in range(1, total):  # inside the custom sampler's pass (1, 2), at its end (3), inside KSampler's (4)
        assert png(run(harness, graph, resume_from=checkpoint.load(saved[stop], KEY))) == reference, stop
    flux = flux_graph()
    flux["30"] = {"class_type": "ModelSamplingSD3", "inputs": {"model": ["12", 0], "shift": 3.0}}
    with pytest.raises(ContractError) as caught:
        run(harness, flux)
    assert caught.value.field == "inputs.graph.30.inputs.model", caught.value
