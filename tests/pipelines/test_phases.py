"""Several passes in one checkpoint stream (``spotgen.diffusers.Phases``), on its own: a plugin's two-pass pipeline
without models and one on diffusers, resumed at every step byte-identical, with one progress count and each pass
named; the bookkeeping a checkpoint must add up to; and ``progress.phase`` in the status, through the worker's own
job runner against the AWS emulator."""

from __future__ import annotations

import threading
import time
import uuid
from pathlib import Path
from typing import Any

import boto3
import pytest
import torch
from diffusers import EulerDiscreteScheduler, StableDiffusionImg2ImgPipeline
from PIL import Image
from pydantic import BaseModel, Field

from runtime.config import Settings
from runtime.contract import JobState
from runtime.kit.local import LocalRun, png_bytes
from runtime.models.store import ModelStore
from runtime.plugins import CheckpointError, Pipeline, Registry, RunContext, StepState
from runtime.storage.jobstore import JobStore
from runtime.worker import checkpoint
from runtime.worker.interrupt import Interruption
from runtime.worker.runner import JobRunner
from spotgen.diffusers import Phases, base_model, job_view, run_resumable
from spotgen.testing import ContractFailure, check_progress
from tests.pipelines.test_kit import BuiltIn


class TwoPassInputs(BaseModel):
    draft: int = Field(3, ge=1, le=20)
    refine: int = Field(2, ge=1, le=20)
    #: Steps the draft really runs beyond its plan (a sampler such as Heun runs more timesteps than asked).
    extra: int = Field(0, ge=0, le=5)
    width: int = 16
    height: int = 16


class TwoPass(Pipeline):
    """A plugin's own two-pass pipeline, no models: each pass draws a number per step from its own generator;
    the second starts from the first's output, which it needs after a resume too."""

    name = "two-pass"
    Inputs = TwoPassInputs
    checkpoints = True

    def run(self, inputs: TwoPassInputs, ctx: RunContext) -> list[Image.Image]:
        phases = Phases(ctx, {"draft": inputs.draft, "refine": inputs.refine})
        draft = phases.run("draft", lambda c: self.loop(c, torch.zeros(2), inputs.draft + inputs.extra))
        final = phases.run("refine", lambda c: self.loop(c, draft * 3, inputs.refine))
        shade = [int(v * 40) % 256 for v in (final + draft).tolist()]  # what came before counts after a resume
        return [Image.new("RGB", (inputs.width, inputs.height), (shade[0], shade[1], 7))]

    @staticmethod
    def loop(ctx: RunContext, value: torch.Tensor, steps: int) -> torch.Tensor:
        gen, start = torch.Generator().manual_seed(ctx.seed), 0
        if ctx.resume_from is not None:
            start, value = ctx.resume_from.step, ctx.resume_from.tensors["value"]
            gen.set_state(ctx.resume_from.tensors["generator"])
        for step in range(start + 1, steps + 1):
            value = value + torch.rand(2, generator=gen)
            state = {"value": value.clone(), "generator": gen.get_state()}
            ctx.step(step, steps, lambda s=step, t=state: StepState(step=s, tensors=t, values={"n": s}))
        return value


class TestTwoPassKit(BuiltIn):
    """The contract kit passes on a plugin's multi-pass pipeline: progress one total, resume in either pass."""

    pipeline = TwoPass
    inputs = {"draft": 3, "refine": 2}
    resume_at = (1, 3, 4)


@pytest.fixture(scope="module")
def kit(tiny_models: Path) -> LocalRun:
    registry = Registry()
    for cls in (TwoPass, DiffusersTwoPass):
        registry.register(cls)
    return LocalRun(tiny_models, registry=registry)


@pytest.mark.parametrize("extra", [0, 2])
def test_every_step_resumes_byte_identical_with_one_count_and_each_pass_named(kit: LocalRun, extra: int) -> None:
    fields = {"draft": 3, "refine": 2, "extra": extra}
    reference = kit.run("two-pass", "tiny-sd", fields)
    total = 3 + extra + 2
    assert reference.steps == [(step, total) for step in range(1, total + 1)]
    assert reference.phases == ["draft"] * (3 + extra) + ["refine"] * 2
    for at in range(1, total):
        stopped = kit.run("two-pass", "tiny-sd", fields, stop_at=at)
        assert stopped.checkpoint is not None
        resumed = kit.run("two-pass", "tiny-sd", fields, resume_from=stopped.checkpoint)
        assert resumed.steps == reference.steps[at:], f"resumed after step {at}"
        assert resumed.phases == reference.phases[at:]
        assert png_bytes(resumed.images, {}) == png_bytes(reference.images, {}), f"resumed after step {at}"


