"""Samplers and schedules (``pipelines/schedulers.py``): one table for every pair the contract allows, each pair
runs, each schedule changes the steps, each pair resumes byte for byte, and a state that cannot be checkpointed
restarts the job instead of failing it."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import numpy as np
import pytest
import torch
from PIL import Image
from pydantic import BaseModel

from pipelines.resume import scheduler_state, seed_noise_sampler
from pipelines.schedulers import TABLE, make_scheduler
from runtime.config import Settings
from runtime.contract import SAMPLER_SCHEDULES, SCHEDULERS, SCHEDULES, ContractError, validate_inputs
from runtime.models.store import ModelStore
from runtime.plugins import CheckpointError, Pipeline, Registry, RunContext, StepState
from runtime.worker import checkpoint
from tests.pipelines.harness import Harness, assert_same_state, interrupt_at, png, run_with_snapshots

PAIRS = [(name, schedule) for name, schedules in SAMPLER_SCHEDULES.items() for schedule in schedules]
IDS = [f"{name}-{schedule}" for name, schedule in PAIRS]
#: Every pair resumes on txt2img of both families, and on every SDXL pipeline (SD 1.x's img2img and ControlNet
#: resume through the same code: tests/pipelines/test_pipelines.py).
RUNS = [("tiny-sd", "txt2img"), ("tiny-sdxl", "txt2img"), ("tiny-sdxl", "img2img"), ("tiny-sdxl", "controlnet")]
# Upstream noise: diffusers' schedulers call np.array on torch tensors (numpy 2 deprecations), thousands a run.
pytestmark = pytest.mark.filterwarnings("ignore:__array:DeprecationWarning")
# SD 1.5's scheduler config (the tiny model's): PNDM, "leading" spacing with an offset of 1.
SD15 = {"num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
        "prediction_type": "epsilon", "set_alpha_to_one": False, "skip_prk_steps": True, "steps_offset": 1,
        "timestep_spacing": "leading", "trained_betas": None}


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """The tiny models run as fast on one thread; two spin-wait for each other whenever another process holds a
    core of a two-core machine (ten times slower measured)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def harness(tiny_models: Path) -> Harness:
    return Harness(ModelStore(tiny_models, "cpu"))


def run(harness: Harness, model: str, pipeline: str = "txt2img", resume_from: StepState | None = None,
        on_step: Any = None, **overrides: Any) -> list[Image.Image]:
    return harness.run(pipeline, model=model, resume_from=resume_from, on_step=on_step, **overrides)


# -- the table ------------------------------------------------------------------------------------------
def test_the_table_has_exactly_the_contracts_pairs() -> None:
    assert set(SAMPLER_SCHEDULES) == set(SCHEDULERS)
    assert set(TABLE) == set(PAIRS)
    assert {schedule for _, schedule in PAIRS} == set(SCHEDULES)
    webui = {TABLE[pair].webui for pair in [("dpmpp_2m", "karras"), ("euler_a", "default"), ("pndm", "default"),
                                           ("dpmpp_sde", "karras"), ("dpmpp_2m_sde", "exponential")]}
    assert webui == {"DPM++ 2M Karras", "Euler a", "PLMS", "DPM++ SDE Karras", "DPM++ 2M SDE Exponential"}


@pytest.mark.parametrize(("name", "schedule"), PAIRS, ids=IDS)
def test_every_option_reaches_the_scheduler(name: str, schedule: str) -> None:
    scheduler = make_scheduler(name, schedule, SD15)
    sampler = TABLE[name, schedule]
    assert type(scheduler) is sampler.cls
    for key, value in sampler.options.items():  # diffusers drops unknown options with only a warning
        assert scheduler.config[key] == value, (key, scheduler.config.get(key))
    assert scheduler.config.beta_schedule == "scaled_linear" and scheduler.config.steps_offset == 1


def test_the_models_scheduler_config_does_not_leak_into_the_names() -> None:
    """A community model's DPM-Solver config: Karras sigmas, SDE, order 3. Only its noise process carries over."""
    model = {**SD15, "use_karras_sigmas": True, "algorithm_type": "sde-dpmsolver++", "solver_order": 3,
             "clip_sample": True, "skip_prk_steps": False, "euler_at_final": True, "prediction_type": "v_prediction"}
    dpm = make_scheduler("dpmpp_2m", "default", model).config
    assert (dpm.use_karras_sigmas, dpm.algorithm_type, dpm.solver_order, dpm.euler_at_final) == (
        False, "dpmsolver++", 2, False)
    assert make_scheduler("unipc", "default", model).config.solver_order == 2
    assert make_scheduler("euler", "exponential", model).config.use_karras_sigmas is False
    assert make_scheduler("ddim", "default", model).config.clip_sample is False
    assert make_scheduler("pndm", "default", model).config.skip_prk_steps is True
    assert {make_scheduler(name, "default", model).config.prediction_type for name in SCHEDULERS} == {"v_prediction"}
    with pytest.raises(ValueError, match="does not take schedule 'karras'"):
        make_scheduler("euler_a", "karras", model)


