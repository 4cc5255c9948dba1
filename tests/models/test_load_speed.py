"""Loading at the disk's speed (issue 32): the store reads a model's files ahead while diffusers builds its modules,
only inside a load and only what is not in memory yet; and the worker's start-up phase timings."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from pipelines.common import base_pipeline
from runtime.models.prefetch import SPAN, Prefetcher, _into_page_cache, cached, smallest_first
from runtime.models.store import ModelStore
from runtime.models.tinymedium import evict, model_files
from runtime.worker.app import process_age_s
from tests.harness.bench_coldstart import worker_phases


def cold(files: list[Path]) -> bool:
    """Whether ``files`` could be dropped from the page cache here (not on a tmpfs, say); they are, after it (the
    probe may start the kernel's own read-ahead: dropped again)."""
    for _ in range(3):  # a page under I/O (a read-ahead in flight) stays: try again
        if not evict(files):
            return False
        fd = os.open(files[-1], os.O_RDONLY)
        try:
            dropped = not cached(fd, 0, bytearray(4096))
        finally:
            os.close(fd)
        if dropped and evict(files):
            return True
    return False


def test_files_are_read_ahead_during_a_load_only(tmp_path: Path) -> None:
    weights = tmp_path / "weights.safetensors"
    weights.write_bytes(os.urandom(3 << 20))
    prefetch = Prefetcher()
    assert prefetch.files([weights]) is None and not prefetch.active  # outside a load: nothing read
    if not cold([weights]):
        pytest.skip("the page cache cannot be dropped on this file system")
    with prefetch.loading():
        thread = prefetch.files([weights])
        assert thread is not None and prefetch.files([weights]) is None  # once per load
        thread.join()
    assert prefetch.bytes_read == 3 << 20
    with prefetch.loading():  # now in the page cache: skipped, not copied again
        thread = prefetch.files([weights])
        assert thread is not None
        thread.join()
    assert prefetch.bytes_read == 3 << 20


def test_a_partly_cached_file_is_read_from_its_first_span_not_in_memory(tmp_path: Path) -> None:
    weights = tmp_path / "weights.safetensors"
    weights.write_bytes(os.urandom(3 * SPAN))
    if not cold([weights]):
        pytest.skip("the page cache cannot be dropped on this file system")
    fd = os.open(weights, os.O_RDONLY)
    try:  # the first span in memory, as after a load cut short, and nothing past it: no read-ahead on this
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)  # descriptor (its pages may land after a drop)
        os.pread(fd, SPAN, 0)
        os.posix_fadvise(fd, SPAN, 0, os.POSIX_FADV_DONTNEED)
        assert cached(fd, 0, bytearray(4096))  # (no probe past it: a probe of a page not in memory reads it)
    finally:
        os.close(fd)
    prefetch = Prefetcher()
    with prefetch.loading():
        thread = prefetch.files([weights])
        assert thread is not None
        thread.join()
    assert prefetch.bytes_read == 2 * SPAN


def test_where_sendfile_cannot_the_read_ahead_goes_through_a_buffer(tmp_path: Path) -> None:
    weights = tmp_path / "w.bin"
    weights.write_bytes(os.urandom(3 << 20))
    fd, not_writable = os.open(weights, os.O_RDONLY), os.open(weights, os.O_RDONLY)
    try:  # sendfile refuses an output it cannot write: the bytes are read all the same
        assert _into_page_cache(fd, not_writable, 1 << 20, 2 << 20) == 2 << 20
        assert _into_page_cache(fd, not_writable, 2 << 20, 5 << 20) == 1 << 20  # to the end of the file
    finally:
        os.close(fd)
        os.close(not_writable)


def test_files_are_read_ahead_the_smallest_folder_first(tmp_path: Path) -> None:
    sizes = {"unet": 5000, "vae": 300, "text_encoder": 1000, "tokenizer": 10}
    paths = []
    for folder, size in sizes.items():
        (tmp_path / folder).mkdir()
        for name in ("config.json", "weights.safetensors"):
            (tmp_path / folder / name).write_bytes(b"x" * (size if name.startswith("weights") else 1))
            paths.append(tmp_path / folder / name)
    (tmp_path / "model_index.json").write_bytes(b"{}")
    order = smallest_first([*paths, tmp_path / "model_index.json"])
    assert [p.relative_to(tmp_path).as_posix() for p in order] == [
        "model_index.json", "tokenizer/config.json", "tokenizer/weights.safetensors", "vae/config.json",
        "vae/weights.safetensors", "text_encoder/config.json", "text_encoder/weights.safetensors",
        "unet/config.json", "unet/weights.safetensors"]


