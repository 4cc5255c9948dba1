"""The ``comfyui`` pipeline's interpreter (``pipelines/comfyui/``) on the tiny models, in-process: ComfyUI's own
workflows (tests/comfy/workflows/, as ComfyUI exports them) at tiny sizes and few steps.

The default txt2img graph gives spotgen's txt2img pixels at the EmptyLatentImage's size, the same bytes twice, and
other pixels when any of its sampler's or encoder's inputs changes; the hires graph (two KSamplers and a latent
upscale between) gives the upscaled size, and an interruption inside either sampler resumes to the bytes of an
uninterrupted run, through checkpoint bytes as the worker stores them. Then the other nodes of this slice (text
nodes, ConditioningCombine, VAEEncode, LatentUpscale's and ImageScale's methods, ImageInvert, PreviewImage) and
what is refused naming the node."""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import pytest
import torch

from pipelines.comfyui.executor import run_order
from pipelines.comfyui.latents import MODES, resized
from pipelines.comfyui.pixels import METHODS as SCALE_METHODS
from pipelines.comfyui.pixels import scaled
from pipelines.comfyui.values import Images, Latent
from runtime.contract import ContractError
from runtime.plugins import JobInterrupted
from runtime.worker import checkpoint
from tests.comfy.runner import default_graph, run, workflow
from tests.pipelines.harness import Harness, pixels, png

KEY = "f" * 64




def hires_graph(model: str = "tiny-sd") -> dict[str, Any]:
    """ComfyUI's hires-fix example: 64 x 48, x1.5 in latents, DPM++ SDE then DPM++ 2M at denoise 0.5."""
    graph = workflow("hires_two_samplers")
    graph["16"]["inputs"]["ckpt_name"] = model
    graph["5"]["inputs"].update(width=64, height=48)
    graph["3"]["inputs"]["steps"] = 2
    graph["11"]["inputs"]["steps"] = 2
    return graph






@pytest.mark.parametrize("model", ["tiny-sd", "tiny-sdxl"])
def test_the_default_graph_gives_txt2imgs_pixels_at_the_empty_latents_size(harness: Harness, model: str) -> None:
    graph = default_graph(model)
    out = run(harness, graph)
    assert [image.size for image in out] == [(64, 48)]
    assert png(run(harness, graph)) == png(out)
    prompt, negative = graph["6"]["inputs"]["text"], graph["7"]["inputs"]["text"]
    native = harness.run("txt2img", job_seed=1234, model=model, prompt=prompt, negative_prompt=negative,
                         guidance_scale=8, steps=3)
    assert np.array_equal(pixels(out), pixels(native))


@pytest.mark.parametrize(("node", "changes"), [
    ("3", {"seed": 1235}), ("3", {"steps": 4}), ("3", {"cfg": 5.0}), ("3", {"sampler_name": "euler_ancestral"}),
    ("3", {"scheduler": "karras"}), ("3", {"seed": 2**64 - 1}), ("6", {"text": "a red fox in the snow"}),
    ("7", {"text": "blurry"}),
])
def test_every_input_of_the_default_graph_changes_the_pixels(harness: Harness, node: str,
                                                            changes: dict[str, Any]) -> None:
    base = pixels(run(harness, default_graph()))
    graph = default_graph()
    graph[node]["inputs"].update(changes)
    out = pixels(run(harness, graph))
    assert out.shape == base.shape and not np.array_equal(out, base), changes


def test_a_batch_draws_image_i_from_seed_plus_i(harness: Harness) -> None:
    one = pixels(run(harness, default_graph()))
    graph = default_graph()
    graph["5"]["inputs"]["batch_size"] = 2
    two = pixels(run(harness, graph))
    assert two.shape == (2, 48, 64, 3) and np.array_equal(two[:1], one) and not np.array_equal(two[1], one[0])


def test_sdxl_runs_the_text_nodes(harness: Harness) -> None:
    graph = default_graph("tiny-sdxl")
    out = pixels(run(harness, graph))
    skipped = copy.deepcopy(graph)
    skipped["10"] = {"class_type": "CLIPSetLastLayer", "inputs": {"clip": ["4", 1], "stop_at_clip_layer": -2}}
    skipped["6"]["inputs"]["clip"] = ["10", 0]
    zeroed = copy.deepcopy(graph)
    zeroed["10"] = {"class_type": "ConditioningZeroOut", "inputs": {"conditioning": ["7", 0]}}
    zeroed["3"]["inputs"]["negative"] = ["10", 0]
    for other in (skipped, zeroed):
        assert not np.array_equal(pixels(run(harness, other)), out)


def test_the_hires_graph_gives_both_sizes_in_node_order_with_a_pass_per_sampler(harness: Harness) -> None:
    for model in ("tiny-sd", "tiny-sdxl"):
        phases: list[str | None] = []
        out = run(harness, hires_graph(model), phases=phases)
        assert [image.size for image in out] == [(64, 48), (96, 72)], model  # SaveImage 9, then 13
        assert phases == ["ksampler-3", "ksampler-11"]
    total = harness.reports[-1][1]
    assert [step for step, _ in harness.reports] == list(range(1, total + 1))


