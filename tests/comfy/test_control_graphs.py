"""ControlNets in graphs on the worker (``pipelines/comfyui/controlnodes.py``), on the tiny models at tiny sizes:
ComfyUI's ControlNet workflow (ControlNetLoader + Canny + ControlNetApplyAdvanced, tests/comfy/workflows/) gives
spotgen's own ControlNet txt2img pixels for the same settings; strength, the guidance window and Canny's thresholds
matter (strength 0 is no control); the same graph gives the same bytes and resumes byte-identical from inside its
sampler; a ControlNet of another family and a masked latent with a control are refused naming the input."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from pipelines.comfyui.executor import Execution
from runtime.contract import ContractError
from runtime.contract.comfy.inputs import ComfyInputs
from runtime.models.store import ModelStore
from tests.comfy.runner import assert_resumes_alike, run
from tests.pipelines.harness import BUCKET, CONTROLNETS, Harness, pixels, png

WORKFLOWS = Path(__file__).parent / "workflows"
KEY = "c" * 64
#: The control's source: at the latent's size (64 x 48), so Canny's map reaches the ControlNet unresized.
SHAPES = f"s3://{BUCKET}/shapes.png"


def workflow(name: str) -> dict[str, Any]:
    return json.loads((WORKFLOWS / f"{name}.json").read_text())


@pytest.fixture(scope="module")
def harness(tiny_models: Path) -> Harness:
    made = Harness(ModelStore(tiny_models, "cpu"))
    shapes = Image.new("RGB", (64, 48), (30, 30, 30))
    shapes.paste((200, 200, 200), (10, 8, 40, 30))
    shapes.paste((120, 120, 120), (30, 20, 58, 44))
    shapes.paste((45, 45, 45), (4, 34, 24, 46))  # a faint edge, which only the lower thresholds find
    made.images[SHAPES] = shapes
    return made


def control_graph(model: str = "tiny-sd", **control: Any) -> dict[str, Any]:
    graph = workflow("controlnet_canny")
    graph["4"]["inputs"]["ckpt_name"] = model
    graph["12"]["inputs"]["control_net_name"] = CONTROLNETS[model]
    graph["10"]["inputs"]["image"] = SHAPES
    graph["5"]["inputs"].update(width=64, height=48)
    graph["3"]["inputs"].update(seed=1234, steps=3)
    graph["11"]["inputs"].update(control)
    return graph


def uncontrolled() -> dict[str, Any]:
    """The same graph with the conditionings straight from the text encoders."""
    graph = control_graph()
    graph["3"]["inputs"].update(positive=["6", 0], negative=["7", 0])
    for node in ("11", "12", "13", "14"):
        del graph[node]
    return graph




def sampled(harness: Harness, graph: dict[str, Any]) -> np.ndarray:
    """The sampler's image (the graph's other output is Canny's preview)."""
    return pixels(Execution(ComfyInputs.model_validate({"graph": graph}).graph, harness.context(seed=7)).run()["9"])


@pytest.mark.parametrize("model", ["tiny-sd", "tiny-sdxl"])
def test_the_controlnet_graph_gives_the_controlnet_pipelines_pixels(harness: Harness, model: str) -> None:
    graph = control_graph(model)
    out = run(harness, graph)
    assert [image.size for image in out] == [(64, 48), (64, 48)]
    assert png(run(harness, graph)) == png(out)
    native = harness.run("controlnet", job_seed=1234, prompt=graph["6"]["inputs"]["text"],
                         negative_prompt=graph["7"]["inputs"]["text"], guidance_scale=8, control_image=SHAPES,
                         control_preprocessor="canny", canny_low=102, canny_high=204, model=model)
    assert np.array_equal(pixels(out[:1]), pixels(native))


def test_strength_and_the_guidance_window_matter_and_strength_zero_is_no_control(harness: Harness) -> None:
    base = sampled(harness, control_graph())
    plain = sampled(harness, uncontrolled())
    assert not np.array_equal(base, plain)
    assert np.array_equal(sampled(harness, control_graph(strength=0)), plain)
    for change in ({"strength": 0.5}, {"start_percent": 0.5}, {"end_percent": 0.5}):
        assert not np.array_equal(sampled(harness, control_graph(**change)), base), change


def test_cannys_thresholds_change_its_map(harness: Harness) -> None:
    def edges(low: float, high: float) -> np.ndarray:
        graph = control_graph()
        graph["13"]["inputs"].update(low_threshold=low, high_threshold=high)
        ex = Execution(ComfyInputs.model_validate({"graph": graph}).graph, harness.context(seed=7))
        return ex.run()["14"][0]

    low, high = np.asarray(edges(0.1, 0.2)), np.asarray(edges(0.5, 0.9))
    assert low.max() == 255 and set(np.unique(low)) <= {0, 255}
    assert (low > 0).sum() > (high > 0).sum()


