"""ComfyUI's "checkpoint" examples of the flow families on the tiny models: SD 3.5's own example
(tests/comfy/workflows/sd35.json: CheckpointLoaderSimple, ModelSamplingSD3, CLIPTextEncode, ConditioningZeroOut,
EmptySD3LatentImage, KSampler) and Flux dev's from one checkpoint file (CheckpointLoaderSimple, FluxGuidance,
KSampler at cfg 1), at 64 x 48 and 3 steps.

Each runs as one KSampler pass and gives the pixels of the same run by other nodes (SD 3.5's custom-sampling graph
through UNETLoader, DualCLIPLoader and VAELoader; spotgen's own Flux txt2img); every KSampler input changes the
pixels; Flux's negative has its own guidance; an interrupted SD 3.5 graph resumes to the same bytes; what KSampler
cannot run on these models is refused naming its input."""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import pytest

from runtime.contract import ContractError
from tests.comfy.runner import assert_resumes_alike, run, workflow
from tests.comfy.test_flow_graphs import sd3_graph
from tests.pipelines.harness import Harness, pixels, png

PROMPT = "cute anime girl with massive fluffy fennec ears and a big fluffy tail blonde messy long hair"


def sd35_graph() -> dict[str, Any]:
    """ComfyUI's SD 3.5 example (as ComfyUI writes it) on tiny-sd3 at 64 x 48, 3 steps."""
    graph = workflow("sd35")
    graph["4"]["inputs"]["ckpt_name"] = "tiny-sd3"
    graph["53"]["inputs"].update(width=64, height=48)
    graph["3"]["inputs"].update(seed=1234, steps=3)
    return graph


def flux_checkpoint_graph() -> dict[str, Any]:
    """ComfyUI's Flux dev example from one checkpoint, in ComfyUI's API format: FluxGuidance on the positive, an
    empty negative, KSampler at cfg 1 (its file name, flux1-dev-fp8.safetensors, is the tiny catalog's alias of
    tiny-flux, which the API puts in its place)."""
    def node(kind: str, **inputs: Any) -> dict[str, Any]:
        return {"inputs": inputs, "class_type": kind, "_meta": {"title": kind}}

    return {
        "4": node("CheckpointLoaderSimple", ckpt_name="tiny-flux"),
        "6": node("CLIPTextEncode", text=PROMPT, clip=["4", 1]),
        "33": node("CLIPTextEncode", text="", clip=["4", 1]),
        "35": node("FluxGuidance", guidance=3.5, conditioning=["6", 0]),
        "27": node("EmptySD3LatentImage", width=64, height=48, batch_size=1),
        "31": node("KSampler", seed=1234, steps=3, cfg=1.0, sampler_name="euler", scheduler="simple", denoise=1.0,
                   model=["4", 0], positive=["35", 0], negative=["33", 0], latent_image=["27", 0]),
        "8": node("VAEDecode", samples=["31", 0], vae=["4", 2]),
        "9": node("SaveImage", filename_prefix="ComfyUI", images=["8", 0]),
    }


def test_comfyuis_sd35_example_runs_as_one_ksampler_pass_with_the_custom_sampling_graphs_pixels(
        harness: Harness) -> None:
    phases: list[str | None] = []
    out = run(harness, sd35_graph(), phases=phases)
    assert [image.size for image in out] == [(64, 48)]
    assert phases == ["ksampler-3"] and [step for step, _ in harness.reports] == [1, 2, 3]
    assert np.array_equal(pixels(out), pixels(run(harness, sd3_graph())))


def test_the_flux_checkpoint_example_gives_spotgens_own_flux_txt2img_pixels(harness: Harness) -> None:
    phases: list[str | None] = []
    out = pixels(run(harness, flux_checkpoint_graph(), phases=phases))
    assert phases == ["ksampler-31"]
    native = harness.run("txt2img", job_seed=1234, model="tiny-flux", prompt=PROMPT, guidance=3.5, steps=3)
    assert np.array_equal(out, pixels(native))


def _other_negative(graph: dict[str, Any]) -> None:
    graph["41"]["inputs"]["text"] = "blurry"
    graph["3"]["inputs"]["negative"] = ["41", 0]


