"""Manifest hash kinds in the node cache: xxh3_128 in pieces (hashed by the reader threads) and sha256 (manifests
written before it), both through ``NodeCache.fetch`` and through ``ModelStore`` as a worker uses them."""

from __future__ import annotations

import errno
import json
import logging
import os
from pathlib import Path

import pytest

from runtime.models import copyengine
from runtime.models.catalog import CATALOG_FILE, ModelError
from runtime.models.copying import NodeCacheError, file_digest, manifest_of, parse_digest, sha256_manifest
from runtime.models.manifests import write_manifest
from runtime.models.nodecache import NodeCache
from runtime.models.store import ModelStore
from tests.models.test_nodecache import make_model

UNET = "unet/diffusion_pytorch_model.safetensors"
KiB = 1024


def flip_byte(path: Path, at: int) -> None:
    """One bit of ``path`` changed in place, its mtime kept (so that only a hash can notice)."""
    st = os.stat(path)
    with open(path, "r+b") as f:
        f.seek(at)
        byte = f.read(1)
        f.seek(at)
        f.write(bytes([byte[0] ^ 0x01]))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


# (copy chunk, manifest piece): pieces smaller than a copy chunk, larger, and a copy chunk that is no multiple
@pytest.mark.parametrize(("chunk", "piece"), [(256 * KiB, 64 * KiB), (256 * KiB, 1024 * KiB), (300 * KiB, 64 * KiB),
                                              (8 << 20, 8 << 20)])
def test_xxh3_manifest_copies_and_verifies(tmp_path: Path, chunk: int, piece: int) -> None:
    source = make_model(tmp_path / "efs")
    manifest = manifest_of(source, "xxh3_128", piece)
    assert all(parse_digest(v).kind == "xxh3_128" and parse_digest(v).chunk_bytes == piece for v in manifest.values())
    node = NodeCache(tmp_path / "node", 64 << 20, readers=4, chunk_bytes=chunk)
    result = node.fetch("sd15", source, manifest)
    assert result.copied and manifest_of(result.path, "xxh3_128", piece) == manifest
    assert (result.path / UNET).read_bytes() == (source / UNET).read_bytes()
    assert not node.fetch("sd15", source, manifest, verify=True).copied  # re-hashed on disk: the same value


def test_corrupted_bytes_fail_naming_the_file_and_the_hash_kind(tmp_path: Path,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    source = make_model(tmp_path / "efs")
    manifest = manifest_of(source, "xxh3_128", 64 * KiB)
    node = NodeCache(tmp_path / "node", 64 << 20, readers=4, chunk_bytes=256 * KiB)
    copy = node.fetch("sd15", source, manifest).path
    flip_byte(copy / UNET, 1 << 20)  # in the tier-1 copy: verify notices and copies it again
    with caplog.at_level(logging.WARNING, logger="spotgen.nodecache"):
        assert node.fetch("sd15", source, manifest, verify=True).copied
    assert f"does not match the xxh3_128 of {UNET}" in caplog.text

    flip_byte(source / UNET, (3 << 20) + 16)  # on tier 0, in the file's last piece: the copy is refused
    fresh = NodeCache(tmp_path / "fresh", 64 << 20, readers=4, chunk_bytes=256 * KiB)
    with pytest.raises(NodeCacheError, match=rf"{UNET} read from .* has xxh3_128 [0-9a-f]{{32}} but the manifest "
                                             rf"says {parse_digest(manifest[UNET]).hex}"):
        fresh.fetch("sd15", source, manifest)
    assert not fresh.is_cached("sd15") and not (tmp_path / "fresh" / "sd15").exists()  # nothing torn left


def _no_copy_file_range(*args: object) -> int:
    raise OSError(errno.EXDEV, "Invalid cross-device link")  # as from NFS (EFS) to local disk


@pytest.mark.parametrize("in_kernel", [True, False], ids=["copy_file_range", "through-a-buffer"])
def test_xxh3_copies_in_the_kernel_or_through_a_buffer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                       in_kernel: bool) -> None:
    """Local disk to local disk copies in the kernel, a part of at most a piece at a time, each hashed from the
    copy right after; EXDEV (EFS to local disk) falls back to pread, hash, pwrite. Both give the verified copy."""
    source = make_model(tmp_path / "efs")
    manifest = manifest_of(source, "xxh3_128", 64 * KiB)
    parts: list[int] = []
    kernel_copy = copyengine._kernel_copy
    monkeypatch.setattr(copyengine, "_kernel_copy", lambda f, at, n, fd: (parts.append(n), kernel_copy(f, at, n, fd)))
    if not in_kernel:
        monkeypatch.setattr(os, "copy_file_range", _no_copy_file_range)
    result = NodeCache(tmp_path / "node", 64 << 20, readers=4, chunk_bytes=256 * KiB).fetch("sd15", source, manifest)
    assert result.copied and manifest_of(result.path, "xxh3_128", 64 * KiB) == manifest
    assert (result.path / UNET).read_bytes() == (source / UNET).read_bytes()
    assert parts  # tried in the kernel first either way
    if in_kernel:
        assert sum(parts) == sum(p.stat().st_size for p in source.rglob("*") if p.is_file())
        assert max(parts) <= 64 * KiB


