"""Flux.1 and SD 3.5 on the built-in pipelines, with the tiny models: the contract kit on every task and model
form, every input moving the pixels, refusals naming their field, and one set of modules per base model.

The kit's classes (``spotgen.testing.PipelineContract``) check the same things as for SD: sizes, same seed same
bytes, progress, cancel within a step, and byte-identical resume after the first and the middle step.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from pipelines.controlnet import ControlNet
from pipelines.img2img import Img2Img
from pipelines.inpaint import Inpaint
from pipelines.txt2img import Txt2Img
from runtime.contract import ContractError
from runtime.kit.local import LocalRun
from runtime.models.catalog import ModelError
from runtime.models.store import ModelStore
from runtime.plugins import Registry
from runtime.worker import checkpoint
from spotgen.testing import PipelineContract
from tests.pipelines.harness import COMMON, Harness, assert_same_state, interrupt_at, png, run_with_snapshots

# Sizes in multiples of 16, non-square so that a width/height mix-up shows.
FLOW: dict[str, Any] = {"prompt": "a red fox in the snow", "width": 64, "height": 48, "steps": 4}


class FlowKit(PipelineContract):
    inputs = FLOW

    @pytest.fixture(scope="class")
    @classmethod
    def spotgen_models(cls, tiny_models: Path) -> Path:
        return tiny_models

    @pytest.fixture(scope="class")
    @classmethod
    def kit(cls, spotgen_models: Path, harness: Harness) -> LocalRun:
        """On the module's model store, as a worker runs every job on one: each tiny model loads once, not once
        per class."""
        registry = Registry()
        registry.register(cls.pipeline, "the contract kit")
        kit = LocalRun(spotgen_models, registry=registry)
        kit.store = harness.store
        return kit


class TestFluxDevTxt2Img(FlowKit):
    pipeline, model = Txt2Img, "tiny-flux"
    inputs = {**FLOW, "guidance": 4.0, "schedule": "karras"}


class TestFluxSchnellTxt2Img(FlowKit):
    pipeline, model = Txt2Img, "tiny-flux-schnell"


class TestFluxImg2Img(FlowKit):
    pipeline, model = Img2Img, "tiny-flux"
    inputs = {**FLOW, "strength": 0.8}
    images = {"image": "gradient"}


class TestFluxInpaint(FlowKit):
    pipeline, model = Inpaint, "tiny-flux"
    inputs = {**FLOW, "strength": 0.9}
    images = {"image": "gradient", "mask": "edges"}


class TestFluxFill(FlowKit):
    pipeline, model = Inpaint, "tiny-flux-fill"
    images = {"image": "gradient", "mask": "edges"}


class TestFluxControlNet(FlowKit):
    pipeline, model = ControlNet, "tiny-flux"
    inputs = {**FLOW, "controlnet": "tiny-flux-controlnet"}
    images = {"control_image": "edges"}


class TestSd3Txt2Img(FlowKit):
    pipeline, model = Txt2Img, "tiny-sd3"
    inputs = {**FLOW, "skip_layer_guidance": {"layers": [7, 8, 9], "start": 0.0, "stop": 1.0},
              "schedule": "exponential"}


class TestSd3TurboTxt2Img(FlowKit):
    pipeline, model = Txt2Img, "tiny-sd3-turbo"


class TestSd3Img2Img(FlowKit):
    pipeline, model = Img2Img, "tiny-sd3"
    inputs = {**FLOW, "strength": 0.8}
    images = {"image": "gradient"}


class TestSd3Inpaint(FlowKit):
    pipeline, model = Inpaint, "tiny-sd3"
    inputs = {**FLOW, "strength": 0.9}
    images = {"image": "gradient", "mask": "edges"}


class TestSd3ControlNet(FlowKit):
    pipeline, model = ControlNet, "tiny-sd3"
    inputs = {**FLOW, "controlnet": "tiny-sd3-controlnet"}
    images = {"control_image": "edges"}


# -- every input moves the pixels -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def harness(tiny_models: Path) -> Harness:
    return Harness(ModelStore(tiny_models, "cpu"))


def pixels(harness: Harness, model: str, name: str = "txt2img", **fields: Any) -> np.ndarray:
    images = harness.run(name, model=model, **{"width": 64, "height": 48, "steps": 3, **fields})
    assert all(image.size == (64, 48) for image in images)
    return np.stack([np.asarray(image) for image in images])


def shared(bases: dict[str, np.ndarray], harness: Harness, model: str, name: str = "txt2img",
           **fields: Any) -> np.ndarray:
    """``pixels``, run once per module for each full set of arguments: the same job gives the same bytes (the
    kit's same-seed check), so the tests that ask for the same job share its run."""
    key = repr((model, name, sorted({**COMMON, "width": 64, "height": 48, "steps": 3, **fields}.items())))
    if key not in bases:
        bases[key] = pixels(harness, model, name, **fields)
    return bases[key]


FLUX_UNIT = [{"id": "tiny-flux-controlnet", "image": "s3://inputs/edges.png"}]
SD3_UNIT = [{"id": "tiny-sd3-controlnet", "image": "s3://inputs/edges.png"}]


@pytest.mark.parametrize(("model", "name", "base", "changed"), [
    ("tiny-flux", "txt2img", {}, {"guidance": 8.0}),
    ("tiny-flux", "txt2img", {}, {"guidance_scale": 3.0, "negative_prompt": "blurry"}),
    ("tiny-flux", "txt2img", {"guidance_scale": 3.0}, {"guidance_scale": 3.0, "negative_prompt": "blurry"}),
    ("tiny-flux", "txt2img", {}, {"shift": 6.0}),
    ("tiny-flux", "txt2img", {}, {"max_sequence_length": 16}),
    ("tiny-flux", "txt2img", {}, {"schedule": "karras"}),
    ("tiny-flux", "txt2img", {}, {"scheduler": "dpmpp_2m"}),
    ("tiny-flux", "txt2img", {"scheduler": "unipc"}, {"scheduler": "unipc", "shift": 6.0}),
    ("tiny-sd3", "txt2img", {}, {"scheduler": "heun"}),
    ("tiny-flux", "txt2img", {}, {"prompt": "a blue bird"}),
    ("tiny-flux", "txt2img", {}, {"loras": [{"id": "tiny-lora-flux"}]}),
    ("tiny-flux", "txt2img", {}, {"loras": [{"id": "tiny-lora-flux-kohya"}]}),
    ("tiny-flux", "txt2img", {}, {"loras": [{"id": "tiny-lora-flux-xlabs"}]}),
    ("tiny-flux", "txt2img", {}, {"controlnets": FLUX_UNIT}),
    ("tiny-flux", "img2img", {}, {"controlnets": FLUX_UNIT}),
    ("tiny-flux", "inpaint", {}, {"controlnets": FLUX_UNIT}),
    ("tiny-flux", "img2img", {}, {"strength": 0.5}),
    ("tiny-flux-fill", "inpaint", {}, {"guidance": 10.0}),
    ("tiny-flux-schnell", "txt2img", {}, {"shift": 3.0}),
    ("tiny-sd3", "txt2img", {}, {"guidance_scale": 7.0}),
    ("tiny-sd3", "txt2img", {}, {"negative_prompt": "blurry"}),
    ("tiny-sd3", "txt2img", {}, {"skip_layer_guidance": {"layers": [7, 8, 9], "start": 0.0, "stop": 1.0}}),
    ("tiny-sd3", "txt2img", {}, {"shift": 1.0}),
    ("tiny-sd3", "txt2img", {}, {"max_sequence_length": 16}),
    ("tiny-sd3", "txt2img", {}, {"loras": [{"id": "tiny-lora-sd3"}]}),
    ("tiny-sd3", "txt2img", {}, {"controlnets": SD3_UNIT}),
])
def test_every_input_changes_the_pixels(harness: Harness, model: str, name: str, base: dict[str, Any],
                                        changed: dict[str, Any], bases: dict[str, np.ndarray]) -> None:
    assert not np.array_equal(shared(bases, harness, model, name, **base),
                              shared(bases, harness, model, name, **changed))


@pytest.fixture(scope="module")
def bases() -> dict[str, np.ndarray]:
    return {}


def test_weights_reach_sd3s_clip_tokens_and_nothing_of_flux(harness: Harness, bases: dict[str, np.ndarray]) -> None:
    """WebUI's weighting where the encoder allows it: SD 3.5's CLIP tokens; Flux's CLIP gives a pooled vector only and
    T5 reads the text stripped of the syntax, as Forge does."""
    def run(model: str, **fields: Any) -> np.ndarray:
        return shared(bases, harness, model, **fields)

    plain, weighted, long = "a red fox in the snow", "a (red fox:1.6) in [the snow]", ", ".join(["a red fox"] * 30)
    assert not np.array_equal(run("tiny-sd3", prompt=plain), run("tiny-sd3", prompt=weighted))
    assert np.array_equal(run("tiny-flux", prompt=plain), run("tiny-flux", prompt=weighted))
    # Past T5's 16 tokens, words reach the image only through CLIP's later chunks (no 77-token cut, as in WebUI).
    short_t5 = {"max_sequence_length": 16}
    assert not np.array_equal(run("tiny-sd3", prompt=long, **short_t5),
                              run("tiny-sd3", prompt=long + " BREAK a blue bird", **short_t5))
    cfg = {"guidance_scale": 4.0, "num_images": 2}
    assert not np.array_equal(run("tiny-sd3", negative_prompt="(blurry:1.5)", **cfg),
                              run("tiny-sd3", negative_prompt="blurry", **cfg))


def test_a_job_without_loras_after_one_with_them_is_as_on_a_fresh_worker(harness: Harness,
                                                                        tiny_models: Path) -> None:
    pixels(harness, "tiny-flux", loras=[{"id": "tiny-lora-flux-kohya", "weight": 0.7}])
    fresh = Harness(ModelStore(tiny_models, "cpu"))
    assert np.array_equal(pixels(harness, "tiny-flux"), pixels(fresh, "tiny-flux"))


RESUMED: list[tuple[str, dict[str, Any]]] = [
    ("tiny-flux", {"schedule": "exponential", "guidance_scale": 2.0}),
    ("tiny-sd3", {"schedule": "karras", "shift": 2.0}),
    ("tiny-flux", {"scheduler": "dpmpp_2m", "shift": 2.0}), ("tiny-flux", {"scheduler": "unipc"}),
    ("tiny-sd3", {"scheduler": "heun"}), ("tiny-sd3", {"scheduler": "dpmpp_2m"}), ("tiny-sd3", {"scheduler": "unipc"})]
MULTISTEP = ("dpmpp_2m", "unipc")  # plain txt2img only (the contract refuses them elsewhere)


@pytest.mark.parametrize(("model", "fields", "name"), [
    (model, fields, name) for model, fields in RESUMED for name in ("txt2img", "img2img")
    if name == "txt2img" or fields.get("scheduler") not in MULTISTEP])
def test_resume_after_every_step_is_byte_identical(harness: Harness, model: str, fields: dict[str, Any],
                                                   name: str) -> None:
    job = {"model": model, "width": 64, "height": 48, "steps": 3, **fields}
    images, saved = run_with_snapshots(harness, name, **job)  # the checkpoint after every step, as bytes
    reference = png(images)
    if (model, fields) in RESUMED[:2]:  # one job per family is interrupted for real: the same state as saved
        assert_same_state(interrupt_at(harness, name, 1, **job), saved[1])
    for stop in range(1, harness.reports[-1][1]):  # every step (Heun: 5 model calls for 3 steps)
        state = checkpoint.load(saved[stop], "f" * 64)
        assert png(harness.run(name, resume_from=state, **job)) == reference, f"resumed after step {stop}"


# -- refused, naming the field, before a step runs ---------------------------------------------------------------


@pytest.mark.parametrize(("model", "name", "fields", "field", "phrase"), [
    ("tiny-flux", "inpaint", {"fill": "latent_noise"}, "inputs.fill", "use original or fill"),
    ("tiny-flux", "txt2img", {"prompt": "a [cat:dog:0.5]"}, "inputs.prompt", "prompt editing"),
    ("tiny-sd3", "txt2img", {"negative_prompt": "[ugly|blurry]", "guidance_scale": 3.0}, "inputs.negative_prompt",
     "alternation"),
    ("tiny-sd3", "txt2img", {"skip_layer_guidance": {"layers": [7, 99]}}, "inputs.skip_layer_guidance.layers",
     "99 is not one of them"),
    ("tiny-sd3", "img2img", {"skip_layer_guidance": {}}, "inputs.skip_layer_guidance", "does not take"),
    ("tiny-flux-fill", "inpaint", {"guidance_scale": 3.0}, "inputs.guidance_scale", "true_cfg_scale"),
    ("tiny-sd3", "img2img", {"controlnets": SD3_UNIT}, "inputs.controlnets", "does not run on sd3"),
    ("tiny-sd3", "inpaint", {"controlnets": SD3_UNIT}, "inputs.controlnets", "does not run on sd3"),
    ("tiny-flux-fill", "inpaint", {"controlnets": FLUX_UNIT}, "inputs.controlnets", "does not run on flux"),
    ("tiny-flux", "txt2img", {"loras": [{"id": "tiny-lora-sd3"}]}, "inputs.loras.0.id", "is for sd3 models"),
    ("tiny-sd3", "txt2img", {"controlnets": FLUX_UNIT}, "inputs.controlnets.0.id", "is for flux models"),
    ("tiny-flux-schnell", "txt2img", {"guidance": 3.5}, "inputs.guidance", "timestep-distilled"),
    ("tiny-flux", "txt2img", {"width": 72}, "inputs.width", "multiples of 16"),
    ("tiny-flux", "img2img", {"scheduler": "unipc"}, "inputs.scheduler", "text-to-image without ControlNet"),
    ("tiny-sd3", "inpaint", {"scheduler": "dpmpp_2m"}, "inputs.scheduler", "scale_noise"),
    ("tiny-flux", "txt2img", {"scheduler": "dpmpp_2m", "controlnets": FLUX_UNIT}, "inputs.scheduler", "own sigmas"),
])
def test_what_cannot_run_is_refused_naming_the_field(harness: Harness, model: str, name: str,
                                                     fields: dict[str, Any], field: str, phrase: str) -> None:
    harness.reports = []
    with pytest.raises(ContractError) as caught:
        harness.run(name, model=model, **{"width": 64, "height": 48, "steps": 3, **fields})
    assert caught.value.field == field and phrase in str(caught.value), str(caught.value)
    assert harness.reports == []  # no step ran


@pytest.mark.parametrize(("model", "name"), [
    (model, name) for model in ("tiny-flux", "tiny-sd3") for name in ("txt2img", "img2img", "inpaint", "controlnet")
] + [("tiny-flux-fill", "inpaint"), ("tiny-flux-schnell", "txt2img"), ("tiny-sd3-turbo", "img2img")])
def test_a_job_of_two_images_makes_two_the_first_as_alone(harness: Harness, model: str, name: str,
                                                          bases: dict[str, np.ndarray]) -> None:
    """Image i comes from seed + i, whatever the count (SD 3.5's img2img and ControlNet classes failed with two)."""
    two = shared(bases, harness, model, name, num_images=2)
    assert len(two) == 2 and levels_apart(two[0], two[1])[1] > 5 * BATCH_ROUNDING[1]
    if (model, name) != ("tiny-sd3", "controlnet"):  # one draw of the global generator for the whole batch (sd3.py)
        worst, mean = levels_apart(two[0], shared(bases, harness, model, name)[0])
        assert worst <= BATCH_ROUNDING[0] and mean <= BATCH_ROUNDING[1], (worst, mean)


#: A batch of two runs the same math as a job of one with other matrix shapes, so on some kernel sets the sums round
#: otherwise: under ATEN_CPU_CAPABILITY=avx2 (make test-cpus), image 0 of SD 3.5's img2img (1 and 2 threads) and of
#: Flux Fill's inpaint (2 threads) differed from the job of one in one channel of one pixel by one level (mean
#: 0.0001), where images of another seed differ by 8.7 to 39 levels on average: (most levels any value may differ,
#: mean levels over all values).
BATCH_ROUNDING = (2, 0.05)


def levels_apart(a: np.ndarray, b: np.ndarray) -> tuple[int, float]:
    """The largest and the mean difference between two 8-bit images, in levels."""
    diff = np.abs(a.astype(np.int16) - b.astype(np.int16))
    return int(diff.max()), float(diff.mean())


def test_a_fill_model_runs_inpaint_only(harness: Harness) -> None:
    with pytest.raises(ModelError, match="is an inpainting model"):
        harness.run("txt2img", model="tiny-flux-fill", width=64, height=48, steps=2)


# -- one set of modules per base model ---------------------------------------------------------------------------


@pytest.mark.parametrize(("model", "controlnet"), [("tiny-flux", "tiny-flux-controlnet"),
                                                   ("tiny-sd3", "tiny-sd3-controlnet")])
def test_every_task_views_the_same_modules(tiny_models: Path, monkeypatch: pytest.MonkeyPatch, model: str,
                                           controlnet: str) -> None:
    import pipelines.common

    views: list[Any] = []
    original = pipelines.common.job_pipeline

    def recording(*args: Any, **kwargs: Any) -> Any:
        views.append(view := original(*args, **kwargs))
        return view

    monkeypatch.setattr(pipelines.common, "job_pipeline", recording)
    harness = Harness(ModelStore(tiny_models, "cpu"))
    for name, fields in (("txt2img", {}), ("img2img", {}), ("inpaint", {}), ("controlnet", {"controlnet": controlnet})):
        harness.run(name, model=model, width=64, height=48, steps=2, **fields)
    shared = ("transformer", "vae", "text_encoder", "text_encoder_2") + (("text_encoder_3",) if "sd3" in model else ())
    for part in shared:
        assert len({id(getattr(view, part)) for view in views}) == 1, part
    assert len({id(view.scheduler) for view in views}) == len(views)  # per-run state: never shared
    assert harness.store.loads == 2  # the base model and the ControlNet, each once


def test_image_sizes_are_the_jobs_on_every_task(harness: Harness) -> None:
    for name in ("img2img", "inpaint"):
        for model in ("tiny-flux", "tiny-sd3"):
            assert [image.size for image in harness.run(name, model=model, width=80, height=32, steps=2)] == [(80, 32)]
    assert isinstance(harness.images["s3://inputs/photo.png"], Image.Image)
