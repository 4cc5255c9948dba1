"""Images into graphs on the worker (``pipelines/comfyui/imagenodes.py``), on the tiny models at tiny sizes: ComfyUI's
img2img and inpainting workflows (tests/comfy/workflows/, as ComfyUI saves them), their LoadImage's name already
resolved by the API to an input-bucket reference. img2img keeps the uploaded image's size and resumes byte-identical
from inside its sampler; the inpainting graph (VAEEncodeForInpaint) repaints the masked region far more than the
rest; LoadImage's mask is 1 - alpha and LoadImageMask reads the channel asked for; a name that is no reference is
refused naming the input."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from pipelines.comfyui.executor import Execution
from runtime.contract import ContractError
from runtime.contract.comfy.inputs import ComfyInputs
from runtime.models.store import ModelStore
from tests.comfy.runner import BOX, PAINTED, PHOTO, assert_resumes_alike, photos, run, workflow
from tests.pipelines.harness import Harness, pixels, png


@pytest.fixture(scope="module")
def harness(tiny_models: Path) -> Harness:
    made = Harness(ModelStore(tiny_models, "cpu"))
    made.images.update(photos())
    return made


def img2img_graph() -> dict[str, Any]:
    graph = workflow("img2img")
    graph["14"]["inputs"]["ckpt_name"] = "tiny-sd"
    graph["10"]["inputs"]["image"] = PHOTO
    graph["3"]["inputs"].update(steps=3, seed=42, denoise=0.75)
    return graph


def inpaint_graph(model: str) -> dict[str, Any]:
    graph = workflow("inpaint")
    graph["29"]["inputs"]["ckpt_name"] = model
    graph["20"]["inputs"]["image"] = PAINTED
    graph["3"]["inputs"].update(steps=3, seed=42, sampler_name="euler")
    return graph




def test_img2img_keeps_the_images_size_and_its_inputs_matter(harness: Harness) -> None:
    out = run(harness, img2img_graph())
    assert [image.size for image in out] == [(64, 48)]
    assert png(run(harness, img2img_graph())) == png(out)
    other = img2img_graph()
    other["3"]["inputs"]["denoise"] = 0.5
    assert not np.array_equal(pixels(run(harness, other)), pixels(out))


def test_an_interruption_inside_the_img2img_sampler_resumes_to_the_same_bytes(harness: Harness) -> None:
    graph = img2img_graph()
    assert_resumes_alike(harness, graph)


@pytest.mark.parametrize("model", ["tiny-sd"])  # an inpainting checkpoint once the loaders take that variant
def test_the_inpaint_graph_repaints_the_masked_region_far_more_than_the_rest(harness: Harness, model: str) -> None:
    """Two seeds: inside the mask the pixels differ much; outside the grown mask the sampler's latents are the
    VAEEncodeForInpaint's own, exactly, so only the decoder's reach over the mask's edge differs there."""
    runs = []
    for seed in (42, 43):
        graph = inpaint_graph(model)
        graph["3"]["inputs"]["seed"] = seed
        ex = Execution(ComfyInputs.model_validate({"graph": graph}).graph, harness.context(seed=7))
        out = ex.run()["9"]
        cells = np.ones((6, 8), bool)  # latent cells the grown mask (6 px, rounded up to cells) leaves alone
        cells[(BOX[1] - 6) // 8:-(-(BOX[3] + 6) // 8), (BOX[0] - 6) // 8:-(-(BOX[2] + 6) // 8)] = False
        sampled, encoded = ex.values["3"][0].samples[0], ex.values["26"][0].samples[0]
        assert torch.equal(sampled[:, cells], encoded[:, cells]) and not torch.equal(sampled, encoded)
        runs.append(pixels(out).astype(np.int16)[0])
    diff = np.abs(runs[0] - runs[1]).mean(axis=-1)
    assert diff.shape == (48, 64)
    inside = np.zeros(diff.shape, bool)
    inside[BOX[1]:BOX[3], BOX[0]:BOX[2]] = True
    rest = np.ones(diff.shape, bool)
    rest[max(0, BOX[1] - 8):BOX[3] + 8, max(0, BOX[0] - 8):BOX[2] + 8] = False  # the grown mask and a cell
    assert diff[inside].mean() > 4 * max(diff[rest].mean(), 0.5), (diff[inside].mean(), diff[rest].mean())


def noise_mask_graph(model: str = "tiny-sd") -> dict[str, Any]:
    """img2img with SetLatentNoiseMask on the VAEEncode's latent, the mask from LoadImageMask's alpha."""
    graph = img2img_graph()
    graph["14"]["inputs"]["ckpt_name"] = model
    graph["15"] = {"class_type": "LoadImageMask", "inputs": {"image": PAINTED, "channel": "alpha"}}
    graph["16"] = {"class_type": "SetLatentNoiseMask", "inputs": {"samples": ["12", 0], "mask": ["15", 0]}}
    graph["3"]["inputs"]["latent_image"] = ["16", 0]
    return graph


@pytest.mark.parametrize("model", ["tiny-sd", "tiny-sdxl"])
def test_set_latent_noise_mask_resamples_inside_the_mask_only(harness: Harness, model: str) -> None:
    graph = noise_mask_graph(model)
    ex = Execution(ComfyInputs.model_validate({"graph": graph}).graph, harness.context(seed=7))
    ex.run()
    sampled, encoded = ex.values["3"][0].samples[0], ex.values["12"][0].samples[0]
    painted = np.zeros((48, 64), bool)
    painted[BOX[1]:BOX[3], BOX[0]:BOX[2]] = True
    cells = ~painted[::8, ::8]  # the mask at the latents' size, as diffusers scales it (nearest)
    assert torch.equal(sampled[:, cells], encoded[:, cells]) and not torch.equal(sampled[:, ~cells], encoded[:, ~cells])


def test_an_interruption_inside_the_masked_sampler_resumes_to_the_same_bytes(harness: Harness) -> None:
    graph = inpaint_graph("tiny-sd")
    graph["3"]["inputs"]["sampler_name"] = "euler_ancestral"  # draws at every step: the generators are resumed too
    assert_resumes_alike(harness, graph)


def test_load_image_gives_rgb_and_one_minus_alpha(harness: Harness) -> None:
    graph = inpaint_graph("tiny-sd")
    graph["21"] = {"class_type": "LoadImageMask", "inputs": {"image": PAINTED, "channel": "red"}}
    graph["22"] = {"class_type": "LoadImageMask", "inputs": {"image": PAINTED, "channel": "alpha"}}
    ex = Execution(ComfyInputs.model_validate({"graph": graph}).graph | {k: graph[k] for k in ("21", "22")},
                   harness.context())
    image, mask = ex.evaluate("20")
    assert image.pixels.shape == (1, 3, 48, 64) and mask.values.shape == (1, 48, 64)
    assert torch.all(mask.values[0, BOX[1]:BOX[3], BOX[0]:BOX[2]] == 1) and mask.values.sum() == 24 * 16
    assert torch.equal(ex.evaluate("22")[0].values, mask.values)
    red = torch.from_numpy(np.asarray(harness.images[PAINTED])[..., 0] / 255).float()
    assert torch.allclose(ex.evaluate("21")[0].values[0], red)


def test_a_name_that_is_no_reference_is_refused_naming_the_input(harness: Harness) -> None:
    graph = img2img_graph()
    graph["10"]["inputs"]["image"] = "example.png"  # what the API resolves; the worker opens no name
    with pytest.raises(ContractError) as caught:
        run(harness, graph)
    assert caught.value.field == "inputs.graph.10.inputs.image"