def test_the_checkpoint_holds_the_pass_its_step_and_what_the_passes_before_made(kit: LocalRun) -> None:
    stopped = kit.run("two-pass", "tiny-sd", {"draft": 3, "refine": 2, "extra": 1}, stop_at=5)
    assert stopped.checkpoint is not None
    state = checkpoint.load(stopped.checkpoint, "0" * 64)
    assert state.step == 5
    book = state.values["phases"]
    assert (book["phase"], book["step"], book["done"]) == ("refine", 1, {"draft": 4})
    assert state.values["n"] == 1 and "phases.draft" in state.tensors and "value" in state.tensors


class Revisits(TwoPass):
    """Names its passes draft, refine, draft: a status that says the job went back."""

    name = "revisits"

    def run(self, inputs: TwoPassInputs, ctx: RunContext) -> list[Image.Image]:
        for step, name in enumerate(("draft", "refine", "draft"), start=1):
            ctx.begin_phase(name)
            ctx.progress(step, 3)
        return [Image.new("RGB", (16, 16))]


def test_the_kit_refuses_passes_that_come_back(kit: LocalRun) -> None:
    kit.registry.register(Revisits)
    with pytest.raises(ContractFailure, match="draft -> refine -> draft"):
        check_progress(Revisits, kit.run("revisits", "tiny-sd", {}))


def _state(book: Any, step: int = 4) -> StepState:
    return StepState(step=step, tensors={"phases.draft": torch.zeros(2), "value": torch.zeros(2)},
                     values={"phases": book})


@pytest.mark.parametrize("book", [
    None,
    {"phase": "polish", "step": 1, "done": {"draft": 3}, "carry": {"draft": {"t": "tensor"}}},
    {"phase": "refine", "step": 2, "done": {"draft": 3}, "carry": {"draft": {"t": "tensor"}}},  # 3 + 2 != 4
    {"phase": "refine", "step": 1, "done": {}, "carry": {}},
    {"phase": "refine", "step": 1, "done": {"draft": 3}, "carry": {"draft": {"t": "image", "mode": "P"}}},
    {"phase": "refine", "step": 1, "done": 3, "carry": {"draft": {"t": "tensor"}}},
])
def test_a_checkpoint_that_does_not_add_up_is_refused(book: Any) -> None:
    """The runtime then starts the job again from the beginning (``CheckpointError``)."""
    ctx = RunContext(job_id="j", model="m", seed=1, device="cpu", models=None,  # type: ignore[arg-type]
                     report=lambda *a: None, fetch_image=lambda ref: None,  # type: ignore[arg-type, return-value]
                     resume_from=_state(book))
    with pytest.raises(CheckpointError):
        Phases(ctx, {"draft": 3, "refine": 2}).run("draft", lambda c: torch.zeros(2))


def test_passes_run_in_order_and_carry_only_what_a_checkpoint_holds() -> None:
    ctx = RunContext(job_id="j", model="m", seed=1, device="cpu", models=None,  # type: ignore[arg-type]
                     report=lambda *a: None, fetch_image=lambda ref: None)  # type: ignore[arg-type, return-value]
    with pytest.raises(ValueError, match="out of order"):
        Phases(ctx, {"draft": 3, "refine": 2}).run("refine", lambda c: None)
    with pytest.raises(TypeError, match="must return a tensor"):
        Phases(ctx, {"draft": 3, "refine": 2}).run("draft", lambda c: {"not": "carried"})
    with pytest.raises(ValueError, match=r"name each pass .*\['Second pass'\]"):
        Phases(ctx, {"draft": 3, "Second pass": 2})


# -- a plugin's two passes on diffusers: txt2img to latents, then img2img on them (spotgen.diffusers' example) ---


class DiffusersTwoPass(Pipeline):
    name = "diffusers-two-pass"
    Inputs = TwoPassInputs
    checkpoints = True

    def run(self, inputs: TwoPassInputs, ctx: RunContext) -> list[Image.Image]:
        base, prompt = base_model(ctx), "a red fox"
        draft, refine = job_view(base), job_view(base, StableDiffusionImg2ImgPipeline)
        for view in (draft, refine):  # a first-order sampler runs the steps planned (the model's PNDM runs more)
            view.scheduler = EulerDiscreteScheduler.from_config(view.scheduler.config)
        phases = Phases(ctx, {"draft": inputs.draft, "refine": inputs.refine})
        latents = phases.run("draft", lambda c: run_resumable(
            draft, c, prompt=prompt, num_inference_steps=inputs.draft, width=64, height=48, output_type="latent"))
        return phases.run("refine", lambda c: run_resumable(
            refine, c, prompt=prompt, image=latents, strength=0.5, num_inference_steps=2 * inputs.refine))