def _steps(name: str, schedule: str) -> torch.Tensor:
    scheduler = make_scheduler(name, schedule, SD15)
    scheduler.set_timesteps(4)
    return torch.as_tensor(getattr(scheduler, "sigmas", scheduler.timesteps), dtype=torch.float64)


@pytest.mark.parametrize(("name", "schedule"), [p for p in PAIRS if p[1] != "default"],
                         ids=[i for i, p in zip(IDS, PAIRS, strict=True) if p[1] != "default"])
def test_each_schedule_changes_the_steps(name: str, schedule: str) -> None:
    steps, default = _steps(name, schedule), _steps(name, "default")
    assert steps.shape != default.shape or not torch.allclose(steps, default), f"{name}: {schedule} = default"
    if schedule == "sgm_uniform":
        scheduler = make_scheduler(name, schedule, SD15)
        scheduler.set_timesteps(4)
        assert int(scheduler.timesteps[0]) == 999  # "trailing": the first step at the last training timestep


def test_karras_and_exponential_are_what_their_names_say() -> None:
    sigmas = {schedule: _steps("euler", schedule)[:-1] for schedule in ("default", "karras", "exponential")}
    lo, hi = float(sigmas["default"][-1]), float(sigmas["default"][0])
    ramp = torch.linspace(0, 1, 4, dtype=torch.float64)
    karras = (hi ** (1 / 7) + ramp * (lo ** (1 / 7) - hi ** (1 / 7))) ** 7  # Karras et al. (2022), rho = 7
    assert torch.allclose(sigmas["karras"], karras, rtol=1e-4)
    assert torch.allclose(sigmas["exponential"], torch.exp(torch.linspace(math.log(hi), math.log(lo), 4,
                                                                            dtype=torch.float64)), rtol=1e-4)


REFUSED = [(name, schedule) for name in SCHEDULERS for schedule in SCHEDULES
           if schedule not in SAMPLER_SCHEDULES[name]]


@pytest.mark.parametrize(("name", "schedule"), REFUSED, ids=[f"{n}-{s}" for n, s in REFUSED])
def test_the_contract_refuses_other_pairs_naming_the_schedule(name: str, schedule: str) -> None:
    with pytest.raises(ContractError) as caught:
        validate_inputs("txt2img", {"prompt": "x", "scheduler": name, "schedule": schedule}, input_bucket="in")
    assert caught.value.field == "inputs.schedule"
    assert f"sampler {name!r} does not take schedule {schedule!r}" in caught.value.message
    assert ("euler_a", "karras") in REFUSED and ("lcm", "sgm_uniform") in REFUSED


# -- every pair on a model ----------------------------------------------------------------------------------
def settings(name: str, schedule: str) -> dict[str, Any]:
    """Three steps, two images (DPM++ SDE keeps a Brownian tree per image; ancestral samplers a generator each)."""
    return {"steps": 3, "scheduler": name, "schedule": schedule, "num_images": 2}


#: Interrupted for real (first-order, second-order mid-step, SDE with a generator per image); the other pairs
#: resume from the checkpoint their reference run saved at that step, which these show to be the same bytes.
INTERRUPTED = {("euler", "default"), ("dpmpp_sde", "karras"), ("dpmpp_2m_sde", "default")}


@pytest.mark.parametrize(("model", "pipeline"), RUNS, ids=[f"{m}-{p}" for m, p in RUNS])
@pytest.mark.parametrize(("name", "schedule"), PAIRS, ids=IDS)
def test_every_pair_runs_and_resumes_byte_identically(harness: Harness, model: str, pipeline: str, name: str,
                                                      schedule: str) -> None:
    """Interrupted with solver history and, for the second-order samplers (two model calls a step, so five
    reports for three steps), in the middle of step 2."""
    stop = 3 if TABLE[name, schedule].cls.order == 2 else 2
    images, saved = run_with_snapshots(harness, pipeline, {stop}, model=model, **settings(name, schedule))
    assert [image.size for image in images] == [(64, 48)] * 2 and np.asarray(images[0]).std() > 0
    reference, data = png(images), saved[stop]
    if (name, schedule) in INTERRUPTED:
        assert_same_state(interrupt_at(harness, pipeline, stop, model=model, **settings(name, schedule)), data)
    state = checkpoint.load(data, "f" * 64)  # through bytes, as between two workers
    resumed = png(run(harness, model, pipeline, resume_from=state, **settings(name, schedule)))
    assert [step for step, _ in harness.reports] == list(range(stop + 1, harness.reports[-1][1] + 1))
    assert resumed == reference, f"{name}/{schedule} resumed at step {stop} differs"


