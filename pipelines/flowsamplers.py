"""Samplers of flow-matching models (Flux, SD 3.5), by the names SD WebUI and Forge users know.

A flow-matching model predicts a velocity along a straight path from noise to image, so its samplers step through
sigmas in [0, 1] that the model's ``shift`` bends toward the noisy end (Flux dev shifts by the image's size:
``use_dynamic_shifting``, diffusers' ``mu``). The contract lists which samplers and schedules each family takes
(``runtime.contract.families.FLOW_SAMPLERS``); Euler a (``stochastic_sampling=True``) is refused there, since it
draws noise outside the job's generators and so no image would repeat, before or after a resume.

A request's ``shift`` replaces the model's: it turns dynamic shifting off, as Forge's "Shift" does. As for the UNet
families (``pipelines.schedulers``), only the keys that describe the model's noise process come from its
scheduler config; the schedule flags are always given, so none leaks in from the model's file.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

from diffusers import (
    DPMSolverMultistepScheduler,
    FlowMatchEulerDiscreteScheduler,
    FlowMatchHeunDiscreteScheduler,
    UniPCMultistepScheduler,
)
from diffusers.schedulers.scheduling_utils import SchedulerMixin

#: Keys of a flow model's scheduler config that describe the model, not the sampler.
MODEL_KEYS = frozenset({"num_train_timesteps", "shift", "use_dynamic_shifting", "base_shift", "max_shift",
                        "base_image_seq_len", "max_image_seq_len", "invert_sigmas", "shift_terminal",
                        "time_shift_type"})
_FLAGS = ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas")
SCHEDULES: dict[str, str | None] = {"default": None, "karras": "use_karras_sigmas",
                                    "exponential": "use_exponential_sigmas"}
class _ShiftedByRequest:
    """A multistep solver that ignores Flux's ``mu`` when dynamic shifting is off (a request's ``shift``), as
    ``FlowMatchEulerDiscreteScheduler`` does; diffusers' own asserts instead."""

    def set_timesteps(self, *args: Any, mu: float | None = None, **kwargs: Any) -> Any:
        dynamic = getattr(self, "config").use_dynamic_shifting  # noqa: B009 - the mixin's host has it
        return super().set_timesteps(*args, mu=mu if dynamic else None, **kwargs)  # type: ignore[misc]


class FlowDPMSolver(_ShiftedByRequest, DPMSolverMultistepScheduler):
    pass


class FlowUniPC(_ShiftedByRequest, UniPCMultistepScheduler):
    pass


#: The multistep solvers run on flow sigmas (``use_flow_sigmas``), where the model's ``shift`` is ``flow_shift``.
_ON_FLOW = {"use_flow_sigmas": True, "prediction_type": "flow_prediction"}
SAMPLERS: dict[str, tuple[type[SchedulerMixin], dict[str, Any]]] = {
    "euler": (FlowMatchEulerDiscreteScheduler, {"stochastic_sampling": False}),
    "heun": (FlowMatchHeunDiscreteScheduler, {}),
    "dpmpp_2m": (FlowDPMSolver, {**_ON_FLOW, "algorithm_type": "dpmsolver++", "solver_order": 2}),
    "unipc": (FlowUniPC, _ON_FLOW),
}


def make_scheduler(name: str, schedule: str, base_config: Mapping[str, Any],
                   shift: float | None = None) -> SchedulerMixin:
    """A new scheduler for one job: sampler ``name`` with ``schedule`` on the model's flow, shifted by ``shift``
    when the request gives one."""
    if name not in SAMPLERS or schedule not in SCHEDULES:
        raise ValueError(f"flow-matching sampler {name!r} with schedule {schedule!r} is not in the table")
    cls, options = SAMPLERS[name]
    config = {key: value for key, value in base_config.items() if key in MODEL_KEYS}
    if shift is not None:
        config.update(shift=shift, use_dynamic_shifting=False)
    if options.get("use_flow_sigmas"):
        config["flow_shift"] = config.pop("shift", 1.0)
    flags = {flag: flag == SCHEDULES[schedule] for flag in _FLAGS}
    accepted = inspect.signature(cls.__init__).parameters  # diffusers warns about any other key
    return cls.from_config({key: value for key, value in config.items() if key in accepted},
                           **options, **{flag: value for flag, value in flags.items() if flag in accepted})
