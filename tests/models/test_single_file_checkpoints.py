"""Single-file checkpoints (one original-layout ``.safetensors`` plus a config directory, as SD WebUI keeps models)
load through the catalog, are covered by manifests, follow the catalog's rules and go through the node cache.

Everything runs on copies of the tiny models in temporary directories. Single-file checkpoints are made here
from the tiny diffusers model by the inverse of diffusers' own LDM conversion, so loading one goes through
exactly the code path a checkpoint from SD WebUI takes (``from_single_file`` with a local config directory).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from pipelines.common import base_pipeline, controlnet_model
from pipelines.controlnet import ControlNet
from pipelines.txt2img import Txt2Img
from runtime.models.catalog import CATALOG_FILE, ModelError
from runtime.models.manifests import verify_model, write_manifest
from runtime.models.store import ModelStore
from runtime.models.tinyforms import vae_original_key
from tests.models.catalogs import UNET_WEIGHTS, refused, write_catalog
from tests.pipelines.harness import COMMON, EDGES, Harness, parse, pixels

_RESNET = (("norm1", "in_layers.0"), ("conv1", "in_layers.2"), ("norm2", "out_layers.0"), ("conv2", "out_layers.3"),
           ("time_emb_proj", "emb_layers.1"), ("conv_shortcut", "skip_connection"))
_UNET_TOP = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
             "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2",
             "controlnet_cond_embedding.conv_in": "input_hint_block.0",
             "controlnet_cond_embedding.conv_out": "input_hint_block.14", "controlnet_mid_block": "middle_block_out.0"}


def _resnet(rest: str) -> str:
    for diffusers_name, ldm_name in _RESNET:
        if rest.startswith(diffusers_name + "."):
            return ldm_name + rest[len(diffusers_name):]
    raise KeyError(rest)


def _unet_key(key: str, config: dict[str, Any]) -> str:
    """The original (LDM) name of a diffusers UNet or ControlNet key: the inverse of diffusers'
    ``convert_ldm_unet_checkpoint`` / ``convert_controlnet_checkpoint`` for SD 1.x-style blocks."""
    step = config["layers_per_block"] + 1
    module, _, leaf = key.rpartition(".")
    if module in _UNET_TOP:
        return f"{_UNET_TOP[module]}.{leaf}"
    p = key.split(".")
    rest = ".".join(p[4:])
    if p[0] == "down_blocks":
        block = int(p[1])
        if p[2] == "downsamplers":
            return f"input_blocks.{1 + block * step + step - 1}.0.op.{leaf}"
        i = 1 + block * step + int(p[3])
        return f"input_blocks.{i}.0.{_resnet(rest)}" if p[2] == "resnets" else f"input_blocks.{i}.1.{rest}"
    if p[0] == "mid_block":
        rest = ".".join(p[3:])
        return f"middle_block.{2 * int(p[2])}.{_resnet(rest)}" if p[1] == "resnets" else f"middle_block.1.{rest}"
    if p[0] == "up_blocks":
        block = int(p[1])
        if p[2] == "upsamplers":
            slot = 2 if config["up_block_types"][block].startswith("CrossAttn") else 1
            return f"output_blocks.{block * step + step - 1}.{slot}.conv.{leaf}"
        i = block * step + int(p[3])
        return f"output_blocks.{i}.0.{_resnet(rest)}" if p[2] == "resnets" else f"output_blocks.{i}.1.{rest}"
    if p[0] == "controlnet_down_blocks":
        return f"zero_convs.{p[1]}.0.{leaf}"
    if p[:2] == ["controlnet_cond_embedding", "blocks"]:
        return f"input_hint_block.{2 * (int(p[2]) + 1)}.{leaf}"
    raise KeyError(key)


def vae_and_clip_state(model_dir: Path, clip_prefix: str) -> dict[str, torch.Tensor]:
    """A diffusers pipeline's VAE (under ``first_stage_model.``) and first CLIP text encoder (under
    ``clip_prefix``) in the original layout; SD 1.x and SDXL single files keep both the same way."""
    vae_config = json.loads((model_dir / "vae" / "config.json").read_text())
    out: dict[str, torch.Tensor] = {}
    for key, tensor in load_file(model_dir / "vae" / "diffusion_pytorch_model.safetensors").items():
        name = vae_original_key(key, len(vae_config["up_block_types"]))
        if ".mid.attn_1." in name and tensor.ndim == 2:
            tensor = tensor[:, :, None, None]  # the original VAE attention is 1x1 convolutions
        out["first_stage_model." + name] = tensor
    for key, tensor in load_file(model_dir / "text_encoder" / "model.safetensors").items():
        name = key if key.startswith("text_model.") else f"text_model.{key}"  # transformers 5 dropped the prefix
        out[clip_prefix + name] = tensor
    return out


def write_single_file(out: dict[str, torch.Tensor], model_dir: Path, checkpoint: Path, config_dir: Path) -> None:
    """The checkpoint, and a copy of the model's configs without weights beside it."""
    checkpoint.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in out.items()}, checkpoint)
    shutil.copytree(model_dir, config_dir, ignore=shutil.ignore_patterns("*.safetensors"))


