"""Samplers and sigma schedules: the names SD WebUI users know, mapped to diffusers schedulers in one table.

A request names a sampler (``euler_a``, ``dpmpp_2m``...) and a schedule (``default``, ``karras``,
``exponential``, ``sgm_uniform``); ``TABLE`` maps every pair the contract allows
(``runtime.contract.SAMPLER_SCHEDULES``) to a diffusers scheduler class and the options that make it that
sampler, following diffusers' documented A1111 mapping: "DPM++ 2M Karras" is ``DPMSolverMultistepScheduler``
with ``use_karras_sigmas=True``, "SGM Uniform" is ``timestep_spacing="trailing"``, and so on.

Why the model's scheduler config is filtered: a model ships a scheduler config written for one scheduler
(SD 1.5 a PNDM one, community models often a DPM-Solver++ one with ``use_karras_sigmas: true``), and
``from_config`` would carry every key the new class also has into it. Then "dpmpp_2m" + "default" would be
Karras on one model and not on another, and "unipc" would inherit a DPM-Solver's ``solver_order``. So only
the keys that describe the *model's* noise process (``MODEL_KEYS``: betas, prediction type, timestep
spacing and offset...) are taken from it; everything else is the class's own default or the table's option,
and the schedule flags are always given explicitly (``False`` for the schedules not asked for).

LMS is diffusers' own ``LMSDiscreteScheduler`` (it integrates with scipy); DPM++ SDE draws its noise from a
torchsde Brownian tree, which ``pipelines.resume`` seeds from the job's generators so it can be rebuilt when a
run continues from a checkpoint.
"""

from __future__ import annotations

import copy
import functools
import inspect
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    DPMSolverSDEScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    HeunDiscreteScheduler,
    KDPM2AncestralDiscreteScheduler,
    KDPM2DiscreteScheduler,
    LCMScheduler,
    LMSDiscreteScheduler,
    PNDMScheduler,
    UniPCMultistepScheduler,
)
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from runtime.contract import WEBUI_SAMPLERS

#: Keys of a model's scheduler config that describe the model (how it was trained), not the sampler.
MODEL_KEYS = frozenset({
    "num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "trained_betas", "prediction_type",
    "rescale_betas_zero_snr", "timestep_spacing", "steps_offset", "set_alpha_to_one", "sigma_min", "sigma_max",
    "original_inference_steps", "timestep_scaling",  # how an LCM model was distilled
})


@dataclass(frozen=True)
class Sampler:
    """One sampler with one schedule: a diffusers scheduler class and the options that make it so."""

    cls: type[SchedulerMixin]
    options: Mapping[str, Any] = field(default_factory=dict)
    #: The SD WebUI (A1111) name, for logs and docs (``runtime.contract.WEBUI_SAMPLERS`` with the schedule's suffix).
    webui: str = ""


# The schedule flags a sigma-based (k-diffusion style) scheduler takes; all are set, so none leaks in.
_FLAGS = ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas")
_TRAILING = {"timestep_spacing": "trailing"}


def _sigmas(flag: str | None = None, **extra: Any) -> dict[str, Any]:
    return {**{name: name == flag for name in _FLAGS}, **extra}


#: Schedules of samplers that step through sigmas: Karras and exponential respace them.
SIGMA_SCHEDULES: dict[str, dict[str, Any]] = {
    "default": _sigmas(),
    "karras": _sigmas("use_karras_sigmas"),
    "exponential": _sigmas("use_exponential_sigmas"),
    "sgm_uniform": _sigmas(**_TRAILING),
}
#: Schedules of samplers diffusers gives no sigma respacing (DDIM, PLMS, Euler a): only the timestep spacing.
TIMESTEP_SCHEDULES: dict[str, dict[str, Any]] = {"default": {}, "sgm_uniform": dict(_TRAILING)}
#: LCM picks its own timesteps from the distillation schedule (it ignores ``timestep_spacing``).
OWN_SCHEDULE: dict[str, dict[str, Any]] = {"default": {}}

