"""Manifests and the ``spotgen models`` commands: ``manifest`` writes a model's manifest, ``verify`` checks the files
against it, ``list`` shows sizes, kinds, node-cache state and problems.

Everything runs on copies of the tiny models in temporary directories.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from runtime.cli import main
from runtime.models.catalog import CATALOG_FILE
from runtime.models.copying import file_digest, sha256_manifest
from runtime.models.manifests import verify_model, write_manifest
from runtime.models.store import ModelStore
from tests.models.catalogs import UNET_WEIGHTS, write_catalog

ROOT = Path(__file__).resolve().parents[2]


# -- manifests and `spotgen models verify` ----------------------------------------------------------------
def test_verify_passes_then_fails_after_a_flipped_byte(models: Path, capsys: pytest.CaptureFixture[str]) -> None:
    catalog = json.loads((models / CATALOG_FILE).read_text())
    catalog["models"]["tiny-sd"]["manifest"] = "manifests/tiny-sd.json"
    (models / CATALOG_FILE).write_text(json.dumps(catalog))
    assert main(["models", "manifest", "tiny-sd", "--models", str(models)]) == 0
    out = capsys.readouterr().out
    assert "manifests/tiny-sd.json: 12 files" in out and "add" not in out
    manifest = json.loads((models / "manifests" / "tiny-sd.json").read_text())
    assert manifest["hash"] == "xxh3_128" and manifest["chunk_bytes"] == 8 << 20  # the new kind, by default
    assert len(manifest["files"]) == 12 and len(manifest["files"][UNET_WEIGHTS]) == 32
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
    assert f"xxh3_128 mismatch: {UNET_WEIGHTS}" in out  # names the file and the hash kind


def test_old_sha256_manifests_still_verify(models: Path) -> None:
    """A manifest written before xxh3_128 (no ``hash`` field: sha256) verifies, and fails as sha256."""
    catalog = json.loads((models / CATALOG_FILE).read_text())
    catalog["models"]["tiny-sd"]["manifest"] = "old.json"
    (models / CATALOG_FILE).write_text(json.dumps(catalog))
    (models / "old.json").write_text(json.dumps({"files": sha256_manifest(models / "tiny-sd")}))
    store = ModelStore(models)
    assert verify_model(store, "tiny-sd").status == "ok"
    weights = models / "tiny-sd" / UNET_WEIGHTS
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0x80
    weights.write_bytes(bytes(data))
    assert verify_model(store, "tiny-sd").problems == [f"sha256 mismatch: {UNET_WEIGHTS}"]


def test_the_xxh3_128_value_is_the_documented_one(models: Path) -> None:
    """docs/models.md "Manifests": xxh3_128 of the concatenated xxh3_128 digests of each chunk_bytes piece, so
    that another tool can compute it from the definition alone."""
    import xxhash

    path = models / "tiny-sd" / UNET_WEIGHTS
    data = path.read_bytes()
    for chunk in (4096, 1 << 16, 8 << 20):
        pieces = b"".join(xxhash.xxh3_128(data[i:i + chunk]).digest() for i in range(0, len(data), chunk))
        assert file_digest(path, "xxh3_128", chunk).hex == xxhash.xxh3_128(pieces).hexdigest()
    (models / "empty").write_bytes(b"")
    assert file_digest(models / "empty", "xxh3_128").hex == xxhash.xxh3_128(b"").hexdigest()


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
    ({"files": {"model_index.json": "not-a-digest"}}, "model_index.json: 'not-a-digest' is not a sha256 digest"),
    ({"sha256": {}}, "files"),
    # an unknown hash kind is refused, never taken for sha256 or skipped
    ({"hash": "md5", "files": {"model_index.json": "0" * 32}}, "hash: unknown hash kind 'md5'"),
    ({"hash": "xxh3_128", "files": {"model_index.json": "0" * 32}}, "chunk_bytes is required with hash xxh3_128"),
    ({"hash": "xxh3_128", "chunk_bytes": 3000, "files": {}}, "chunk_bytes 3000 is not a power of two"),
    ({"hash": "xxh3_128", "chunk_bytes": 4096, "files": {"model_index.json": "0" * 64}},
     "is not a xxh3_128 digest (32 lowercase hex digits)"),
    ({"chunk_bytes": 4096, "files": {}}, "chunk_bytes is not allowed with hash sha256"),
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