def _config(component: Any) -> dict[str, Any]:
    """A component's whole configuration, less where it was loaded from."""
    config = component.config if isinstance(component.config, dict) else component.config.to_dict()
    return {k: v for k, v in config.items() if k != "_name_or_path"}


def assert_same_component(a: Any, b: Any, name: str) -> None:
    """The same class, every config value, and for a network the same modules and weights, shapes compared as they
    are (a 1x1 convolution where the directory has a linear layer is another computation, even with the same
    numbers); a tokenizer, the same vocabulary and padding."""
    assert type(a) is type(b), name
    if hasattr(a, "get_vocab"):
        assert (a.get_vocab(), a.pad_token, a.model_max_length) == (b.get_vocab(), b.pad_token, b.model_max_length)
        return
    assert _config(a) == _config(b), name
    if isinstance(a, torch.nn.Module):
        assert [(n, type(m)) for n, m in a.named_modules()] == [(n, type(m)) for n, m in b.named_modules()], name
        sa, sb = a.state_dict(), b.state_dict()
        assert sa.keys() == sb.keys(), name
        for key in sa:
            assert (sa[key].shape, sa[key].dtype) == (sb[key].shape, sb[key].dtype), f"{name}: {key}"
            assert torch.equal(sa[key], sb[key]), f"{name}: {key}"


def assert_same_model(single: Any, directory: Any, parts: tuple[str, ...]) -> None:
    """Two pipelines with the same configuration and the same ``parts`` (networks, scheduler, tokenizers)."""
    assert _config(single) == _config(directory)
    for part in parts:
        assert_same_component(getattr(single, part), getattr(directory, part), part)


def realigned(*modules: torch.nn.Module) -> None:
    """Give every weight memory of its own, 64-byte aligned as torch allocates it, before two models from different
    files are compared by their pixels.

    Loaded from a ``.safetensors`` file on a CPU, a weight stays where the file is mapped, at its offset in the file,
    which the header's length and the order of the tensors decide; and MKL's product for a linear layer on one row
    (the time embedding, SDXL's pooled text projection) sums in another order when the weight is not 16-byte
    aligned (``MKL_CBWR=AUTO,STRICT`` removes the difference; ``ATEN_CPU_CAPABILITY`` does not). The same weights
    from two files can thus round differently in the last bits (measured: the tiny SDXL's single file against its
    directory, 1 in 255 on some pixels). A file read again maps the same way, so a resume or a second worker is
    unaffected. Aligned alike, the two models run the same computation and must give the same bytes."""
    with torch.no_grad():
        for module in modules:
            for tensor in (*module.parameters(), *module.buffers()):
                tensor.data = tensor.data.clone()


def to_single_file(model_dir: Path, checkpoint: Path, config_dir: Path) -> None:
    """Write a diffusers model as an original-layout single ``.safetensors`` (as SD WebUI keeps models) plus a
    config directory without weights: what an operator puts on the volume for such a checkpoint."""
    def config(sub: str = "") -> dict[str, Any]:
        return json.loads((model_dir / sub / "config.json").read_text())

    out: dict[str, torch.Tensor] = {}
    if (model_dir / "model_index.json").is_file():
        for key, tensor in load_file(model_dir / UNET_WEIGHTS).items():
            out["model.diffusion_model." + _unet_key(key, config("unet"))] = tensor
        out.update(vae_and_clip_state(model_dir, "cond_stage_model.transformer."))
    else:
        for key, tensor in load_file(model_dir / "diffusion_pytorch_model.safetensors").items():
            out["control_model." + _unet_key(key, config())] = tensor
    write_single_file(out, model_dir, checkpoint, config_dir)


@pytest.fixture
def single_file_models(models: Path) -> Path:
    to_single_file(models / "tiny-sd", models / "checkpoints" / "tiny-sd.safetensors", models / "configs" / "sd")
    to_single_file(models / "tiny-controlnet", models / "checkpoints" / "cn.safetensors", models / "configs" / "cn")
    catalog = json.loads((models / CATALOG_FILE).read_text())
    catalog["models"].update({
        "sd-file": {"path": "checkpoints/tiny-sd.safetensors", "config": "configs/sd", "family": "sd1"},
        "cn-file": {"path": "checkpoints/cn.safetensors", "config": "configs/cn", "kind": "controlnet"},
    })
    (models / CATALOG_FILE).write_text(json.dumps(catalog))
    return models