def test_an_interruption_inside_either_sampler_resumes_byte_identical(harness: Harness) -> None:
    """Checkpoints after each step of the first sampler (DPM++ SDE: its Brownian noise too) and of the second,
    each saved as bytes and resumed from; and one real interruption inside the second sampler."""
    graph = hires_graph()
    saved: dict[int, bytes] = {}

    def snapshot(step: int, state: Any) -> None:
        saved[step] = checkpoint.dump(state(), KEY)

    reference = png(run(harness, graph, on_step=snapshot))
    total = harness.reports[-1][1]
    first = 3  # DPM++ SDE, second order: 2 steps are 3 timesteps
    assert total == first + 2 and sorted(saved) == list(range(1, total + 1))
    for stop in range(1, total):
        resumed = png(run(harness, graph, resume_from=checkpoint.load(saved[stop], KEY)))
        assert harness.reports[0] == (stop + 1, total), stop
        assert resumed == reference, f"resumed after step {stop} of {total}"

    def interrupt(step: int, state: Any) -> None:
        if step == first + 1:
            saved[0] = checkpoint.dump(state(), KEY)
            raise JobInterrupted

    with pytest.raises(JobInterrupted):
        run(harness, graph, on_step=interrupt)
    assert png(run(harness, graph, resume_from=checkpoint.load(saved[0], KEY))) == reference


@pytest.mark.parametrize("model", ["tiny-sd", "tiny-sdxl"])
def test_combined_conditionings_average_their_predictions(harness: Harness, model: str) -> None:
    """A text combined with itself is that text exactly ((p + p) / 2 is p in floating point), on either side;
    combined with another, other pixels."""
    plain = pixels(run(harness, default_graph(model)))

    def combined(side: str, first: str, second: str) -> np.ndarray:
        graph = default_graph(model)
        graph["10"] = {"class_type": "CLIPTextEncode", "inputs": {"text": "a lighthouse at dusk", "clip": ["4", 1]}}
        graph["11"] = {"class_type": "ConditioningCombine",
                       "inputs": {"conditioning_1": [first, 0], "conditioning_2": [second, 0]}}
        graph["3"]["inputs"][side] = ["11", 0]
        return pixels(run(harness, graph))

    assert np.array_equal(combined("positive", "6", "6"), plain)
    assert np.array_equal(combined("negative", "7", "7"), plain)
    assert not np.array_equal(combined("positive", "6", "10"), plain)
    assert not np.array_equal(combined("negative", "10", "7"), plain)


def lora_graph(strength_model: float, strength_clip: float | None) -> dict[str, Any]:
    """The default graph through a LoraLoader (or LoraLoaderModelOnly, without a CLIP strength)."""
    graph = default_graph()
    if strength_clip is None:
        graph["10"] = {"class_type": "LoraLoaderModelOnly", "inputs": {
            "model": ["4", 0], "lora_name": "tiny-lora-sd1", "strength_model": strength_model}}
    else:
        graph["10"] = {"class_type": "LoraLoader", "inputs": {
            "model": ["4", 0], "clip": ["4", 1], "lora_name": "tiny-lora-sd1", "strength_model": strength_model,
            "strength_clip": strength_clip}}
        for text in ("6", "7"):
            graph[text]["inputs"]["clip"] = ["10", 1]
    graph["3"]["inputs"]["model"] = ["10", 0]
    return graph


def test_a_lora_at_both_strengths_gives_txt2imgs_pixels_with_it_and_each_strength_matters(harness: Harness) -> None:
    plain = pixels(run(harness, default_graph()))
    both = pixels(run(harness, lora_graph(0.7, 0.7)))
    graph = default_graph()
    native = harness.run("txt2img", job_seed=1234, prompt=graph["6"]["inputs"]["text"],
                         negative_prompt=graph["7"]["inputs"]["text"], guidance_scale=8, steps=3,
                         loras=[{"id": "tiny-lora-sd1", "weight": 0.7}])
    assert np.array_equal(both, pixels(native)) and not np.array_equal(both, plain)
    model_only = pixels(run(harness, lora_graph(0.7, None)))
    assert np.array_equal(model_only, pixels(run(harness, lora_graph(0.7, 0.0))))
    clip_only = pixels(run(harness, lora_graph(0.0, 0.7)))
    outs = [plain, both, model_only, clip_only]
    assert not [(i, j) for i in range(4) for j in range(i + 1, 4) if np.array_equal(outs[i], outs[j])]
    assert np.array_equal(pixels(run(harness, default_graph())), plain)  # switched off again


