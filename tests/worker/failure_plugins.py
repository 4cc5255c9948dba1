"""A pipeline for tests/worker/test_failure_policy.py, registered in its worker with SPOTGEN_PLUGINS."""

from __future__ import annotations

import os
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


class DeviceLostHere(Pipeline):
    """Loses the device (CUDA's error for a broken context) in a worker started with ``SPOTGEN_TEST_DEVICE_LOST=1``,
    and runs anywhere else: the worker that lost it must leave, and another one run the job."""

    name = "device-lost"
    Inputs = FailInputs

    def run(self, inputs: FailInputs, ctx: RunContext) -> list[Image.Image]:
        if os.environ.get("SPOTGEN_TEST_DEVICE_LOST") == "1":
            raise RuntimeError("CUDA error: an illegal memory access was encountered (a test's)")
        ctx.progress(1, 1)
        return [Image.new("RGB", (8, 8), (0, 0, 128))]
