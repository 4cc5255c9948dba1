"""The contract every built-in pipeline keeps, checked on the tiny random-weight models (diffusers style).

One parametrised suite runs each pipeline through the same checks: plugin contract, output count, size
and mode, seed reproducibility, progress, and the sharing of one set of model components.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from diffusers import StableDiffusionPipeline
from PIL import Image

import pipelines.common
from pipelines.common import base_pipeline, controlnet_model, fit, generators, job_pipeline
from pipelines.txt2img import Txt2Img
from runtime.models.catalog import ModelError
from runtime.models.store import ModelStore, object_bytes
from runtime.models.tiny import CATALOG as TINY_CATALOG
from runtime.models.tiny import build_tiny_models
from runtime.plugins import check_pipeline
from runtime.worker import checkpoint
from runtime.worker.checkpoint import CheckpointError
from tests.pipelines.harness import (  # noqa: F401  (the other pipeline test modules import them from here too)
    BUCKET,
    CASES,
    COMMON,
    CONTROLNETS,
    EDGES,
    MODELS,
    PHOTO,
    Harness,
    assert_same_state,
    interrupt_at,
    parse,
    pixels,
    png,
    run_with_snapshots,
)


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


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("name", CASES)
def test_seed_decides_the_pixels(harness: Harness, name: str, model: str) -> None:
    first = pixels(harness.run(name, job_seed=5, model=model))
    assert np.array_equal(first, pixels(harness.run(name, job_seed=5, model=model)))
    assert not np.array_equal(first, pixels(harness.run(name, job_seed=6, model=model)))
    # The job's seed (the API resolved the inputs' one into it) is the one used.
    assert np.array_equal(first, pixels(harness.run(name, job_seed=5, seed=999, model=model)))


@pytest.mark.parametrize("name", CASES)
def test_reports_progress_to_the_last_step(harness: Harness, name: str) -> None:
    harness.run(name, steps=4)
    (total,) = {total for _, total in harness.reports}
    assert total == 4
    assert [step for step, _ in harness.reports] == [1, 2, 3, 4]


def test_img2img_progress_counts_the_steps_strength_leaves(harness: Harness) -> None:
    harness.run("img2img", steps=4, strength=0.5)
    assert harness.reports[-1] == (2, 2)


# Each pipeline, stopped early and late, with a sampler that has solver history and draws noise every step and
# with DPM++ SDE, whose Brownian noise is seeded from each pipeline's generators (every sampler and schedule
# resumes in tests/pipelines/test_schedulers.py).
@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize("scheduler", ["dpmpp_2m_sde", "dpmpp_sde"])
def test_resumed_run_is_byte_identical(harness: Harness, name: str, scheduler: str) -> None:
    settings = {"steps": 6, "scheduler": scheduler, "num_images": 2}
    images, saved = run_with_snapshots(harness, name, {1, 4}, **settings)  # what interruptions there would save
    reference = png(images)
    if scheduler == "dpmpp_sde":  # interrupted for real: the same state as the reference run saved
        assert_same_state(interrupt_at(harness, name, 1, **settings), saved[1])
    for stop in (1, 4):
        state = checkpoint.load(saved[stop], "f" * 64)  # through bytes, as between two workers
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


@pytest.mark.parametrize("model", MODELS)
def test_components_are_shared_and_loaded_once(tiny_models: Path, monkeypatch: pytest.MonkeyPatch,
                                               model: str) -> None:
    """txt2img, img2img, ControlNet and inpainting of one base run on one UNet, VAE and text encoder(s): the
    distinct tensors behind the jobs are exactly those of the base model plus the ControlNet (memory ratio 1.0)."""
    views: dict[str, Any] = {}

    def recording(cls: type, *args: Any, **kwargs: Any) -> Any:
        views[cls.__name__] = pipe = job_pipeline(cls, *args, **kwargs)
        return pipe

    monkeypatch.setattr(pipelines.common, "job_pipeline", recording)
    h = Harness(ModelStore(tiny_models, "cpu"))
    for name in CASES:
        h.run(name, model=model)
    assert h.store.loads == 2  # the base model once, the ControlNet once
    base, controlnet = base_pipeline(h.store, model), controlnet_model(h.store, CONTROLNETS[model])
    parts = ("unet", "vae", "text_encoder", "tokenizer") + (("text_encoder_2", "tokenizer_2") if "xl" in model else ())
    for view in views.values():
        for part in parts:
            assert getattr(view, part) is getattr(base, part), part
    assert len(views) == len(CASES) and h.store.loads == 2
    # Each job has a scheduler of its own; the cached pipeline's is never used, so never changed.
    assert len({id(view.scheduler) for view in views.values()} | {id(base.scheduler)}) == len(CASES) + 1
    everything = SimpleNamespace(components={f"{name}.{part}": module for name, view in views.items()
                                             for part, module in view.components.items()})
    assert object_bytes(everything) / (object_bytes(base) + object_bytes(controlnet)) == 1.0


def test_a_per_job_view_copies_no_weights(harness: Harness) -> None:
    """Why a view costs about a millisecond: it holds the base model's tensors themselves, not copies."""
    base = base_pipeline(harness.store, "tiny-sd")
    view = job_pipeline(StableDiffusionPipeline, base, parse(Txt2Img.Inputs, {**COMMON, "scheduler": "dpmpp_2m"}))
    assert {t.data_ptr() for t in view.unet.parameters()} == {t.data_ptr() for t in base.unet.parameters()}
    assert view.scheduler is not base.scheduler


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
def test_generators_are_cpu_and_seeded_per_image() -> None:
    gens = generators(41, 3)
    assert [g.initial_seed() for g in gens] == [41, 42, 43]
    assert all(g.device.type == "cpu" for g in gens)


