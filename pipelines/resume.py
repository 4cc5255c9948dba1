"""Stopping a diffusers pipeline at a step boundary and continuing it later, bit for bit.

After a step, the state of a Stable Diffusion run is: the latents, the scheduler's mutable attributes (the
step index, and for multistep solvers the history of model outputs: DPM-Solver++ ``model_outputs``, UniPC
``last_sample``, PNDM ``ets``, LMS ``derivatives``...) and the random generators (ancestral samplers draw
noise every step). The prompt embeddings, timesteps, ControlNet image and SDXL's extra conditioning (the
pooled ``add_text_embeds`` and the size/crop ``add_time_ids``) are recomputed from the inputs,
which gives the same values. Everything else in the scheduler is saved as well, so no per-scheduler list
has to be kept up to date.

One attribute is an object rather than data: DPM++ SDE (``DPMSolverSDEScheduler``) draws its noise from a
torchsde Brownian tree in ``noise_sampler``, built at the first step from ``noise_sampler_seed`` (a random
seed when that is None, so not even an uninterrupted run would repeat). ``Resumable`` seeds it from the
job's generators (image i's tree from seed + i, like SD WebUI). diffusers builds it as a "halfway" (dyadic)
tree, which torchsde documents as deterministic in its seed alone (not in the queries made before), so the
checkpoint saves ``None`` and the scheduler builds the same tree again after a resume. An unseeded tree
cannot be saved: ``scheduler_state`` raises ``CheckpointError`` and the runtime restarts the job from step 0.

Continuing uses diffusers' own ``__call__`` unchanged: ``Resumable`` replaces ``prepare_latents`` (which every
diffusers pipeline calls once, with the generators) to put the saved latents back, puts the scheduler's and the
generators' states back when the loop first reads ``interrupt`` (the flow pipelines set their timesteps after
preparing the latents), and reports the steps already done as interrupted (diffusers skips an interrupted step
with ``continue``), so the loop goes on at step k with exactly the values an uninterrupted run has there. The
same holds for every family's classes: SD, SDXL, Flux and SD 3.5.
"""

from __future__ import annotations

import functools
import inspect
import re
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from diffusers import DiffusionPipeline

from runtime.plugins import CheckpointError, RunContext, StepState

_NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}$|^_[a-z][a-z0-9_]{0,63}$")
_SKIP = {"_internal_dict", "config"}
_SCALARS = (bool, int, float, str, type(None))
#: Attributes a scheduler builds again from another one (its seed) when they are None: saved as None.
_REBUILT = {"noise_sampler": "noise_sampler_seed"}


def scheduler_state(scheduler: Any, prefix: str = "scheduler") -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The scheduler's attributes as tensors plus a JSON description of where each goes."""
    tensors: dict[str, torch.Tensor] = {}
    layout: dict[str, Any] = {}
    for name, value in vars(scheduler).items():
        if name in _SKIP:
            continue
        if not _NAME.match(name):
            raise CheckpointError(f"scheduler attribute {name!r} cannot be saved")
        if name in _REBUILT and value is not None:
            if getattr(scheduler, _REBUILT[name], None) is None:
                raise CheckpointError(f"{type(scheduler).__name__}.{name} is a {type(value).__name__} with no "
                                      f"{_REBUILT[name]}, so a resumed run could not draw the same noise")
            value = None
        layout[name] = _encode(f"{prefix}.{name}", value, tensors)
    return tensors, {prefix: layout}


def _encode(key: str, value: Any, tensors: dict[str, torch.Tensor]) -> dict[str, Any]:
    if isinstance(value, torch.Tensor):
        tensors[key] = value
        return {"t": "tensor"}
    if isinstance(value, np.ndarray):
        tensors[key] = torch.from_numpy(np.ascontiguousarray(value))
        return {"t": "ndarray"}
    if isinstance(value, _SCALARS):
        return {"t": "value", "v": value}
    if isinstance(value, list | tuple):
        items = [_encode(f"{key}.{i}", item, tensors) for i, item in enumerate(value)]
        return {"t": "list" if isinstance(value, list) else "tuple", "items": items}
    raise CheckpointError(f"{key} holds a {type(value).__name__}, which a checkpoint cannot hold")


