"""ControlNet units (``inputs.controlnets``) on txt2img, img2img and inpaint, SD 1.x and SDXL: one and two units
change the pixels, each unit's order, scale and guidance window matter, a resumed job with two units is
byte-identical, and a unit that cannot run is refused naming its field before anything loads."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from pipelines.common import DiffusersPipeline
from runtime.contract import ContractError
from runtime.worker import checkpoint
from tests.pipelines.harness import COMMON, CONTROLNETS, EDGES, PHOTO, Harness, interrupt_at, parse, pixels, png

SETTINGS: dict[str, Any] = {"steps": 4, "scheduler": "euler_a"}


def unit(model: str = "tiny-sd", image: str = EDGES, **fields: Any) -> dict[str, Any]:
    return {"id": CONTROLNETS[model], "image": image, **fields}


def two(model: str = "tiny-sd") -> list[dict[str, Any]]:
    """Two units on one ControlNet: the square, and the photo content-shuffled (seeded by the job)."""
    return [unit(model, scale=0.8), unit(model, PHOTO, preprocessor="shuffle", scale=1.5, start=0.25)]


@pytest.mark.parametrize("model", ["tiny-sd", "tiny-sdxl"])
@pytest.mark.parametrize("name", ["txt2img", "img2img", "inpaint"])
def test_one_and_two_units_change_the_pixels(harness: Harness, name: str, model: str) -> None:
    plain = pixels(harness.run(name, model=model, **SETTINGS))
    one = pixels(harness.run(name, model=model, controlnets=[unit(model, scale=2.0)], **SETTINGS))
    both = pixels(harness.run(name, model=model, controlnets=two(model), **SETTINGS))
    assert one.shape == plain.shape == both.shape
    assert (one != plain).any() and (both != one).any() and (both != plain).any()


@pytest.mark.parametrize(("model", "family"), [("tiny-sd-inpainting", "tiny-sd"),
                                             ("tiny-sdxl-inpainting", "tiny-sdxl")])
def test_inpainting_checkpoints_take_units_and_resume(harness: Harness, model: str, family: str) -> None:
    """A 9-channel UNet under diffusers' ControlNet inpaint class: the unit counts, and a resume is exact."""
    job = {"model": model, "controlnets": [unit(family, scale=2.0)], **SETTINGS}
    reference = png(harness.run("inpaint", **job))
    assert reference != png(harness.run("inpaint", model=model, **SETTINGS))
    state = checkpoint.load(interrupt_at(harness, "inpaint", 2, **job), "f" * 64)
    assert png(harness.run("inpaint", resume_from=state, **job)) == reference


def test_a_unit_on_txt2img_is_the_controlnet_pipeline(harness: Harness) -> None:
    """The same net, image and window through ``controlnets`` and through the controlnet pipeline's own fields."""
    window = {"control_guidance_start": 0.25, "control_guidance_end": 0.75, "controlnet_conditioning_scale": 1.5}
    own = png(harness.run("controlnet", **SETTINGS, **window))
    assert png(harness.run("txt2img", controlnets=[unit(scale=1.5, start=0.25, end=0.75)], **SETTINGS)) == own


def test_the_controlnet_pipeline_takes_more_units_after_its_own(harness: Harness) -> None:
    own = png(harness.run("controlnet", **SETTINGS))
    more = png(harness.run("controlnet", controlnets=[unit(image=PHOTO, preprocessor="invert")], **SETTINGS))
    assert more != own
    as_units = [unit(), unit(image=PHOTO, preprocessor="invert")]
    assert png(harness.run("txt2img", controlnets=as_units, **SETTINGS)) == more


@pytest.mark.parametrize("change", [
    {"scale": 0.5}, {"start": 0.5}, {"end": 0.5}, {"preprocessor": "invert"},
])
def test_each_setting_of_a_unit_matters(harness: Harness, change: dict[str, Any]) -> None:
    units = two()
    reference = png(harness.run("txt2img", controlnets=units, **SETTINGS))
    changed = [units[0], {**units[1], **change}]
    assert png(harness.run("txt2img", controlnets=changed, **SETTINGS)) != reference


def test_each_units_settings_go_with_its_image(harness: Harness) -> None:
    """Listed the other way round, the same units make the same image (two residuals add up alike in either
    order); the images swapped under the settings make another."""
    units = two()
    reference = png(harness.run("txt2img", controlnets=units, **SETTINGS))
    assert png(harness.run("txt2img", controlnets=units[::-1], **SETTINGS)) == reference
    swapped = [{**units[0], "image": PHOTO, "preprocessor": "shuffle"}, {**units[1], "image": EDGES,
                                                                        "preprocessor": "none"}]
    assert png(harness.run("txt2img", controlnets=swapped, **SETTINGS)) != reference


@pytest.mark.parametrize(("name", "model"), [("txt2img", "tiny-sd"), ("inpaint", "tiny-sdxl"),
                                             ("img2img", "tiny-sd")])