def test_fit_resizes_to_rgb() -> None:
    image = fit(Image.new("RGBA", (30, 20)), 64, 48)
    assert (image.mode, image.size) == ("RGB", (64, 48))


def test_tiny_models_are_shaped_like_real_ones_small_and_built_once(tiny_models: Path, harness: Harness) -> None:
    catalog = json.loads((tiny_models / "catalog.json").read_text())
    assert catalog == {"models": TINY_CATALOG}
    assert {e["kind"] for e in TINY_CATALOG.values()} == {"base", "controlnet", "lora", "upscaler", "ip_adapter",
                                                          "image_encoder", "embedding"}
    assert {e["family"] for e in TINY_CATALOG.values() if e["kind"] not in ("upscaler", "image_encoder")} == {
        "sd1", "sdxl", "flux", "sd3"}
    files = [p for p in tiny_models.rglob("*") if p.is_file()]
    # ten SD pipelines, adapters (0.2 MB of IP-Adapters), an image encoder (0.1 MB) and upscalers: 12.2 MB; the
    # Flux and SD 3 ones (tests/models/test_tiny_flow.py checks their shapes): 7.9 MB; their forms as files
    # (runtime/models/tinyforms.py: one-file, fp8, GGUF, with config directories holding the other components): 5.7 MB
    assert sum(p.stat().st_size for p in files) < 27_000_000
    assert {p.suffix for p in files if p.stat().st_size > 100_000} == {".safetensors", ".gguf"}
    base, xl = base_pipeline(harness.store, "tiny-sd"), base_pipeline(harness.store, "tiny-sdxl")
    assert base.vae_scale_factor == 8 and base.tokenizer.model_max_length == 77
    assert xl.vae_scale_factor == 8 and xl.unet.config.addition_embed_type == "text_time"
    assert xl.text_encoder.config.hidden_size != xl.text_encoder_2.config.hidden_size  # as SDXL's 768 and 1280
    assert xl.tokenizer_2.pad_token == "!" != xl.tokenizer.pad_token  # as SDXL's second tokenizer
    assert len(controlnet_model(harness.store, "tiny-controlnet").config.conditioning_embedding_out_channels) == 4
    before = {p: p.stat().st_mtime_ns for p in files}
    build_tiny_models(tiny_models)  # complete: nothing is rebuilt
    assert {p: p.stat().st_mtime_ns for p in files} == before


def test_tiny_models_of_another_version_are_rebuilt(tmp_path: Path) -> None:
    build_tiny_models(tmp_path / "m")
    (tmp_path / "m" / ".tiny-version").write_text("1\n")
    (tmp_path / "m" / "tiny-sd" / "model_index.json").write_text("{}")
    build_tiny_models(tmp_path / "m")
    assert json.loads((tmp_path / "m" / "tiny-sd" / "model_index.json").read_text())["_class_name"]
