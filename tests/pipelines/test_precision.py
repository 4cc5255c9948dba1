"""Per-model precision (the catalog's ``dtype``), a VAE of the catalog's own (``vae``) and channels-last weights
(``SPOTGEN_CHANNELS_LAST``): each is applied to the model as loaded, and a run interrupted and resumed with them
gives the bytes of an uninterrupted run with the same settings."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from pipelines.loading import base_pipeline, controlnet_model
from runtime.models.catalog import Catalog, ModelError
from runtime.models.store import ModelStore
from runtime.worker import checkpoint
from tests.pipelines.harness import Harness, interrupt_at, png


@pytest.fixture(scope="module")
def bf16_models(tiny_models: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """tiny-sd in bfloat16, its ControlNet in the default precision and again in bfloat16."""
    models = tmp_path_factory.mktemp("bf16-models")
    for name in ("tiny-sd", "tiny-controlnet"):
        shutil.copytree(tiny_models / name, models / name)
    controlnet = {"path": "tiny-controlnet", "kind": "controlnet", "family": "sd1"}
    # a VAE of its own: the model's, with its decoder's output layer changed, so its pixels tell it apart
    shutil.copytree(tiny_models / "tiny-sd" / "vae", models / "other-vae")
    weights = models / "other-vae" / "diffusion_pytorch_model.safetensors"
    tensors = load_file(weights)
    tensors["decoder.conv_out.bias"] = tensors["decoder.conv_out.bias"] + 0.5
    save_file(tensors, weights)
    catalog = {"models": {"tiny-sd": {"path": "tiny-sd", "family": "sd1", "dtype": "bfloat16"},
                          "tiny-sd-vae": {"path": "tiny-sd", "family": "sd1", "vae": "other-vae"},
                          "other-vae": {"path": "other-vae", "kind": "vae", "family": "sd1"},
                          "tiny-controlnet": controlnet, "tiny-controlnet-bf16": {**controlnet, "dtype": "bfloat16"}}}
    (models / "catalog.json").write_text(json.dumps(catalog))
    yield models


def store_of(models: Path, channels_last: bool) -> ModelStore:
    store = ModelStore(models, "cpu")
    store.channels_last = channels_last
    return store


def test_the_catalog_dtype_and_channels_last_are_what_is_loaded(bf16_models: Path) -> None:
    store = store_of(bf16_models, channels_last=True)
    pipe = base_pipeline(store, "tiny-sd")
    assert pipe.unet.dtype == torch.bfloat16 and pipe.vae.dtype == torch.bfloat16
    conv = pipe.unet.conv_in.weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    assert controlnet_model(store, "tiny-controlnet-bf16").dtype == torch.bfloat16
    assert controlnet_model(store, "tiny-controlnet").dtype == torch.float32  # no dtype: the CPU's default


@pytest.mark.parametrize("name", ["txt2img", "img2img"])
def test_a_resumed_run_in_bfloat16_channels_last_is_byte_identical(bf16_models: Path, tiny_models: Path,
                                                                   name: str) -> None:
    harness = Harness(store_of(bf16_models, channels_last=True))
    settings = {"steps": 4, "scheduler": "dpmpp_2m"}
    reference = png(harness.run(name, **settings))
    state = checkpoint.load(interrupt_at(harness, name, 2, **settings), "f" * 64)
    assert png(harness.run(name, resume_from=state, **settings)) == reference
    default = Harness(ModelStore(tiny_models, "cpu"))  # the same model in float32 makes other pixels
    assert png(default.run(name, **settings)) != reference


def test_a_controlnet_of_another_precision_is_refused_by_name(bf16_models: Path) -> None:
    harness = Harness(store_of(bf16_models, channels_last=False))
    with pytest.raises(ModelError, match="tiny-controlnet.*float32.*bfloat16"):
        harness.run("controlnet")
    assert harness.run("controlnet", controlnet="tiny-controlnet-bf16")


def test_an_unknown_dtype_is_refused_naming_the_entry() -> None:
    with pytest.raises(ValueError, match="dtype"):
        Catalog.model_validate({"models": {"m": {"path": "m", "dtype": "int8"}}})


def test_the_catalog_vae_decodes_and_resumes_byte_identically(bf16_models: Path) -> None:
    harness = Harness(store_of(bf16_models, channels_last=False))
    pipe = base_pipeline(harness.store, "tiny-sd-vae")
    own = base_pipeline(harness.store, "tiny-sd").vae.decoder.conv_out.bias.detach().float()
    assert torch.allclose(pipe.vae.decoder.conv_out.bias.detach(), own + 0.5, atol=1e-2)
    settings = {"steps": 4, "scheduler": "euler_a", "model": "tiny-sd-vae"}
    reference = png(harness.run("txt2img", **settings))
    state = checkpoint.load(interrupt_at(harness, "txt2img", 2, **settings), "f" * 64)
    assert png(harness.run("txt2img", resume_from=state, **settings)) == reference


@pytest.mark.parametrize(("entry", "words"), [
    ({"path": "m", "vae": "nope"}, "'nope' is not a 'vae' entry"),
    ({"path": "m", "vae": "v"}, "is a sdxl VAE"),
    ({"path": "m", "kind": "controlnet", "vae": "v"}, "only a base model"),
])
def test_a_bad_vae_reference_is_refused_naming_the_entry(entry: dict[str, str], words: str) -> None:
    catalog = {"models": {"m": entry, "v": {"path": "v", "kind": "vae", "family": "sdxl"}}}
    with pytest.raises(ValueError, match=words):
        Catalog.model_validate(catalog)
