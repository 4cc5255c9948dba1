"""Pipelines used by the tests, registered in the worker with SPOTGEN_PLUGINS (as an ML engineer would)."""

from __future__ import annotations

from PIL import Image
from pydantic import BaseModel, ConfigDict, Field

from runtime.plugins import Pipeline, RunContext, SetupContext


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


class SlowSteps(Pipeline):
    """Ten steps of 0.25 s each: long enough for throttled progress to show up in the status."""

    name = "slow"
    Inputs = FailInputs

    def run(self, inputs: FailInputs, ctx: RunContext) -> list[Image.Image]:
        import time

        for step in range(1, 11):
            time.sleep(0.25)
            ctx.progress(step, 10)
        return [Image.new("RGB", (8, 8))]