def _decode(key: str, spec: Any, tensors: dict[str, torch.Tensor], device: torch.device) -> Any:
    kind = spec.get("t") if isinstance(spec, dict) else None
    if kind in ("tensor", "ndarray"):
        if key not in tensors:
            raise CheckpointError(f"the checkpoint lacks tensor {key}")
        value = tensors[key]
        return value.numpy() if kind == "ndarray" else value.to(device)
    if kind == "value" and isinstance(spec.get("v"), _SCALARS):
        return spec["v"]
    if kind in ("list", "tuple") and isinstance(spec.get("items"), list):
        items = [_decode(f"{key}.{i}", item, tensors, device) for i, item in enumerate(spec["items"])]
        return items if kind == "list" else tuple(items)
    raise CheckpointError(f"the checkpoint describes {key} in a way this code does not read")


def restore_scheduler(scheduler: Any, state: StepState, device: torch.device, prefix: str = "scheduler") -> None:
    """Put the saved attributes back on a scheduler whose ``set_timesteps`` has just run."""
    layout = state.values.get(prefix)
    if not isinstance(layout, dict):
        raise CheckpointError("the checkpoint has no scheduler state")
    current = vars(scheduler)
    restored = {}
    for name, spec in layout.items():
        if name in _SKIP or not isinstance(name, str) or not _NAME.match(name):
            raise CheckpointError(f"the checkpoint names scheduler attribute {name!r}")
        old = current.get(name)
        target = old.device if isinstance(old, torch.Tensor) else device
        restored[name] = _decode(f"{prefix}.{name}", spec, state.tensors, target)
    current.update(restored)


def seed_noise_sampler(scheduler: Any, generator: Any) -> None:
    """Seed a scheduler's own noise sampler (DPM++ SDE's Brownian tree) from the run's generators, one seed
    per image, unless it has a seed already: the same job seed then gives the same noise, before and after a
    resume."""
    if getattr(scheduler, "noise_sampler_seed", 0) is not None:
        return
    if isinstance(generator, torch.Generator):
        scheduler.noise_sampler_seed = generator.initial_seed()
    elif isinstance(generator, list | tuple) and generator and all(isinstance(g, torch.Generator) for g in generator):
        scheduler.noise_sampler_seed = [g.initial_seed() for g in generator]


def generator_states(generators: list[torch.Generator]) -> dict[str, torch.Tensor]:
    return {f"generator.{i}": g.get_state() for i, g in enumerate(generators)}


def restore_generators(generators: tuple[torch.Generator, ...], state: StepState) -> None:
    for i, g in enumerate(generators):
        saved = state.tensors.get(f"generator.{i}")
        if saved is None or saved.dtype != torch.uint8 or saved.shape != g.get_state().shape:
            raise CheckpointError(f"the checkpoint has no valid state for random generator {i}")
        g.set_state(saved)


