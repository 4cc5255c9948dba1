"""Checkpoints of other variants as a graph's MODEL (``pipelines/comfyui/loaders.py``'s ``VARIANTS``), on the tiny
models at 64 x 48: SDXL's refiner (``tiny-sdxl-refiner``, ``sd_xl_refiner_1.0.safetensors`` in ComfyUI's refiner
example) and SD's and SDXL's inpainting checkpoints (9-channel UNets).

The refiner example runs on the real refiner and resumes to the same bytes from inside the refiner's pass; KSampler
on a refiner with an empty latent is a pass from noise (its img2img class at strength 1, its aesthetic-score
conditioning). ComfyUI's inpainting workflow on an inpainting checkpoint gives the UNet the grown mask and the
VAEEncodeForInpaint latents at every step, keeps the latents outside the mask, and resumes to the same bytes; a
latent without a noise mask gives it a mask of ones and a grey image's latents, as ComfyUI does. Flux's Fill
checkpoint stays refused naming the input."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from pipelines.comfyui.executor import Execution
from pipelines.comfyui.inpaintmodel import blank_latents
from runtime.contract import ContractError
from runtime.contract.comfy.inputs import ComfyInputs
from runtime.models.store import ModelStore
from tests.comfy.runner import BOX, PAINTED, assert_resumes_alike, default_graph, photos, run, workflow
from tests.comfy.test_advanced_graphs import refiner_graph
from tests.pipelines.harness import Harness, pixels, png

#: The painted-out photo: transparent in a 24 x 16 box, LoadImage's mask there.
INPAINTING = ["tiny-sd-inpainting", "tiny-sdxl-inpainting"]


@pytest.fixture(scope="module")
def harness(tiny_models: Path) -> Harness:
    made = Harness(ModelStore(tiny_models, "cpu"))
    made.images.update(photos())
    return made


def inpaint_graph(model: str, sampler_name: str = "euler") -> dict[str, Any]:
    graph = workflow("inpaint")
    graph["29"]["inputs"]["ckpt_name"] = model
    graph["20"]["inputs"]["image"] = PAINTED
    graph["3"]["inputs"].update(steps=3, seed=42, sampler_name=sampler_name)
    return graph


def execution(harness: Harness, graph: dict[str, Any]) -> Execution:
    return Execution(ComfyInputs.model_validate({"graph": graph}).graph, harness.context(seed=7))


@contextmanager
def unet_inputs(unet: torch.nn.Module) -> Iterator[list[torch.Tensor]]:
    """The ``sample`` each call of the UNet gets while inside (the real UNet, watched by a forward pre-hook)."""
    seen: list[torch.Tensor] = []
    hook = unet.register_forward_pre_hook(lambda _module, args: seen.append(args[0].detach().clone()))
    try:
        yield seen
    finally:
        hook.remove()


# -- the refiner ---------------------------------------------------------------------------------------------------


def test_the_refiner_example_runs_on_the_refiner_and_resumes_inside_its_pass(harness: Harness) -> None:
    graph = refiner_graph("tiny-sdxl-refiner")
    out = run(harness, graph)
    assert [image.size for image in out] == [(64, 48)]
    assert not np.array_equal(pixels(out), pixels(run(harness, refiner_graph())))  # the refiner's own weights
    assert_resumes_alike(harness, graph, at=4)  # the base runs steps 1..3, the refiner 4..5


def test_ksampler_on_the_refiner_samples_an_empty_latent_from_noise(harness: Harness) -> None:
    ex = execution(harness, default_graph("tiny-sdxl-refiner"))
    ex.evaluate("4")
    with unet_inputs(ex.values["4"][0].base.unet) as seen:
        out = ex.run()["9"]
    first = seen[0].float()
    assert len(seen) == 3 and first.shape == (2, 4, 6, 8)  # three steps, the negative beside the positive
    assert 0.7 < float(first.std()) < 1.3  # pure noise at the schedule's first level, as Euler scales its input
    other = default_graph("tiny-sdxl-refiner")
    other["3"]["inputs"]["seed"] = 99
    assert not np.array_equal(pixels(out), pixels(run(harness, other)))
    assert png(run(harness, default_graph("tiny-sdxl-refiner"))) == png(out)


def test_an_interruption_inside_a_ksampler_on_the_refiner_resumes_to_the_same_bytes(harness: Harness) -> None:
    assert_resumes_alike(harness, default_graph("tiny-sdxl-refiner", sampler_name="euler_ancestral"))


# -- inpainting checkpoints ------------------------------------------------------------------------------------


def _far_cells() -> np.ndarray:
    """The latent cells the grown mask (6 px, rounded up to cells) leaves alone."""
    cells = np.ones((6, 8), bool)
    cells[(BOX[1] - 6) // 8:-(-(BOX[3] + 6) // 8), (BOX[0] - 6) // 8:-(-(BOX[2] + 6) // 8)] = False
    return cells


@pytest.mark.parametrize("model", INPAINTING)
def test_the_inpaint_graph_gives_the_unet_the_mask_and_the_masked_image(harness: Harness, model: str) -> None:
    ex = execution(harness, inpaint_graph(model))
    ex.evaluate("29")
    with unet_inputs(ex.values["29"][0].base.unet) as seen:
        ex.run()
    encoded, grown = ex.values["26"][0].samples, ex.values["26"][0].noise_mask
    cells = torch.nn.functional.interpolate((grown >= 0.5).float(), size=(6, 8))[0, 0]  # as diffusers scales it
    far = _far_cells()
    assert len(seen) == 3 and set(cells.unique().tolist()) == {0.0, 1.0}
    for sample in seen:
        assert sample.shape == (2, 9, 6, 8)
        mask, masked = sample[:, 4], sample[:, 5:]
        assert torch.equal(mask, cells.expand(2, 6, 8).to(mask.dtype))
        assert torch.equal(masked, encoded.repeat(2, 1, 1, 1).to(masked.dtype))
    sampled = ex.values["3"][0].samples[0]
    assert torch.equal(sampled[:, far], encoded[0][:, far]) and not torch.equal(sampled, encoded[0])


@pytest.mark.parametrize("model", INPAINTING)
def test_the_inpaint_graph_keeps_the_unmasked_pixels_and_repaints_the_box(harness: Harness, model: str) -> None:
    """Outside the mask the latents are the VAEEncodeForInpaint latent's exactly (``test_the_inpaint_graph_gives_``
    ``the_unet_the_mask_and_the_masked_image``), so the pixels there are close to that latent's own decoding, the
    photo's round trip through the VAE; inside, the sampler paints anew. The tiny VAE's decoder attends over the
    whole latent, so its pixels outside move with what is painted inside: far less, not nothing."""
    ex = execution(harness, inpaint_graph(model))
    out = pixels(ex.run()["9"]).astype(int)[0]
    roundtrip = pixels(execution(harness, {**inpaint_graph(model), "8": {
        "class_type": "VAEDecode", "inputs": {"samples": ["26", 0], "vae": ["29", 2]}}}).run()["9"]).astype(int)[0]
    diff = np.abs(out - roundtrip).mean(axis=-1)
    rest = np.ones(diff.shape, bool)
    rest[max(0, BOX[1] - 14):BOX[3] + 14, max(0, BOX[0] - 14):BOX[2] + 14] = False
    inside = diff[BOX[1]:BOX[3], BOX[0]:BOX[2]].mean()
    assert inside > 40 and inside > 2 * diff[rest].mean(), (diff[rest].mean(), inside)


@pytest.mark.parametrize("model", INPAINTING)
def test_an_interruption_inside_the_inpainting_checkpoints_pass_resumes_alike(harness: Harness, model: str) -> None:
    assert_resumes_alike(harness, inpaint_graph(model, sampler_name="euler_ancestral"))


@pytest.mark.parametrize("model", INPAINTING)
def test_an_unmasked_latent_on_an_inpainting_checkpoint_repaints_everything(harness: Harness, model: str) -> None:
    """ComfyUI's default workflow on an inpainting checkpoint: a mask of ones, a grey image's latents."""
    ex = execution(harness, default_graph(model))
    ex.evaluate("4")
    loaded = ex.values["4"][0]
    with unet_inputs(loaded.base.unet) as seen:
        out = ex.run()["9"]
    blank = blank_latents(loaded, 2, 48, 64, "cpu")
    assert len(seen) == 3 and float(blank.abs().max()) > 0
    for sample in seen:
        assert bool((sample[:, 4] == 1).all()) and torch.equal(sample[:, 5:], blank.to(sample.dtype))
    assert png(run(harness, default_graph(model))) == png(out)
    assert_resumes_alike(harness, default_graph(model, sampler_name="euler_ancestral"))


def test_flux_fill_stays_refused_naming_the_input(harness: Harness) -> None:
    graph = default_graph("tiny-flux-fill")
    with pytest.raises(ContractError) as refused:
        run(harness, graph)
    assert "ckpt_name" in str(refused.value) and "inpainting" in str(refused.value)


def test_samplers_that_give_the_unet_only_latents_refuse_an_inpainting_checkpoint(harness: Harness) -> None:
    """KSamplerAdvanced and a ControlNet's sampler would fail on the 9-channel UNet's first call: refused before
    any step, naming the sampler's model."""
    from tests.comfy.test_control_graphs import SHAPES, control_graph

    harness.images[SHAPES] = Image.new("RGB", (64, 48), (90, 90, 90))
    controlled = control_graph()
    controlled["4"]["inputs"]["ckpt_name"] = "tiny-sd-inpainting"
    steps: list[int] = []
    for graph, field in ((refiner_graph("tiny-sdxl-inpainting"), "inputs.graph.11.inputs.model"),
                         (controlled, "inputs.graph.3.inputs.model")):
        with pytest.raises(ContractError) as refused:
            run(harness, graph, on_step=lambda step, state: steps.append(step))
        assert refused.value.field == field and "inpainting checkpoint" in str(refused.value) and not steps