def test_a_plugin_on_diffusers_resumes_in_either_pass(kit: LocalRun) -> None:
    fields = {"draft": 3, "refine": 2}
    reference = kit.run("diffusers-two-pass", "tiny-sd", fields)
    assert reference.steps == [(step, 5) for step in range(1, 6)]
    assert reference.images[0].size == (64, 48)
    for at in (2, 3, 4):  # in the first pass, at its last step, in the second
        stopped = kit.run("diffusers-two-pass", "tiny-sd", fields, stop_at=at)
        assert stopped.checkpoint is not None
        resumed = kit.run("diffusers-two-pass", "tiny-sd", fields, resume_from=stopped.checkpoint)
        assert resumed.steps == reference.steps[at:]
        assert png_bytes(resumed.images, {}) == png_bytes(reference.images, {}), f"resumed after step {at}"


# -- progress.phase in the status, written by the worker's own runner ------------------------------------------


class Watched(TwoPass):
    """Waits, in its second pass, until the status it runs under names that pass (the runner writes it)."""

    name = "watched-two-pass"
    store: JobStore
    seen: list[Any] = []

    def run(self, inputs: TwoPassInputs, ctx: RunContext) -> list[Image.Image]:
        phases = Phases(ctx, {"draft": 2, "refine": 3})
        draft = phases.run("draft", lambda c: self.loop(c, torch.zeros(2), 2))

        def refine(c: RunContext) -> torch.Tensor:
            c.step(1, 3)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                doc = self.store.read_status(ctx.job_id)
                if doc is not None and doc.progress.step >= 3:
                    Watched.seen.append(doc.progress)
                    break
                threading.Event().wait(0.05)
            return draft

        phases.run("refine", refine)
        return [Image.new("RGB", (16, 16))]


class Stopped(TwoPass):
    """Interrupted (a spot notice) at the refine pass's first step."""

    name = "stopped-two-pass"
    interruption: Interruption

    def run(self, inputs: TwoPassInputs, ctx: RunContext) -> list[Image.Image]:
        def step(step: int, total: int, state: Any = None) -> None:
            if step == inputs.draft + 1:
                self.interruption.request("spot notice")
            report(step, total, state)

        report, ctx.report = ctx.report, step
        return super().run(inputs, ctx)


def test_the_status_names_the_pass(emulator: str, tiny_models: Path) -> None:
    suffix = uuid.uuid4().hex[:8]
    settings = Settings(aws_endpoint_url=emulator, input_bucket=f"in-{suffix}", output_bucket=f"out-{suffix}",
                        progress_interval_s=0.0)
    s3: Any = boto3.client("s3", endpoint_url=emulator, region_name=settings.region, aws_access_key_id="testing",
                           aws_secret_access_key="testing")
    for bucket in (settings.input_bucket, settings.output_bucket):
        s3.create_bucket(Bucket=bucket)
    registry = Registry()
    registry.register(Watched)
    registry.register(Stopped)
    Watched.store = store = JobStore(s3, settings)
    Stopped.interruption = interruption = Interruption(3600, exit=lambda code: None)
    runner = JobRunner(settings, store, None, registry, ModelStore(tiny_models))
    message = {"id": f"phases-{suffix}", "pipeline": Watched.name, "model": "tiny-sd", "seed": 1, "inputs": {},
               "output_prefix": "outputs", "submitted_at": "2026-01-01T00:00:00Z", "request_hash": "0" * 64}
    final = runner.run(message)
    assert final is not None and final.state is JobState.succeeded
    assert Watched.seen and Watched.seen[0].phase == "refine" and Watched.seen[0].total == 5, Watched.seen
    assert final.progress.step == final.progress.total == 5
    # An interruption in the second pass hands the job back queued, its progress naming the pass it stopped in
    # (with no progress write of its own in between: the hand-back's is the one that says so).
    quiet = settings.model_copy(update={"progress_interval_s": 3600.0})
    JobRunner(quiet, store, None, registry, ModelStore(tiny_models), interruption).run(
        {**message, "id": f"stopped-{suffix}", "pipeline": Stopped.name})
    doc = store.read_status(f"stopped-{suffix}")
    assert doc is not None and doc.state is JobState.queued, doc
    assert (doc.progress.step, doc.progress.total, doc.progress.phase) == (4, 5, "refine"), doc.progress
