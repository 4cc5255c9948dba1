"""What the built-in pipelines share: the plugin base, per-job pipeline views, LoRAs, prompts and input images.

Models are loaded once per process (``pipelines.loading``); every job then gets a *view*: a new diffusers
pipeline object holding the very same UNet, VAE and text encoder(s) plus a scheduler of its own. Schedulers and
pipeline objects keep per-run state (timesteps, solver history, guidance scale), so sharing them between jobs
would leak one job's settings into the next; the modules themselves are only read during inference (the job's
LoRA adapters are switched on them before it runs, one job at a time). A view costs about a millisecond, far
less than one denoising step.

Each task module (``txt2img``, ``img2img``, ``inpaint``, ``controlnet``) names its task; the catalog entry's family
(``pipelines.families``) names the diffusers class that runs it, encodes the prompts and picks the samplers, so
clients use the same pipeline names for every model.
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

from diffusers import DiffusionPipeline
from PIL import Image

from pipelines import attention, loras, tiling
from pipelines.controlunits import check as check_units
from pipelines.families import Family, family_of
from pipelines.ipadapters import activate as activate_ip_adapters
from pipelines.ipadapters import check as check_ip_adapters
from pipelines.ipadapters import preload as preload_ip_adapter
from pipelines.loading import base_pipeline, check_variant, controlnet_model, family, torch_dtype
from pipelines.resume import generators, resumable, run_resumable
from pipelines.schedulers import make_scheduler
from runtime.contract import GenerationInputs, for_family
from runtime.plugins import Pipeline, RunContext, SetupContext

P = TypeVar("P", bound=DiffusionPipeline)

__all__ = ["DiffusersPipeline", "Prepared", "base_pipeline", "controlnet_model", "fit", "generate", "generators",
           "job_pipeline", "torch_dtype"]


@dataclass(frozen=True)
class Prepared:
    """A job ready to run: its base model loaded with the job's LoRAs active, and inputs with the family's defaults
    filled in."""

    base: DiffusionPipeline
    inputs: Any
    family: str  # the catalog's family name (sd1, sdxl, flux...)
    kind: Family  # what runs it (``pipelines.families``)
    variant: str | None = None  # the base model's catalog variant


class DiffusersPipeline(Pipeline):
    """What the built-in pipelines share as plugins: the attention kernel is checked when the worker starts, base
    models can be preloaded (``SPOTGEN_PRELOAD``) into the store every built-in pipeline reads, and ``prepare``
    turns a job's inputs into a base model to run on."""

    #: The task this pipeline runs (a key of ``Family.tasks``): the family names the diffusers class.
    task: ClassVar[str] = ""
    #: The catalog variants of base model this task runs (None: an ordinary checkpoint).
    variants: ClassVar[frozenset[str | None]] = frozenset({None, "schnell", "turbo"})
    #: Whether every job runs the family's ControlNet class (the ``controlnet`` pipeline), not only one with units.
    always_control: ClassVar[bool] = False

    def setup(self, ctx: SetupContext) -> None:
        attention.choose(ctx.device, ctx.models.attention)  # a kernel that cannot run here stops start-up
        self.models = ctx.models

    def load(self, model_id: str, kind: str) -> bool:
        if kind == "ip_adapter":  # its file and its image encoder (the processors: per base model, at first use)
            preload_ip_adapter(self.models, model_id)
            return True
        if kind != "base":
            return False
        base_pipeline(self.models, model_id)
        return True

    def prepare(self, inputs: GenerationInputs, ctx: RunContext) -> Prepared:
        """Check what depends on the model (its family's sizes, guidance and inputs, the LoRAs' family) before
        anything is loaded, then load the base model and switch its adapters to this job's."""
        name = family(ctx.models, ctx.model)
        check_variant(ctx.models, ctx.model, self.variants, self.name)
        variant = ctx.models.entry(ctx.model, "base").variant
        inputs = for_family(inputs, name, variant=variant)
        loras.check(ctx.models, name, inputs.loras)
        check_ip_adapters(ctx.models, name, inputs.ip_adapters)
        check_units(ctx.models, ctx.model, inputs)
        kind = family_of(name, ctx.model)
        kind.task_class(self.task, variant, self.always_control or bool(inputs.controlnets))  # before any load
        base = base_pipeline(ctx.models, ctx.model)
        loras.activate(ctx.models, base, inputs.loras)
        activate_ip_adapters(ctx.models, base, inputs.ip_adapters)  # (none: the base's own attention)
        return Prepared(base, inputs, name, kind, variant)

    def view_class(self, job: Prepared, control: bool) -> type[DiffusionPipeline]:
        """The diffusers class of this task on the job's model (``Family.task_class``)."""
        return job.kind.task_class(self.task, job.variant, self.always_control or control)

    def view(self, job: Prepared, **components: Any) -> DiffusionPipeline:
        cls = self.view_class(job, control="controlnet" in components)
        return job_pipeline(cls, job.base, job.inputs, family=job.kind, **components)


