"""Upscale models in graphs on the tiny models, in-process: ComfyUI's default graph with its decoded image put
through UpscaleModelLoader and ImageUpscaleWithModel (tiny-esrgan, x4) before SaveImage.

It gives the model's scale of the size, the same bytes twice and after a resume inside the sampler, other pixels
than a plain resize; a model of another kind for the loader is refused naming the node's input."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from PIL import Image

from runtime.contract import ContractError
from runtime.worker import checkpoint
from tests.comfy.runner import default_graph, run
from tests.pipelines.harness import Harness, png

KEY = "f" * 64






def upscale_graph(model_name: str = "tiny-esrgan") -> dict[str, Any]:
    """The default graph (64 x 48, 3 steps) with SaveImage 9 saving the upscaled image of VAEDecode 8."""
    graph = default_graph()
    graph["10"] = {"class_type": "UpscaleModelLoader", "inputs": {"model_name": model_name}}
    graph["11"] = {"class_type": "ImageUpscaleWithModel", "inputs": {"upscale_model": ["10", 0],
                                                                     "image": ["8", 0]}}
    graph["9"]["inputs"]["images"] = ["11", 0]
    return graph


def test_an_upscale_graph_gives_the_models_scale_the_same_bytes_twice_and_after_a_resume(harness: Harness) -> None:
    graph = upscale_graph()
    saved: dict[int, bytes] = {}
    out = run(harness, graph, on_step=lambda step, state: saved.update({step: checkpoint.dump(state(), KEY)}))
    assert [image.size for image in out] == [(256, 192)]  # tiny-esrgan is x4
    reference = png(out)
    assert png(run(harness, graph)) == reference
    assert png(run(harness, graph, resume_from=checkpoint.load(saved[2], KEY))) == reference
    plain = run(harness, default_graph())[0].resize((256, 192), Image.Resampling.LANCZOS)
    assert not np.array_equal(np.asarray(plain), np.asarray(out[0]))


@pytest.mark.parametrize("model_name", ["tiny-sd", "tiny-lora-sd1", "no-such-upscaler"])
def test_a_model_that_is_no_upscaler_is_refused_naming_the_input(harness: Harness, model_name: str) -> None:
    with pytest.raises(ContractError) as caught:
        run(harness, upscale_graph(model_name))
    assert caught.value.field == "inputs.graph.10.inputs.model_name", caught.value