def test_vae_encode_and_latent_upscale_feed_a_second_sampler(harness: Harness) -> None:
    """img2img inside a graph: the first image decoded, encoded again, upscaled to a given size and denoised;
    PreviewImage's images come with SaveImage's, in node order."""
    graph = default_graph()
    graph["20"] = {"class_type": "VAEEncode", "inputs": {"pixels": ["8", 0], "vae": ["4", 2]}}
    graph["21"] = {"class_type": "LatentUpscale", "inputs": {"samples": ["20", 0], "upscale_method": "bilinear",
                                                              "width": 80, "height": 0, "crop": "disabled"}}
    graph["22"] = {"class_type": "KSampler", "inputs": {**graph["3"]["inputs"], "latent_image": ["21", 0],
                                                         "denoise": 0.6}}
    graph["23"] = {"class_type": "VAEDecode", "inputs": {"samples": ["22", 0], "vae": ["4", 2]}}
    graph["24"] = {"class_type": "PreviewImage", "inputs": {"images": ["23", 0]}}
    graph["25"] = {"class_type": "ImageScaleBy", "inputs": {"image": ["8", 0], "upscale_method": "lanczos",
                                                             "scale_by": 1.25}}
    graph["26"] = {"class_type": "ImageInvert", "inputs": {"image": ["25", 0]}}
    graph["27"] = {"class_type": "SaveImage", "inputs": {"images": ["26", 0], "filename_prefix": "inverted"}}
    out = run(harness, graph)
    assert [image.size for image in out] == [(64, 48), (80, 64), (80, 60)]  # 80 x 60 in cells of 8; 64 x 1.25
    stronger = copy.deepcopy(graph)
    stronger["22"]["inputs"]["denoise"] = 0.9
    assert not np.array_equal(np.asarray(run(harness, stronger)[1]), np.asarray(out[1]))


def test_every_latent_upscale_method_gives_its_own_latents_and_bislerp_keeps_their_norms() -> None:
    latent = Latent(torch.randn(1, 4, 6, 8, generator=torch.Generator().manual_seed(0)))
    out = {mode: resized(latent, 12, 9, mode, "disabled", "w").samples for mode in MODES}
    assert all(tuple(value.shape) == (1, 4, 9, 12) for value in out.values())
    modes = list(out)
    assert not [(a, b) for i, a in enumerate(modes) for b in modes[i + 1:] if torch.equal(out[a], out[b])]
    norms = {mode: value.norm(dim=1).mean().item() for mode, value in out.items()}
    own = latent.samples.norm(dim=1).mean().item()
    assert abs(norms["bislerp"] - own) < 0.05 < norms["bislerp"] - norms["bilinear"]
    assert torch.equal(resized(latent, 8, 6, "bislerp", "disabled", "w").samples, latent.samples)
    assert tuple(resized(latent, 6, 6, "bilinear", "center", "w").samples.shape) == (1, 4, 6, 6)


def test_every_image_scale_method_gives_its_own_pixels_in_range() -> None:
    images = Images(torch.rand(2, 3, 12, 16, generator=torch.Generator().manual_seed(0)))
    out = {method: scaled(images, 20, 10, method, "disabled", "w").pixels for method in SCALE_METHODS}
    assert all(tuple(value.shape) == (2, 3, 10, 20) and 0 <= value.min() <= value.max() <= 1
               for value in out.values())
    methods = list(out)
    assert not [(a, b) for i, a in enumerate(methods) for b in methods[i + 1:] if torch.equal(out[a], out[b])]
    assert tuple(scaled(images, 10, 10, "area", "center", "w").pixels.shape) == (2, 3, 10, 10)


def test_only_what_an_output_needs_runs_in_dependency_order() -> None:
    graph = hires_graph()
    del graph["13"], graph["12"]  # the second sampler now feeds nothing
    assert run_order(graph) == ["5", "16", "6", "7", "3", "8", "9"]


@pytest.mark.parametrize(("change", "field"), [
    (lambda g: g["4"]["inputs"].update(ckpt_name="tiny-esrgan"), "inputs.graph.4.inputs.ckpt_name"),
    (lambda g: g.update({"10": {"class_type": "LoraLoader", "inputs": {  # another family's
        "model": ["4", 0], "clip": ["4", 1], "lora_name": "tiny-lora-sdxl", "strength_model": 1.0,
        "strength_clip": 1.0}}}) or g["3"]["inputs"].update(model=["10", 0]), "inputs.graph.10.inputs.lora_name"),
])
def test_what_the_interpreter_does_not_run_is_refused_naming_the_node(harness: Harness, change: Any,
                                                                      field: str) -> None:
    graph = default_graph()
    graph["10"] = {"class_type": "ConditioningZeroOut", "inputs": {"conditioning": ["7", 0]}}
    change(graph)
    steps: list[int] = []
    with pytest.raises(ContractError) as caught:
        run(harness, graph, on_step=lambda step, state: steps.append(step))
    assert caught.value.field == field and not steps, caught.value