def job_pipeline(cls: type[P], base: DiffusionPipeline, inputs: GenerationInputs, *, family: Family | None = None,
                 **components: Any) -> P:
    """A ``cls`` pipeline for one job on ``base``'s own modules (no copy), with a fresh scheduler for ``inputs``'
    sampler and schedule (``family``'s samplers; SD's when None); it can continue from a checkpoint
    (``pipelines.resume``).

    ``components`` adds modules ``base`` lacks, such as ``controlnet``. Construction goes through ``cls.__init__``
    rather than ``cls.from_pipe``, which also casts every module to a dtype (float32 unless told otherwise) and
    would turn the shared half-precision weights to float32 on a GPU.
    """
    if family is None:
        scheduler = make_scheduler(inputs.scheduler, inputs.schedule, base.scheduler.config)
    else:
        scheduler = family.make_scheduler(inputs, base.scheduler.config)
    config = {"requires_safety_checker": False, "add_watermarker": False,
              "force_zeros_for_empty_prompt": base.config.get("force_zeros_for_empty_prompt", True)}
    parts = {**base.components, **components, **config, "scheduler": scheduler}
    accepted = _init_parameters(cls)
    pipe = resumable(cls)(**{name: value for name, value in parts.items() if name in accepted})
    pipe.set_progress_bar_config(disable=True)
    return pipe  # type: ignore[return-value]


@functools.cache
def _init_parameters(cls: type) -> frozenset[str]:
    return frozenset(inspect.signature(cls.__init__).parameters)



def fit(image: Image.Image, width: int, height: int) -> Image.Image:
    """The input image as RGB at exactly ``width`` x ``height``, so the output has the size the job asked for
    (diffusers would keep the input's own size, rounded to a multiple of 8)."""
    image = image if image.mode == "RGB" else image.convert("RGB")
    if image.size != (width, height):
        image = image.resize((width, height), Image.Resampling.LANCZOS)
    return image


def generate(pipe: DiffusionPipeline, job: Prepared, ctx: RunContext, **task: Any) -> list[Image.Image]:
    """Run ``pipe`` with the settings every task shares plus ``task``'s own arguments, through the public
    ``run_resumable`` (from the beginning or from ``ctx.resume_from``), the prompts encoded as the family does
    (``Family.encode``), the UNet and VAE padding circularly if the job asks for seamless tiling
    (``pipelines.tiling``)."""
    inputs = job.inputs
    ctx.mark("encode")  # the first mark stands: prompt encoding is part of the encode phase
    prompts, pipe.step_conditioning = job.kind.encode(pipe, job, ctx)
    with tiling.circular(pipe, inputs.tiling):  # for this run only: the modules are every job's (tiling.py)
        return run_resumable(pipe, ctx, num_images=inputs.num_images, **prompts, num_inference_steps=inputs.steps,
                             **job.kind.call_args(pipe, inputs), **task)