def test_a_job_with_two_units_resumes_byte_identically(harness: Harness, name: str, model: str) -> None:
    job = {"model": model, "controlnets": two(model), **SETTINGS}
    reference = png(harness.run(name, **job))
    for stop in (1, 2, 3):
        state = checkpoint.load(interrupt_at(harness, name, stop, **job), "f" * 64)
        assert png(harness.run(name, resume_from=state, **job)) == reference, f"resumed after step {stop}"


@pytest.mark.parametrize(("units", "extra", "field"), [
    ([unit(), {"id": "no-such-net", "image": EDGES}], {}, "inputs.controlnets.1.id"),
    ([{"id": "tiny-sd", "image": EDGES}], {}, "inputs.controlnets.0.id"),  # a base model, not a ControlNet
    ([unit("tiny-sdxl")], {}, "inputs.controlnets.0.id"),  # the other family's net
    ([unit(), unit(preprocessor="depth_midas")], {}, "inputs.controlnets.1.preprocessor"),
    ([unit("tiny-sdxl")], {"model": "tiny-sdxl", "refiner": "tiny-sdxl-refiner", "switch_at": 0.5},
     "inputs.controlnets"),
])
def test_a_unit_that_cannot_run_is_refused_naming_its_field(harness: Harness, units: list[dict[str, Any]],
                                                             extra: dict[str, Any], field: str) -> None:
    with pytest.raises(ContractError) as caught:
        harness.run("txt2img", controlnets=units, **{**SETTINGS, **extra})
    assert caught.value.field == field, caught.value.message


HIRES = {"hires": {"scale": 2.0, "upscaler": "lanczos", "denoising_strength": 0.5}}


@pytest.mark.parametrize("model", ["tiny-sd", "tiny-sdxl"])
def test_hires_fix_runs_the_units_in_its_second_pass(harness: Harness, model: str) -> None:
    """The second pass alone, on the same upscaled image, with and without the units (WebUI's way)."""
    from pipelines import hires
    from pipelines.txt2img import Txt2Img

    first = harness.run("txt2img", model=model, **SETTINGS)
    out = {}
    for name, units in (("none", []), ("two", two(model))):
        inputs = parse(Txt2Img.Inputs, {**COMMON, **SETTINGS, **HIRES, "controlnets": units})
        ctx = harness.context(model=model)
        job = Txt2Img().prepare(inputs, ctx)
        image = hires.upscaled(ctx.models, job.inputs.hires, first, (128, 96), job.base.vae_scale_factor)
        out[name] = png(hires.second_pass(job, ctx, image))
    assert out["none"] != out["two"]


@pytest.mark.parametrize("upscaler", ["lanczos", "latent"])
def test_hires_fix_with_two_units_resumes_byte_identically_in_either_pass(harness: Harness, upscaler: str) -> None:
    fix = {"hires": {**HIRES["hires"], "upscaler": upscaler}}
    job = {"controlnets": two(), **SETTINGS, **fix}
    reference = png(harness.run("txt2img", **job))
    assert reference != png(harness.run("txt2img", **SETTINGS, **fix))
    for stop in (2, 5):  # the first pass's 4 steps, then the second's 2
        state = checkpoint.load(interrupt_at(harness, "txt2img", stop, **job), "f" * 64)
        assert png(harness.run("txt2img", resume_from=state, **job)) == reference, f"resumed after step {stop}"


def test_every_generating_task_has_control_classes_or_refuses_units_naming_them() -> None:
    from pipelines.families import families
    from tests.pipelines.harness import CASES

    for name, (cls, _) in CASES.items():
        assert issubclass(cls, DiffusersPipeline)
        for family in families().values():
            if cls.task in family.control_tasks:
                assert family.task_class(cls.task, None, control=True) is family.control_tasks[cls.task], name
                continue
            # diffusers has no SD3 ControlNet img2img class, and its inpainting one is another kind of model
            assert family.name == "sd3" and cls.task in ("img2img", "inpaint")
            with pytest.raises(ContractError, match=f"{cls.task} with ControlNet units does not run on sd3") as caught:
                family.task_class(cls.task, None, control=True)
            assert caught.value.field == "inputs.controlnets"


def test_a_unit_of_another_dtype_is_refused_naming_its_id(tiny_models: Path, tmp_path: Path) -> None:
    """One loaded ControlNet serves every base model, so it cannot be cast for each: a catalog entry in another
    dtype than the base is refused before anything loads."""
    import json
    import shutil

    from runtime.models.store import ModelStore

    models = tmp_path / "models"
    shutil.copytree(tiny_models, models)
    catalog = json.loads((models / "catalog.json").read_text())
    catalog["models"]["half-net"] = {**catalog["models"]["tiny-controlnet"], "aliases": [], "dtype": "float16"}
    (models / "catalog.json").write_text(json.dumps(catalog))
    harness = Harness(ModelStore(models, "cpu"))
    with pytest.raises(ContractError) as caught:
        harness.run("txt2img", controlnets=[unit(), {"id": "half-net", "image": EDGES}], **SETTINGS)
    assert caught.value.field == "inputs.controlnets.1.id" and "float16" in caught.value.message
