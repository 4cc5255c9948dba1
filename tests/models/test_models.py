"""The model catalog: validation of ids and paths, safetensors only, manifests, single-file checkpoints, and the
``spotgen models`` commands.

Everything runs on copies of the tiny models in temporary directories. Single-file checkpoints are made here
from the tiny diffusers model by the inverse of diffusers' own LDM conversion, so loading one goes through
exactly the code path a checkpoint from SD WebUI takes (``from_single_file`` with a local config directory).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from pipelines.common import base_pipeline, controlnet_model
from pipelines.controlnet import ControlNet
from pipelines.txt2img import Txt2Img
from runtime.cli import main
from runtime.models.catalog import CATALOG_FILE, ModelError
from runtime.models.manifests import verify_model, write_manifest
from runtime.models.store import ModelStore
from tests.pipelines.harness import COMMON, EDGES, Harness, parse, pixels

ROOT = Path(__file__).resolve().parents[2]
UNET_WEIGHTS = "unet/diffusion_pytorch_model.safetensors"


def write_catalog(models: Path, entries: dict[str, Any]) -> ModelStore:
    models.mkdir(parents=True, exist_ok=True)
    (models / CATALOG_FILE).write_text(json.dumps({"models": entries}))
    return ModelStore(models, "cpu")


@pytest.fixture
def models(tmp_path: Path, tiny_models: Path) -> Path:
    """A private copy of the tiny models (tests here change files and catalogs)."""
    target = tmp_path / "models"
    shutil.copytree(tiny_models, target, ignore=shutil.ignore_patterns(".tiny.lock"))
    return target


def refused(store: ModelStore, model_id: str, kind: str = "base") -> ModelError:
    with pytest.raises(ModelError) as caught:
        store.source(model_id, kind)
    return caught.value


# -- safetensors only --------------------------------------------------------------------------------------
def test_a_pickle_only_model_is_refused_naming_the_file(tmp_path: Path) -> None:
    (tmp_path / "evil" / "unet").mkdir(parents=True)
    (tmp_path / "evil" / "model_index.json").write_text("{}")
    (tmp_path / "evil" / "unet" / "diffusion_pytorch_model.bin").write_bytes(b"not loaded")
    store = write_catalog(tmp_path, {"evil": {"path": "evil"}})
    error = refused(store, "evil")
    assert error.code == "unsafe_weights"
    assert "'evil'" in str(error) and "unet/diffusion_pytorch_model.bin" in str(error)
    assert "safetensors" in str(error)
    with pytest.raises(ModelError, match="unet/diffusion_pytorch_model.bin"):
        store.path("evil")  # the old API refuses it the same way


def test_a_pickle_among_safetensors_is_refused_too(models: Path) -> None:
    (models / "tiny-sd" / "text_encoder" / "pytorch_model.BIN").write_bytes(b"x")
    error = refused(ModelStore(models), "tiny-sd")
    assert error.code == "unsafe_weights" and "text_encoder/pytorch_model.BIN" in str(error)


def test_a_pickle_single_file_checkpoint_is_refused(tmp_path: Path) -> None:
    (tmp_path / "old.ckpt").write_bytes(b"pickle")
    error = refused(write_catalog(tmp_path, {"old": {"path": "old.ckpt"}}), "old")
    assert error.code == "unsafe_weights" and "old.ckpt" in str(error) and ".safetensors" in str(error)


# -- ids and paths -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("model_id", ["../x", "a/b", ".hidden", "Upper", "", "a" * 65, "x\\y", "..", "ü"])
def test_invalid_catalog_ids_are_refused(tmp_path: Path, model_id: str) -> None:
    store = write_catalog(tmp_path, {model_id: {"path": "x"}})
    with pytest.raises(ModelError) as caught:
        store.catalog  # noqa: B018 - loading is what is tested
    assert caught.value.code == "catalog_invalid"
    assert "(id)" in str(caught.value) and str(tmp_path / CATALOG_FILE) in str(caught.value)


@pytest.mark.parametrize("model_id", ["../tiny-sd", "/etc/passwd", "tiny-sd/..", "TINY-SD"])
def test_a_request_can_only_name_a_catalog_id(models: Path, model_id: str) -> None:
    with pytest.raises(ModelError) as caught:
        ModelStore(models).source(model_id)
    assert caught.value.code == "invalid_model_id"


@pytest.mark.parametrize(("field", "value", "why"), [
    ("path", "../x", "'..'"),
    ("path", "a/../../x", "'..'"),
    ("path", "..", "'..'"),
    ("path", "/etc", "not absolute"),
    ("path", "~root/x", "not absolute"),
    ("path", "a\\..\\x", "'/'"),
    ("path", ".", "not the directory itself"),
    ("path", "", "non-empty"),
    ("manifest", "../m.json", "'..'"),
    ("manifest", "/tmp/m.json", "not absolute"),
    ("config", "../configs", "'..'"),
])
def test_catalog_paths_that_leave_the_models_directory_are_refused(tmp_path: Path, field: str, value: str,
                                                                   why: str) -> None:
    entry = {"path": "m.safetensors", "config": "c"} if field == "config" else {"path": "m"}
    store = write_catalog(tmp_path, {"m": {**entry, field: value}})
    with pytest.raises(ModelError) as caught:
        store.catalog  # noqa: B018
    assert caught.value.code == "catalog_invalid"
    assert f"models.m.{field}" in str(caught.value) and why in str(caught.value)


def test_a_symlink_out_of_the_models_directory_is_refused(tmp_path: Path, tiny_models: Path) -> None:
    models = tmp_path / "models"
    models.mkdir()
    (models / "escape").symlink_to(tiny_models / "tiny-sd")  # a complete, valid model, but elsewhere
    (models / "inner").mkdir()
    (models / "inner" / "model_index.json").write_text("{}")
    (tmp_path / "secret").write_text("not for workers")
    (models / "inner" / "secret").symlink_to(tmp_path / "secret")
    (models / "single.safetensors").symlink_to(tiny_models / "tiny-sd" / UNET_WEIGHTS)
    store = write_catalog(models, {"escape": {"path": "escape"}, "inner": {"path": "inner"},
                                   "single": {"path": "single.safetensors", "config": "cfg"}})
    for model_id, named in (("escape", "escape"), ("inner", "secret"), ("single", "single.safetensors")):
        error = refused(store, model_id)
        assert error.code == "invalid_catalog_path", model_id
        assert f"'{model_id}'" in str(error) and named in str(error) and "outside the models directory" in str(error)


def test_symlinks_inside_the_models_directory_are_followed(models: Path) -> None:
    """Models on one volume may share files (a VAE, a text encoder) through symlinks; that is no escape."""
    shared = models / "shared-sd"
    shared.mkdir()
    for part in (models / "tiny-sd").iterdir():
        (shared / part.name).symlink_to(part)
    store = write_catalog(models, {"shared": {"path": "shared-sd"}, "link": {"path": "link-to-sd"}})
    (models / "link-to-sd").symlink_to("tiny-sd")
    assert store.source("shared").files.keys() == ModelStore(models).source("link").files.keys()
    assert UNET_WEIGHTS in store.source("shared").files
    assert base_pipeline(store, "shared").unet.config.block_out_channels == [16, 32]


def test_missing_models_say_what_is_missing(tmp_path: Path) -> None:
    store = write_catalog(tmp_path, {"gone": {"path": "gone"}, "file": {"path": "gone.safetensors", "config": "c"}})
    assert refused(store, "gone").code == "model_missing"
    assert refused(store, "file").code == "model_missing" and "gone.safetensors" in str(refused(store, "file"))


def test_old_catalogs_still_load_and_path_is_unchanged(models: Path) -> None:
    store = ModelStore(models)
    assert store.path("tiny-sd") == models.resolve() / "tiny-sd"
    assert store.path("tiny-controlnet", "controlnet") == models.resolve() / "tiny-controlnet"
    assert store.entry("tiny-sd").revision is None and not store.entry("tiny-sd").single_file


# -- manifests and `spotgen models verify` ----------------------------------------------------------------
def test_verify_passes_then_fails_after_a_flipped_byte(models: Path, capsys: pytest.CaptureFixture[str]) -> None:
    catalog = json.loads((models / CATALOG_FILE).read_text())
    catalog["models"]["tiny-sd"]["manifest"] = "manifests/tiny-sd.json"
    (models / CATALOG_FILE).write_text(json.dumps(catalog))
    assert main(["models", "manifest", "tiny-sd", "--models", str(models)]) == 0
    out = capsys.readouterr().out
    assert "manifests/tiny-sd.json: 12 files" in out and "add" not in out
    manifest = json.loads((models / "manifests" / "tiny-sd.json").read_text())
    assert len(manifest["files"]) == 12 and len(manifest["files"][UNET_WEIGHTS]) == 64
    assert verify_model(ModelStore(models), "tiny-sd").status == "ok"

    assert main(["models", "verify", "--models", str(models)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert any(line.split()[:2] == ["tiny-sd", "OK"] for line in lines)
    assert any(line.split()[0] == "tiny-controlnet" and line.endswith("no manifest") for line in lines)

    weights = models / "tiny-sd" / UNET_WEIGHTS
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0x01  # one bit in the last tensor
    weights.write_bytes(bytes(data))
    assert main(["models", "verify", "tiny-sd", "--models", str(models)]) == 1
    out = capsys.readouterr().out
    assert out.splitlines()[0].split() == ["tiny-sd", "FAIL"]
    assert f"sha256 mismatch: {UNET_WEIGHTS}" in out


def test_verify_fails_on_missing_and_unlisted_weight_files(models: Path) -> None:
    catalog = json.loads((models / CATALOG_FILE).read_text())
    catalog["models"]["tiny-controlnet"]["manifest"] = "cn.json"
    (models / CATALOG_FILE).write_text(json.dumps(catalog))
    store = ModelStore(models)
    write_manifest(store, "tiny-controlnet")
    assert verify_model(store, "tiny-controlnet").status == "ok"
    (models / "tiny-controlnet" / "extra.safetensors").write_bytes(b"{}")
    (models / "tiny-controlnet" / "README.md").write_text("notes")
    (models / "tiny-controlnet" / "config.json").unlink()
    result = verify_model(store, "tiny-controlnet")
    assert result.status == "fail"
    assert result.problems == ["missing: config.json", "unlisted weight file: extra.safetensors"]
    assert result.notes == ["1 unlisted non-weight file(s): README.md"]


@pytest.mark.parametrize(("content", "why"), [
    ({"files": {"../tiny-sd/model_index.json": "0" * 64}}, "'..'"),
    ({"files": {"/etc/passwd": "0" * 64}}, "not absolute"),
    ({"files": {"model_index.json": "not-a-digest"}}, "should match pattern"),
    ({"sha256": {}}, "files"),
])
def test_invalid_manifests_fail_verification(models: Path, content: dict[str, Any], why: str) -> None:
    catalog = json.loads((models / CATALOG_FILE).read_text())
    catalog["models"]["tiny-sd"]["manifest"] = "m.json"
    (models / CATALOG_FILE).write_text(json.dumps(catalog))
    (models / "m.json").write_text(json.dumps(content))
    result = verify_model(ModelStore(models), "tiny-sd")
    assert result.status == "fail" and result.problems[0].startswith("manifest_invalid:") and why in result.problems[0]


def test_manifest_without_a_catalog_path_goes_to_the_default_and_says_so(models: Path,
                                                                           capsys: pytest.CaptureFixture[str]) -> None:
    before = (models / CATALOG_FILE).read_text()
    assert main(["models", "manifest", "tiny-controlnet", "--models", str(models)]) == 0
    out = capsys.readouterr().out
    assert (models / "manifests" / "tiny-controlnet.json").is_file()
    assert '"manifest": "manifests/tiny-controlnet.json"' in out
    assert (models / CATALOG_FILE).read_text() == before  # the catalog is the operator's, never rewritten
    assert not list((models / "manifests").glob(".*"))  # no temporary file left behind
    assert main(["models", "verify", "nope", "--models", str(models)]) == 1
    assert "unknown_model" in capsys.readouterr().out


# -- `spotgen models list` ---------------------------------------------------------------------------------
def test_models_list_shows_sizes_kinds_and_problems(models: Path) -> None:
    catalog = json.loads((models / CATALOG_FILE).read_text())
    catalog["models"]["tiny-sd"].update(revision="v1.2", manifest="manifests/tiny-sd.json")
    catalog["models"]["broken"] = {"path": "not-there", "family": "sd2"}
    (models / CATALOG_FILE).write_text(json.dumps(catalog))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("SPOTGEN_NODE_CACHE_DIR", None)
    run = subprocess.run([sys.executable, "-m", "runtime.cli", "models", "list", "--models", str(models)],
                         capture_output=True, text=True, env=env, check=True, timeout=60)
    rows = {line.split()[0]: line.split() for line in run.stdout.splitlines()[2:] if line.split()}
    sd_bytes = sum(p.stat().st_size for p in (models / "tiny-sd").rglob("*") if p.is_file())
    assert rows["tiny-sd"][:3] == ["tiny-sd", "base", "sd1"] and rows["tiny-sd"][3] == "v1.2"
    assert " ".join(rows["tiny-sd"][4:6]) == f"{sd_bytes / 2**20:.1f} MiB"
    assert rows["tiny-sd"][6:] == ["yes", "-", "ok"]
    assert rows["tiny-controlnet"][6:] == ["no", "-", "ok"] and rows["tiny-controlnet"][5] == "KiB"
    assert rows["broken"][-1] == "model_missing" and "not-there" in run.stdout

    listed = json.loads(subprocess.run(
        [sys.executable, "-m", "runtime.cli", "models", "list", "--json", "--models", str(models)],
        capture_output=True, text=True, env=env, check=True, timeout=60).stdout)
    by_id = {m["id"]: m for m in listed["models"]}
    assert by_id["tiny-sd"]["size_bytes"] == sd_bytes and by_id["tiny-sd"]["cached"] is None
    assert by_id["broken"]["error"]["code"] == "model_missing" and by_id["broken"]["size_bytes"] is None


def test_models_list_reports_the_node_cache(models: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    from runtime.models import nodecache
    cache_dir = tmp_path / "node-cache"
    cache = nodecache.NodeCache(cache_dir, budget_bytes=1 << 30)
    cache.fetch("tiny-controlnet", models / "tiny-controlnet")
    monkeypatch.setenv("SPOTGEN_NODE_CACHE_DIR", str(cache_dir))
    assert main(["models", "list", "--json", "--models", str(models)]) == 0
    cached = {m["id"]: m["cached"] for m in json.loads(capsys.readouterr().out)["models"]}
    assert cached["tiny-controlnet"] and not cached["tiny-sd"]
    assert not any(cached[m] for m in cached if m != "tiny-controlnet")


def test_models_list_with_a_broken_catalog_fails_clearly(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_catalog(tmp_path, {"x": {"path": "../x"}})
    assert main(["models", "list", "--models", str(tmp_path)]) == 1
    assert "models.x.path: must not contain '..'" in capsys.readouterr().err


# -- single-file checkpoints -------------------------------------------------------------------------------
_RESNET = (("norm1", "in_layers.0"), ("conv1", "in_layers.2"), ("norm2", "out_layers.0"), ("conv2", "out_layers.3"),
           ("time_emb_proj", "emb_layers.1"), ("conv_shortcut", "skip_connection"))
_UNET_TOP = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
             "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2",
             "controlnet_cond_embedding.conv_in": "input_hint_block.0",
             "controlnet_cond_embedding.conv_out": "input_hint_block.14", "controlnet_mid_block": "middle_block_out.0"}
_VAE_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


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


def _vae_key(key: str, config: dict[str, Any]) -> str:
    """The inverse of diffusers' ``convert_ldm_vae_checkpoint``."""
    p = key.split(".")
    if p[0] in ("quant_conv", "post_quant_conv") or p[1] in ("conv_in", "conv_out"):
        return key
    side, q = p[0], p[1:]
    if q[0] == "conv_norm_out":
        return f"{side}.norm_out.{q[1]}"
    if q[0] in ("down_blocks", "up_blocks"):
        down = q[0] == "down_blocks"
        block = f"down.{q[1]}" if down else f"up.{len(config['up_block_types']) - 1 - int(q[1])}"
        if q[2] in ("downsamplers", "upsamplers"):
            return f"{side}.{block}.{'downsample' if down else 'upsample'}.conv.{q[-1]}"
        return f"{side}.{block}.block.{q[3]}." + ".".join(q[4:]).replace("conv_shortcut", "nin_shortcut")
    if q[:2] == ["mid_block", "resnets"]:
        return f"{side}.mid.block_{int(q[2]) + 1}." + ".".join(q[3:]).replace("conv_shortcut", "nin_shortcut")
    if q[:2] == ["mid_block", "attentions"]:
        return f"{side}.mid.attn_1.{_VAE_ATTENTION['.'.join(q[3:-1])]}.{q[-1]}"
    raise KeyError(key)