class Resumable:
    """Mixin for a diffusers SD pipeline class: continue a run from a ``StepState`` (see module docstring)."""

    _resume: StepState | None = None
    _resume_generators: tuple[torch.Generator, ...] = ()
    _skip_steps = 0
    _restore_pending = False
    #: Told "denoise" once the latents are ready: the runtime times the encode and denoise phases with it.
    phase_hook: Callable[[str], None] | None = None
    #: Given the loop index of the next step and the loop's tensors, the tensors to condition it with (prompt
    #: editing, ``pipelines.promptschedule``): returned from ``callback_on_step_end`` after each step.
    step_conditioning: Callable[[int, dict[str, Any]], dict[str, Any]] | None = None

    @property
    def _execution_device(self) -> torch.device:
        # diffusers' own looks through every submodule of every component for offloading hooks, and reads the
        # class's signature, on each call: diffusers calls it a few times a job and the prompt encoders once per
        # prompt (a tenth of the tiny models' CPU time in the pipeline tests went there, measured with cProfile).
        # A view serves one job, and its modules neither move nor gain hooks during it: asked once per view.
        device = self.__dict__.get("_spotgen_execution_device")
        if device is None:
            device = self.__dict__["_spotgen_execution_device"] = super()._execution_device  # type: ignore[misc]
        return device

    def resume_from(self, state: StepState, generators: list[torch.Generator]) -> None:
        self._resume, self._resume_generators, self._skip_steps = state, tuple(generators), state.step

    def prepare_latents(self, *args: Any, **kwargs: Any) -> Any:
        # Called once the timesteps are set, with the generators: the last moment before the first step.
        bound = inspect.signature(super().prepare_latents).bind_partial(*args, **kwargs)  # type: ignore[misc]
        seed_noise_sampler(self.scheduler, bound.arguments.get("generator"))  # type: ignore[attr-defined]
        latents = self._prepare_latents(*args, **kwargs)
        if self.phase_hook is not None:
            self.phase_hook("denoise")
        return latents

    def _prepare_latents(self, *args: Any, **kwargs: Any) -> Any:
        # diffusers' own first: what it draws from the fresh generators (initial noise, an encoded image, an
        # inpainting pipeline's noise and image latents) is what the interrupted run drew, so everything it
        # returns but the latents stands. Then the saved latents, scheduler and generator states go in.
        out = super().prepare_latents(*args, **kwargs)  # type: ignore[misc]
        state = self._resume
        if state is None:
            return out
        latents = state.tensors.get("latents")
        if latents is None or not latents.is_floating_point():
            raise CheckpointError("the checkpoint has no latents")
        first = out[0] if isinstance(out, tuple) else out
        if tuple(latents.shape) != tuple(first.shape):
            raise CheckpointError(f"the checkpoint's latents are {tuple(latents.shape)}, this run's "
                                  f"{tuple(first.shape)}")
        self._restore_pending = True  # the scheduler and the generators at the first step (below)
        latents = latents.to(device=first.device, dtype=first.dtype)
        return (latents, *out[1:]) if isinstance(out, tuple) else latents

    @property
    def interrupt(self) -> bool:
        # diffusers reads this once at the top of every step and skips the step when it is true. The saved scheduler
        # and generator states go back at the first read, not in prepare_latents: between the two, diffusers may draw
        # more from the fresh generators, as the interrupted run did (an inpainting pipeline encodes the masked image
        # there), and the flow pipelines set the timesteps (Flux's depend on the latents' size) and the scheduler's
        # begin index only after preparing the latents.
        if self._restore_pending:
            self._restore_pending = False
            state, pipe = self._resume, self
            assert state is not None
            if state.step > len(pipe.scheduler.timesteps):  # type: ignore[attr-defined]
                raise CheckpointError(f"the checkpoint is at step {state.step} of a run of "
                                      f"{len(pipe.scheduler.timesteps)}")  # type: ignore[attr-defined]
            restore_scheduler(pipe.scheduler, state, pipe._execution_device)  # type: ignore[attr-defined]
            restore_generators(self._resume_generators, state)
        if self._skip_steps > 0:
            self._skip_steps -= 1
            return True
        return bool(getattr(self, "_interrupt", False))


@functools.cache
def resumable(cls: type[DiffusionPipeline]) -> type[DiffusionPipeline]:
    """``cls`` with the ``Resumable`` mixin, made once per pipeline class."""
    return type(cls.__name__, (Resumable, cls), {"__module__": __name__})


