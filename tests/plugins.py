"""Pipelines used by the tests, registered in the worker with SPOTGEN_PLUGINS (as an ML engineer would)."""

from __future__ import annotations

from PIL import Image
from pydantic import BaseModel, ConfigDict, Field

from runtime.plugins import Pipeline, RetryableError, RunContext, SetupContext, StepState


class FailInputs(BaseModel):
    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(min_length=1)


class AlwaysFails(Pipeline):
    """Raises on every job: its message must end in the dead-letter queue and its status `failed`."""

    name = "always-fails"
    Inputs = FailInputs

    def run(self, inputs: FailInputs, ctx: RunContext) -> list[Image.Image]:
        raise RuntimeError(f"this pipeline always fails ({inputs.prompt})")


class SolidColor(Pipeline):
    """The smallest useful plugin: one image of one colour, with progress."""

    name = "solid"
    Inputs = FailInputs

    def setup(self, ctx: SetupContext) -> None:
        self.size = 16

    def run(self, inputs: FailInputs, ctx: RunContext) -> list[Image.Image]:
        ctx.progress(1, 1)
        shade = ctx.seed % 256
        return [Image.new("RGB", (self.size, self.size), (shade, 0, 255 - shade))]


class SlowInputs(FailInputs):
    steps: int = Field(10, ge=1, le=1000)
    delay: float = Field(0.25, ge=0, le=10)
    #: ``slow-resumable``'s delay once resumed (None: ``delay``): a job long enough to be interrupted whatever the
    #: load, whose rescue does not take as long again
    resumed_delay: float | None = Field(None, ge=0, le=10)


class SlowSteps(Pipeline):
    """Steps of ``delay`` seconds that save no checkpoints: long enough for throttled progress to show in
    the status, and for the behaviour of a pipeline that cannot continue from a checkpoint."""

    name = "slow"
    Inputs = SlowInputs

    def run(self, inputs: SlowInputs, ctx: RunContext) -> list[Image.Image]:
        import time

        for step in range(1, inputs.steps + 1):
            time.sleep(inputs.delay)
            ctx.progress(step, inputs.steps)
        return [Image.new("RGB", (8, 8))]


class SlowResumable(SlowSteps):
    """``slow`` with checkpoints: a job whose length a test sets with ``delay`` (never by how fast a CPU denoises),
    so that a signal sent at a step lands mid-job however loaded the machine is."""

    name = "slow-resumable"
    checkpoints = True

    def run(self, inputs: SlowInputs, ctx: RunContext) -> list[Image.Image]:
        import time

        start = ctx.resume_from.step if ctx.resume_from else 0
        delay = inputs.delay if ctx.resume_from is None or inputs.resumed_delay is None else inputs.resumed_delay
        for step in range(start + 1, inputs.steps + 1):
            time.sleep(delay)
            ctx.step(step, inputs.steps, lambda step=step: StepState(step=step))
        return [Image.new("RGB", (8, 8))]


class Flaky(Pipeline):
    """Asks for a retry on every delivery: after maxReceiveCount deliveries the job must end ``failed``."""

    name = "flaky"
    Inputs = FailInputs

    def run(self, inputs: FailInputs, ctx: RunContext) -> list[Image.Image]:
        raise RetryableError("the upstream service is unavailable")


class NeedsAService(Pipeline):
    """Cannot set up on this machine: the worker that registers it must refuse to start, saying why."""

    name = "needs-service"
    Inputs = FailInputs

    def setup(self, ctx: SetupContext) -> None:
        raise ConnectionError("the upscaling service at 127.0.0.1:9 is unreachable")

    def run(self, inputs: FailInputs, ctx: RunContext) -> list[Image.Image]:
        return []
