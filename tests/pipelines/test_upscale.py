"""Upscalers (``pipelines/upscalers.py``) and the ``upscale`` pipeline, on the tiny ESRGAN and Real-ESRGAN Compact.

The upscaler models are real spandrel architectures with random weights, read from safetensors as a real one
is; tiling is checked against the same model run whole, which is what tiling must not change.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from PIL import Image

from pipelines.upscale import Upscale
from pipelines.upscalers import load, passes_needed, run_tiled, tiles, upscale
from runtime.contract import ContractError
from runtime.models.catalog import ModelError
from runtime.models.store import ModelStore
from runtime.models.tinyupscalers import ARCHITECTURES
from runtime.plugins import JobCancelled
from tests.harness.bench_upscale import TensorPeak
from tests.pipelines.harness import PHOTO, Harness, parse

UPSCALERS = ("tiny-esrgan", "tiny-compact")


def picture(width: int, height: int, seed: int = 0) -> Image.Image:
    """Smooth shapes plus noise, so that both flat areas (where seams show) and detail are there."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x * 4, y * 5, (x + y) * 2], -1) % 256 + rng.normal(0, 10, (height, width, 3))
    return Image.fromarray(np.clip(base, 0, 255).astype(np.uint8))


@pytest.mark.parametrize("model_id", UPSCALERS)
def test_spandrel_identifies_each_architecture_from_its_weights(harness: Harness, model_id: str) -> None:
    model = load(harness.store, model_id)
    assert (model.architecture, model.scale) == ARCHITECTURES[model_id]
    out = run_tiled(model, picture(20, 12))
    assert out.size == (20 * model.scale, 12 * model.scale) and out.mode == "RGB"
    assert load(harness.store, model_id) is model  # loaded once per process


def test_spandrel_leaves_no_torchvision_behind(harness: Harness) -> None:
    """Where torchvision is not installed (make install puts spandrel in without it), the stand-ins that let
    spandrel import are gone afterwards: transformers and diffusers, which import torchvision when they find it,
    must not find them (runtime/models/spandrelimport.py)."""
    import importlib.util
    import sys

    load(harness.store, "tiny-esrgan")
    if importlib.util.find_spec("torchvision") is None:
        assert not [name for name in sys.modules if name.split(".")[0] == "torchvision"]


@pytest.mark.parametrize("upscaler", ["lanczos", "nearest", *UPSCALERS])
@pytest.mark.parametrize("size", [(40, 30), (81, 61), (200, 150)])
def test_the_result_is_exactly_the_size_asked(harness: Harness, upscaler: str, size: tuple[int, int]) -> None:
    out = upscale(harness.store, upscaler, picture(40, 30).convert("L"), size)
    assert (out.size, out.mode) == (size, "RGB")


def test_a_model_runs_as_often_as_the_target_needs_as_webui_does() -> None:
    """WebUI (modules/upscaler.py): the model runs until the image covers the target, at most three times,
    never for a target no larger than the image; Lanczos then makes the exact size."""
    assert passes_needed(4, (40, 30), (40, 30)) == 0
    assert passes_needed(4, (40, 30), (60, 45)) == 1 and passes_needed(4, (40, 30), (161, 120)) == 2
    assert passes_needed(2, (40, 30), (320, 240)) == 3 and passes_needed(2, (40, 30), (640, 480)) == 3


@pytest.mark.parametrize("model_id", UPSCALERS)
def test_tiled_output_is_close_to_the_untiled_one(harness: Harness, model_id: str) -> None:
    """Tiles of 32 overlapping by 16 on a 64x48 image (3 x 2 tiles) against one run of the whole. A tile's
    border pixels lack the context beyond it (tiny-esrgan sees ~18 px around each pixel, more than the 8 px a
    pixel can be from every tile's edge here), so tiling may change them a little; the blend gives them the
    least weight. Bounds: 2% of the output's 0..255 range at worst (the uniform average of the overlaps gives
    16%, no overlap 25%) and 0.1% on average."""
    model = load(harness.store, model_id)
    image = picture(64, 48)
    assert len(tiles(64, 48, 32, 16)) == 6
    whole = np.asarray(run_tiled(model, image, tile=64), dtype=float)
    tiled = np.asarray(run_tiled(model, image, tile=32, overlap=16), dtype=float)
    error = np.abs(whole - tiled)
    assert error.max() <= 0.02 * 255 and error.mean() <= 0.001 * 255, (error.max(), error.mean())


