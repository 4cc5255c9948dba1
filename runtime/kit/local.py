"""One pipeline run in this process, the way a worker runs it, without the queue, the API or AWS.

The registry is the worker's (built-ins, entry points, ``module:Class`` paths), the model store is the worker's
(``runtime.models.store``), inputs are validated with the pipeline's own ``Inputs``, each step goes through the
same ``RunContext.step`` hook, checkpoints go through the worker's serialization (``runtime.worker.checkpoint``)
and images are encoded as the worker encodes them (``runtime.worker.images.encode_png``). So what passes here
behaves the same on a worker: ``spotgen run`` and the contract kit (``spotgen.testing``) are built on it.

Input images are the caller's own files: each is given a reference ``s3://local/<field>`` that only this run
resolves, and the pipeline reads it through ``ctx.image`` as it would read one from the input bucket.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image
from pydantic import BaseModel

from runtime.contract.outputcheck import output_options
from runtime.models.store import ModelStore
from runtime.plugins import (
    JobCancelled,
    JobInterrupted,
    JobStopped,
    Pipeline,
    Registry,
    RunContext,
    SetupContext,
    StepState,
)
from runtime.worker import checkpoint
from runtime.worker.images import encode_output, encode_png

#: The bucket name local image references use (``s3://local/<field>``).
LOCAL_BUCKET = "local"
#: Fingerprint local checkpoints are made for: one run's, checked like a worker checks a job's.
_FINGERPRINT = "0" * 64

#: ``on_step(step, total)``: after each step the pipeline reports (a progress bar, a test's record).
StepListener = Callable[[int, int], None]


@dataclass
class Outcome:
    """What one run gave: the images, the steps as reported, and the checkpoint taken, if it was stopped."""

    images: list[Image.Image] = field(default_factory=list)
    steps: list[tuple[int, int]] = field(default_factory=list)
    checkpoint: bytes | None = None
    #: The pass each of ``steps`` was reported in (``RunContext.begin_phase``; None for a job of one pass).
    phases: list[str | None] = field(default_factory=list)


class LocalRun:
    """Runs pipelines of one registry on one model store; each pipeline is set up once, as on a worker."""

    def __init__(self, models_dir: Path, device: str = "cpu", plugins: Iterable[str] = (),
                 registry: Registry | None = None) -> None:
        self.store = ModelStore(Path(models_dir), device)
        self.registry = registry or Registry.default(plugins)
        self._instances: dict[str, Pipeline] = {}

    def pipeline(self, name: str) -> Pipeline:
        """The set-up instance of ``name``; ``KeyError`` naming the registered ones when there is none."""
        if name not in self._instances:
            cls = self.registry.get(name)
            if cls is None:
                raise KeyError(f"no pipeline {name!r}; registered: {', '.join(self.registry.names())}")
            instance = cls()
            instance.setup(SetupContext(device=self.store.device, models=self.store))
            self._instances[name] = instance
        return self._instances[name]

    def inputs(self, name: str, fields: Mapping[str, Any], images: Mapping[str, Image.Image] = ()) -> BaseModel:
        """``fields`` validated with the pipeline's ``Inputs``; each of ``images`` given as its local reference."""
        cls = self.registry.get(name)
        if cls is None:
            raise KeyError(f"no pipeline {name!r}; registered: {', '.join(self.registry.names())}")
        filled = copy.deepcopy(dict(fields))
        for key in dict(images):
            _place(filled, key, local_ref(key))
        return cls.Inputs.model_validate(filled, context={"input_bucket": LOCAL_BUCKET})

    def run(self, name: str, model: str, fields: Mapping[str, Any], *, seed: int = 0,
            images: Mapping[str, Image.Image] | None = None, resume_from: bytes | None = None,
            stop_at: int | None = None, on_step: StepListener | None = None,
            cancel_at: int | None = None) -> Outcome:
        """Run ``name`` once. ``resume_from``: a checkpoint of ``stop_at`` of an earlier run of the same job.
        ``stop_at``: save a checkpoint after that step and stop (an interruption, as a worker's SIGTERM).
        ``cancel_at``: stop after that step without saving (a client's cancel). A stopped run has no images."""
        images = dict(images or {})
        pipeline = self.pipeline(name)
        inputs = self.inputs(name, fields, images)
        outcome = Outcome()
        state = checkpoint.load(resume_from, _FINGERPRINT) if resume_from is not None else None
        phase: list[str | None] = [None]

        def report(step: int, total: int, build: Callable[[], StepState] | None) -> None:
            outcome.steps.append((step, total))
            outcome.phases.append(phase[0])
            if on_step is not None:
                on_step(step, total)
            if stop_at is not None and step >= stop_at:
                if build is not None:
                    outcome.checkpoint = checkpoint.dump(build(), _FINGERPRINT)
                raise JobInterrupted
            if cancel_at is not None and step >= cancel_at:
                raise JobCancelled

        ctx = RunContext(job_id="local", model=model, seed=seed, device=self.store.device, models=self.store,
                         report=report, fetch_image=lambda ref: _image(images, ref), resume_from=state,
                         on_begin_phase=lambda name: phase.__setitem__(0, name))
        try:
            outcome.images = list(pipeline.run(inputs, ctx))
        except JobStopped:
            if stop_at is None and cancel_at is None:
                raise
        return outcome


def _place(fields: dict[str, Any], path: str, ref: str) -> None:
    """Put ``ref`` at ``path``: a top-level field (``image``) or one inside a list of the inputs, dotted
    (``controlnets.0.image``: the first unit, which ``fields`` must already have)."""
    *outer, leaf = path.split(".")
    node: Any = fields
    for part in outer:
        try:
            node = node[int(part)] if isinstance(node, list) else node[part]
        except (KeyError, IndexError, ValueError, TypeError):
            raise ValueError(f"image {path!r}: the inputs have no {'.'.join(outer)} to put it in; give it with "
                             f"--input (e.g. controlnets=[{{...}}]) first") from None
    if not isinstance(node, dict):
        raise ValueError(f"image {path!r}: {'.'.join(outer)} is not an object of the inputs")
    node[leaf] = ref


def local_ref(field_name: str) -> str:
    return f"s3://{LOCAL_BUCKET}/{field_name}"


def _image(images: Mapping[str, Image.Image], ref: str) -> Image.Image:
    for key, image in images.items():
        if ref == local_ref(key):
            return image if image.mode in ("L", "RGB", "RGBA") else image.convert("RGBA")
    raise KeyError(f"{ref!r} is not an image of this run; give it with --image (its fields: {', '.join(images)})")


def png_bytes(images: Iterable[Image.Image], parameters: Mapping[str, Any]) -> list[bytes]:
    """The images as the worker stores them: PNG with the job's parameters and the image's index embedded."""
    return [encode_png(image, {**parameters, "index": index}) for index, image in enumerate(images)]


def output_bytes(images: Iterable[Image.Image], parameters: Mapping[str, Any],
                 inputs: Mapping[str, Any]) -> tuple[list[bytes], str]:
    """The images as the worker stores them in the format ``inputs`` asks for (``format``, ``quality``,
    ``lossless``; PNG by default), with the parameters and index embedded; and the files' extension."""
    options = output_options(inputs)
    return [encode_output(image, {**parameters, "index": index}, options)
            for index, image in enumerate(images)], options.extension


def load_image(path: Path) -> Image.Image:
    """A local input image, decoded with the worker's limits."""
    from runtime.worker.images import decode_image

    return decode_image(Path(path).read_bytes())

