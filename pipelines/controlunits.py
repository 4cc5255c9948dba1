"""ControlNet units on every generating pipeline (``inputs.controlnets``), as WebUI's ControlNet extension adds
them to txt2img, img2img and inpainting.

A job with units runs diffusers' ControlNet class of its task and model family (``Family.control_tasks``) instead
of the plain one, on the base model's own modules plus the units' ControlNets (each loaded once per process by
``pipelines.loading.controlnet_model``; several wrapped in the family's multi-ControlNet module made per job, which
holds the same modules, no copy). Each unit's image goes through its preprocessor (``pipelines.preprocess``) and is
resized to the size the model works at; its scale and guidance window go to diffusers as per-unit lists.

Everything that can be refused is checked before anything loads, naming the unit's field: an unknown id or one
of another kind, a ControlNet of another family than the base model (the shapes would not match) or of another
dtype (one shared ControlNet cannot be cast for each base it serves), a preprocessor that needs a detector.
txt2img's hires fix runs the units in both passes (WebUI's way: ``pipelines.hires``); SDXL's refiner is refused
with units (``inputs.controlnets``): a refiner has no ControlNet of its own, and running its pass silently without
the units, or the units on a model they were not trained for, would be worse.

Nothing here draws from the job's generators (diffusers' control image preparation is deterministic, and
``shuffle`` seeds its own generator from the job's seed), so ``pipelines.resume`` resumes a job with units
byte-identically.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from PIL import Image

from pipelines.families import family_of
from pipelines.loading import controlnet_model, torch_dtype
from pipelines.preprocess import preprocess, refuse_unknown
from runtime.contract import ContractError
from runtime.contract.inputs import ControlUnit
from runtime.models.catalog import ModelError
from runtime.models.store import ModelStore
from runtime.plugins import RunContext

FIELD = "inputs.controlnets"


def check(store: ModelStore, model_id: str, inputs: Any) -> None:
    """Refuse, naming ``inputs.controlnets.N.<field>``, a unit this job cannot run (see the module doc)."""
    units: Sequence[ControlUnit] = getattr(inputs, "controlnets", None) or ()
    if not units:
        return
    refuse_passes(inputs)
    base = store.entry(model_id, "base")
    base_dtype = torch_dtype(store.device, base.dtype)
    for index, unit in enumerate(units):
        field = f"{FIELD}.{index}"
        try:
            entry = store.entry(unit.id, "controlnet")
        except ModelError as exc:
            raise ContractError(exc.code, f"{field}.id: {exc}", f"{field}.id") from None
        if entry.family != base.family:
            raise ContractError("incompatible_controlnet", f"{field}.id: ControlNet {unit.id!r} is for "
                                f"{entry.family} models and {model_id!r} is a {base.family} model", f"{field}.id")
        dtype = torch_dtype(store.device, entry.dtype)
        if dtype != base_dtype:
            raise ContractError("incompatible_controlnet", f"{field}.id: ControlNet {unit.id!r} runs in {dtype} and "
                                f"{model_id!r} in {base_dtype}: give them the same catalog dtype", f"{field}.id")
        refuse_unknown(unit.preprocessor, f"{field}.preprocessor")


def refuse_passes(inputs: Any) -> None:
    """Refuse units with SDXL's refiner (module doc), naming ``inputs.controlnets``."""
    if inputs.controlnets and getattr(inputs, "refiner", None) is not None:
        raise ContractError("unsupported_combination", f"{FIELD}: ControlNet units do not run with the refiner "
                            f"(no ControlNet guides its pass); leave out one of the two", FIELD)


def model(store: ModelStore, ids: Sequence[str]) -> Any:
    """The ControlNet module a job's view holds: the one net, or several as their family's multi-ControlNet module
    (``check`` made sure they are all of the base model's family)."""
    nets = [controlnet_model(store, model_id) for model_id in ids]
    if len(nets) == 1:
        return nets[0]
    return family_of(store.entry(ids[0], "controlnet").family).multi_controlnet(nets)


def control_maps(fetch: Any, units: Sequence[ControlUnit], size: tuple[int, int], seed: int,
                 box: tuple[int, int, int, int] | None = None,
                 canvas: tuple[int, int] | None = None) -> list[Image.Image]:
    """Each unit's map at ``size`` (width, height): preprocessed, resized to ``canvas`` then cropped to ``box``
    when given (inpainting's only-masked crop), else resized to ``size``."""
    out = []
    for index, unit in enumerate(units):
        made = preprocess(fetch(unit.image), unit.preprocessor, unit.threshold_a, unit.threshold_b,
                          unit.resolution, seed, f"{FIELD}.{index}.preprocessor")
        if canvas is not None and made.size != canvas:
            made = made.resize(canvas, Image.Resampling.LANCZOS)
        if box is not None:
            made = made.crop(box)
        out.append(made if made.size == size else made.resize(size, Image.Resampling.LANCZOS))
    return out


def arguments(units: Sequence[ControlUnit], maps: list[Image.Image], key: str) -> dict[str, Any]:
    """diffusers' arguments for the units: the maps under ``key`` (``image`` for txt2img, else
    ``control_image``), and per-unit scales and guidance windows (plain values for one unit)."""
    one = len(units) == 1

    def each(values: list[Any]) -> Any:
        return values[0] if one else values

    return {key: each(maps), "controlnet_conditioning_scale": each([unit.scale for unit in units]),
            "control_guidance_start": each([unit.start for unit in units]),
            "control_guidance_end": each([unit.end for unit in units])}


def for_job(ctx: RunContext, inputs: Any, size: tuple[int, int], key: str = "control_image",
            box: tuple[int, int, int, int] | None = None,
            canvas: tuple[int, int] | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """A job's units as (the view's extra modules, the run's extra arguments); both empty without units."""
    units: Sequence[ControlUnit] = getattr(inputs, "controlnets", None) or ()
    if not units:
        return {}, {}
    maps = control_maps(ctx.image, units, size, ctx.seed or 0, box, canvas)
    return {"controlnet": model(ctx.models, [unit.id for unit in units])}, arguments(units, maps, key)