def test_no_seam_where_tiles_meet(harness: Harness) -> None:
    """A seam is a step along a tile's edge that the whole image does not have. Across each column where a tile
    starts or ends, the step between neighbouring pixels must match the untiled output's as closely as it does
    anywhere: at most 1 level more on average (an unblended cut gives 27 levels, the uniform average 12)."""
    model = load(harness.store, "tiny-esrgan")
    image = picture(64, 48, seed=1)
    whole = np.asarray(run_tiled(model, image, tile=64), dtype=float)
    tiled = np.asarray(run_tiled(model, image, tile=32, overlap=16), dtype=float)
    boxes = tiles(64, 48, 32, 16)
    edges = sorted({left for left, *_ in boxes} | {right for _, _, right, _ in boxes} - {0, 64})
    step = np.abs(np.diff(tiled, axis=1) - np.diff(whole, axis=1)).mean(axis=(0, 2))  # per column boundary
    at_edges = step[[edge * model.scale - 1 for edge in edges]]
    assert at_edges.mean() <= step.mean() + 1.0, (at_edges, step.mean())


def test_the_memory_of_a_tiled_run_is_bounded_by_the_tile(harness: Harness) -> None:
    """The most tensor bytes alive at once (every tensor torch creates, counted by ``TensorPeak``): a 128x96
    image in tiles of 32 needs what one 32x32 image needs alone (10% for the blend's few tensors), while the
    same image whole needs several times more (so the count does see the image's size)."""
    model = load(harness.store, "tiny-esrgan")
    big = picture(128, 96)
    with TensorPeak() as tiled:
        run_tiled(model, big, tile=32, overlap=8)
    with TensorPeak() as one_tile:
        run_tiled(model, picture(32, 32), tile=32, overlap=8)
    with TensorPeak() as whole:
        run_tiled(model, big, tile=128, overlap=8)
    assert tiled.peak <= 1.1 * one_tile.peak, (tiled.peak, one_tile.peak)
    assert whole.peak >= 5 * tiled.peak, (whole.peak, tiled.peak)


@pytest.mark.parametrize("model_id", UPSCALERS)
def test_repeats_are_byte_identical(harness: Harness, tiny_models: Path, model_id: str) -> None:
    """Tiled twice in one process, and once more with the model loaded anew (another store): the same bytes."""
    image = picture(64, 48)
    first = upscale(harness.store, model_id, image, (150, 110)).tobytes()
    assert upscale(harness.store, model_id, image, (150, 110)).tobytes() == first
    again = load(ModelStore(tiny_models), model_id)
    assert run_tiled(again, image, tile=32, overlap=16).tobytes() == run_tiled(
        load(harness.store, model_id), image, tile=32, overlap=16).tobytes()


def _catalog(tmp_path: Path, tiny_models: Path, entries: dict[str, dict[str, Any]]) -> ModelStore:
    models = tmp_path / "models"
    (models / "up").mkdir(parents=True)
    shutil.copy(tiny_models / "tiny-upscalers" / "tiny-compact.safetensors", models / "up" / "good.safetensors")
    (models / "catalog.json").write_text(json.dumps({"models": entries}))
    return ModelStore(models)


def test_pickle_and_unknown_weights_are_refused_naming_the_model(tmp_path: Path, tiny_models: Path) -> None:
    import torch
    from safetensors.torch import save_file

    pth = _catalog(tmp_path / "a", tiny_models, {"esr": {"path": "up/esr.pth", "kind": "upscaler"}})
    with pytest.raises(ModelError, match="upscaler is one '.safetensors' file"):  # a .pth never gets in
        pth.entry("esr", "upscaler")
    store = _catalog(tmp_path / "b", tiny_models, {
        "pickled": {"path": "up/pickled.safetensors", "kind": "upscaler"},
        "strange": {"path": "up/strange.safetensors", "kind": "upscaler"},
        "good": {"path": "up/good.safetensors", "kind": "upscaler"}})
    (store.models_dir / "up" / "pickled.safetensors").write_bytes(b"\x80\x04\x95" + b"\x00" * 64)  # pickle bytes
    save_file({"encoder.weight": torch.zeros(4, 4)}, store.models_dir / "up" / "strange.safetensors")
    with pytest.raises(ModelError, match="upscaler 'pickled': .* not a readable safetensors file"):
        load(store, "pickled")
    with pytest.raises(ModelError, match="upscaler 'strange': spandrel recognises no architecture"):
        load(store, "strange")
    with pytest.raises(ModelError, match="unknown upscaler model 'nope'; the catalog has: good, pickled, strange"):
        load(store, "nope")
    assert load(store, "good").architecture == "RealESRGAN Compact"