def vae_and_clip_state(model_dir: Path, clip_prefix: str) -> dict[str, torch.Tensor]:
    """A diffusers pipeline's VAE (under ``first_stage_model.``) and first CLIP text encoder (under
    ``clip_prefix``) in the original layout; SD 1.x and SDXL single files keep both the same way."""
    vae_config = json.loads((model_dir / "vae" / "config.json").read_text())
    out: dict[str, torch.Tensor] = {}
    for key, tensor in load_file(model_dir / "vae" / "diffusion_pytorch_model.safetensors").items():
        name = _vae_key(key, vae_config)
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
    """Same weights as the diffusers directory, so the same pixels, and no network (there is none here)."""
    store = ModelStore(single_file_models, "cpu")
    source = store.source("sd-file")
    assert source.single_file and source.path.name == "tiny-sd.safetensors" and source.config is not None
    assert not any(k.startswith("unet.") for k in load_file(source.path))  # really the original layout
    single, directory = base_pipeline(store, "sd-file"), base_pipeline(store, "tiny-sd")
    assert single is not directory and store.loads == 2
    for part in ("unet", "vae", "text_encoder"):
        a, b = getattr(single, part).state_dict(), getattr(directory, part).state_dict()
        assert a.keys() == b.keys(), part
        assert all(torch.equal(a[k].reshape(b[k].shape), b[k]) for k in a), part
    assert single.scheduler.config == directory.scheduler.config
    assert controlnet_model(store, "cn-file").state_dict().keys() == controlnet_model(
        store, "tiny-controlnet").state_dict().keys()

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
    assert verify_model(store, "sd-file").problems == ["sha256 mismatch: configs/sd/unet/config.json"]


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