def test_an_interruption_inside_the_controlled_sampler_resumes_to_the_same_bytes(harness: Harness) -> None:
    graph = control_graph()
    assert_resumes_alike(harness, graph)


def test_a_controlnet_of_another_family_is_refused_naming_the_input(harness: Harness) -> None:
    graph = control_graph()
    graph["12"]["inputs"]["control_net_name"] = "tiny-sdxl-controlnet"
    with pytest.raises(ContractError) as caught:
        run(harness, graph)
    assert "3.inputs.positive" in str(caught.value) and "sdxl" in str(caught.value)
    graph["12"]["inputs"]["control_net_name"] = "tiny-sd"
    with pytest.raises(ContractError) as caught:
        run(harness, graph)
    assert "12.inputs.control_net_name" in str(caught.value)


def test_a_masked_latent_with_a_control_is_refused_naming_the_latent(harness: Harness) -> None:
    graph = control_graph()
    graph["20"] = {"class_type": "LoadImage", "inputs": {"image": SHAPES}}
    graph["21"] = {"class_type": "SetLatentNoiseMask", "inputs": {"samples": ["5", 0], "mask": ["20", 1]}}
    graph["3"]["inputs"]["latent_image"] = ["21", 0]
    with pytest.raises(ContractError) as caught:
        run(harness, graph)
    assert "3.inputs.latent_image" in str(caught.value)


def test_a_controlled_img2img_sampler_and_the_old_apply_node_run(harness: Harness) -> None:
    """A VAEEncode latent at denoise 0.6 runs on the ControlNet img2img class; ControlNetApply controls the
    positive alone (the negative straight from its encoder) and its strength matters."""
    graph = control_graph()
    graph["20"] = {"class_type": "VAEEncode", "inputs": {"pixels": ["10", 0], "vae": ["4", 2]}}
    graph["3"]["inputs"].update(latent_image=["20", 0], denoise=0.6)
    image = sampled(harness, graph)
    assert image.shape == (1, 48, 64, 3)
    graph["3"]["inputs"].update(positive=["6", 0], negative=["7", 0])
    assert not np.array_equal(sampled(harness, graph), image)
    old = control_graph()
    old["11"] = {"class_type": "ControlNetApply",
                 "inputs": {"conditioning": ["6", 0], "control_net": ["12", 0], "image": ["13", 0], "strength": 1}}
    old["3"]["inputs"].update(positive=["11", 0], negative=["7", 0])
    once = sampled(harness, old)
    old["11"]["inputs"]["strength"] = 0.5
    assert not np.array_equal(sampled(harness, old), once)
    assert not np.array_equal(once, sampled(harness, uncontrolled()))


@pytest.mark.parametrize(("change", "field"), [
    # a second Apply on the controlled conditionings: two ControlNets are not run yet
    ({"30": {"class_type": "ControlNetApplyAdvanced",
             "inputs": {"positive": ["11", 0], "negative": ["11", 1], "control_net": ["12", 0], "image": ["13", 0],
                        "strength": 1, "start_percent": 0, "end_percent": 1}},
      "3": {"positive": ["30", 0], "negative": ["30", 1]}}, "30.inputs.positive"),
    # a ConditioningCombine after the Apply would drop its control
    ({"30": {"class_type": "ConditioningCombine", "inputs": {"conditioning_1": ["11", 0], "conditioning_2": ["6", 0]}},
      "3": {"positive": ["30", 0]}}, "3.inputs.positive"),
    # the old Apply on the negative alone: diffusers would run it on both halves
    ({"30": {"class_type": "ControlNetApply",
             "inputs": {"conditioning": ["7", 0], "control_net": ["12", 0], "image": ["13", 0], "strength": 1}},
      "3": {"positive": ["6", 0], "negative": ["30", 0]}}, "3.inputs.negative"),
])
def test_a_control_the_sampler_would_drop_is_refused_naming_the_input(harness: Harness, change: dict[str, Any],
                                                                     field: str) -> None:
    graph = control_graph()
    for node_id, inputs in change.items():
        if "class_type" in inputs:
            graph[node_id] = inputs
        else:
            graph[node_id]["inputs"].update(inputs)
    with pytest.raises(ContractError) as caught:
        run(harness, graph)
    assert field in str(caught.value), caught.value
