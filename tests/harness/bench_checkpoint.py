"""`make bench`'s cost of an interruption (tests/harness/benchmark.py): checkpoint size, the time to serialize and
store it, and the time from the start of a resumed run to its first step against a fresh run's, in steps."""

from __future__ import annotations

import contextlib
import time
from typing import Any

from runtime.models.store import ModelStore


def checkpoint_figures(store: ModelStore, jobs: Any, stop: int = 15) -> dict[str, float]:
    """Interrupt a 512 px, 30-step dpmpp_2m job at ``stop`` as the worker does, store the checkpoint in the
    emulator's S3, then resume from it; compare with the fresh run's step time and start-up."""
    from pipelines.txt2img import Txt2Img
    from runtime.contract import Txt2ImgInputs
    from runtime.plugins import JobInterrupted, RunContext
    from runtime.worker import checkpoint

    inputs = Txt2ImgInputs(prompt="a red fox", width=512, height=512, steps=30, scheduler="dpmpp_2m")
    marks: list[float] = []
    out: dict[str, float] = {}

    def on_step(step: int, total: int, state: Any) -> None:
        marks.append(time.perf_counter())
        if step == stop and "write_s" not in out:
            began = time.perf_counter()
            data = checkpoint.dump(state(), "f" * 64)
            serialized = time.perf_counter()
            jobs.put_checkpoint("bench", data)
            out.update(size_kib=len(data) / 1024, serialize_s=serialized - began,
                       write_s=time.perf_counter() - began)
            raise JobInterrupted

    def ctx(resume: Any = None) -> RunContext:
        return RunContext(job_id="bench", model="tiny-sd", seed=1, device="cpu", models=store, report=on_step,
                          fetch_image=lambda ref: None, resume_from=resume)

    with contextlib.suppress(JobInterrupted):
        Txt2Img().run(inputs, ctx())  # warm-up
    out.clear()
    marks.clear()
    began = time.perf_counter()
    with contextlib.suppress(JobInterrupted):
        Txt2Img().run(inputs, ctx())
    step_s = (marks[-1] - marks[0]) / (len(marks) - 1)
    fresh_first_s = marks[0] - began
    marks.clear()
    began = time.perf_counter()
    state = checkpoint.load(jobs.get_checkpoint("bench", checkpoint.MAX_CHECKPOINT_BYTES), "f" * 64)
    Txt2Img().run(inputs, ctx(state))
    resumed_first_s = marks[0] - began
    return {"width": inputs.width, "height": inputs.height, "steps": inputs.steps, "scheduler": inputs.scheduler,
            "stop": stop, "step_s": step_s, "checkpoint_kib": out["size_kib"], "checkpoint_write_s": out["write_s"],
            "checkpoint_write_steps": out["write_s"] / step_s, "serialize_s": out["serialize_s"],
            "fresh_start_to_first_step_s": fresh_first_s, "resume_to_first_step_s": resumed_first_s,
            "resume_overhead_steps": (resumed_first_s - fresh_first_s) / step_s}