def generators(seed: int, n: int) -> list[torch.Generator]:
    """One CPU generator per image, seeded ``seed + i``: the same seed gives the same noise on any device,
    and image ``i`` does not depend on how many images the job asked for."""
    return [torch.Generator("cpu").manual_seed(seed + i) for i in range(n)]


def job_view(pipe: DiffusionPipeline, task: type[DiffusionPipeline] | None = None) -> DiffusionPipeline:
    """A resumable pipeline for one job on ``pipe``'s own modules (no copy, no dtype cast), as ``task`` (another
    diffusers class on the same components: ``StableDiffusionInpaintPipeline`` on a text-to-image model), with a
    scheduler of its own: schedulers keep per-run state, so two jobs must not share one."""
    cls = task or type(pipe)
    accepted = inspect.signature(cls.__init__).parameters
    parts = {**pipe.components, "scheduler": type(pipe.scheduler).from_config(pipe.scheduler.config),
             "requires_safety_checker": False}
    view = resumable(cls)(**{name: value for name, value in parts.items() if name in accepted})
    view.set_progress_bar_config(disable=True)
    return view


def run_resumable(pipe: DiffusionPipeline, ctx: RunContext, *, num_images: int = 1,
                  task: type[DiffusionPipeline] | None = None, output_type: str = "pil", **call: Any) -> Any:
    """Run a diffusers pipeline for one job, with progress, cancel, checkpoints and byte-identical resume from
    ``ctx.resume_from``, and no state code in the plugin: ``call`` is what the pipeline's ``__call__`` takes
    (prompt, image, steps ...), except ``generator`` and ``callback_on_step_end``, which this sets. Any diffusers
    pipeline class whose loop takes ``callback_on_step_end`` and skips a step while ``interrupt`` is true (all of
    diffusers' own since 0.27) qualifies. ``pipe``: a loaded pipeline (viewed per job, see ``job_view``) or a job
    view already; ``num_images`` images, image ``i`` from seed ``ctx.seed + i``. Returns the PIL images; with
    ``output_type="latent"``, the undecoded latents (one tensor, images first), for a pass that another pass
    continues: ``spotgen.diffusers.Phases`` runs such passes as one job."""
    view = pipe if isinstance(pipe, Resumable) else job_view(pipe, task)
    gens = generators(ctx.seed, num_images)
    if ctx.resume_from is not None:
        view.resume_from(ctx.resume_from, gens)  # type: ignore[attr-defined]
    view.phase_hook = ctx.mark  # type: ignore[attr-defined]
    if "num_images_per_prompt" in inspect.signature(type(view).__call__).parameters:
        call.setdefault("num_images_per_prompt", num_images)
    ctx.mark("encode")
    if view.step_conditioning is not None:  # type: ignore[attr-defined]
        call["callback_on_step_end_tensor_inputs"] = ["latents", "prompt_embeds"]
    with torch.inference_mode():
        result = view(**call, generator=gens, callback_on_step_end=step_callback(ctx, gens), output_type=output_type)
    return result.images if output_type == "latent" else list(result.images)


def step_callback(ctx: RunContext, generators: list[torch.Generator]) -> Callable[..., dict[str, Any]]:
    """A ``callback_on_step_end`` that reports each step to the runtime with a way to save the state.

    The runtime decides whether to save (interruption, periodic checkpoint) and may stop the job by raising
    from ``ctx.step``; the state is only built when it is needed.
    """

    def on_step_end(pipe: Any, i: int, timestep: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
        def state() -> StepState:
            tensors, values = scheduler_state(pipe.scheduler)
            tensors = {**tensors, **generator_states(generators), "latents": kwargs["latents"]}
            return StepState(step=i + 1, tensors=tensors, values=values)

        ctx.step(i + 1, pipe.num_timesteps, state)
        conditioning = getattr(pipe, "step_conditioning", None)
        return kwargs if conditioning is None else {**kwargs, **conditioning(i + 1, kwargs)}

    return on_step_end