# sampler: (class, its own options, the schedules it takes); the WebUI names are the contract's (WEBUI_SAMPLERS)
_SAMPLERS: dict[str, tuple[type[SchedulerMixin], dict[str, Any], dict[str, dict[str, Any]]]] = {
    "euler": (EulerDiscreteScheduler, {}, SIGMA_SCHEDULES),
    "euler_a": (EulerAncestralDiscreteScheduler, {}, TIMESTEP_SCHEDULES),
    "heun": (HeunDiscreteScheduler, {}, SIGMA_SCHEDULES),
    "lms": (LMSDiscreteScheduler, {}, SIGMA_SCHEDULES),
    "dpm2": (KDPM2DiscreteScheduler, {}, SIGMA_SCHEDULES),
    "dpm2_a": (KDPM2AncestralDiscreteScheduler, {}, SIGMA_SCHEDULES),
    "dpmpp_2m": (DPMSolverMultistepScheduler, {"algorithm_type": "dpmsolver++", "solver_order": 2}, SIGMA_SCHEDULES),
    "dpmpp_2m_sde": (DPMSolverMultistepScheduler, {"algorithm_type": "sde-dpmsolver++", "solver_order": 2},
                     SIGMA_SCHEDULES),
    "dpmpp_sde": (DPMSolverSDEScheduler, {}, SIGMA_SCHEDULES),
    # Latent diffusion must not clip to [-1, 1]; the SD pipelines would force this anyway, with a warning.
    "ddim": (DDIMScheduler, {"clip_sample": False}, TIMESTEP_SCHEDULES),
    # PLMS as in latent diffusion: no Runge-Kutta warm-up steps.
    "pndm": (PNDMScheduler, {"skip_prk_steps": True}, TIMESTEP_SCHEDULES),
    "unipc": (UniPCMultistepScheduler, {}, SIGMA_SCHEDULES),
    "lcm": (LCMScheduler, {"clip_sample": False}, OWN_SCHEDULE),
}
_WEBUI_SCHEDULE = {"default": "", "karras": " Karras", "exponential": " Exponential", "sgm_uniform": " SGM Uniform"}

#: Every (sampler, schedule) pair a job may ask for, and the diffusers scheduler that runs it.
TABLE: dict[tuple[str, str], Sampler] = {
    (name, schedule): Sampler(cls, {**own, **options}, WEBUI_SAMPLERS[name] + _WEBUI_SCHEDULE[schedule])
    for name, (cls, own, schedules) in _SAMPLERS.items()
    for schedule, options in schedules.items()
}


def model_config(base_config: Mapping[str, Any]) -> dict[str, Any]:
    """The part of a model's scheduler config that describes the model (see the module docstring)."""
    return {key: value for key, value in base_config.items() if key in MODEL_KEYS}


def make_scheduler(name: str, schedule: str, base_config: Mapping[str, Any]) -> SchedulerMixin:
    """A new scheduler for one job: sampler ``name`` with ``schedule``, on the model's noise schedule.

    A copy of one built per model: some constructors are slow (the KDPM2 ones set 1000 timesteps, ~150 ms),
    a copy takes well under a millisecond and shares nothing with the next job's.
    """
    if (name, schedule) not in TABLE:
        raise ValueError(f"sampler {name!r} does not take schedule {schedule!r}")
    config = json.dumps(model_config(base_config), sort_keys=True, default=lambda value: np.asarray(value).tolist())
    return copy.deepcopy(_prototype(name, schedule, config))


@functools.lru_cache(maxsize=128)
def _prototype(name: str, schedule: str, config: str) -> SchedulerMixin:
    sampler = TABLE[name, schedule]
    accepted = inspect.signature(sampler.cls.__init__).parameters  # diffusers warns about any other key
    model = {key: value for key, value in json.loads(config).items() if key in accepted}
    return sampler.cls.from_config(model, **sampler.options)
