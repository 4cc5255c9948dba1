"""IP-Adapters per request on txt2img, img2img and inpaint, SD 1.x and SDXL, through diffusers' own IP-Adapter
code on the tiny adapters: the pixels follow the adapter, its image and scale; a job without one is byte for byte
a fresh worker's; resume is byte-identical; adapters load once; every refusal names its field."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from PIL import Image, UnidentifiedImageError
from pydantic import ValidationError
from safetensors.torch import load_file, save_file

from pipelines import ipadapters
from pipelines.common import base_pipeline
from runtime.contract import ContractError
from runtime.models.catalog import CATALOG_FILE, Catalog, describe
from runtime.models.store import ModelStore
from runtime.models.tinyadapters import image_encoder
from runtime.worker import checkpoint
from tests.pipelines.harness import COMMON, EDGES, PHOTO, Harness, interrupt_at, png

SD, SDXL = "tiny-ip-adapter-sd1", "tiny-ip-adapter-sdxl"
ADAPTERS = {"tiny-sd": SD, "tiny-sdxl": SDXL}
NOT_AN_IMAGE = "s3://inputs/notes.txt"


def ip(adapter_id: str, image: str = PHOTO, scale: float = 1.0) -> dict[str, Any]:
    return {"id": adapter_id, "image": image, "scale": scale}


class _Images(dict):  # type: ignore[type-arg]
    """The harness's images, plus an object whose bytes are no image, failing as the worker's fetch fails."""

    def __getitem__(self, ref: str) -> Image.Image:
        if ref == NOT_AN_IMAGE:
            raise UnidentifiedImageError("cannot identify image file")
        return super().__getitem__(ref)  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def models(tiny_models: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the tiny models with a file of no IP-Adapter keys, an SD 1.x adapter labelled SDXL and one whose
    image projection is not a plain IP-Adapter's (as a Plus adapter's), and one paired with an encoder of another
    width."""
    models = tmp_path_factory.mktemp("ip") / "models"
    shutil.copytree(tiny_models, models)
    catalog = json.loads((models / CATALOG_FILE).read_text())
    encoder = {"kind": "ip_adapter", "image_encoder": "tiny-image-encoder"}
    catalog["models"]["no-ip-keys"] = {**encoder, "path": "tiny-loras/tiny-lora-sd1.safetensors", "family": "sd1"}
    catalog["models"]["mislabelled"] = {**encoder, "path": f"tiny-ip-adapters/{SD}.safetensors", "family": "sdxl"}
    plus = {key.replace("image_proj.proj.", "image_proj.latents_"): value
            for key, value in load_file(models / "tiny-ip-adapters" / f"{SD}.safetensors").items()}
    save_file(plus, models / "tiny-ip-adapters" / "plus.safetensors")
    catalog["models"]["plus"] = {**encoder, "path": "tiny-ip-adapters/plus.safetensors", "family": "sd1"}
    image_encoder(seed=1, projection_dim=24).save_pretrained(models / "other-encoder")
    catalog["models"]["other-encoder"] = {"path": "other-encoder", "kind": "image_encoder"}
    catalog["models"]["wrong-encoder"] = {**encoder, "path": f"tiny-ip-adapters/{SD}.safetensors", "family": "sd1",
                                          "image_encoder": "other-encoder"}
    (models / CATALOG_FILE).write_text(json.dumps(catalog))
    return models


@pytest.fixture
def fresh(models: Path) -> Harness:
    """A harness whose store has loaded nothing: a worker that never loaded an IP-Adapter."""
    harness = Harness(ModelStore(models, "cpu"))
    harness.images = _Images(harness.images)
    return harness


@pytest.mark.parametrize("model", ["tiny-sd", "tiny-sdxl"])
def test_the_adapter_its_image_and_its_scale_change_the_pixels(harness: Harness, model: str) -> None:
    adapter = ADAPTERS[model]
    runs = [png(harness.run("txt2img", model=model, **extra)) for extra in (
        {}, {"ip_adapters": [ip(adapter)]}, {"ip_adapters": [ip(adapter, EDGES)]},
        {"ip_adapters": [ip(adapter, scale=0.5)]}, {"ip_adapters": [ip(adapter), ip(adapter, EDGES, 0.7)]})]
    assert len({tuple(run) for run in runs}) == len(runs)


@pytest.mark.parametrize("name", ["txt2img", "img2img", "inpaint"])
@pytest.mark.parametrize("model", ["tiny-sd", "tiny-sdxl"])
def test_a_job_without_adapters_is_byte_for_byte_a_fresh_workers(fresh: Harness, name: str, model: str) -> None:
    """One process: a job before any adapter, one with an adapter, the first job again."""
    never = png(fresh.run(name, model=model))
    with_one = png(fresh.run(name, model=model, ip_adapters=[ip(ADAPTERS[model])]))
    assert png(fresh.run(name, model=model)) == never != with_one
    unet = base_pipeline(fresh.store, model).unet
    assert unet.encoder_hid_proj is None and unet.config.encoder_hid_dim_type is None


