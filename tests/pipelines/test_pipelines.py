"""The contract every built-in pipeline keeps, checked on the tiny random-weight models (diffusers style).

One parametrised suite runs each pipeline through the same checks: plugin contract, output count, size
and mode, seed reproducibility, progress, and the sharing of one set of model components.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from diffusers import StableDiffusionPipeline
from PIL import Image
from pydantic import BaseModel

from pipelines.common import (
    SCHEDULER_CLASSES,
    base_pipeline,
    controlnet_model,
    fit,
    generators,
    job_pipeline,
    make_scheduler,
)
from pipelines.controlnet import ControlNet
from pipelines.img2img import Img2Img
from pipelines.txt2img import Txt2Img
from runtime.contract import SCHEDULERS
from runtime.models.catalog import ModelError
from runtime.models.store import ModelStore
from runtime.models.tiny import build_tiny_models
from runtime.plugins import JobInterrupted, Pipeline, RunContext, StepState, check_pipeline
from runtime.worker import checkpoint
from runtime.worker.checkpoint import CheckpointError

BUCKET = "inputs"
PHOTO, EDGES = f"s3://{BUCKET}/photo.png", f"s3://{BUCKET}/edges.png"
# Non-square, so a width/height mix-up shows; few steps, so the whole file stays fast.
COMMON: dict[str, Any] = {"prompt": "a red fox in the snow", "width": 64, "height": 48, "steps": 3}
CASES: dict[str, tuple[type[Pipeline], dict[str, Any]]] = {
    "txt2img": (Txt2Img, {}),
    "img2img": (Img2Img, {"image": PHOTO, "strength": 1.0}),
    "controlnet": (ControlNet, {"control_image": EDGES, "controlnet": "tiny-controlnet"}),
}


def _input_images() -> dict[str, Image.Image]:
    """Inputs of another size than the output, so resizing is exercised."""
    rng = np.random.default_rng(0)
    photo = Image.fromarray(rng.integers(0, 256, (80, 100, 3), dtype=np.uint8))
    edges = Image.new("RGB", (96, 96))
    edges.paste((255, 255, 255), (20, 20, 76, 76))
    return {PHOTO: photo, EDGES: edges}


class Harness:
    """A RunContext factory that records progress, as the worker would see it."""

    def __init__(self, store: ModelStore) -> None:
        self.store = store
        self.images = _input_images()
        self.reports: list[tuple[int, int]] = []

    def context(self, seed: int = 1, model: str = "tiny-sd", resume_from: StepState | None = None,
                on_step: Any = None) -> RunContext:
        self.reports = []

        def report(step: int, total: int, state: Any) -> None:
            self.reports.append((step, total))
            if on_step is not None:
                on_step(step, state)

        return RunContext(job_id="job-1", model=model, seed=seed, device=self.store.device, models=self.store,
                          report=report, fetch_image=self.images.__getitem__, resume_from=resume_from)

    def run(self, name: str, job_seed: int = 1, resume_from: StepState | None = None, on_step: Any = None,
            **overrides: Any) -> list[Image.Image]:
        cls, fields = CASES[name]
        inputs = parse(cls.Inputs, {**COMMON, **fields, **overrides})
        return cls().run(inputs, self.context(job_seed, resume_from=resume_from, on_step=on_step))


def parse(model: type[BaseModel], fields: dict[str, Any]) -> Any:
    return model.model_validate(fields, context={"input_bucket": BUCKET})


def pixels(images: list[Image.Image]) -> np.ndarray:
    return np.stack([np.asarray(image) for image in images])


@pytest.fixture(scope="module")
def harness(tiny_models: Path) -> Harness:
    return Harness(ModelStore(tiny_models, "cpu"))


# -- the shared contract, for every pipeline ---------------------------------------------------------------
@pytest.mark.parametrize("name", CASES)
def test_passes_the_plugin_check(name: str) -> None:
    cls = CASES[name][0]
    assert check_pipeline(cls) is cls
    assert cls.name == name


@pytest.mark.parametrize("name", CASES)
def test_returns_the_requested_images(harness: Harness, name: str) -> None:
    images = harness.run(name, num_images=2)
    assert len(images) == 2
    for image in images:
        assert isinstance(image, Image.Image)
        assert (image.mode, image.size) == ("RGB", (64, 48))
    assert pixels(images).std() > 0  # not a blank (NaN-decoded) image


@pytest.mark.parametrize("name", CASES)
def test_seed_decides_the_pixels(harness: Harness, name: str) -> None:
    first = pixels(harness.run(name, job_seed=5))
    assert np.array_equal(first, pixels(harness.run(name, job_seed=5)))
    assert not np.array_equal(first, pixels(harness.run(name, job_seed=6)))
    # The job's seed (the API resolved the inputs' one into it) is the one used.
    assert np.array_equal(first, pixels(harness.run(name, job_seed=5, seed=999)))


@pytest.mark.parametrize("name", CASES)
def test_reports_progress_to_the_last_step(harness: Harness, name: str) -> None:
    harness.run(name, steps=4)
    (total,) = {total for _, total in harness.reports}
    assert total == 4
    assert [step for step, _ in harness.reports] == [1, 2, 3, 4]


def test_img2img_progress_counts_the_steps_strength_leaves(harness: Harness) -> None:
    harness.run("img2img", steps=4, strength=0.5)
    assert harness.reports[-1] == (2, 2)


@pytest.mark.parametrize("scheduler", SCHEDULERS)
def test_every_scheduler_runs(harness: Harness, scheduler: str) -> None:
    (image,) = harness.run("txt2img", steps=2, scheduler=scheduler)
    assert image.size == (64, 48) and np.asarray(image).std() > 0
    assert harness.reports[-1][0] == harness.reports[-1][1]


def png(images: list[Image.Image]) -> list[bytes]:
    from runtime.worker.images import encode_png

    return [encode_png(image, {}) for image in images]


def interrupt_at(harness: Harness, name: str, stop: int, **overrides: Any) -> bytes:
    """Run until ``stop`` steps are done, then save a checkpoint as the worker does and stop."""
    saved: list[bytes] = []

    def on_step(step: int, state: Any) -> None:
        if step == stop:
            saved.append(checkpoint.dump(state(), "f" * 64))
            raise JobInterrupted

    with pytest.raises(JobInterrupted):
        harness.run(name, on_step=on_step, **overrides)
    return saved[0]


# Steps chosen so that multistep solvers have history and PNDM is past its warm-up when interrupted.
@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize("scheduler", SCHEDULERS)
def test_resumed_run_is_byte_identical(harness: Harness, name: str, scheduler: str) -> None:
    settings = {"steps": 6, "scheduler": scheduler, "num_images": 2}
    reference = png(harness.run(name, **settings))
    for stop in (1, 4):
        data = interrupt_at(harness, name, stop, **settings)
        state = checkpoint.load(data, "f" * 64)  # through bytes, as between two workers
        assert state.step == stop
        resumed = png(harness.run(name, resume_from=state, **settings))
        assert resumed == reference, f"{name}/{scheduler} resumed at step {stop} differs"
        assert [step for step, _ in harness.reports] == list(range(stop + 1, harness.reports[-1][1] + 1))


def test_resume_from_a_checkpoint_of_other_inputs_is_refused(harness: Harness) -> None:
    data = interrupt_at(harness, "txt2img", 2, steps=4)
    state = checkpoint.load(data, "f" * 64)
    with pytest.raises(CheckpointError):  # more steps done than the new run has
        harness.run("txt2img", resume_from=state, steps=1)
    state.tensors.pop("generator.0")
    with pytest.raises(CheckpointError, match="random generator"):
        harness.run("txt2img", resume_from=state, steps=4)


def test_components_are_shared_and_loaded_once(tiny_models: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import pipelines.controlnet
    import pipelines.img2img
    import pipelines.txt2img

    built: dict[str, Any] = {}
    for module in (pipelines.txt2img, pipelines.img2img, pipelines.controlnet):
        def recording(*args: Any, _name: str = module.__name__, **kwargs: Any) -> Any:
            built[_name.rsplit(".", 1)[1]] = pipe = job_pipeline(*args, **kwargs)
            return pipe
        monkeypatch.setattr(module, "job_pipeline", recording)

    h = Harness(ModelStore(tiny_models, "cpu"))
    for name in CASES:
        h.run(name)
    assert h.store.loads == 2  # the base model once, the ControlNet once
    txt = built["txt2img"]
    for other in ("img2img", "controlnet"):
        for part in ("unet", "vae", "text_encoder", "tokenizer"):
            assert getattr(built[other], part) is getattr(txt, part), (other, part)
    assert built["controlnet"].controlnet is controlnet_model(h.store, "tiny-controlnet")
    base = base_pipeline(h.store, "tiny-sd")
    assert txt.unet is base.unet and h.store.loads == 2
    # Each job has a scheduler of its own; the cached pipeline's is never used, so never changed.
    schedulers = {id(pipe.scheduler) for pipe in built.values()} | {id(base.scheduler)}
    assert len(schedulers) == 4


def test_per_job_view_is_cheap(harness: Harness) -> None:
    base = base_pipeline(harness.store, "tiny-sd")
    job_pipeline(StableDiffusionPipeline, base, "euler")
    started = time.perf_counter()
    for _ in range(20):
        job_pipeline(StableDiffusionPipeline, base, "dpmpp_2m")
    assert (time.perf_counter() - started) / 20 < 0.05  # ~1 ms measured; generous for a busy CI machine


# -- models: refusals ---------------------------------------------------------------------------------------
def test_pickle_weights_are_refused(tmp_path: Path) -> None:
    (tmp_path / "evil" / "unet").mkdir(parents=True)
    (tmp_path / "evil" / "unet" / "diffusion_pytorch_model.bin").write_bytes(b"not loaded")
    (tmp_path / "catalog.json").write_text(json.dumps({"models": {"evil": {"path": "evil"}}}))
    store = ModelStore(tmp_path, "cpu")
    with pytest.raises(ModelError) as caught:
        store.path("evil", "base")
    assert caught.value.code == "unsafe_weights"
    h = Harness(store)
    with pytest.raises(ModelError) as caught:
        Txt2Img().run(parse(Txt2Img.Inputs, COMMON), h.context(model="evil"))
    assert caught.value.code == "unsafe_weights" and store.loads == 0


@pytest.mark.parametrize(("controlnet", "code"), [("nope", "unknown_model"), ("tiny-sd", "wrong_model_kind")])
def test_controlnet_must_be_a_known_controlnet(harness: Harness, controlnet: str, code: str) -> None:
    with pytest.raises(ModelError) as caught:
        harness.run("controlnet", controlnet=controlnet)
    assert caught.value.code == code


# -- helpers and the tiny models ------------------------------------------------------------------------------
def test_scheduler_names_match_the_contract() -> None:
    assert set(SCHEDULER_CLASSES) == set(SCHEDULERS)
    scheduler = make_scheduler("dpmpp_2m", {"num_train_timesteps": 1000, "algorithm_type": "sde-dpmsolver++"})
    assert (scheduler.config.algorithm_type, scheduler.config.solver_order) == ("dpmsolver++", 2)


def test_generators_are_cpu_and_seeded_per_image() -> None:
    gens = generators(41, 3)
    assert [g.initial_seed() for g in gens] == [41, 42, 43]
    assert all(g.device.type == "cpu" for g in gens)


def test_fit_resizes_to_rgb() -> None:
    image = fit(Image.new("RGBA", (30, 20)), 64, 48)
    assert (image.mode, image.size) == ("RGB", (64, 48))


def test_tiny_models_are_sd_shaped_small_and_built_once(tiny_models: Path, harness: Harness) -> None:
    catalog = json.loads((tiny_models / "catalog.json").read_text())
    assert catalog == {"models": {
        "tiny-sd": {"path": "tiny-sd", "kind": "base", "family": "sd1"},
        "tiny-controlnet": {"path": "tiny-controlnet", "kind": "controlnet", "family": "sd1"}}}
    files = [p for p in tiny_models.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) < 5_000_000
    assert {p.suffix for p in files if p.stat().st_size > 100_000} == {".safetensors"}
    base = base_pipeline(harness.store, "tiny-sd")
    assert base.vae_scale_factor == 8 and base.tokenizer.model_max_length == 77
    assert len(controlnet_model(harness.store, "tiny-controlnet").config.conditioning_embedding_out_channels) == 4
    before = {p: p.stat().st_mtime_ns for p in files}
    started = time.perf_counter()
    build_tiny_models(tiny_models)
    assert time.perf_counter() - started < 0.5
    assert {p: p.stat().st_mtime_ns for p in files} == before
