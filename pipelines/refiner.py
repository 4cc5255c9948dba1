"""SDXL's refiner: a second SDXL model that takes over the last part of the denoising, as WebUI 1.6+ runs it and as
diffusers documents its "ensemble of expert denoisers": the base model runs the steps down to ``switch_at`` of the
schedule (``denoising_end``) and hands over its latents undecoded; the refiner, an SDXL img2img view, runs the rest
(``denoising_start``), on the same timesteps, without adding noise.

The refiner is a catalog base model of the SDXL family: a refiner checkpoint (``variant: refiner``: it has only
the second text encoder, and is conditioned on an aesthetic score) or an ordinary SDXL model. It loads once per
process like any base model, and its prompts are encoded WebUI's way by ``pipelines.prompts`` (which encodes with
whichever text encoders a model has). The job's LoRAs are the base model's: the refiner runs without adapters.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from diffusers import DiffusionPipeline, StableDiffusionXLImg2ImgPipeline

from pipelines import loras
from pipelines.common import Prepared, base_pipeline, generate, job_pipeline
from pipelines.schedulers import make_scheduler
from runtime.contract import ContractError
from runtime.models.catalog import ModelError
from runtime.models.store import ModelStore
from runtime.plugins import RunContext

FIELD = "inputs.refiner"


def check(store: ModelStore, job: Prepared) -> None:
    """Refuse, naming the field, a refiner the catalog lacks, of another family, or made for another task."""
    refiner_id = job.inputs.refiner
    try:
        entry = store.entry(refiner_id, "base")
    except ModelError as exc:
        raise ContractError(exc.code, f"refiner: {exc}", FIELD) from None
    if job.family != "sdxl" or entry.family != job.family:
        raise ContractError("incompatible_refiner", f"refiner {refiner_id!r} is a {entry.family} model; it must be "
                            f"of the base model's family ({job.family}), and the refiner takes over SDXL models only",
                            FIELD)
    if entry.variant not in (None, "refiner"):
        raise ContractError("wrong_model_variant", f"refiner {refiner_id!r} is an {entry.variant} model; a refiner "
                            "is an SDXL refiner or an ordinary SDXL model", FIELD)


def steps_split(job: Prepared) -> tuple[int, int]:
    """The steps the base model and the refiner run: diffusers' own cut of the sampler's timesteps at ``switch_at``
    (``denoising_end`` keeps those at or above it, ``denoising_start`` takes those below)."""
    inputs = job.inputs
    scheduler = make_scheduler(inputs.scheduler, inputs.schedule, job.base.scheduler.config)
    scheduler.set_timesteps(inputs.steps)
    train = scheduler.config.num_train_timesteps
    cutoff = int(round(train - inputs.switch_at * train))
    base = int((scheduler.timesteps >= cutoff).sum())
    refiner = int((scheduler.timesteps < cutoff).sum())
    if scheduler.order == 2 and refiner % 2 == 0:
        refiner += 1  # diffusers' get_timesteps makes a second-order sampler start on a full step
    return base, refiner


def model(store: ModelStore, job: Prepared) -> DiffusionPipeline:
    """The refiner, loaded once per process, without the adapters an earlier job as base model left on it."""
    refiner = base_pipeline(store, job.inputs.refiner)
    if refiner is not job.base:  # the job's own base as its refiner keeps the job's LoRAs
        loras.activate(store, refiner, [])
    return refiner


def refine(job: Prepared, ctx: RunContext, refiner: DiffusionPipeline, latents: Any,
           output_type: str = "pil") -> Any:
    """The refiner's steps on the base model's latents: the images, or latents for a pass after it."""
    config = {"requires_aesthetics_score": bool(refiner.config.get("requires_aesthetics_score", False))}
    view = job_pipeline(StableDiffusionXLImg2ImgPipeline, refiner, job.inputs, family=job.kind, **config)
    on_refiner = replace(job, base=refiner)
    return generate(view, on_refiner, ctx, image=latents, denoising_start=job.inputs.switch_at,
                    output_type=output_type)