@pytest.mark.parametrize(("model", "name", "stops"), [("tiny-sd", "txt2img", (1, 2)), ("tiny-sdxl", "inpaint", (1, 2)),
                                                      ("tiny-sdxl", "txt2img", (2,))])
def test_resume_is_byte_identical(harness: Harness, model: str, name: str, stops: tuple[int, ...]) -> None:
    fields = {"model": model, "scheduler": "euler_a", "ip_adapters": [ip(ADAPTERS[model], scale=0.8)]}
    whole = png(harness.run(name, **fields))
    for stop in stops:
        saved = interrupt_at(harness, name, stop, **fields)
        resumed = png(harness.run(name, resume_from=checkpoint.load(saved, "f" * 64), **fields))
        assert resumed == whole, f"resumed after step {stop}"


def test_an_adapter_is_read_once_and_switched_per_job(fresh: Harness) -> None:
    fresh.run("txt2img", ip_adapters=[ip(SD)])
    loads, state = fresh.store.loads, base_pipeline(fresh.store, "tiny-sd").spotgen_ip_adapters
    built = state.sets[(SD,)]
    fresh.run("txt2img", ip_adapters=[ip(SD, EDGES, 0.3)])
    fresh.run("txt2img")
    fresh.run("img2img", ip_adapters=[ip(SD)])  # another task's view of the same base
    assert fresh.store.loads == loads
    assert list(state.sets) == [(SD,)] and state.sets[(SD,)] is built  # the processors were built once


@pytest.mark.parametrize(("model", "adapter", "code"), [
    ("tiny-sd", "nope", "unknown_model"),
    ("tiny-sd", "tiny-lora-sd1", "wrong_model_kind"),
    ("tiny-sd", SDXL, "incompatible_ip_adapter"),
    ("tiny-sdxl", SD, "incompatible_ip_adapter"),
])
def test_an_adapter_the_model_cannot_take_is_refused_naming_the_field(fresh: Harness, model: str, adapter: str,
                                                                       code: str) -> None:
    with pytest.raises(ContractError) as caught:
        fresh.run("txt2img", model=model, ip_adapters=[ip(ADAPTERS[model]), ip(adapter)])
    assert (caught.value.code, caught.value.field) == (code, "inputs.ip_adapters.1.id")
    assert fresh.store.loads == 0  # refused before anything was loaded


def test_an_image_that_is_not_an_image_is_refused_naming_the_field(fresh: Harness) -> None:
    with pytest.raises(ContractError) as caught:
        fresh.run("txt2img", ip_adapters=[ip(SD), ip(SD, NOT_AN_IMAGE)])
    assert (caught.value.code, caught.value.field) == ("invalid_image", "inputs.ip_adapters.1.image")


@pytest.mark.parametrize(("adapter", "model", "code", "message"), [
    ("no-ip-keys", "tiny-sd", "invalid_ip_adapter", "no image_proj"),
    ("mislabelled", "tiny-sdxl", "invalid_ip_adapter", "cannot be applied"),
    ("plus", "tiny-sd", "unsupported_ip_adapter", "only plain IP-Adapters"),
    ("wrong-encoder", "tiny-sd", "invalid_ip_adapter", "another model's encoder"),
])
def test_a_broken_adapter_fails_clearly_and_leaves_nothing_behind(fresh: Harness, adapter: str, model: str,
                                                                  code: str, message: str) -> None:
    never = png(fresh.run("txt2img", model=model))
    with pytest.raises(ContractError, match=message) as caught:
        fresh.run("txt2img", model=model, ip_adapters=[ip(ADAPTERS[model]), ip(adapter)])
    assert (caught.value.code, caught.value.field) == (code, "inputs.ip_adapters.1.id")
    assert png(fresh.run("txt2img", model=model)) == never


@pytest.mark.parametrize(("entries", "error"), [
    ({"a": {"path": "a.safetensors", "kind": "ip_adapter"}}, "models.a: an IP-Adapter names its 'image_encoder'"),
    ({"a": {"path": "a", "kind": "ip_adapter", "image_encoder": "e"}, "e": {"path": "e", "kind": "image_encoder"}},
     "an IP-Adapter is one '.safetensors' file"),
    ({"a": {"path": "a.safetensors", "kind": "ip_adapter", "image_encoder": "e"}}, "'e' is not an 'image_encoder'"),
    ({"a": {"path": "a.safetensors", "kind": "ip_adapter", "image_encoder": "b"}, "b": {"path": "b"}},
     "'b' is not an 'image_encoder'"),
    ({"e": {"path": "e.safetensors", "kind": "image_encoder"}}, "an image encoder is a diffusers"),
    ({"l": {"path": "l.safetensors", "kind": "lora", "image_encoder": "l"}}, "'image_encoder' is for IP-Adapters"),
])
def test_the_catalog_checks_adapters_and_their_encoders(entries: dict[str, Any], error: str) -> None:
    with pytest.raises(ValidationError) as caught:
        Catalog.model_validate({"models": entries})
    assert error in describe(caught.value)