def test_components_load_smallest_first_into_the_pipeline_diffusers_loads(tiny_models: Path) -> None:
    import torch
    from diffusers import StableDiffusionPipeline

    from pipelines import components
    from runtime.models.prefetch import folder_bytes

    directory = tiny_models / "tiny-sd"
    parts = components.smallest_first(directory, StableDiffusionPipeline, torch.float32, {"safety_checker": None})
    assert set(parts) == {"scheduler", "text_encoder", "tokenizer", "unet", "vae"}
    assert list(parts) == sorted(parts, key=lambda name: (folder_bytes(directory / name), name))
    assert list(parts)[-1] == "unet"  # the largest, whose read the others' building overlaps
    mine = StableDiffusionPipeline.from_pretrained(directory, safety_checker=None, **parts)
    theirs = StableDiffusionPipeline.from_pretrained(directory, safety_checker=None)
    for name in ("unet", "vae", "text_encoder"):
        a, b = getattr(mine, name), getattr(theirs, name)
        assert type(a) is type(b) and a.training == b.training == False  # noqa: E712
        assert a.config == b.config, name
        for (key, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
            assert x.dtype == y.dtype and x.equal(y), f"{name}.{key}"
    assert mine.scheduler.config == theirs.scheduler.config
    assert mine.tokenizer("a red fox").input_ids == theirs.tokenizer("a red fox").input_ids


def test_a_component_already_given_is_not_loaded_again(tiny_models: Path) -> None:
    import torch
    from diffusers import StableDiffusionPipeline

    from pipelines import components

    parts = components.smallest_first(tiny_models / "tiny-sd", StableDiffusionPipeline, torch.float32,
                                      {"vae": object(), "safety_checker": None, "requires_safety_checker": False})
    assert "vae" not in parts and "safety_checker" not in parts and "unet" in parts


def test_a_cpu_load_is_not_moved_and_another_device_is(tiny_models: Path) -> None:
    from pipelines.families.base import on_device

    store = ModelStore(tiny_models)
    pipe = base_pipeline(store, "tiny-sd")
    assert on_device(pipe, "cpu") is pipe and pipe.unet.device.type == "cpu"
    fresh = base_pipeline(ModelStore(tiny_models), "tiny-sd")  # a store of its own: not the pipeline above
    assert on_device(fresh, "meta").unet.device.type == "meta"  # a device that is not the CPU: moved


def test_a_disabled_prefetcher_reads_nothing(tmp_path: Path) -> None:
    weights = tmp_path / "w.bin"
    weights.write_bytes(b"x" * 4096)
    prefetch = Prefetcher(enabled=False)
    with prefetch.loading():
        assert not prefetch.active and prefetch.files([weights]) is None


def test_a_store_load_reads_the_model_ahead_and_loads_the_same_model(models: Path) -> None:
    files = model_files(models / "tiny-sd")
    if not cold(files):
        pytest.skip("the page cache cannot be dropped on this file system")
    store = ModelStore(models)
    store.source("tiny-sd")  # outside a load: checked, not read ahead
    assert store.prefetch.bytes_read == 0
    pipe = base_pipeline(store, "tiny-sd")
    assert store.loads == 1 and pipe.unet is not None
    weights = sum(p.stat().st_size for p in files if p.suffix == ".safetensors")
    assert 0 < store.prefetch.bytes_read <= sum(p.stat().st_size for p in files) + (1 << 20) * len(files)
    assert weights > 0
    reference = base_pipeline(ModelStore(models), "tiny-sd")
    for (name, mine), (_, theirs) in zip(pipe.unet.state_dict().items(), reference.unet.state_dict().items(),
                                         strict=True):
        assert mine.equal(theirs), name


def test_process_age_is_measured_from_the_process_start() -> None:
    age = process_age_s()
    if age < 0:
        pytest.skip("no /proc here")
    assert 0 < age < 24 * 3600


def test_the_benchmark_reads_the_phases_from_the_worker_log(tmp_path: Path) -> None:
    lines = [("2026-12-07T10:00:05.000Z", "worker set up 5.00 s after its process started (imports...)"),
             ("2026-12-07T10:00:07.500Z", "model medium-sd: copied 1000 bytes to the node cache in 1.50 s"),
             ("2026-12-07T10:00:08.000Z", "preloaded model medium-sd in 2.75 s"),
             ("2026-12-07T10:00:09.000Z", "job other succeeded: pipeline 0.100 s"),
             ("2026-12-07T10:00:10.000Z", "job abc succeeded: pipeline 0.500 s, storing")]
    log = tmp_path / "worker.log"
    log.write_text("not json\n" + "".join(json.dumps({"time": t, "message": m}) + "\n" for t, m in lines))
    phases = worker_phases(log, "abc")
    assert phases["set_up_s"] == 5.0 and phases["fetch_s"] == 1.5 and phases["load_s"] == 1.25
    assert phases["first_job_s"] == pytest.approx(2.0) and phases["total_s"] == pytest.approx(10.0)
    assert phases["job_pipeline_s"] == 0.5 and phases["fetched_bytes"] == 1000
    assert phases["fetch_during_set_up_s"] == 0.0
    # fetched ahead: 4.0 s to 5.5 s, so 1.0 s of it during the set-up, and the preload (5.25 s to 8.0 s) waited
    # 0.5 s of it: that half second is the fetch's, not the load's
    lines[1] = ("2026-12-07T10:00:05.500Z", "model medium-sd: copied 1000 bytes to the node cache in 1.50 s")
    log.write_text("".join(json.dumps({"time": t, "message": m}) + "\n" for t, m in lines))
    phases = worker_phases(log, "abc")
    assert phases["fetch_during_set_up_s"] == pytest.approx(1.0) and phases["load_s"] == pytest.approx(2.25)


def test_the_goals_table_lists_every_goal_at_any_depth() -> None:
    from tests.harness.bench_coldstart import goal_rows
    from tests.harness.verdicts import goal

    figures = {"goals": {"a": goal(1.0, "<=", 2)}, "x": {"y": {"goals": {"b": goal(3.0, "<=", 2)}}}}
    assert goal_rows(figures) == [("a", "1.000", "<= 2", "yes"), ("x.y.b", "3.000", "<= 2", "NO")]
