"""The model catalog: validation of ids and paths, safetensors only, and aliases (the names SD WebUI clients use).

Everything runs on copies of the tiny models, or on catalogs written into temporary directories.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from pipelines.common import base_pipeline
from runtime.models.catalog import CATALOG_FILE, ModelError
from runtime.models.store import ModelStore
from tests.models.catalogs import UNET_WEIGHTS, refused, write_catalog


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
