"""Tier-1 node cache: real files, real flocks, real processes sharing one cache directory."""

from __future__ import annotations

import fcntl
import logging
import multiprocessing
import os
import time
from pathlib import Path
from typing import Any

import pytest

from runtime.models import copyengine
from runtime.models.copying import NodeCacheError, sha256_manifest
from runtime.models.nodecache import NodeCache

MiB = 2**20
CHUNK = 256 * 1024  # small chunks, so that files of a few MiB take the multi-chunk, multi-reader path


def make_model(directory: Path, unet_bytes: int = 3 * MiB, seed: int = 0) -> Path:
    """A diffusers-shaped directory: one large weight file, a smaller one, JSON configs, an empty file."""
    files = {"unet/diffusion_pytorch_model.safetensors": unet_bytes + 17,  # not a multiple of the chunk
             "text_encoder/model.safetensors": MiB // 2, "unet/config.json": 300, "model_index.json": 500,
             "tokenizer/special_tokens_map.json": 0}
    for n, (rel, size) in enumerate(files.items()):
        (directory / rel).parent.mkdir(parents=True, exist_ok=True)
        (directory / rel).write_bytes(os.urandom(size) if seed == 0 else bytes([seed + n]) * size)
    return directory


def cache(root: Path, budget: int = 64 * MiB) -> NodeCache:
    return NodeCache(root, budget, readers=4, chunk_bytes=CHUNK)


def model_bytes(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.rglob("*") if p.is_file())


def _fetch_in_process(root: str, source: str, manifest: dict[str, str], barrier: Any, out: Any) -> None:
    barrier.wait()
    try:
        result = cache(Path(root)).fetch("sd15", Path(source), manifest)
        out.put((os.getpid(), result.copied, result.bytes_copied, str(result.path)))
    except BaseException as exc:
        out.put((os.getpid(), None, 0, repr(exc)))


def _hold_in_process(root: str, model_id: str, held: Any, release: Any) -> None:
    with cache(Path(root)).hold(model_id):
        held.set()
        release.wait(30)


def at_once(target: Any, args: tuple[Any, ...], timeout: float, n: int = 4) -> tuple[list[Any], list[int | None]]:
    """Run ``target(*args, barrier, out)`` in ``n`` fresh processes released together by the barrier; each
    puts one result on ``out``. Returns the results and the exit codes.

    The processes fork from a server that imported torch and diffusers once (and ran no torch op, so no thread
    pool is forked): four spawned processes spent 7 s of CPU each on those imports, which the test is not about.
    """
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["pipelines.common", "runtime.models.store", __name__])
    barrier, out = ctx.Barrier(n), ctx.Queue()
    procs = [ctx.Process(target=target, args=(*args, barrier, out)) for _ in range(n)]
    for p in procs:
        p.start()
    results = [out.get(timeout=timeout) for _ in procs]
    for p in procs:
        p.join(30)
    return results, [p.exitcode for p in procs]


def test_four_processes_fetching_at_once_copy_once(tmp_path: Path) -> None:
    source = make_model(tmp_path / "efs" / "sd15", unet_bytes=12 * MiB)
    manifest = sha256_manifest(source)
    results, exits = at_once(_fetch_in_process, (str(tmp_path / "node"), str(source), manifest), 60)
    assert exits == [0, 0, 0, 0]
    assert len({pid for pid, *_ in results}) == 4
    assert [copied for _, copied, _, _ in results].count(True) == 1
    assert sum(n for _, _, n, _ in results) == model_bytes(source)
    paths = {path for *_, path in results}
    assert len(paths) == 1
    assert sha256_manifest(Path(paths.pop())) == manifest
    assert [name for name in os.listdir(tmp_path / "node") if name.startswith((".tmp-", ".trash-"))] == []


def test_hit_copies_nothing_and_updates_last_used(tmp_path: Path) -> None:
    source = make_model(tmp_path / "efs")
    node = cache(tmp_path / "node")
    first = node.fetch("sd15", source)
    assert first.copied and first.bytes_copied == model_bytes(source)
    (_, size, used_before), = node.entries()
    time.sleep(0.02)
    hit = node.fetch("sd15", source)
    assert (hit.copied, hit.bytes_copied, hit.path) == (False, 0, first.path)
    (_, _, used_after), = node.entries()
    assert used_after > used_before and size == model_bytes(source) == node.size("sd15")
    assert node.is_cached("sd15") and not node.is_cached("other") and node.size("other") is None


