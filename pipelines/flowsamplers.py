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

from collections.abc import Mapping
from typing import Any

from diffusers import FlowMatchEulerDiscreteScheduler
from diffusers.schedulers.scheduling_utils import SchedulerMixin

#: Keys of a flow model's scheduler config that describe the model, not the sampler.
MODEL_KEYS = frozenset({"num_train_timesteps", "shift", "use_dynamic_shifting", "base_shift", "max_shift",
                        "base_image_seq_len", "max_image_seq_len", "invert_sigmas", "shift_terminal",
                        "time_shift_type"})
_FLAGS = ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas")
SCHEDULES: dict[str, str | None] = {"default": None, "karras": "use_karras_sigmas",
                                    "exponential": "use_exponential_sigmas"}
SAMPLERS: dict[str, tuple[type[SchedulerMixin], dict[str, Any]]] = {
    "euler": (FlowMatchEulerDiscreteScheduler, {"stochastic_sampling": False}),
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
    flags = {flag: flag == SCHEDULES[schedule] for flag in _FLAGS}
    return cls.from_config(config, **options, **flags)