def test_an_adapter_and_its_encoder_are_catalog_entries(models: Path) -> None:
    store = ModelStore(models, "cpu")
    assert store.source(SD, "ip_adapter").path.is_file() and store.source("tiny-image-encoder", "image_encoder")
    assert ipadapters.weights(store, SD)["ip_adapter"] and store.loads == 1


@pytest.mark.parametrize(("model", "extra"), [
    ("tiny-sd", {"hires": {"scale": 1.5, "denoising_strength": 0.6}}),
    ("tiny-sdxl", {"refiner": "tiny-sdxl-refiner", "switch_at": 0.5}),
    ("tiny-sd", {"controlnets": [{"id": "tiny-controlnet", "image": EDGES, "scale": 1.2}]}),
])
def test_with_hires_fix_the_refiner_or_controlnet_units(harness: Harness, model: str, extra: dict[str, Any]) -> None:
    """Hires fix's second pass runs on the base model, so with its adapter; SDXL's refiner is another model and runs
    without (WebUI's way); units and adapters steer one job together. Each resumes byte-identical in either pass."""
    fields = {"model": model, "scheduler": "euler_a", **extra}
    adapted = {**fields, "ip_adapters": [ip(ADAPTERS[model])]}
    whole = png(harness.run("txt2img", **adapted))
    total = harness.reports[-1][1]
    assert whole != png(harness.run("txt2img", **fields))
    for stop in sorted({2, total - 1}):  # in the first pass and in the last
        saved = interrupt_at(harness, "txt2img", stop, **adapted)
        resumed = png(harness.run("txt2img", resume_from=checkpoint.load(saved, "f" * 64), **adapted))
        assert resumed == whole, f"resumed after step {stop} of {total}"


def test_preloading_reads_the_adapter_and_its_encoder_once(fresh: Harness) -> None:
    """SPOTGEN_PRELOAD names adapters as it names base models: loaded by the first pipeline that takes the kind."""
    from pipelines.txt2img import Txt2Img

    pipeline = Txt2Img()
    pipeline.models = fresh.store
    assert pipeline.load(SD, "ip_adapter") and fresh.store.loads == 2  # the file and the image encoder
    fresh.run("txt2img", ip_adapters=[ip(SD)])
    assert fresh.store.loads == 3  # the base model only
    with pytest.raises(Exception, match="no image_proj"):
        pipeline.load("no-ip-keys", "ip_adapter")


def test_the_pixels_are_diffusers_own_load_ip_adapter(harness: Harness, tiny_models: Path) -> None:
    """The same job through diffusers' documented path on a pipeline of its own: ``load_ip_adapter``,
    ``set_ip_adapter_scale``, ``ip_adapter_image``: the same bytes. (SD 1.x only: spotgen's SDXL job differs
    from diffusers' defaults without an adapter too, WebUI's way with an empty negative prompt.)"""
    from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline, StableDiffusionXLPipeline
    from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection

    from pipelines.resume import generators

    model = "tiny-sd"
    ours = png(harness.run("txt2img", model=model, scheduler="euler", ip_adapters=[ip(ADAPTERS[model], scale=0.7)]))
    cls = StableDiffusionXLPipeline if model == "tiny-sdxl" else StableDiffusionPipeline
    options = {"add_watermarker": False} if model == "tiny-sdxl" else {"safety_checker": None,
                                                                       "requires_safety_checker": False}
    pipe = cls.from_pretrained(tiny_models / model, **options)
    pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config)
    pipe.load_ip_adapter(str(tiny_models / "tiny-ip-adapters"), subfolder="", image_encoder_folder=None,
                         weight_name=f"{ADAPTERS[model]}.safetensors")
    pipe.image_encoder = CLIPVisionModelWithProjection.from_pretrained(tiny_models / "tiny-image-encoder")
    pipe.feature_extractor = CLIPImageProcessor(size=32, crop_size=32)
    pipe.set_ip_adapter_scale(0.7)
    pipe.set_progress_bar_config(disable=True)
    theirs = pipe(COMMON["prompt"], width=COMMON["width"], height=COMMON["height"], generator=generators(1, 1),
                  num_inference_steps=COMMON["steps"], ip_adapter_image=harness.images[PHOTO]).images
    assert png(theirs) == ours
