"""The contract kit (``spotgen.testing``) on every built-in pipeline, as a plugin author runs it on theirs; and
that each of its checks fails, saying what to fix, on a pipeline that breaks the rule."""

from __future__ import annotations

import contextlib
import inspect
import io
import random
import re
from pathlib import Path

import pytest
import torch
from PIL import Image
from pydantic import BaseModel, Field

from pipelines.controlnet import ControlNet
from pipelines.img2img import Img2Img
from pipelines.txt2img import Txt2Img
from runtime.kit.local import LocalRun, local_ref
from runtime.plugins import Pipeline, Registry, RunContext, StepState
from spotgen.testing import ContractFailure, PipelineContract

COMMON = {"prompt": "a red fox in the snow", "width": 64, "height": 48, "steps": 4}


class BuiltIn(PipelineContract):
    @pytest.fixture(scope="class")
    @classmethod
    def spotgen_models(cls, tiny_models: Path) -> Path:
        return tiny_models


class TestTxt2Img(BuiltIn):
    pipeline = Txt2Img
    inputs = {**COMMON, "scheduler": "dpmpp_2m"}


class TestTxt2ImgSdxl(BuiltIn):
    pipeline = Txt2Img
    model = "tiny-sdxl"
    inputs = {**COMMON, "scheduler": "euler_a"}


class TestImg2Img(BuiltIn):
    pipeline = Img2Img
    inputs = {**COMMON, "strength": 0.8}
    images = {"image": "gradient"}


class TestControlNet(BuiltIn):
    pipeline = ControlNet
    inputs = {**COMMON, "controlnet": "tiny-controlnet", "control_preprocessor": "canny"}
    images = {"control_image": "gradient"}


# -- each check fails on a pipeline that breaks its rule, saying what to fix -----------------------------------


class Steps(BaseModel):
    steps: int = Field(4, ge=1, le=50)
    width: int = 16
    height: int = 16


class Counter(Pipeline):
    """A well-behaved pipeline without models: a number per step, resumable, the image its sum."""

    name = "counter"
    Inputs = Steps
    checkpoints = True

    def run(self, inputs: Steps, ctx: RunContext) -> list[Image.Image]:
        start, value = 0, torch.zeros(1)
        if ctx.resume_from is not None:
            start, value = ctx.resume_from.step, ctx.resume_from.tensors["value"]
        gen = torch.Generator().manual_seed(ctx.seed)
        for _ in range(start):
            torch.rand(1, generator=gen)  # the draws of the steps already done
        for step in range(start + 1, inputs.steps + 1):
            value = value + torch.rand(1, generator=gen)
            self.report(ctx, step, inputs.steps, value)
        shade = int(value.item() * 60) % 256
        return [Image.new("RGB", (inputs.width, inputs.height), (shade, shade, shade))]

    def report(self, ctx: RunContext, step: int, total: int, value: torch.Tensor) -> None:
        ctx.step(step, total, lambda: StepState(step=step, tensors={"value": value.clone()}))


class Random(Counter):
    name = "random"

    def run(self, inputs: Steps, ctx: RunContext) -> list[Image.Image]:
        ctx.progress(1, 1)
        return [Image.new("RGB", (16, 16), (random.randrange(256), 0, 0))]  # noqa: S311 - the rule broken


class Silent(Counter):
    name = "silent"

    def report(self, ctx: RunContext, step: int, total: int, value: torch.Tensor) -> None:
        pass


class Stubborn(Counter):
    name = "stubborn"

    def report(self, ctx: RunContext, step: int, total: int, value: torch.Tensor) -> None:
        with contextlib.suppress(BaseException):  # the rule broken: a stop swallowed
            super().report(ctx, step, total, value)


class Stateless(Counter):
    name = "stateless"

    def report(self, ctx: RunContext, step: int, total: int, value: torch.Tensor) -> None:
        ctx.progress(step, total)


class Forgetful(Counter):
    name = "forgetful"

    def report(self, ctx: RunContext, step: int, total: int, value: torch.Tensor) -> None:
        ctx.step(step, total, lambda: StepState(step=step, tensors={"value": torch.zeros(1)}))


class Tiny(Counter):
    name = "tiny"

    def run(self, inputs: Steps, ctx: RunContext) -> list[Image.Image]:
        return [image.resize((8, 8)) for image in super().run(inputs, ctx)]


class TestCounter(BuiltIn):
    pipeline = Counter
    inputs = {"steps": 4}


@pytest.mark.parametrize(("pipeline", "test", "phrase"), [
    (Random, "test_same_seed_gives_the_same_bytes", "seeded with ctx.seed"),
    (Silent, "test_progress_is_monotonic_and_reaches_the_total", "Call ctx.step"),
    (Stubborn, "test_a_cancel_stops_it_within_one_step", "do not catch BaseException"),
    (Stateless, "test_interrupted_runs_resume_byte_identical", "Pass state= to ctx.step"),
    (Forgetful, "test_interrupted_runs_resume_byte_identical", "Save everything the next step reads"),
    (Tiny, "test_runs_on_the_tiny_models_with_valid_images_sized_as_asked", "8x8, the inputs ask for 16x16"),
], ids=lambda value: value.__name__ if isinstance(value, type) else None)
def test_a_broken_rule_fails_its_check_saying_what_to_fix(tiny_models: Path, pipeline: type[Pipeline], test: str,
                                                          phrase: str) -> None:
    case = type(f"Test{pipeline.__name__}", (PipelineContract,), {"pipeline": pipeline, "inputs": {"steps": 4}})
    registry = Registry()
    registry.register(pipeline)
    kit = LocalRun(tiny_models, registry=registry)
    reference = case.run(kit)
    check = getattr(case(), test)
    arguments = {"kit": kit, "reference": reference}
    wanted = [name for name in inspect.signature(check).parameters]
    with pytest.raises(ContractFailure, match=re.escape(phrase)):
        check(**{name: arguments[name] for name in wanted})