def test_without_a_manifest_the_copy_stays_in_the_kernel_and_every_chunk_starts_its_writeback(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing to hash: no byte goes through this process (no pread, no pwrite), and each chunk is handed to
    the disk as soon as it is copied; the fsync before the commit is still what makes it durable."""
    source = make_model(tmp_path / "efs")

    def refused(*args: object) -> int:
        raise AssertionError("a byte of a copy without a manifest went through the process")

    written: list[tuple[int, int]] = []
    start_writeback = copyengine._start_writeback
    monkeypatch.setattr(os, "preadv", refused)
    monkeypatch.setattr(os, "pwrite", refused)
    monkeypatch.setattr(copyengine, "_start_writeback",
                        lambda fd, at, n: (written.append((at, n)), start_writeback(fd, at, n)))
    result = cache(tmp_path / "node").fetch("sd15", source)
    assert result.copied and all((result.path / p.relative_to(source)).read_bytes() == p.read_bytes()
                                 for p in source.rglob("*") if p.is_file())
    assert sum(n for _, n in written) == model_bytes(source) and max(n for _, n in written) == CHUNK


def flip_byte(path: Path, offset: int = 1000, keep_mtime: bool = False) -> None:
    st = path.stat()
    time.sleep(0.02)  # file timestamps tick every few ms: make the write's mtime differ from the copy's
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0xFF]))
    if keep_mtime:
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_corrupted_copy_is_detected_and_fetched_again(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    source = make_model(tmp_path / "efs")
    manifest = sha256_manifest(source)
    node = cache(tmp_path / "node")
    unet = node.fetch("sd15", source, manifest).path / "unet/diffusion_pytorch_model.safetensors"

    flip_byte(unet)  # an ordinary write: the cheap check (size + mtime per file) sees it
    with caplog.at_level(logging.WARNING, "spotgen.nodecache"):
        again = node.fetch("sd15", source, manifest)
    assert again.copied and sha256_manifest(again.path) == manifest
    assert "sd15" in caplog.text and "modified after it was copied" in caplog.text

    flip_byte(unet, offset=5 * CHUNK + 3, keep_mtime=True)  # silent corruption: only re-hashing sees it
    assert not node.fetch("sd15", source, manifest).copied
    repaired = node.fetch("sd15", source, manifest, verify=True)
    assert repaired.copied and sha256_manifest(repaired.path) == manifest
    assert "does not match the sha256 of unet/diffusion_pytorch_model.safetensors" in caplog.text

    flip_byte(unet, keep_mtime=True)  # without a manifest, verify uses the hashes recorded at copy time
    assert node.fetch("sd15", source, verify=True).copied

    os.truncate(unet, 100)
    assert node.fetch("sd15", source).copied
    (again.path / "model_index.json").unlink()
    assert node.fetch("sd15", source).copied and sha256_manifest(again.path) == manifest


def test_changed_manifest_means_a_new_copy(tmp_path: Path) -> None:
    source = make_model(tmp_path / "efs")
    node = cache(tmp_path / "node")
    node.fetch("sd15", source, sha256_manifest(source))
    (source / "unet/config.json").write_text('{"new": "version"}')
    result = node.fetch("sd15", source, sha256_manifest(source))
    assert result.copied and (result.path / "unet/config.json").read_text() == '{"new": "version"}'


def test_interrupted_copies_are_cleaned_and_refilled(tmp_path: Path) -> None:
    source = make_model(tmp_path / "efs")
    root = tmp_path / "node"
    node = cache(root)
    node.fetch("sd15", source)
    # a pod killed mid-copy of another model, one of this model, and an entry whose marker never completed
    for leftover in (".tmp-other-4242-deadbeef", ".tmp-sd15-4243-cafef00d", ".trash-old-1-00"):
        (root / leftover / "model").mkdir(parents=True)
        (root / leftover / "model" / "junk").write_bytes(b"x" * 1000)
    (root / "sd15" / "marker.json").write_text('{"format": 1, "model_id": "sd1')
    result = node.fetch("sd15", source)
    assert result.copied and sha256_manifest(result.path) == sha256_manifest(source)
    assert sorted(os.listdir(root)) == [".locks", "sd15"]

    (root / "sd15" / "marker.json").unlink()  # a directory without a marker is not a copy
    assert not node.is_cached("sd15") and node.entries() == []
    assert node.fetch("sd15", source).copied


def test_least_recently_used_is_evicted_but_not_a_held_one(tmp_path: Path) -> None:
    sources = {m: make_model(tmp_path / "efs" / m, unet_bytes=MiB, seed=i + 1) for i, m in enumerate("abc")}
    size = model_bytes(sources["a"])
    node = cache(tmp_path / "node", budget=2 * size + size // 2)  # room for two
    node.fetch("a", sources["a"])
    node.fetch("b", sources["b"])
    time.sleep(0.02)
    assert not node.fetch("a", sources["a"]).copied  # a is now more recent than b
    node.fetch("c", sources["c"])
    assert [m for m, _, _ in node.entries()] == ["a", "c"]

    # a is now the least recently used, but another process holds it: c goes instead
    ctx = multiprocessing.get_context("spawn")
    held, release = ctx.Event(), ctx.Event()
    holder = ctx.Process(target=_hold_in_process, args=(str(tmp_path / "node"), "a", held, release))
    holder.start()
    try:
        assert held.wait(30)
        assert node.fetch("b", sources["b"]).copied
        assert [m for m, _, _ in node.entries()] == ["a", "b"]
        with node.hold("b"), pytest.raises(NodeCacheError, match=r"model 'c' needs .* in use: a, b"):
            node.fetch("c", sources["c"])
        with pytest.raises(NodeCacheError, match="'a' is in use"):
            node.evict("a")
    finally:
        release.set()
        holder.join(30)
    assert node.evict("a") and not node.evict("a")
    assert [m for m, _, _ in node.entries()] == ["b"]


def test_a_copy_in_progress_counts_against_the_budget(tmp_path: Path) -> None:
    source = make_model(tmp_path / "efs")
    root = tmp_path / "node"
    node = cache(root, budget=8 * MiB)
    (root / ".tmp-other-4242-aa").mkdir()
    (root / ".tmp-other-4242-aa" / "reserved_bytes").write_text(str(6 * MiB))
    with open(root / ".locks" / "other.fill", "a") as lock:  # another process is copying "other" right now
        fcntl.flock(lock, fcntl.LOCK_EX)
        with pytest.raises(NodeCacheError, match="needs 3.5 MiB but only 2.0 MiB"):
            node.fetch("sd15", source)
        assert (root / ".tmp-other-4242-aa").exists()
    assert node.fetch("sd15", source).copied  # that copier died: its leftover is removed, its room freed
    assert not (root / ".tmp-other-4242-aa").exists()


def test_fetch_inside_hold_does_not_deadlock(tmp_path: Path) -> None:
    source = make_model(tmp_path / "efs")
    node = cache(tmp_path / "node")
    with node.hold("sd15"):
        assert node.fetch("sd15", source).copied


@pytest.mark.parametrize("bad", ["", "SD15", "../x", "a/b", "-a", ".tmp", "a b", "a" * 65, "é", None])
def test_invalid_ids_are_refused(tmp_path: Path, bad: Any) -> None:
    node = cache(tmp_path / "node")
    for call in (lambda: node.fetch(bad, tmp_path), lambda: node.evict(bad), lambda: node.is_cached(bad),
                 lambda: node.size(bad), lambda: node.hold(bad).__enter__()):
        with pytest.raises(NodeCacheError, match="invalid model id"):
            call()
    assert os.listdir(tmp_path / "node") == [".locks"]


def test_model_larger_than_the_budget_is_refused(tmp_path: Path) -> None:
    source = make_model(tmp_path / "efs")
    node = cache(tmp_path / "node", budget=2 * MiB)
    with pytest.raises(NodeCacheError, match=r"model 'big' is 3\.[0-9] MiB \([0-9]+ bytes\), larger than the whole "
                                             r"node cache budget of 2\.0 MiB \(2097152 bytes\)"):
        node.fetch("big", source)
    assert node.entries() == []


def test_bad_sources_are_refused_with_clear_errors(tmp_path: Path) -> None:
    node = cache(tmp_path / "node")
    with pytest.raises(NodeCacheError, match=r"model 'sd15': source directory .*/nowhere does not exist"):
        node.fetch("sd15", tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(NodeCacheError, match="holds no files"):
        node.fetch("sd15", tmp_path / "empty")

    source = make_model(tmp_path / "efs")
    manifest = sha256_manifest(source)
    (source / "unet/config.json").write_text("changed on tier 0")
    with pytest.raises(NodeCacheError, match="unet/config.json read from .* has sha256 .* but the manifest says"):
        node.fetch("sd15", source, manifest)
    with pytest.raises(NodeCacheError, match=r"missing \['gone.json'\], weight files not in the manifest \[\]"):
        node.fetch("sd15", source, {**sha256_manifest(source), "gone.json": "0" * 64})
    with pytest.raises(NodeCacheError, match="entry for model_index.json: .abc. is not a sha256 digest"):
        node.fetch("sd15", source, {"model_index.json": "abc"})
    # as `spotgen models verify` has it: an unlisted weight file is refused, an unlisted README is copied
    listed = sha256_manifest(source)
    (source / "README.md").write_text("notes")
    assert (node.fetch("readme", source, listed).path / "README.md").read_text() == "notes"
    (source / "extra.safetensors").write_bytes(b"x" * 10)
    with pytest.raises(NodeCacheError, match=r"weight files not in the manifest \['extra.safetensors'\]"):
        node.fetch("extra", source, {**listed, "README.md": sha256_manifest(source)["README.md"]})
    (source / "README.md").unlink()
    (source / "extra.safetensors").unlink()

    (source / "inside.json").symlink_to(source / "model_index.json")  # a link inside the model is copied
    assert (node.fetch("sd15", source).path / "inside.json").read_bytes() == (source / "model_index.json").read_bytes()
    (tmp_path / "secret").write_text("x")
    (source / "outside").symlink_to(tmp_path / "secret")
    with pytest.raises(NodeCacheError, match="outside is a symlink leaving"):
        node.fetch("other", source)
    assert [m for m, _, _ in node.entries()] == ["readme", "sd15"]
    assert [n for n in os.listdir(tmp_path / "node") if n.startswith(".tmp-")] == []


# -- the model store loads directory models from tier 1 ----------------------------------------------------


def test_model_store_loads_from_the_node_cache(tiny_models: Path, tmp_path: Path) -> None:
    from pipelines.common import base_pipeline, controlnet_model
    from runtime.models.store import ModelStore

    cache = NodeCache(tmp_path / "node", 1024**3)
    store = ModelStore(tiny_models, "cpu", cache)
    source = store.source("tiny-sd")
    assert cache.is_cached("tiny-sd") and source.path.is_relative_to(tmp_path / "node")
    pipe = base_pipeline(store, "tiny-sd")
    controlnet_model(store, "tiny-controlnet")
    assert cache.is_cached("tiny-controlnet")
    assert pipe.unet.config.sample_size > 0
    # a second process on the node finds both copies: nothing is copied again
    again = ModelStore(tiny_models, "cpu", NodeCache(tmp_path / "node", 1024**3))
    assert again.source("tiny-sd").path == source.path


class _Copies(logging.Handler):
    """Counts the store's "copied N bytes to the node cache" lines: how often this process read tier 0."""

    def __init__(self) -> None:
        super().__init__()
        self.bytes: list[int] = []

    def emit(self, record: logging.LogRecord) -> None:
        if "to the node cache" in record.getMessage():
            self.bytes.append(int(record.args[1]))  # type: ignore[index]


def _load_in_process(models: str, root: str, barrier: Any, out: Any) -> None:
    """What a worker does at start-up with SPOTGEN_PRELOAD=tiny-sd,tiny-controlnet and a node cache."""
    try:
        from pipelines.common import base_pipeline, controlnet_model
        from runtime.models.store import ModelStore

        copies = _Copies()
        logging.getLogger("spotgen.models").addHandler(copies)
        logging.getLogger("spotgen.models").setLevel(logging.INFO)
        store = ModelStore(Path(models), "cpu", NodeCache(Path(root), 1024**3))
        barrier.wait()
        pipe = base_pipeline(store, "tiny-sd")
        controlnet_model(store, "tiny-controlnet")
        weights = float(sum(t.double().sum() for t in pipe.unet.state_dict().values()))
        out.put((os.getpid(), copies.bytes, weights, str(store.source("tiny-sd").path), store.loads))
    except BaseException as exc:
        out.put((os.getpid(), None, 0.0, repr(exc), 0))


def test_four_processes_loading_at_once_copy_each_model_once_and_all_load_it(tiny_models: Path,
                                                                               tmp_path: Path) -> None:
    from runtime.models.store import ModelStore

    results, _ = at_once(_load_in_process, (str(tiny_models), str(tmp_path / "node")), 180)
    assert all(copies is not None for _, copies, *_ in results), results
    tier0 = ModelStore(tiny_models)
    copied = sorted(n for _, copies, *_ in results for n in copies)
    assert copied == sorted([tier0.size("tiny-sd"), tier0.size("tiny-controlnet")])  # one copy of each, in all
    assert len({weights for _, _, weights, _, _ in results}) == 1  # all four loaded the same weights
    assert {path for *_, path, _ in results} == {str(tmp_path / "node" / "tiny-sd" / "model")}
    assert all(loads == 2 for *_, loads in results)
