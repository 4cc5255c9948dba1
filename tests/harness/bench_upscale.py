"""Tiled upscaling against untiled (``make bench``, docs/benchmarks.md "Upscaling in tiles"), measured in one run.

An image that fits in one piece is upscaled both ways by ``pipelines.upscalers.run_tiled``: whole (one tile as
large as the image) and in overlapping tiles, rounds alternating so that drift hits both alike, each way's
fastest round kept (the one its neighbours on this machine disturbed least), timed in CPU
seconds (``time.process_time``) on one thread: the machine's two cores are shared, and with two threads both
clocks follow the neighbours' load (OpenMP's waiting threads spin, and the spinning counts as CPU). Two figures per
model: the throughput of the tiled run as a ratio to the untiled one (goal >= 0.90: the overlaps are the extra
work), and the peak bytes of tensors alive at once in each, against the peak of one tile-sized image alone (the
bound: the tiled peak must not grow with the image). Peaks are counted by ``TensorPeak``, which sees every tensor
torch allocates (CPU has no allocator statistics), not by timing or the process's RSS.

- ``tiny-compact`` (Real-ESRGAN Compact, x2) at the worker's own tiling, ``TILE`` and ``OVERLAP``, on 768 px;
- ``tiny-esrgan`` (ESRGAN, x4, ten times the work per pixel) on the same geometry at a quarter of the scale
  (192 px, tiles of 128 overlapping by 4: the same ratio of overlap to tile), so that it runs in seconds on a CPU.

    python -m tests.harness.bench_upscale
"""

from __future__ import annotations

import json
import time
import weakref
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from tests.harness.tinymodels import on_tiny_models

ROUNDS = 5
#: Tiled throughput against untiled (issue 26, item 7).
THROUGHPUT_GOAL = 0.90
#: The tiled peak against one tile's, alone: the tiles are processed one at a time, so no more than one tile's
#: activations live at once; 10% for the blending's and the padding's few extra tensors.
PEAK_GOAL = 1.10


class TensorPeak(TorchDispatchMode):
    """The most bytes of tensor storage alive at once among the tensors that torch operators create inside the
    ``with`` block (the activations; weights made before it are not counted). Each new storage is counted once,
    and released when the tensor that brought it dies."""

    def __init__(self) -> None:
        super().__init__()
        self.live: dict[int, int] = {}
        self.current = self.peak = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        for tensor in tree_leaves(out):
            if isinstance(tensor, torch.Tensor):
                self._track(tensor)
        return out

    def _track(self, tensor: torch.Tensor) -> None:
        storage = tensor.untyped_storage()
        pointer = storage.data_ptr()
        if pointer == 0 or pointer in self.live:  # empty, or a view of (or in place on) a counted storage
            return
        self.live[pointer] = storage.nbytes()
        self.current += storage.nbytes()
        self.peak = max(self.peak, self.current)
        weakref.finalize(tensor, self._release, pointer)

    def _release(self, pointer: int) -> None:
        self.current -= self.live.pop(pointer, 0)


def peak_bytes(model: Any, image: Image.Image, tile: int, overlap: int) -> int:
    from pipelines.upscalers import run_tiled

    with TensorPeak() as peak:
        run_tiled(model, image, tile=tile, overlap=overlap)
    return peak.peak


def sample_picture(size: int) -> Image.Image:
    """Smooth shapes plus a little noise: something for the model to work on at every pixel."""
    rng = np.random.default_rng(5)
    y, x = np.mgrid[0:size, 0:size] / size
    base = np.stack([x, y, (x + y) / 2], -1) * 200 + rng.normal(0, 12, (size, size, 3))
    return Image.fromarray(np.clip(base, 0, 255).astype(np.uint8))


def measure(model: Any, size: int, tile: int, overlap: int) -> dict[str, Any]:
    from pipelines.upscalers import run_tiled, tiles
    from tests.harness.verdicts import goal

    image = sample_picture(size)
    for side in (size, tile):  # warm-up: the first call of each shape builds its kernels
        run_tiled(model, image, tile=side, overlap=overlap)
    seconds: dict[str, list[float]] = {"untiled": [], "tiled": []}
    for _ in range(ROUNDS):
        for name, side in (("untiled", size), ("tiled", tile)):
            started = time.process_time()
            run_tiled(model, image, tile=side, overlap=overlap)
            seconds[name].append(time.process_time() - started)
    fastest = {name: min(times) for name, times in seconds.items()}  # the least disturbed round of each
    untiled_peak = peak_bytes(model, image, size, overlap)
    tiled_peak = peak_bytes(model, image, tile, overlap)
    boxes = tiles(size, size, tile, overlap)
    side = boxes[0][2] - boxes[0][0]
    one_tile = peak_bytes(model, sample_picture(side), side, overlap)
    ratio = fastest["untiled"] / fastest["tiled"]
    return {"image_px": size, "tile": tile, "overlap": overlap, "tiles": len(boxes), "tile_px": side,
            "work_vs_untiled": round(len(boxes) * side * side / (size * size), 3),
            "untiled_s": round(fastest["untiled"], 3), "tiled_s": round(fastest["tiled"], 3),
            "untiled_peak_mb": round(untiled_peak / 2**20, 1), "tiled_peak_mb": round(tiled_peak / 2**20, 1),
            "one_tile_peak_mb": round(one_tile / 2**20, 1),
            "goals": {"throughput_vs_untiled": goal(round(ratio, 3), ">=", THROUGHPUT_GOAL),
                      "tiled_peak_vs_one_tile": goal(round(tiled_peak / one_tile, 3), "<=", PEAK_GOAL)}}


@on_tiny_models
def figures(models: Path) -> dict[str, Any]:
    from pipelines.upscalers import OVERLAP, TILE, load
    from runtime.models.store import ModelStore

    store = ModelStore(models, "cpu")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # see the module's docstring
    try:
        with torch.inference_mode():
            return {"tiny-compact": measure(load(store, "tiny-compact"), 768, TILE, OVERLAP),
                    "tiny-esrgan": measure(load(store, "tiny-esrgan"), 192, TILE // 4, OVERLAP // 4),
                    "rounds": ROUNDS, "threads": torch.get_num_threads()}
    finally:
        torch.set_num_threads(threads)


def report(f: dict[str, Any]) -> list[str]:
    lines = [f"upscaling in tiles against whole, {f['rounds']} alternating rounds, {f['threads']} CPU thread(s):"]
    for name in ("tiny-compact", "tiny-esrgan"):
        row = f[name]
        goals = row["goals"]
        lines.append(f"  {name:<13} {row['image_px']} px, {row['tiles']} tiles of {row['tile_px']} "
                     f"(tile {row['tile']}, overlap {row['overlap']}; work x{row['work_vs_untiled']}): "
                     f"{row['untiled_s']:.3f} s whole, {row['tiled_s']:.3f} s tiled, throughput "
                     f"x{goals['throughput_vs_untiled']['value']} (goal {goals['throughput_vs_untiled']['goal']})")
        lines.append(f"  {'':<13} peak tensors: {row['untiled_peak_mb']} MB whole, {row['tiled_peak_mb']} MB tiled, "
                     f"{row['one_tile_peak_mb']} MB one tile alone (tiled/one tile "
                     f"x{goals['tiled_peak_vs_one_tile']['value']}, goal {goals['tiled_peak_vs_one_tile']['goal']})")
    return lines


if __name__ == "__main__":
    result = figures()
    print("\n".join(report(result)))
    print(json.dumps({"bench": "upscale", **result}, sort_keys=True))