@pytest.mark.parametrize("in_kernel", [True, False], ids=["copy_file_range", "through-a-buffer"])
def test_a_chunk_corrupted_on_its_way_to_the_copy_is_caught(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                            in_kernel: bool) -> None:
    """The broken variants: in the kernel path, a byte changed in the copy after the kernel wrote it (a fault
    between the source and the disk) is caught, because the hash is of the copy's bytes and not the source's;
    through a buffer, a byte changed in the buffer after the read. Nothing is committed or left behind."""
    source = make_model(tmp_path / "efs")
    manifest = manifest_of(source, "xxh3_128", 64 * KiB)
    bad = (1 << 20) + 100
    if in_kernel:
        kernel_copy = copyengine._kernel_copy

        def corrupted(f: copyengine._File, at: int, n: int, fd: int) -> None:
            kernel_copy(f, at, n, fd)
            if f.rel == UNET and at <= bad < at + n:
                os.pwrite(fd, bytes([os.pread(fd, 1, bad)[0] ^ 0x40]), bad)

        monkeypatch.setattr(copyengine, "_kernel_copy", corrupted)
    else:
        monkeypatch.setattr(os, "copy_file_range", _no_copy_file_range)
        read = copyengine._read

        def corrupted_read(fd: int, view: memoryview, at: int, shrank: str) -> None:
            read(fd, view, at, shrank)
            if UNET in shrank and at <= bad < at + len(view):
                view[bad - at] ^= 0x40

        monkeypatch.setattr(copyengine, "_read", corrupted_read)
    node = NodeCache(tmp_path / "node", 64 << 20, readers=4, chunk_bytes=256 * KiB)
    with pytest.raises(NodeCacheError, match=rf"{UNET} read from .* has xxh3_128 [0-9a-f]{{32}} but the manifest"):
        node.fetch("sd15", source, manifest)
    assert not node.is_cached("sd15") and not (tmp_path / "node" / "sd15").exists()
    assert not list((tmp_path / "node").glob(".tmp-*"))


def test_unknown_hash_kinds_are_refused(tmp_path: Path) -> None:
    source = make_model(tmp_path / "efs")
    node = NodeCache(tmp_path / "node", 64 << 20)
    manifest = {**manifest_of(source, "xxh3_128", 64 * KiB), "model_index.json": "md5:4096:" + "0" * 32}
    with pytest.raises(NodeCacheError, match="entry for model_index.json: unknown hash kind 'md5'"):
        node.fetch("sd15", source, manifest)
    with pytest.raises(NodeCacheError, match="chunk_bytes 1000 is not a power of two"):
        node.fetch("sd15", source, {**manifest, "model_index.json": "xxh3_128:1000:" + "0" * 32})
    with pytest.raises(ValueError, match="unknown hash kind 'md5'"):
        file_digest(source / UNET, "md5")


def _with_manifest(models: Path, content: dict[str, object] | None = None) -> Path:
    catalog = json.loads((models / CATALOG_FILE).read_text())
    catalog["models"]["tiny-sd"]["manifest"] = "manifests/tiny-sd.json"
    (models / CATALOG_FILE).write_text(json.dumps(catalog))
    if content is None:
        write_manifest(ModelStore(models), "tiny-sd")
    else:
        (models / "manifests").mkdir(exist_ok=True)
        (models / "manifests" / "tiny-sd.json").write_text(json.dumps(content))
    return models / "tiny-sd" / "unet" / "diffusion_pytorch_model.safetensors"


@pytest.mark.parametrize("kind", ["xxh3_128", "sha256"])
def test_the_store_fetches_through_either_kind_of_manifest(models: Path, tmp_path: Path, kind: str) -> None:
    """What a worker does: ``ModelStore.manifest`` as read from the catalog's file, checked by the node cache."""
    weights = _with_manifest(models, None if kind == "xxh3_128" else {"files": sha256_manifest(models / "tiny-sd")})
    store = ModelStore(models, "cpu", NodeCache(tmp_path / "node", 1 << 30))
    assert store.source("tiny-sd").path.is_relative_to(tmp_path / "node")
    flip_byte(weights, weights.stat().st_size - 1)
    store = ModelStore(models, "cpu", NodeCache(tmp_path / "other", 1 << 30))
    with pytest.raises(ModelError, match=rf"unet/diffusion_pytorch_model.safetensors read from .* has {kind} "):
        store.source("tiny-sd")


def test_the_store_refuses_a_manifest_of_an_unknown_kind(models: Path, tmp_path: Path) -> None:
    _with_manifest(models, {"hash": "blake3", "files": {"model_index.json": "0" * 64}})
    store = ModelStore(models, "cpu", NodeCache(tmp_path / "node", 1 << 30))
    with pytest.raises(ModelError, match="is invalid: hash: unknown hash kind 'blake3'") as info:
        store.source("tiny-sd")
    assert info.value.code == "manifest_invalid"
