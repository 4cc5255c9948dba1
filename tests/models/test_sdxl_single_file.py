"""SDXL single-file checkpoints (``sd_xl_base_1.0.safetensors`` as SD WebUI keeps them) load through the catalog.

The tiny SDXL model is written here in the original (SGM) layout by the inverse of diffusers' own converters
(``convert_ldm_unet_checkpoint``, ``convert_ldm_vae_checkpoint``, ``convert_ldm_clip_checkpoint`` and
``convert_open_clip_checkpoint``), so loading it takes exactly the path a real checkpoint takes:
``StableDiffusionXLPipeline.from_single_file`` with the catalog's local config directory, no Hub. The SD 1.x
helpers of ``test_single_file_checkpoints`` cover the UNet blocks and the VAE; SDXL adds the size-conditioning embedding
(``label_emb``), transformer depth (same key names in both layouts) and the second, OpenCLIP-layout text encoder.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from pipelines.loading import base_pipeline
from pipelines.txt2img import Txt2Img
from runtime.models.catalog import CATALOG_FILE
from runtime.models.store import ModelStore
from runtime.models.tiny import SDXL_ID
from tests.models.catalogs import UNET_WEIGHTS
from tests.models.test_single_file_checkpoints import (
    _unet_key,
    assert_same_model,
    realigned,
    vae_and_clip_state,
    write_single_file,
)
from tests.pipelines.harness import COMMON, Harness, parse, pixels

#: SGM's names for SDXL's size-conditioning embedding (diffusers' ``add_embedding``, a two-layer MLP).
_LABEL_EMB = {"add_embedding.linear_1": "label_emb.0.0", "add_embedding.linear_2": "label_emb.0.2"}
#: diffusers' CLIP layer names and OpenCLIP's (the inverse of DIFFUSERS_TO_LDM_MAPPING["openclip"]).
_OPEN_CLIP_LAYER = (("layer_norm1", "ln_1"), ("layer_norm2", "ln_2"), ("mlp.fc1", "mlp.c_fc"),
                    ("mlp.fc2", "mlp.c_proj"), ("self_attn.out_proj", "attn.out_proj"))
_OPEN_CLIP_TOP = {"text_model.embeddings.token_embedding.weight": "token_embedding.weight",
                  "text_model.embeddings.position_embedding.weight": "positional_embedding",
                  "text_model.final_layer_norm.weight": "ln_final.weight",
                  "text_model.final_layer_norm.bias": "ln_final.bias"}


def sdxl_unet_key(key: str, config: dict[str, Any]) -> str:
    """The SGM name of a diffusers SDXL UNet key. Blocks, resnets and attentions are named as in SD 1.x (a
    transformer's ``transformer_blocks.N`` keep their names at any depth); only ``label_emb`` is new."""
    module, _, leaf = key.rpartition(".")
    return f"{_LABEL_EMB[module]}.{leaf}" if module in _LABEL_EMB else _unet_key(key, config)


def open_clip_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A ``CLIPTextModelWithProjection`` state dict in OpenCLIP's layout: the inverse of diffusers'
    ``convert_open_clip_checkpoint`` (q, k and v in one ``in_proj``, a transposed ``text_projection``)."""
    out: dict[str, torch.Tensor] = {}
    layers = 1 + max(int(k.split(".")[3]) for k in state if k.startswith("text_model.encoder.layers."))
    for index in range(layers):
        ours, theirs = f"text_model.encoder.layers.{index}.", f"transformer.resblocks.{index}."
        for kind in ("weight", "bias"):
            out[f"{theirs}attn.in_proj_{kind}"] = torch.cat(
                [state.pop(f"{ours}self_attn.{p}_proj.{kind}") for p in "qkv"])
        for key in [k for k in state if k.startswith(ours)]:
            rest = key[len(ours):]
            for diffusers_name, open_clip_name in _OPEN_CLIP_LAYER:
                rest = rest.replace(diffusers_name, open_clip_name)
            out[theirs + rest] = state.pop(key)
    out["text_projection"] = state.pop("text_projection.weight").T
    out.update({_OPEN_CLIP_TOP[k]: state.pop(k) for k in list(state) if k in _OPEN_CLIP_TOP})
    assert not state, f"not converted: {sorted(state)}"  # a key left over would be a silent loss
    return out


def to_sdxl_single_file(model_dir: Path, checkpoint: Path, config_dir: Path) -> None:
    """Write the diffusers SDXL model as one SGM-layout ``.safetensors`` plus a config directory without
    weights, the two things an operator puts on the volume for an SDXL checkpoint from SD WebUI."""
    unet_config = json.loads((model_dir / "unet" / "config.json").read_text())
    out: dict[str, torch.Tensor] = {}
    for key, tensor in load_file(model_dir / UNET_WEIGHTS).items():
        out["model.diffusion_model." + sdxl_unet_key(key, unet_config)] = tensor
    out.update(vae_and_clip_state(model_dir, "conditioner.embedders.0.transformer."))
    second = open_clip_state(load_file(model_dir / "text_encoder_2" / "model.safetensors"))
    out.update({"conditioner.embedders.1.model." + k: v for k, v in second.items()})
    write_single_file(out, model_dir, checkpoint, config_dir)


@pytest.fixture
def sdxl_file_models(tmp_path: Path, tiny_models: Path) -> Path:
    """A private copy of the tiny models with a single-file checkpoint of ``tiny-sdxl`` (``sdxl-file``)."""
    models = tmp_path / "models"
    shutil.copytree(tiny_models, models, ignore=shutil.ignore_patterns(".tiny.lock"))
    catalog = json.loads((models / CATALOG_FILE).read_text())
    to_sdxl_single_file(models / SDXL_ID, models / "checkpoints" / "sdxl-file.safetensors", models / "configs" / "sdxl")
    catalog["models"]["sdxl-file"] = {"path": "checkpoints/sdxl-file.safetensors", "config": "configs/sdxl",
                                      "family": "sdxl"}
    (models / CATALOG_FILE).write_text(json.dumps(catalog))
    return models


def test_an_sdxl_single_file_checkpoint_loads_through_the_catalog(sdxl_file_models: Path) -> None:
    """The same model as the diffusers directory in every component (configs, modules, weights), so the same pixels
    once the weights lie alike in memory (``realigned``), with no network. (diffusers tells SDXL's two text encoders
    apart in one file by their widths, so the tiny model's differ, as SDXL's do.)"""
    single_id, directory_id = "sdxl-file", SDXL_ID
    store = ModelStore(sdxl_file_models, "cpu")
    source = store.source(single_id)
    assert source.single_file and source.path.name == f"{single_id}.safetensors" and source.config is not None
    keys = load_file(source.path).keys()
    assert not any(k.startswith(("unet.", "text_encoder", "vae.")) for k in keys)  # really the original layout
    assert "conditioner.embedders.1.model.positional_embedding" in keys  # how diffusers spots SDXL's OpenCLIP
    single, directory = base_pipeline(store, single_id), base_pipeline(store, directory_id)
    assert single is not directory and store.loads == 2
    networks = ("unet", "vae", "text_encoder", "text_encoder_2")
    assert_same_model(single, directory, (*networks, "scheduler", "tokenizer", "tokenizer_2"))

    realigned(*(getattr(pipe, part) for pipe in (single, directory) for part in networks))  # see its docstring
    h = Harness(store)
    inputs = parse(Txt2Img.Inputs, COMMON)
    assert np.array_equal(pixels(Txt2Img().run(inputs, h.context(model=single_id))),
                          pixels(Txt2Img().run(inputs, h.context(model=directory_id))))