def test_brownian_noise_is_seeded_per_image_and_unseeded_noise_is_not_saved() -> None:
    scheduler = make_scheduler("dpmpp_sde", "karras", SD15)
    scheduler.set_timesteps(3)
    scheduler.step(torch.zeros(2, 4, 2, 2), scheduler.timesteps[0], torch.ones(2, 4, 2, 2))  # builds the tree
    with pytest.raises(CheckpointError, match="noise_sampler is a BrownianTreeNoiseSampler with no noise_sampler_seed"):
        scheduler_state(scheduler)
    seed_noise_sampler(scheduler, [torch.Generator().manual_seed(7), torch.Generator().manual_seed(8)])
    assert scheduler.noise_sampler_seed == [7, 8]
    _, values = scheduler_state(scheduler)
    assert values["scheduler"]["noise_sampler"] == {"t": "value", "v": None}  # rebuilt from the seed on resume
    seed_noise_sampler(scheduler, [torch.Generator().manual_seed(9)] * 2)  # a seed once set stays
    assert scheduler.noise_sampler_seed == [7, 8]


# -- a state that cannot be checkpointed: the job restarts from step 0, saying why ------------------------------
class Uncheckpointable(Pipeline):
    """Says it checkpoints, but its state cannot be saved (as a sampler holding an object would)."""

    name = "uncheckpointable"
    checkpoints = True

    class Inputs(BaseModel):
        steps: int = 3

    starts: list[int | None] = []
    step = 0

    def run(self, inputs: Any, ctx: RunContext) -> list[Image.Image]:
        type(self).starts.append(None if ctx.resume_from is None else ctx.resume_from.step)

        def state() -> StepState:
            raise CheckpointError("its noise sampler is an object")

        for step in range(1, inputs.steps + 1):
            type(self).step = step
            ctx.step(step, inputs.steps, state)
        return [Image.new("RGB", (8, 8))]


class InterruptAt:
    """A spot notice that arrives during step ``at`` of the running job."""

    at: int | None = None

    @property
    def requested(self) -> bool:
        return self.at is not None and Uncheckpointable.step >= self.at


@contextlib.contextmanager
def moto_runner(tiny_models: Path, interruption: InterruptAt) -> Iterator[Any]:
    from moto import mock_aws

    from runtime.storage.jobstore import JobStore
    from runtime.worker.runner import JobRunner

    with mock_aws():
        settings = Settings(checkpoint_every=1)  # a periodic checkpoint that cannot be built must not fail the job
        s3 = boto3.client("s3", region_name=settings.region)
        for bucket in (settings.input_bucket, settings.output_bucket):
            s3.create_bucket(Bucket=bucket)
        sns = boto3.client("sns", region_name=settings.region)
        settings = settings.model_copy(update={"results_topic_arn": sns.create_topic(Name="results")["TopicArn"]})
        registry = Registry()
        registry.register(Uncheckpointable)
        yield JobRunner(settings, JobStore(s3, settings), sns, registry, ModelStore(tiny_models),
                        interruption)  # type: ignore[arg-type]


def test_a_state_that_cannot_be_checkpointed_restarts_the_job_with_a_note(
        tiny_models: Path, caplog: pytest.LogCaptureFixture) -> None:
    interruption = InterruptAt()
    message = {"id": "job-sde", "pipeline": "uncheckpointable", "model": "tiny-sd", "seed": 3, "inputs": {},
               "output_prefix": "outputs", "submitted_at": "2026-01-01T00:00:00Z", "request_hash": "0" * 64}
    Uncheckpointable.starts = []
    with moto_runner(tiny_models, interruption) as runner:
        interruption.at = 2
        assert runner.run(message) is None  # interrupted and handed back, not failed
        doc = runner.store.read_status("job-sde")
        assert (doc.state.value, doc.interruptions, doc.progress.step, doc.error) == ("queued", 1, 2, None)
        assert "cannot be checkpointed (its noise sampler is an object)" in caplog.text
        interruption.at = None
        final = runner.run(message)
    assert final is not None and final.state.value == "succeeded"
    assert Uncheckpointable.starts == [None, None]  # the second attempt started from the beginning
    assert final.resume is not None and (final.resume.attempt, final.resume.from_step) == (2, 0)
    assert final.resume.note == ("pipeline 'uncheckpointable' cannot be checkpointed (its noise sampler is an "
                                 "object); restarted from the beginning")
