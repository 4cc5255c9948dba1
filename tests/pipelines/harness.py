"""What the pipeline tests share: the cases, a ``RunContext`` that records progress as the worker sees it, and
the helpers that compare runs. The ``harness`` fixture (conftest.py) is one per module."""

from __future__ import annotations

from collections.abc import Callable, Container
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from pydantic import BaseModel

from pipelines.controlnet import ControlNet
from pipelines.img2img import Img2Img
from pipelines.inpaint import Inpaint
from pipelines.txt2img import Txt2Img
from runtime.models.store import ModelStore
from runtime.plugins import JobInterrupted, Pipeline, RunContext, StepState
from runtime.worker import checkpoint

BUCKET = "inputs"
PHOTO, EDGES = f"s3://{BUCKET}/photo.png", f"s3://{BUCKET}/edges.png"
#: The photo's mask: half its size (the same aspect ratio, so resized to it), a white square to repaint.
MASK = f"s3://{BUCKET}/mask.png"
# Non-square, so a width/height mix-up shows; few steps, so the whole file stays fast.
COMMON: dict[str, Any] = {"prompt": "a red fox in the snow", "width": 64, "height": 48, "steps": 3}
CASES: dict[str, tuple[type[Pipeline], dict[str, Any]]] = {
    "txt2img": (Txt2Img, {}),
    "img2img": (Img2Img, {"image": PHOTO, "strength": 1.0}),
    "controlnet": (ControlNet, {"control_image": EDGES, "controlnet": "tiny-controlnet"}),
    "inpaint": (Inpaint, {"image": PHOTO, "mask": MASK, "strength": 1.0}),
}
#: The tiny base model of each family, and the ControlNet that goes with it.
MODELS = ("tiny-sd", "tiny-sdxl")
CONTROLNETS = {"tiny-sd": "tiny-controlnet", "tiny-sdxl": "tiny-sdxl-controlnet", "tiny-flux": "tiny-flux-controlnet",
               "tiny-sd3": "tiny-sd3-controlnet"}


def _input_images() -> dict[str, Image.Image]:
    """Inputs of another size than the output, so resizing is exercised."""
    rng = np.random.default_rng(0)
    photo = Image.fromarray(rng.integers(0, 256, (80, 100, 3), dtype=np.uint8))
    edges = Image.new("RGB", (96, 96))
    edges.paste((255, 255, 255), (20, 20, 76, 76))
    mask = Image.new("L", (50, 40))
    mask.paste(255, (15, 10, 30, 25))
    return {PHOTO: photo, EDGES: edges, MASK: mask}


class Harness:
    """A RunContext factory that records progress, as the worker would see it."""

    def __init__(self, store: ModelStore) -> None:
        self.store = store
        self.images = _input_images()
        self.reports: list[tuple[int, int]] = []

    def context(self, seed: int = 1, model: str = "tiny-sd", resume_from: StepState | None = None,
                on_step: Any = None) -> RunContext:
        self.reports = []

        def report(step: int, total: int, state: Any) -> None:
            self.reports.append((step, total))
            if on_step is not None:
                on_step(step, state)

        return RunContext(job_id="job-1", model=model, seed=seed, device=self.store.device, models=self.store,
                          report=report, fetch_image=self.images.__getitem__, resume_from=resume_from)

    def run(self, name: str, job_seed: int = 1, resume_from: StepState | None = None, on_step: Any = None,
            model: str = "tiny-sd", **overrides: Any) -> list[Image.Image]:
        cls, fields = CASES[name]
        fields = {**fields, "controlnet": CONTROLNETS[model]} if "controlnet" in fields else fields
        inputs = parse(cls.Inputs, {**COMMON, **fields, **overrides})
        return cls().run(inputs, self.context(job_seed, model=model, resume_from=resume_from, on_step=on_step))


def parse(model: type[BaseModel], fields: dict[str, Any]) -> Any:
    return model.model_validate(fields, context={"input_bucket": BUCKET})


def pixels(images: list[Image.Image]) -> np.ndarray:
    return np.stack([np.asarray(image) for image in images])


def png(images: list[Image.Image]) -> list[bytes]:
    from runtime.worker.images import encode_png

    return [encode_png(image, {}) for image in images]


def interrupter(stop: int, saved: list[bytes]) -> Callable[[int, Any], None]:
    """An ``on_step`` that, once ``stop`` steps are done, appends their checkpoint to ``saved`` as the worker
    serializes it, then interrupts the run."""

    def on_step(step: int, state: Any) -> None:
        if step == stop:
            saved.append(checkpoint.dump(state(), "f" * 64))
            raise JobInterrupted

    return on_step


def interrupt_at(harness: Harness, name: str, stop: int, **overrides: Any) -> bytes:
    """Run until ``stop`` steps are done, then save a checkpoint as the worker does and stop."""
    saved: list[bytes] = []
    with pytest.raises(JobInterrupted):
        harness.run(name, on_step=interrupter(stop, saved), **overrides)
    return saved[0]


def run_with_snapshots(harness: Harness, name: str, stops: Container[int] | None = None,
                       **overrides: Any) -> tuple[list[Image.Image], dict[int, bytes]]:
    """One uninterrupted run that also saves the checkpoint an interruption after each step in ``stops`` (every
    step when None) would have saved, as the worker's periodic checkpoints do: one run where an interrupted run and
    a reference run were two. Each is serialized at its step, so the steps after it cannot change it."""
    saved: dict[int, bytes] = {}

    def on_step(step: int, state: Any) -> None:
        if stops is None or step in stops:
            saved[step] = checkpoint.dump(state(), "f" * 64)

    return harness.run(name, on_step=on_step, **overrides), saved


def assert_same_state(data: bytes, other: bytes) -> None:
    """The same checkpoint, whatever the order safetensors writes its metadata in (it varies from call to call)."""
    a, b = checkpoint.load(data, "f" * 64), checkpoint.load(other, "f" * 64)
    assert (a.step, a.values, sorted(a.tensors)) == (b.step, b.values, sorted(b.tensors))
    for key, tensor in a.tensors.items():
        assert tensor.dtype == b.tensors[key].dtype and tensor.stride() == b.tensors[key].stride(), key
        assert torch.equal(tensor, b.tensors[key]), key
