"""What a model family tells the built-in pipelines: the interface every module of ``pipelines.families`` fills in.

A family names the diffusers classes it runs (its base models' class, one per task, the ControlNet forms), how a
base model loads, how a job's prompts become the call's arguments, its samplers, and the call's other arguments
(guidance, size conditioning...). Defaults here are those of diffusers' own classes; a family overrides what
differs. Loading once per process, per-job views and resume are the same for every family
(``pipelines.loading``, ``pipelines.common``, ``pipelines.resume``).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from diffusers import AutoencoderKL, ControlNetModel, DiffusionPipeline
from diffusers.models.controlnets.multicontrolnet import MultiControlNetModel

from pipelines import components, schedulers
from pipelines.dtypes import torch_dtype
from runtime.contract import ContractError
from runtime.models.catalog import CatalogEntry
from runtime.models.store import ModelStore

if TYPE_CHECKING:
    from pipelines.common import Prepared
    from runtime.plugins import RunContext

StepConditioning = Callable[[int, dict[str, Any]], dict[str, Any]]


class Family:
    """One model family; ``FAMILY = MyFamily()`` in its module registers it (``pipelines.families``)."""

    #: The catalog ``family`` values this serves (the first is its name in messages).
    names: ClassVar[tuple[str, ...]] = ()
    #: The class a base model loads as, and per catalog ``variant`` another (SDXL's refiner).
    base_class: ClassVar[type[DiffusionPipeline]]
    variant_classes: ClassVar[dict[str, type[DiffusionPipeline]]] = {}
    #: The diffusers class of each task (txt2img, img2img, inpaint), of each with ControlNet units, and of a task on
    #: a variant that has its own (Flux Fill: inpaint on a fill model).
    tasks: ClassVar[dict[str, type[DiffusionPipeline]]] = {}
    control_tasks: ClassVar[dict[str, type[DiffusionPipeline]]] = {}
    variant_tasks: ClassVar[dict[tuple[str, str], type[DiffusionPipeline]]] = {}
    #: The ControlNet model class, and whether several units run through ``multi_controlnet``.
    controlnet_class: ClassVar[type[Any]] = ControlNetModel
    #: The attribute of a loaded pipeline that denoises: where compilation and channels-last apply.
    denoiser: ClassVar[str] = "unet"
    #: Whether inpaint's latent fills (``latent_noise``, ``latent_nothing``) can hook this family's inpainting.
    latent_fills: ClassVar[bool] = False

    @property
    def name(self) -> str:
        return self.names[0]

    def task_class(self, task: str, variant: str | None, control: bool = False) -> type[DiffusionPipeline]:
        """The diffusers class that runs ``task`` on a model of ``variant``, with ControlNet units if ``control``;
        a ``ContractError`` naming the field when the family has none."""
        own = self.variant_tasks.get((task, variant or ""))
        if own is not None and not control:
            return own
        cls = (self.control_tasks if control else self.tasks).get(task)
        if cls is None or own is not None:
            what = f"{task} with ControlNet units" if control else task
            field = "inputs.controlnets" if control else "model"
            raise ContractError("unsupported_combination", f"{field}: {what} does not run on {self.name} "
                                f"{variant + ' ' if variant else ''}models", field)
        return cls

    def control_key(self, task: str) -> str:
        """The call's argument that takes the ControlNet maps: SD's text-to-image class calls it ``image``."""
        return "image" if task == "txt2img" else "control_image"

    def load_options(self, store: ModelStore, entry: CatalogEntry) -> dict[str, Any]:
        """Extra arguments of ``from_pretrained``/``from_single_file`` for this family's base models."""
        return {}

    def load(self, store: ModelStore, model_id: str) -> DiffusionPipeline:
        """A base model from the catalog, on the store's device: a diffusers directory, or one file with the
        catalog's local config directory (no download is ever attempted)."""
        source, entry = store.source(model_id, "base"), store.entry(model_id, "base")
        cls = self.variant_classes.get(entry.variant or "") or self.base_class
        options: dict[str, Any] = {"dtype": torch_dtype(store.device, entry.dtype), **self.load_options(store, entry)}
        if entry.vae is not None:  # the catalog's own VAE (say, SDXL's fp16-safe one) instead of the model's
            options["vae"] = components.model(AutoencoderKL, store.source(entry.vae, "vae").path, options["dtype"])
        if source.single_file:
            pipe = cls.from_single_file(str(source.path), config=str(source.config), local_files_only=True,
                                        **options)
        else:
            parts = components.smallest_first(source.path, cls, options["dtype"], options)
            pipe = cls.from_pretrained(source.path, use_safetensors=True, **options, **parts)
        return on_device(pipe, store.device)

    def load_controlnet(self, store: ModelStore, controlnet_id: str) -> Any:
        """A ControlNet of this family from the catalog (a directory, or one file with a local config)."""
        source = store.source(controlnet_id, "controlnet")
        dtype = torch_dtype(store.device, store.entry(controlnet_id, "controlnet").dtype)
        cls = self.controlnet_class
        if source.single_file:
            model = cls.from_single_file(str(source.path), config=str(source.config), local_files_only=True,
                                         dtype=dtype)
        else:
            model = components.model(cls, source.path, dtype)
        return model.to(store.device)

    def multi_controlnet(self, nets: Sequence[Any]) -> Any:
        """Several units' ControlNets as the one module a view holds (the same modules, no copy)."""
        return MultiControlNetModel(list(nets))

    def make_scheduler(self, inputs: Any, base_config: Any) -> Any:
        """A fresh scheduler for one job: the request's sampler and schedule on the model's noise process."""
        return schedulers.make_scheduler(inputs.scheduler, inputs.schedule, base_config)

    def encode(self, pipe: DiffusionPipeline, job: Prepared,
               ctx: RunContext) -> tuple[dict[str, Any], StepConditioning | None]:
        """The prompt arguments of the call (text, or embeddings), and what swaps them between steps (prompt
        editing) or None."""
        raise NotImplementedError

    def call_args(self, pipe: DiffusionPipeline, inputs: Any) -> dict[str, Any]:
        """The call's other arguments that depend on the family: guidance, conditioning."""
        return {"guidance_scale": inputs.guidance_scale}


def on_device(pipe: DiffusionPipeline, device: str) -> DiffusionPipeline:
    """``pipe``, just loaded, moved to ``device``. A load without a device map leaves every module on the CPU, so
    on the CPU there is nothing to move, and ``pipe.to`` would only walk every module of every component looking
    for hooks (about 15 ms a load)."""
    return pipe if torch.device(device).type == "cpu" else pipe.to(device)


def takes(pipe: DiffusionPipeline, argument: str) -> bool:
    """Whether ``pipe``'s call takes ``argument`` (diffusers' classes of one task differ between families)."""
    return argument in _call_parameters(type(pipe))


def require(pipe: DiffusionPipeline, args: dict[str, Any], field: str, *names: str) -> dict[str, Any]:
    """``args``, or a ``ContractError`` naming ``field`` when ``pipe``'s class does not take one of ``names`` (an
    input the request set, which the class would otherwise silently drop)."""
    missing = [name for name in names if not takes(pipe, name)]
    if missing:
        raise ContractError("unsupported_combination", f"{field}: diffusers' {type(pipe).__name__} does not take "
                            f"{', '.join(missing)}; this input does not run on this task", field)
    return args


@functools.cache
def _call_parameters(cls: type) -> frozenset[str]:
    return frozenset(inspect.signature(cls.__call__).parameters)
