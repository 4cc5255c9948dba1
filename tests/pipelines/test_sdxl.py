"""SDXL as a model family: the family decides the diffusers classes, the three tasks share one set of modules,
sizes and micro-conditioning follow SDXL's conventions, and a ControlNet of the other family is refused."""

from __future__ import annotations

from pathlib import Path

import pytest
from diffusers import StableDiffusionXLControlNetPipeline, StableDiffusionXLImg2ImgPipeline, StableDiffusionXLPipeline

from pipelines.families import family_of
from runtime.contract import ContractError, Txt2ImgInputs, for_family
from runtime.models.catalog import ModelError
from runtime.models.store import ModelStore
from tests.pipelines.harness import CASES, Harness

SDXL = "tiny-sdxl"


@pytest.mark.parametrize(("name", "cls"), [("txt2img", StableDiffusionXLPipeline),
                                         ("img2img", StableDiffusionXLImg2ImgPipeline),
                                         ("controlnet", StableDiffusionXLControlNetPipeline)])
def test_the_family_picks_the_sdxl_pipeline(name: str, cls: type) -> None:
    task = CASES[name][0]
    assert family_of("sdxl").task_class(task.task, None, task.always_control) is cls


@pytest.mark.parametrize(("model", "controlnet"), [(SDXL, "tiny-controlnet"), ("tiny-sd", "tiny-sdxl-controlnet")])
def test_a_controlnet_of_the_other_family_is_refused(tiny_models: Path, model: str, controlnet: str) -> None:
    h = Harness(ModelStore(tiny_models, "cpu"))
    with pytest.raises(ModelError, match="is for") as caught:
        h.run("controlnet", model=model, controlnet=controlnet)
    assert caught.value.code == "incompatible_controlnet" and h.store.loads == 0


def test_sizes_follow_the_family(tiny_models: Path) -> None:
    plain = Txt2ImgInputs(prompt="x")
    assert (for_family(plain, "sdxl").width, for_family(plain, "sdxl").height) == (1024, 1024)
    assert (for_family(plain, "sd1").width, for_family(plain, "sd1").height) == (512, 512)
    big = Txt2ImgInputs(prompt="x", width=2048, height=2048)
    assert for_family(big, "sdxl").width == 2048
    with pytest.raises(ContractError) as caught:
        for_family(big, "sd1")
    assert caught.value.field == "inputs.width"
    # A job that leaves out one side gets the family's default for it.
    h = Harness(ModelStore(tiny_models, "cpu"))
    (image,) = h.run("txt2img", model=SDXL, width=64, height=None, steps=1)
    assert image.size == (64, 1024)


@pytest.mark.parametrize("field", ["original_size", "target_size", "crops_coords_top_left"])
def test_size_conditioning_is_for_sdxl_only(tiny_models: Path, field: str) -> None:
    h = Harness(ModelStore(tiny_models, "cpu"))
    with pytest.raises(ContractError) as caught:
        h.run("txt2img", model="tiny-sd", **{field: [256, 256]})
    assert caught.value.field == f"inputs.{field}" and h.store.loads == 0