@pytest.mark.parametrize(("family", "change"), [
    ("sd3", {"3": {"seed": 1235}}), ("sd3", {"3": {"steps": 4}}), ("sd3", {"3": {"cfg": 2.0}}),
    ("sd3", {"3": {"sampler_name": "heun"}}), ("sd3", {"3": {"scheduler": "karras"}}),
    ("sd3", {"3": {"denoise": 0.5}}), ("sd3", {"13": {"shift": 1.5}}),
    ("sd3", {"16": {"text": "a red fox in the snow"}}), ("sd3", _other_negative),
    ("sd3", {"53": {"batch_size": 2}}),
    ("flux", {"31": {"seed": 1235}}), ("flux", {"31": {"steps": 4}}), ("flux", {"31": {"cfg": 2.0}}),
    ("flux", {"31": {"sampler_name": "dpmpp_2m"}}), ("flux", {"31": {"scheduler": "karras"}}),
    ("flux", {"35": {"guidance": 5.0}}), ("flux", {"6": {"text": "a red fox in the snow"}}),
    ("flux", {"31": {"cfg": 2.0}, "33": {"text": "blurry"}}), ("flux", {"31": {"denoise": 0.5}}),
])
def test_every_ksampler_input_changes_the_pixels(harness: Harness, family: str, change: Any) -> None:
    """cfg 2 on Flux runs its true CFG with the (empty) negative; then the negative's text matters too. A denoise
    of 0.5 runs the last 3 steps of 6 from the empty latent noised part way (img2img from zeros, as ComfyUI; 0.8
    would make a schedule of int(3 / 0.8) = 3 steps, the whole of it). The model's shift is its ModelSamplingSD3's
    (tiny-sd3's own is 3 too)."""
    make = sd35_graph if family == "sd3" else flux_checkpoint_graph
    base = pixels(run(harness, make()))
    graph = make()
    if callable(change):
        change(graph)
    else:
        for node, inputs in change.items():
            graph[node]["inputs"].update(inputs)
    out = pixels(run(harness, graph))
    assert out.shape != base.shape or not np.array_equal(out, base), change


@pytest.mark.parametrize("family", ["flux", "sd3"])
def test_an_empty_latent_image_of_sds_channels_is_the_models_own_as_in_comfyui(harness: Harness, family: str) -> None:
    """ComfyUI makes EmptyLatentImage's 4 channels of zeros the model's 16 (the default graph on a Flux or SD 3.5
    checkpoint runs)."""
    graph = sd35_graph() if family == "sd3" else flux_checkpoint_graph()
    reference = png(run(harness, graph))
    graph["53" if family == "sd3" else "27"]["class_type"] = "EmptyLatentImage"
    assert png(run(harness, graph)) == reference


def test_fluxs_negative_runs_with_its_own_guidance_as_in_comfyui(harness: Harness) -> None:
    """At cfg 2 (true CFG) the negative's FluxGuidance is its own (3.5 where none is set, as ComfyUI's default),
    not the positive's (diffusers' one ``guidance`` for both)."""
    def graph(negative_guidance: float | None, positive_guidance: float = 3.5) -> dict[str, Any]:
        out = flux_checkpoint_graph()
        out["31"]["inputs"]["cfg"] = 2.0
        out["35"]["inputs"]["guidance"] = positive_guidance
        if negative_guidance is not None:
            out["36"] = {"class_type": "FluxGuidance", "inputs": {"guidance": negative_guidance,
                                                                  "conditioning": ["33", 0]}}
            out["31"]["inputs"]["negative"] = ["36", 0]
        return out

    plain = png(run(harness, graph(None)))
    assert png(run(harness, graph(3.5))) == plain
    assert png(run(harness, graph(5.0))) != plain
    assert png(run(harness, graph(None, 5.0))) == png(run(harness, graph(3.5, 5.0)))
    assert_resumes_alike(harness, graph(5.0))  # a resumed pass starts with the positive's call again


def test_an_interrupted_sd35_ksampler_graph_resumes_to_the_same_bytes(harness: Harness) -> None:
    assert_resumes_alike(harness, sd35_graph())


@pytest.mark.parametrize(("change", "field"), [
    (lambda g: g["3"]["inputs"].update(sampler_name="lms"), "inputs.graph.3.inputs.sampler_name"),
    (lambda g: g["3"]["inputs"].update(scheduler="karras", sampler_name="dpmpp_2m"),
     "inputs.graph.3.inputs.scheduler"),
    (lambda g: g["3"]["inputs"].update(denoise=0.5, sampler_name="dpmpp_2m"),
     "inputs.graph.3.inputs.sampler_name"),
    (lambda g: g.update({"99": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "tiny-flux"}}})
     or g["16"]["inputs"].update(clip=["99", 1]), "inputs.graph.3.inputs.positive"),
    (lambda g: g["4"]["inputs"].update(ckpt_name="tiny-flux-fill"), "inputs.graph.4.inputs.ckpt_name"),
])
def test_what_ksampler_cannot_run_on_sd35_is_refused_naming_its_input(harness: Harness, change: Any,
                                                                     field: str) -> None:
    graph = sd35_graph()
    change(graph)
    steps: list[int] = []
    with pytest.raises(ContractError) as caught:
        run(harness, copy.deepcopy(graph), on_step=lambda step, state: steps.append(step))
    assert caught.value.field == field and not steps, caught.value