# -- aliases: the names SD WebUI clients use -------------------------------------------------------------------
def test_aliases_name_catalog_entries_for_webui_clients(tmp_path: Path) -> None:
    from runtime.contract import from_webui

    store = write_catalog(tmp_path, {
        "sdxl-base": {"path": "sdxl-base", "family": "sdxl",
                      "aliases": ["sd_xl_base_1.0.safetensors", "sd_xl_base_1.0.safetensors [31e35c80fc]"]},
        "detail": {"path": "detail.safetensors", "kind": "lora", "family": "sdxl", "aliases": ["add_detail"]},
        "canny": {"path": "canny", "kind": "controlnet", "family": "sdxl", "aliases": ["control_canny [abc]"]},
    })
    names = store.catalog.names(default_model="sdxl-base")
    assert names.models["sd_xl_base_1.0.safetensors"] == "sdxl-base" and names.models["sdxl-base"] == "sdxl-base"
    assert names.loras == {"detail": "detail", "add_detail": "detail"}
    assert names.controlnets["control_canny [abc]"] == "canny"
    job = from_webui({"prompt": "a fox <lora:add_detail:0.5>", "width": 1024, "height": 1024,
                      "override_settings": {"sd_model_checkpoint": "sd_xl_base_1.0.safetensors [31e35c80fc]"}},
                     "txt2img", names)
    assert job.model == "sdxl-base" and job.inputs["loras"] == [{"id": "detail", "weight": 0.5}]


@pytest.mark.parametrize(("models", "why"), [
    ({"a": {"path": "a", "aliases": ["x"]}, "b": {"path": "b", "aliases": ["x"]}}, "'x' already names 'a'"),
    ({"a": {"path": "a", "aliases": ["b"]}, "b": {"path": "b"}}, "'b' already names 'b'"),
    ({"a": {"path": "a", "aliases": ["<lora:x>"]}}, "no '<' or '>'"),
    ({"a": {"path": "a", "aliases": [" padded"]}}, "surrounding spaces"),
    ({"a": {"path": "a", "aliases": [""]}}, "1-200 printable"),
])
def test_an_alias_that_names_two_entries_or_cannot_be_typed_is_refused(tmp_path: Path, models: dict[str, Any],
                                                                        why: str) -> None:
    with pytest.raises(ModelError) as caught:
        write_catalog(tmp_path, models).catalog  # noqa: B018
    assert caught.value.code == "catalog_invalid" and why in str(caught.value), str(caught.value)
