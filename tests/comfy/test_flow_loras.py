"""LoRAs on Flux and SD 3.5 in a graph, on the tiny models and the tiny flow LoRAs (runtime/models/tinyflowlora.py):
LoraLoaderModelOnly on ComfyUI's checkpoint examples (tests/comfy/test_flow_checkpoints.py) and on the UNETLoader
graph's custom sampling, and LoraLoader with a LoRA that adapts the text encoder too (a copy of the tiny catalog
with one more Flux and one more SD 3.5 LoRA, made here in diffusers' format with ``text_encoder.`` layers).

A LoRA changes the image; strength 0 gives the very bytes of the graph without it; Flux's kohya-format LoRA at 0.7
gives spotgen's own Flux txt2img pixels with that LoRA; strength_model and strength_clip each matter, the second only
through the text encoders (a LoRA of the transformer alone leaves the text as it was, as in ComfyUI); a LoRA of
another family is refused naming ``lora_name``; a graph with a LoRA resumes to the same bytes."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import CLIPTextModel

from runtime.contract import ContractError
from runtime.models.store import ModelStore
from tests.comfy.runner import assert_resumes_alike, run
from tests.comfy.test_flow_checkpoints import PROMPT, flux_checkpoint_graph, sd35_graph
from tests.comfy.test_flow_graphs import flux_graph
from tests.pipelines.harness import Harness, pixels, png

#: The LoRAs with text-encoder layers this module adds, by family: (id, base model, the family's transformer LoRA).
TE_LORAS = {"flux": ("tiny-lora-flux-te", "tiny-flux", "tiny-lora-flux"),
            "sd3": ("tiny-lora-sd3-te", "tiny-sd3", "tiny-lora-sd3")}


def _text_encoder_lora(encoder: Any, seed: int) -> dict[str, torch.Tensor]:
    """A rank-4 adapter in diffusers' format on every attention projection of a CLIP text encoder."""
    generator = torch.Generator().manual_seed(seed)
    out: dict[str, torch.Tensor] = {}
    for name, layer in encoder.named_modules():
        if isinstance(layer, torch.nn.Linear) and name.endswith(("q_proj", "k_proj", "v_proj", "out_proj")):
            name = "text_model." + name.removeprefix("text_model.")  # as LoRA files name them
            down = torch.randn(4, layer.in_features, generator=generator) * 2 / layer.in_features ** 0.5
            out[f"text_encoder.{name}.lora_A.weight"] = down
            out[f"text_encoder.{name}.lora_B.weight"] = torch.randn(layer.out_features, 4, generator=generator)
    return out


@pytest.fixture(scope="module")
def te_harness(tiny_models: Path, tmp_path_factory: pytest.TempPathFactory) -> Harness:
    """A copy of the tiny catalog (26 MB; a store takes no links out of its directory) with ``TE_LORAS``: each
    family's transformer LoRA with text-encoder layers added."""
    root = tmp_path_factory.mktemp("te") / "models"
    shutil.copytree(tiny_models, root)
    catalog = json.loads((tiny_models / "catalog.json").read_text())
    (root / "te-loras").mkdir()
    for seed, (family, (lora_id, base, transformer_lora)) in enumerate(TE_LORAS.items()):
        encoder = CLIPTextModel.from_pretrained(tiny_models / catalog["models"][base]["path"] / "text_encoder")
        weights = {**load_file(tiny_models / catalog["models"][transformer_lora]["path"]),
                   **_text_encoder_lora(encoder, seed)}
        save_file(weights, root / "te-loras" / f"{lora_id}.safetensors")
        catalog["models"][lora_id] = {"path": f"te-loras/{lora_id}.safetensors", "kind": "lora", "family": family}
    (root / "catalog.json").write_text(json.dumps(catalog))
    return Harness(ModelStore(root, "cpu"))


CHECKPOINT_GRAPHS = {"flux": (flux_checkpoint_graph, "31", "tiny-lora-flux"),
                     "sd3": (sd35_graph, "13", "tiny-lora-sd3")}


def with_lora(family: str, lora: str | None = None, strength: float = 1.0) -> dict[str, Any]:
    """The family's checkpoint example with LoraLoaderModelOnly between the checkpoint and its model's user."""
    make, user, default = CHECKPOINT_GRAPHS[family]
    graph = make()
    graph["50"] = {"class_type": "LoraLoaderModelOnly", "inputs": {"model": ["4", 0], "lora_name": lora or default,
                                                                   "strength_model": strength}}
    graph[user]["inputs"]["model"] = ["50", 0]
    return graph


