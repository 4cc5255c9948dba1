"""A pipeline for tests/worker/test_failure_policy.py, registered in its worker with SPOTGEN_PLUGINS."""

from __future__ import annotations

from typing import ClassVar

from PIL import Image

from runtime.plugins import Pipeline, RunContext
from tests.plugins import FailInputs


class OutOfMemoryOnce(Pipeline):
    """Runs out of device memory the first time it runs a job (in each worker process), as a CUDA allocation that
    did not fit would: the worker must free what it can and run the job again, and not fail it."""

    name = "oom-once"
    Inputs = FailInputs
    ran: ClassVar[set[str]] = set()

    def run(self, inputs: FailInputs, ctx: RunContext) -> list[Image.Image]:
        import torch

        if ctx.job_id not in self.ran:
            self.ran.add(ctx.job_id)
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (a test's)")
        ctx.progress(1, 1)
        return [Image.new("RGB", (8, 8), (0, 128, 0))]
