"""The pipeline plugin contract and its registry.

A pipeline is a class with a ``name``, a pydantic ``Inputs`` model (which *is* its request schema), a
``setup`` called once per worker process and a ``run`` called per job. Third-party pipelines are found
through the ``spotgen.pipelines`` entry-point group. Mistakes are reported when a pipeline is registered,
with a message that tells the author what to fix, rather than when the first job fails.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel

from runtime.contract import PIPELINE_NAME_RE

if TYPE_CHECKING:
    import torch
    from PIL.Image import Image

    from runtime.models.store import ModelStore

#: What ``RunContext.step`` calls with ``(step, total, state)``; the runtime's policy lives behind it.
StepHook = Callable[[int, int, "Callable[[], StepState] | None"], None]

ENTRY_POINT_GROUP = "spotgen.pipelines"
BUILTINS = ("pipelines.txt2img:Txt2Img", "pipelines.img2img:Img2Img", "pipelines.controlnet:ControlNet",
            "pipelines.inpaint:Inpaint", "pipelines.upscale:Upscale", "pipelines.controlnet_detect:ControlNetDetect",
            "pipelines.sdupscale:SdUpscale", "pipelines.comfyui:ComfyUI")


class CheckpointError(ValueError):
    """The checkpoint cannot be used for this job (wrong job, altered, truncated or not a checkpoint). A pipeline
    raises it when ``ctx.resume_from`` does not fit its run; the runtime then starts the job from the beginning."""


@dataclass
class StepState:
    """Everything needed to continue after ``step`` steps: tensors plus small JSON values. The runtime stores it
    as a checkpoint (``runtime.worker.checkpoint``) and hands it back in ``RunContext.resume_from``."""

    step: int
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    values: dict[str, Any] = field(default_factory=dict)


@dataclass
class SetupContext:
    """What ``setup`` gets: where to run and where models come from."""

    device: str
    models: ModelStore


class RetryableError(Exception):
    """Raise from ``run`` for a condition that may pass (a remote service is down): the job is delivered
    again after the lease runs out, up to the queue's maxReceiveCount, then ends ``failed``. Any other
    exception fails the job at once."""


class JobStopped(BaseException):  # noqa: N818 - a signal to unwind, not an error
    """Raised by ``RunContext.step`` to stop a job; a BaseException so that ``except Exception`` in a
    pipeline does not swallow it. Let it propagate."""


class JobInterrupted(JobStopped):
    """The worker is being shut down (spot notice, scale-in); the state was saved if the pipeline gave one."""


class JobCancelled(JobStopped):
    """The client cancelled the job."""


class JobSuperseded(JobStopped):
    """The job ended elsewhere (another delivery finished it): stop without writing anything."""


@dataclass
class RunContext:
    """What ``run`` gets for one job. ``step`` is cheap to call every step (the runtime throttles writes)."""

    job_id: str
    model: str
    seed: int
    device: str
    models: ModelStore
    report: StepHook = field(repr=False)
    #: The input image named by a reference, decoded in its own mode (``image`` converts it).
    fetch_image: Callable[[str], Image] = field(repr=False)
    #: The state an earlier attempt saved, when the pipeline supports checkpoints and one was found.
    resume_from: StepState | None = None
    #: Where ``mark`` reports to (the runtime's phase clock); does nothing by default.
    on_phase: Callable[[str], None] = field(default=lambda name: None, repr=False)
    #: Where ``begin_phase`` reports to (the status's ``progress.phase``); does nothing by default.
    on_begin_phase: Callable[[str | None], None] = field(default=lambda name: None, repr=False)

    def step(self, step: int, total: int, state: Callable[[], StepState] | None = None) -> None:
        """Call after each step. ``state`` builds what is needed to continue after ``step`` steps; the runtime
        calls it only when it saves a checkpoint (interruption, or every N steps). May raise ``JobStopped``."""
        self.report(step, total, state)

    def progress(self, step: int, total: int) -> None:
        """``step`` without saving: for pipelines that cannot continue from a checkpoint."""
        self.report(step, total, None)

    def mark(self, phase: str) -> None:
        """Optional: say that ``phase`` starts now, for traces and metrics: ``encode`` when the model call starts
        (after models are loaded and inputs fetched), ``denoise`` when the latents are ready. Without marks the
        runtime estimates the phases from the step timings."""
        self.on_phase(phase)

    def begin_phase(self, name: str | None) -> None:
        """Optional, for a job of several passes (hires fix, a refiner, a plugin's own): the steps reported from
        now on belong to pass ``name``, which the status shows as ``progress.phase`` so a client can say what it
        waits for. ``spotgen.diffusers.Phases`` calls it; a single-pass pipeline never needs to."""
        self.on_begin_phase(name)

    def image(self, ref: str, mode: str | None = "RGB") -> Image:
        """Load an input image named by the request (an s3:// URI the runtime already checked), as RGB; or in
        another Pillow ``mode``; or, with ``mode=None``, in its own (L, RGB or RGBA: a mask's alpha channel)."""
        image = self.fetch_image(ref)
        return image if mode is None or image.mode == mode else image.convert(mode)


class Pipeline:
    """Base class for pipelines; subclass it and set ``name`` and ``Inputs``."""

    name: ClassVar[str]
    Inputs: ClassVar[type[BaseModel]]
    #: Fields of ``Inputs`` that are image references (the submit API stores them in S3).
    image_fields: ClassVar[tuple[str, ...]] = ()
    #: The catalog kind of the job's ``model`` (``ctx.model``): a base model, or an ``upscaler`` for a pipeline
    #: that only upscales. The worker refuses a job whose model is of another kind before it runs.
    model_kind: ClassVar[str] = "base"
    #: Model names that need no catalog entry, which the worker then does not look up: the ``upscale``
    #: pipeline's ``lanczos`` and ``nearest`` (filters, not weights).
    builtin_models: ClassVar[tuple[str, ...]] = ()
    #: True if ``run`` passes ``state`` to ``ctx.step`` and continues from ``ctx.resume_from``; otherwise an
    #: interrupted job starts again from the beginning (and its status says so).
    checkpoints: ClassVar[bool] = False

    def setup(self, ctx: SetupContext) -> None:
        """Once per worker process, at start-up. Load what every job needs; an exception stops start-up."""

    def load(self, model_id: str, kind: str) -> bool:
        """Optional: load what this pipeline needs for the catalog model ``model_id`` of ``kind`` (``base``,
        ``controlnet``, ...) now, so that its first job does not wait (``SPOTGEN_PRELOAD``). Return False when
        this pipeline does not use models of that kind; the runtime then asks the next pipeline."""
        return False

    def run(self, inputs: Any, ctx: RunContext) -> list[Image]:
        """Run one job and return its images (the runtime encodes and stores them)."""
        raise NotImplementedError


class PluginError(TypeError):
    """A pipeline class breaks the plugin contract."""


def check_pipeline(cls: Any, source: str = "") -> type[Pipeline]:
    where = f" ({source})" if source else ""
    if not (inspect.isclass(cls) and issubclass(cls, Pipeline)):
        raise PluginError(f"{cls!r}{where} must be a class that subclasses runtime.plugins.Pipeline")
    label = f"{cls.__module__}.{cls.__qualname__}{where}"
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not PIPELINE_NAME_RE.match(name):
        raise PluginError(f"{label}: set the class attribute `name` to a string matching "
                          f"{PIPELINE_NAME_RE.pattern}, e.g. name = 'upscale'")
    inputs = getattr(cls, "Inputs", None)
    if not (inspect.isclass(inputs) and issubclass(inputs, BaseModel)):
        raise PluginError(f"{label}: set the class attribute `Inputs` to a pydantic BaseModel subclass "
                          "describing the request inputs")
    if cls.run is Pipeline.run:
        raise PluginError(f"{label}: implement `def run(self, inputs, ctx) -> list[PIL.Image.Image]`")
    for method, want in (("setup", "(self, ctx)"), ("run", "(self, inputs, ctx)"), ("load", "(self, model_id, kind)")):
        fn = getattr(cls, method)
        if inspect.iscoroutinefunction(fn):
            raise PluginError(f"{label}: `{method}` must be a plain method, not async")
        params = list(inspect.signature(fn).parameters)
        if len(params) != want.count(",") + 1:
            raise PluginError(f"{label}: `{method}` must take {want}, it takes ({', '.join(params)})")
    for image_field in cls.image_fields:
        if image_field not in inputs.model_fields:
            raise PluginError(f"{label}: image_fields names {image_field!r}, which `Inputs` does not have")
    return cls


def load_object(path: str) -> Any:
    module, _, attr = path.partition(":")
    if not module or not attr:
        raise PluginError(f"{path!r}: name a pipeline as 'module.path:ClassName'")
    obj: Any = importlib.import_module(module)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


class Registry:
    """Pipelines by name. Built once per worker process (no registry exists at import time)."""

    def __init__(self) -> None:
        self._classes: dict[str, type[Pipeline]] = {}

    def register(self, cls: Any, source: str = "") -> type[Pipeline]:
        cls = check_pipeline(cls, source)
        existing = self._classes.get(cls.name)
        if existing is not None and existing is not cls:
            raise PluginError(f"pipeline name {cls.name!r} is taken by {existing.__module__}."
                              f"{existing.__qualname__}; choose another name for {cls.__module__}.{cls.__qualname__}")
        self._classes[cls.name] = cls
        return cls

    def get(self, name: str) -> type[Pipeline] | None:
        return self._classes.get(name)

    def names(self) -> list[str]:
        return sorted(self._classes)

    @classmethod
    def default(cls, extra: Iterable[str] = ()) -> Registry:
        """Built-ins, then entry points of the ``spotgen.pipelines`` group, then ``extra`` 'module:Class' paths."""
        registry = cls()
        for path in BUILTINS:
            registry.register(load_object(path), path)
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            registry.register(ep.load(), f"entry point {ep.name!r}")
        for path in extra:
            registry.register(load_object(path), path)
        return registry
