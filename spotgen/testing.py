"""The contract-test kit for pipelines: what a worker relies on, checked on the tiny models in one test file.

Subclass ``PipelineContract`` in a test module, say which pipeline and which inputs, and pytest runs every check::

    from spotgen.testing import PipelineContract
    from upscale_lite.pipeline import UpscaleLite

    class TestUpscaleLite(PipelineContract):
        pipeline = UpscaleLite
        inputs = {"prompt": "a red fox", "width": 64, "height": 64, "steps": 4}
        images = {"image": "gradient"}        # a test image, given to the input ``image``

The checks (also callable one by one, ``check_*``): it registers cleanly, its ``Inputs`` schema round-trips
through JSON, it runs on the tiny models, the same seed gives the same bytes, progress is monotonic and reaches its
total, a cancel stops it within one step, interrupted runs resume byte-identical (``checkpoints = True``), and the
images are valid and sized as asked. Each failure says what to fix. The tiny models are built once into a cache
directory (``SPOTGEN_KIT_MODELS``, default ``~/.cache/spotgen/tiny-models``), random weights in diffusers'
format loaded through the real loading code; ``spotgen's`` own built-ins run this kit in ``make test``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import pytest
from PIL import Image
from pydantic import BaseModel

from runtime.kit.local import LocalRun, Outcome, local_ref, png_bytes
from runtime.plugins import Pipeline, PluginError, Registry


class ContractFailure(AssertionError):
    """A check failed; the message says what to fix in the pipeline."""


def kit_models(cache: Path | None = None) -> Path:
    """The tiny models' directory, built on first use (safe when several processes do it at once)."""
    from runtime.models.tiny import build_tiny_models

    path = cache or Path(os.environ.get("SPOTGEN_KIT_MODELS", Path.home() / ".cache" / "spotgen" / "tiny-models"))
    build_tiny_models(path)
    return path