# -- resume for free: a diffusers pipeline the runtime knows nothing about, through spotgen.diffusers ----------


class InpaintInputs(BaseModel):
    prompt: str
    image: str
    mask: str
    width: int = 64
    height: int = 48
    steps: int = Field(4, ge=1, le=50)


class Inpaint(Pipeline):
    """diffusers' inpainting pipeline on a text-to-image model (the tiny SD's 4-channel UNet: diffusers blends the
    masked latents each step, from noise its prepare_latents returns beside them), with no state code."""

    name = "inpaint"
    Inputs = InpaintInputs
    image_fields = ("image", "mask")
    checkpoints = True

    def run(self, inputs: InpaintInputs, ctx: RunContext) -> list[Image.Image]:
        from diffusers import EulerAncestralDiscreteScheduler, StableDiffusionInpaintPipeline

        from spotgen.diffusers import base_model, job_view, run_resumable

        # An ancestral sampler draws noise every step, after diffusers' inpainting drew for the masked image's
        # encoding: a resume that put the generators back before that draw would not repeat the run.
        view = job_view(base_model(ctx), StableDiffusionInpaintPipeline)
        view.scheduler = EulerAncestralDiscreteScheduler.from_config(view.scheduler.config)
        return run_resumable(view, ctx, prompt=inputs.prompt,
                             image=ctx.image(inputs.image), mask_image=ctx.image(inputs.mask).convert("L"),
                             num_inference_steps=inputs.steps, width=inputs.width, height=inputs.height,
                             strength=1.0)


class TestInpaint(BuiltIn):
    pipeline = Inpaint
    inputs = {"prompt": "a red fox", "steps": 4}
    images = {"image": "gradient", "mask": "edges"}


def test_resume_for_free_skips_the_steps_done_and_recomputes_none(tiny_models: Path) -> None:
    registry = Registry()
    registry.register(Inpaint)
    kit = LocalRun(tiny_models, registry=registry)
    stopped = TestInpaint.run(kit, stop_at=2)
    resumed = TestInpaint.run(kit, resume_from=stopped.checkpoint)
    total = stopped.steps[0][1]
    assert [s for s, _ in stopped.steps] == [1, 2] and [s for s, _ in resumed.steps] == list(range(3, total + 1))


@pytest.mark.parametrize(("inputs", "field"), [(["steps=0"], "steps"), (["delay=x"], "delay"),
                                               (["nonsense=1"], "nonsense")])
def test_spotgen_run_refuses_a_bad_input_naming_it_before_anything_loads(
        tiny_models: Path, capsys: pytest.CaptureFixture[str], inputs: list[str], field: str) -> None:
    """`spotgen run` with a plugin given by --plugin: a bad --input is a usage error (exit 2) that names the
    field. In this process: tests/kit/test_plugin_kit.py runs the command in a fresh environment for a good run."""
    from spotgen.cli import main

    args = ["run", "slow", "--plugin", "tests.plugins:SlowSteps", "--model", "tiny-sd", "--models", str(tiny_models),
            "--quiet"]
    assert main([*args, *(a for pair in inputs for a in ("--input", pair))]) == 2
    assert field in capsys.readouterr().err


def test_spotgen_run_writes_the_format_the_inputs_ask_for(tiny_models: Path, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    """`spotgen run` encodes as the worker does: the job's ``format`` picks the file's encoding and extension,
    with the parameters embedded (read back as WebUI reads them), and a resume compares in that format."""
    from spotgen.cli import main
    from spotgen.images import read_parameters

    args = ["run", "txt2img", "--model", "tiny-sd", "--models", str(tiny_models), "--quiet", "--out", str(tmp_path),
            "--interrupt-at", "1"]
    inputs = ["prompt=a fox", "steps=2", "width=64", "height=64", "format=webp", "lossless=true"]
    assert main([*args, *(a for pair in inputs for a in ("--input", pair))]) == 0
    written = [Path(line) for line in capsys.readouterr().out.splitlines() if line.startswith(str(tmp_path))]
    assert [path.suffix for path in written] == [".webp"]
    data = written[0].read_bytes()
    assert Image.open(io.BytesIO(data)).format == "WEBP"
    assert "a fox" in (read_parameters(data) or "")


def test_spotgen_run_puts_an_image_inside_a_list_of_the_inputs(tiny_models: Path) -> None:
    """``--image controlnets.0.image=PATH``: a unit's or an adapter's image, as the worker gets it from S3."""
    kit, image = LocalRun(tiny_models), Image.new("RGB", (16, 16))
    fields = {"prompt": "a fox", "controlnets": [{"id": "tiny-controlnet", "image": "placeholder"}]}
    inputs = kit.inputs("txt2img", fields, {"controlnets.0.image": image})
    assert inputs.controlnets[0].image == local_ref("controlnets.0.image")  # type: ignore[attr-defined]
    assert fields["controlnets"][0]["image"] == "placeholder"  # the caller's fields are left as they were
    with pytest.raises(ValueError, match=r"'ip_adapters\.0\.image': the inputs have no ip_adapters\.0"):
        kit.inputs("txt2img", {"prompt": "a fox"}, {"ip_adapters.0.image": image})