def test_a_single_file_checkpoint_loads_through_the_catalog(single_file_models: Path) -> None:
    """The same model as the diffusers directory (configs, modules, weights), so the same pixels once the weights
    lie alike in memory (``realigned``), and no network (there is none here)."""
    store = ModelStore(single_file_models, "cpu")
    source = store.source("sd-file")
    assert source.single_file and source.path.name == "tiny-sd.safetensors" and source.config is not None
    assert not any(k.startswith("unet.") for k in load_file(source.path))  # really the original layout
    single, directory = base_pipeline(store, "sd-file"), base_pipeline(store, "tiny-sd")
    assert single is not directory and store.loads == 2
    assert_same_model(single, directory, ("unet", "vae", "text_encoder", "scheduler", "tokenizer"))
    control_file, control_dir = controlnet_model(store, "cn-file"), controlnet_model(store, "tiny-controlnet")
    assert_same_component(control_file, control_dir, "controlnet")

    realigned(*(getattr(pipe, part) for pipe in (single, directory) for part in ("unet", "vae", "text_encoder")),
              control_file, control_dir)
    h = Harness(store)
    inputs = parse(Txt2Img.Inputs, COMMON)
    assert np.array_equal(pixels(Txt2Img().run(inputs, h.context(model="sd-file"))),
                          pixels(Txt2Img().run(inputs, h.context(model="tiny-sd"))))
    control = {**COMMON, "control_image": EDGES}
    from_files = ControlNet().run(parse(ControlNet.Inputs, {**control, "controlnet": "cn-file"}),
                                  h.context(model="sd-file"))
    from_dirs = ControlNet().run(parse(ControlNet.Inputs, {**control, "controlnet": "tiny-controlnet"}),
                                 h.context(model="tiny-sd"))
    assert np.array_equal(pixels(from_files), pixels(from_dirs))


def test_single_file_manifest_covers_checkpoint_and_config(single_file_models: Path) -> None:
    catalog = json.loads((single_file_models / CATALOG_FILE).read_text())
    catalog["models"]["sd-file"]["manifest"] = "manifests/sd-file.json"
    (single_file_models / CATALOG_FILE).write_text(json.dumps(catalog))
    store = ModelStore(single_file_models)
    _, files, named = write_manifest(store, "sd-file")
    assert named and "checkpoints/tiny-sd.safetensors" in files and "configs/sd/unet/config.json" in files
    assert verify_model(store, "sd-file").status == "ok"
    (single_file_models / "configs" / "sd" / "unet" / "config.json").write_text("{}")
    assert verify_model(store, "sd-file").problems == ["xxh3_128 mismatch: configs/sd/unet/config.json"]


def test_single_file_rules(single_file_models: Path) -> None:
    models = single_file_models
    catalog = json.loads((models / CATALOG_FILE).read_text())["models"]
    shutil.copytree(models / "tiny-sd", models / "with-weights")
    store = write_catalog(models, {
        **catalog,
        "no-config": {"path": "checkpoints/tiny-sd.safetensors"},
        "weights-in-config": {"path": "checkpoints/tiny-sd.safetensors", "config": "with-weights"},
        "empty-config": {"path": "checkpoints/tiny-sd.safetensors", "config": "checkpoints"},
    })
    error = refused(store, "no-config")
    assert error.code == "single_file_needs_config" and '"config"' in str(error)
    error = refused(store, "weights-in-config")
    assert error.code == "invalid_model_config" and UNET_WEIGHTS in str(error)
    assert refused(store, "empty-config").code == "invalid_model_config"
    with pytest.raises(ModelError, match="'config' is only for single-file checkpoints"):
        write_catalog(models, {"dir": {"path": "tiny-sd", "config": "configs/sd"}}).catalog  # noqa: B018


def test_a_single_file_checkpoint_goes_through_the_node_cache(single_file_models: Path, tmp_path: Path) -> None:
    """Tier 1 copies the checkpoint with its config directory, keeping their layout, and loads from the copy."""
    from runtime.models.nodecache import NodeCache

    catalog = json.loads((single_file_models / CATALOG_FILE).read_text())
    catalog["models"]["sd-file"]["manifest"] = "manifests/sd-file.json"
    (single_file_models / CATALOG_FILE).write_text(json.dumps(catalog))
    write_manifest(ModelStore(single_file_models), "sd-file")
    node = NodeCache(tmp_path / "node", 1024**3)
    store = ModelStore(single_file_models, "cpu", node)
    source = store.source("sd-file")
    copy = tmp_path / "node" / "sd-file" / "model"
    assert source.path == copy / "checkpoints" / "tiny-sd.safetensors" and source.config == copy / "configs" / "sd"
    assert node.is_cached("sd-file")
    direct = base_pipeline(ModelStore(single_file_models), "sd-file")
    cached = base_pipeline(store, "sd-file")
    a, b = cached.unet.state_dict(), direct.unet.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    # a damaged copy is noticed on the next fetch and replaced
    (copy / "configs" / "sd" / "unet" / "config.json").write_text("{}")
    assert ModelStore(single_file_models, "cpu", node).source("sd-file").path.is_file()
    assert json.loads((copy / "configs" / "sd" / "unet" / "config.json").read_text()) != {}