def sample_image(kind: str, size: tuple[int, int] = (80, 64)) -> Image.Image:
    """An input image for a check: ``gradient`` (smooth, for img2img-like inputs) or ``edges`` (a white square
    on black, for control maps). Another size than the output's, so that resizing is exercised."""
    width, height = size
    if kind == "edges":
        image = Image.new("RGB", size)
        image.paste((255, 255, 255), (width // 4, height // 4, 3 * width // 4, 3 * height // 4))
        return image
    if kind == "gradient":
        return Image.frombytes("RGB", size, _gradient(size))
    raise ValueError(f"test image kind is 'gradient' or 'edges', not {kind!r}")


def _gradient(size: tuple[int, int]) -> bytes:
    width, height = size
    return bytes(value for y in range(height) for x in range(width)
                 for value in (x * 255 // max(1, width - 1), y * 255 // max(1, height - 1), 128))


def _fail(pipeline: type[Pipeline], what: str, fix: str) -> ContractFailure:
    return ContractFailure(f"{pipeline.__module__}.{pipeline.__qualname__}: {what}. {fix}")


# -- the checks ------------------------------------------------------------------------------------------------


def check_registers(pipeline: type[Pipeline]) -> None:
    try:
        Registry().register(pipeline, "the contract kit")
    except PluginError as exc:
        raise ContractFailure(f"it does not register: {exc}") from None


def check_schema_round_trips(pipeline: type[Pipeline], inputs: Mapping[str, Any]) -> None:
    """The API exports ``Inputs``' JSON Schema and validates requests with it, and jobs travel as JSON."""
    try:
        schema = json.loads(json.dumps(pipeline.Inputs.model_json_schema()))
    except (TypeError, ValueError) as exc:
        raise _fail(pipeline, f"Inputs has no JSON Schema ({exc})", "Give every field a JSON type: no bytes, "
                    "arbitrary classes or callables") from None
    if schema.get("type") != "object":
        raise _fail(pipeline, "Inputs' schema is not an object", "Make Inputs a pydantic BaseModel of named fields")
    model = _validated(pipeline, inputs)
    again = pipeline.Inputs.model_validate_json(model.model_dump_json(), context={"input_bucket": "local"})
    if again != model:
        raise _fail(pipeline, "Inputs changes when it goes through JSON and back",
                    "Avoid fields that JSON cannot carry exactly (sets, tuples of mixed types, non-finite floats)")


def check_runs(pipeline: type[Pipeline], outcome: Outcome, inputs: Mapping[str, Any],
               size: tuple[int, int] | None = None) -> None:
    """Valid images, sized as asked: ``size`` when given, else the ``width`` and ``height`` inputs (when the
    pipeline has them)."""
    if not outcome.images:
        raise _fail(pipeline, "run returned no images", "Return a non-empty list of PIL images")
    model = _validated(pipeline, inputs)
    want = size or (getattr(model, "width", None), getattr(model, "height", None))
    for index, image in enumerate(outcome.images):
        if not isinstance(image, Image.Image):
            raise _fail(pipeline, f"run returned a {type(image).__name__} as image {index}", "Return PIL images")
        if image.mode not in ("RGB", "RGBA", "L"):
            raise _fail(pipeline, f"image {index} has mode {image.mode}", "Convert it to RGB")
        if None not in want and image.size != want:
            raise _fail(pipeline, f"image {index} is {image.size[0]}x{image.size[1]}, the inputs ask for "
                        f"{want[0]}x{want[1]}", "Resize the output to width x height")
    png_bytes(outcome.images, {})


def check_same_seed_same_bytes(pipeline: type[Pipeline], first: Outcome, second: Outcome) -> None:
    if png_bytes(first.images, {}) != png_bytes(second.images, {}):
        raise _fail(pipeline, "two runs with the same seed gave different images",
                    "Draw every random number from generators seeded with ctx.seed (torch.Generator('cpu')."
                    "manual_seed(ctx.seed + i)), not from global state")


def check_progress(pipeline: type[Pipeline], outcome: Outcome) -> None:
    steps = outcome.steps
    if not steps:
        raise _fail(pipeline, "run reported no progress", "Call ctx.step (or ctx.progress) after each step")
    totals = {total for _, total in steps}
    if len(totals) != 1:
        raise _fail(pipeline, f"the total changed during the run ({sorted(totals)})", "Report one total per run")
    done = [step for step, _ in steps]
    if done != sorted(done) or len(set(done)) != len(done):
        raise _fail(pipeline, f"progress went {done}", "Report each step once, in order")
    if done[-1] != steps[-1][1]:
        raise _fail(pipeline, f"progress ended at {done[-1]} of {steps[-1][1]}", "Report the last step too")
    passes = [name for i, name in enumerate(outcome.phases) if i == 0 or name != outcome.phases[i - 1]]
    if len(set(passes)) != len(passes):
        raise _fail(pipeline, f"the steps' passes went {' -> '.join(map(str, passes))}",
                    "Name each pass once, when it starts (spotgen.diffusers.Phases does)")


def check_cancel(pipeline: type[Pipeline], cancelled: Outcome, at: int) -> None:
    after = [step for step, _ in cancelled.steps if step > at]
    if after or cancelled.images:
        went = f"step {after[-1]}" if after else "the end"
        raise _fail(pipeline, f"a cancel after step {at} did not stop the run (it went on to {went})",
                    "Let the exception ctx.step raises propagate: do not catch BaseException or JobStopped")


def check_resume(kit: LocalRun, case: type[PipelineContract], reference: Outcome, at: int) -> None:
    pipeline = case.pipeline
    stopped = case.run(kit, stop_at=at)
    if stopped.checkpoint is None:
        raise _fail(pipeline, f"checkpoints = True, but step {at} was reported without a state",
                    "Pass state= to ctx.step: a function returning StepState(step, tensors, values)")
    resumed = case.run(kit, resume_from=stopped.checkpoint)
    if resumed.steps and resumed.steps[0][0] != at + 1:
        raise _fail(pipeline, f"resumed from step {at}, the run reported step {resumed.steps[0][0]} first",
                    "Start from ctx.resume_from.step: do not repeat the steps already done")
    if png_bytes(resumed.images, {}) != png_bytes(reference.images, {}):
        raise _fail(pipeline, f"interrupted after step {at} and resumed, the images differ from an uninterrupted run",
                    "Save everything the next step reads (latents, scheduler state, generator states) in StepState, "
                    "or build the pipeline on spotgen.diffusers, which does")


def _validated(pipeline: type[Pipeline], inputs: Mapping[str, Any], images: Mapping[str, Any] = ()) -> BaseModel:
    fields = {**inputs, **{key: local_ref(key) for key in dict(images)}}
    try:
        return pipeline.Inputs.model_validate(fields, context={"input_bucket": "local"})
    except Exception as exc:
        raise _fail(pipeline, f"the test's inputs do not validate ({exc})", "Fix the test's `inputs`") from None


# -- the pytest base class ---------------------------------------------------------------------------------------


class PipelineContract:
    """Subclass it in a test module (see the module docstring); each ``test_*`` is one check."""

    pipeline: ClassVar[type[Pipeline]]
    inputs: ClassVar[dict[str, Any]] = {}
    #: Input images by field: a test image kind (``gradient``, ``edges``) or a PIL image.
    images: ClassVar[dict[str, Any]] = {}
    model: ClassVar[str] = "tiny-sd"
    seed: ClassVar[int] = 7
    #: Steps after which the resume check interrupts (default: the first and the middle one).
    resume_at: ClassVar[tuple[int, ...]] = ()
    #: The images' size (width, height) when the ``width`` and ``height`` inputs are not it (a second pass at
    #: another size, an upscale).
    output_size: ClassVar[tuple[int, int] | None] = None

    @pytest.fixture(scope="class")
    @classmethod
    def spotgen_models(cls) -> Path:
        """The models directory: the kit's tiny models; override the fixture to use others."""
        return kit_models()

    @pytest.fixture(scope="class")
    @classmethod
    def kit(cls, spotgen_models: Path) -> LocalRun:
        registry = Registry()
        registry.register(cls.pipeline, "the contract kit")
        return LocalRun(spotgen_models, registry=registry)

    @pytest.fixture(scope="class")
    @classmethod
    def reference(cls, kit: LocalRun) -> Outcome:
        return cls.run(kit)

    @classmethod
    def run(cls, kit: LocalRun, **options: Any) -> Outcome:
        images = {key: sample_image(value) if isinstance(value, str) else value for key, value in cls.images.items()}
        return kit.run(cls.pipeline.name, cls.model, cls.inputs, seed=cls.seed, images=images, **options)

    @classmethod
    def fields(cls) -> dict[str, Any]:
        """The inputs with each test image as its local reference, as the pipeline's ``Inputs`` sees them."""
        return {**cls.inputs, **{key: local_ref(key) for key in cls.images}}

    def test_registers_cleanly(self) -> None:
        check_registers(self.pipeline)

    def test_inputs_schema_round_trips_through_json(self) -> None:
        check_schema_round_trips(self.pipeline, self.fields())

    def test_runs_on_the_tiny_models_with_valid_images_sized_as_asked(self, kit: LocalRun, reference: Outcome) -> None:
        check_runs(self.pipeline, reference, self.fields(), self.output_size)

    def test_same_seed_gives_the_same_bytes(self, kit: LocalRun, reference: Outcome) -> None:
        check_same_seed_same_bytes(self.pipeline, reference, self.run(kit))

    def test_progress_is_monotonic_and_reaches_the_total(self, reference: Outcome) -> None:
        check_progress(self.pipeline, reference)

    def test_a_cancel_stops_it_within_one_step(self, kit: LocalRun) -> None:
        check_cancel(self.pipeline, self.run(kit, cancel_at=1), 1)

    def test_interrupted_runs_resume_byte_identical(self, kit: LocalRun, reference: Outcome) -> None:
        if not self.pipeline.checkpoints:
            pytest.skip(f"{self.pipeline.name} does not save checkpoints (checkpoints = False)")
        total = reference.steps[-1][1] if reference.steps else 0
        for at in self.resume_at or sorted({1, total // 2} - {0, total}):
            check_resume(kit, type(self), reference, at)