@pytest.mark.parametrize("family", ["flux", "sd3"])
def test_a_lora_changes_the_image_and_strength_0_gives_the_image_without_it(harness: Harness, family: str) -> None:
    plain = png(run(harness, CHECKPOINT_GRAPHS[family][0]()))
    assert png(run(harness, with_lora(family, strength=0.0))) == plain
    adapted = png(run(harness, with_lora(family)))
    assert adapted != plain
    assert png(run(harness, with_lora(family, strength=0.5))) not in (plain, adapted)
    assert png(run(harness, CHECKPOINT_GRAPHS[family][0]())) == plain  # no LoRA left on for the next graph


def test_a_graph_with_a_lora_resumes_to_the_same_bytes(harness: Harness) -> None:
    """The MODEL's LoRA is switched on again by the resumed pass, before its next step."""
    assert_resumes_alike(harness, with_lora("sd3", strength=0.8))


def test_a_kohya_flux_lora_in_a_graph_gives_spotgens_own_txt2img_pixels_with_it(harness: Harness) -> None:
    out = pixels(run(harness, with_lora("flux", "tiny-lora-flux-kohya", 0.7)))
    native = harness.run("txt2img", job_seed=1234, model="tiny-flux", prompt=PROMPT, guidance=3.5, steps=3,
                         loras=[{"id": "tiny-lora-flux-kohya", "weight": 0.7}])
    assert np.array_equal(out, pixels(native))
    xlabs = pixels(run(harness, with_lora("flux", "tiny-lora-flux-xlabs", 0.7)))
    assert not np.array_equal(xlabs, out)


def test_a_lora_on_the_unet_loaders_model_runs_in_custom_sampling(harness: Harness) -> None:
    graph = flux_graph()
    plain = pixels(run(harness, graph))
    graph["50"] = {"class_type": "LoraLoaderModelOnly", "inputs": {"model": ["12", 0], "lora_name": "tiny-lora-flux",
                                                                   "strength_model": 1.0}}
    graph["30"]["inputs"]["model"] = ["50", 0]
    assert not np.array_equal(pixels(run(harness, graph)), plain)


def lora_loader_graph(family: str, strength_model: float, strength_clip: float) -> dict[str, Any]:
    """The checkpoint example with LoraLoader (the family's LoRA with text-encoder layers) on MODEL and CLIP."""
    make, user, _ = CHECKPOINT_GRAPHS[family]
    graph = make()
    graph["50"] = {"class_type": "LoraLoader", "inputs": {
        "model": ["4", 0], "clip": ["4", 1], "lora_name": TE_LORAS[family][0], "strength_model": strength_model,
        "strength_clip": strength_clip}}
    graph[user]["inputs"]["model"] = ["50", 0]
    for node in graph.values():
        if node["class_type"] == "CLIPTextEncode":
            node["inputs"]["clip"] = ["50", 1]
    return graph


@pytest.mark.parametrize("family", ["flux", "sd3"])
def test_lora_loaders_two_strengths_each_matter(te_harness: Harness, family: str) -> None:
    plain = png(run(te_harness, CHECKPOINT_GRAPHS[family][0]()))
    assert png(run(te_harness, lora_loader_graph(family, 0.0, 0.0))) == plain
    model_only = png(run(te_harness, lora_loader_graph(family, 1.0, 0.0)))
    clip_only = png(run(te_harness, lora_loader_graph(family, 0.0, 1.0)))
    both = png(run(te_harness, lora_loader_graph(family, 1.0, 1.0)))
    assert len({tuple(one) for one in (plain, model_only, clip_only, both)}) == 4
    # the transformer's LoRA alone: strength_clip reaches no layer of it
    graph = lora_loader_graph(family, 1.0, 1.0)
    graph["50"]["inputs"]["lora_name"] = TE_LORAS[family][2]
    assert png(run(te_harness, graph)) == png(run(te_harness, with_lora(family)))


@pytest.mark.parametrize(("family", "lora"), [("flux", "tiny-lora-sd3"), ("sd3", "tiny-lora-sd1"),
                                              ("flux", "no-such-lora")])
def test_a_lora_of_another_family_is_refused_naming_lora_name(harness: Harness, family: str, lora: str) -> None:
    steps: list[int] = []
    with pytest.raises(ContractError) as caught:
        run(harness, copy.deepcopy(with_lora(family, lora)), on_step=lambda step, state: steps.append(step))
    assert caught.value.field == "inputs.graph.50.inputs.lora_name" and not steps, caught.value