def test_the_size_requirements_of_an_architecture_are_met_on_every_tile(tmp_path: Path, tiny_models: Path) -> None:
    """SAFMN (a third architecture, built here as the tiny ones are) wants sides that are multiples of 8
    (spandrel's ``size_requirements``): tiles of 13 reach its network padded to 16, and the padding's output is
    cut off, so the result is still exactly twice the image."""
    import torch
    from safetensors.torch import save_file

    from runtime.models.spandrelimport import spandrel

    spandrel()  # first: it lets spandrel import without torchvision
    from spandrel.architectures.SAFMN import SAFMN

    torch.manual_seed(3)
    store = _catalog(tmp_path, tiny_models, {"safmn": {"path": "up/safmn.safetensors", "kind": "upscaler"}})
    save_file(SAFMN(dim=8, n_blocks=1, upscaling_factor=2).state_dict(), store.models_dir / "up" / "safmn.safetensors")
    model = load(store, "safmn")
    assert (model.architecture, model.scale, model.descriptor.size_requirements.multiple_of) == ("SAFMN", 2, 8)
    seen: list[tuple[int, ...]] = []
    model.net.register_forward_pre_hook(lambda _, args: seen.append(tuple(args[0].shape[2:])))
    out = run_tiled(model, picture(30, 20), tile=13, overlap=4)
    assert out.size == (60, 40) and len(seen) == len(tiles(30, 20, 13, 4)) > 1
    assert all(side % 8 == 0 for shape in seen for side in shape), seen


# -- the upscale pipeline --------------------------------------------------------------------------------------

def _run(harness: Harness, model: str, on_step: Any = None, **inputs: Any) -> list[Image.Image]:
    fields = parse(Upscale.Inputs, {"image": PHOTO, **inputs})
    return Upscale().run(fields, harness.context(model=model, on_step=on_step))


@pytest.mark.parametrize("model", ["lanczos", "nearest", *UPSCALERS])
def test_the_pipeline_scales_the_image(harness: Harness, model: str) -> None:
    (out,) = _run(harness, model, scale=1.5)
    assert out.size == (150, 120)  # the photo is 100x80
    assert harness.reports and harness.reports[-1][0] == harness.reports[-1][1]


def test_the_pipeline_reports_each_tile_and_stops_on_cancel(tiny_models: Path) -> None:
    harness = Harness(ModelStore(tiny_models))  # its own store: the model's tile size is changed below
    model = load(harness.store, "tiny-compact")
    model.tile, model.overlap = 32, 8
    _run(harness, "tiny-compact", scale=2)
    assert harness.reports == [(step, 12) for step in range(1, 13)]  # 100x80 in tiles of 32: 4 x 3

    def cancel(step: int, _: Any) -> None:
        if step == 2:
            raise JobCancelled

    with pytest.raises(JobCancelled):
        _run(harness, "tiny-compact", on_step=cancel, scale=2)
    assert [step for step, _ in harness.reports] == [1, 2]


def test_a_scale_beyond_the_pixel_limit_is_refused_naming_it(harness: Harness) -> None:
    harness.images["s3://inputs/large.png"] = Image.new("RGB", (1024, 1024))
    with pytest.raises(ContractError) as caught:
        _run(harness, "lanczos", image="s3://inputs/large.png", scale=8)
    assert caught.value.field == "inputs.scale" and "16777216 pixels" in caught.value.message


def test_the_worker_takes_filters_and_catalog_upscalers_and_refuses_other_models(tiny_models: Path) -> None:
    from runtime.config import Settings
    from runtime.plugins import Registry
    from runtime.worker.runner import JobRunner, PermanentError

    registry = Registry()
    registry.register(Upscale)
    jobs: Any = SimpleNamespace(input_bucket="inputs")  # prepare reads only the bucket's name of the job store
    runner = JobRunner(Settings(input_bucket="inputs"), jobs, None, registry, ModelStore(tiny_models))

    def prepare(model: str) -> Any:
        return runner.prepare(runner.parse({
            "id": "up-1", "pipeline": "upscale", "model": model, "seed": 1, "output_prefix": "outputs",
            "inputs": {"image": PHOTO, "scale": 2}, "submitted_at": "2026-01-01T00:00:00Z",
            "request_hash": "0" * 64}))

    for model in ("lanczos", "nearest", "tiny-esrgan"):
        assert prepare(model)[1].scale == 2
    for model, message in (("nope", "unknown upscaler model 'nope'"),
                           ("tiny-sd", "'tiny-sd' is a base model, not a upscaler model")):
        with pytest.raises(PermanentError) as caught:
            prepare(model)
        assert caught.value.info.field == "model" and message in str(caught.value), str(caught.value)


def test_preload_loads_upscalers(tiny_models: Path) -> None:
    """SPOTGEN_PRELOAD's path: the runner asks each pipeline's ``load`` in turn; the upscale pipeline takes the
    upscalers, and no other kind."""
    from runtime.config import Settings
    from runtime.plugins import Registry, SetupContext, load_object
    from runtime.worker.runner import JobRunner

    registry = Registry()
    for cls in (load_object("pipelines.txt2img:Txt2Img"), Upscale):
        registry.register(cls)
    runner = JobRunner(Settings(), None, None, registry, ModelStore(tiny_models))
    runner.preload(["tiny-esrgan", "tiny-compact"])
    assert runner.models.resident("tiny-esrgan") and runner.models.resident("tiny-compact")
    pipeline = Upscale()
    pipeline.setup(SetupContext(device="cpu", models=runner.models))
    assert not pipeline.load("tiny-sd", "base")
