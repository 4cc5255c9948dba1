"""A KSamplerAdvanced node's slice of its schedule, read the same on every family (``advanced`` on SD 1.x/2.x and
SDXL, ``flowadvanced`` on Flux and SD 3.5): which steps of ``steps`` run, whether noise is added first and whether
the latent is handed on with its leftover noise; and the pieces both families' sliced schedulers share.
"""

from __future__ import annotations

import functools
import inspect
from typing import TYPE_CHECKING, Any, NamedTuple

from pipelines.comfyui import samplers
from runtime.contract import ContractError
from runtime.contract.inputs import LCM_MAX_STEPS, MAX_SCHEDULE

if TYPE_CHECKING:
    from pipelines.comfyui.executor import Execution

CLASS = "KSamplerAdvanced"
_SWITCH = ("enable", "disable")


class Span(NamedTuple):
    """A KSamplerAdvanced's slice: ``steps`` of schedule, steps ``start`` to ``end`` (at most ``steps``) run;
    ``noise``: noise the latent to ``start`` first; ``leftover``: hand on the latent as it is at ``end``."""

    steps: int
    start: int
    end: int
    noise: bool
    leftover: bool

    @property
    def final(self) -> bool:
        """Whether the last step ends on the denoised prediction (ComfyUI's full denoise before the end)."""
        return not self.leftover and self.end < self.steps


def switch(ex: Execution, node_id: str, args: dict[str, Any], name: str) -> bool:
    value = args.get(name)
    if value not in _SWITCH:
        where = ex.where(node_id, name)
        raise ContractError("value_not_in_list", f"{where}: 'enable' or 'disable', not {value!r}", where)
    return bool(value == "enable")


def span(ex: Execution, node_id: str, args: dict[str, Any], choice: samplers.Choice) -> Span:
    """The node's slice of its schedule; a ContractError naming the input whose value cannot run."""
    steps = ex.integer(node_id, args, "steps")
    start, end = ex.integer(node_id, args, "start_at_step"), ex.integer(node_id, args, "end_at_step")
    limit = LCM_MAX_STEPS if choice.scheduler == "lcm" else MAX_SCHEDULE
    bad = [("steps", steps < 1 or steps > limit, f"from 1 to {limit} steps"),
           ("start_at_step", start < 0, "a step of 0 or more"), ("end_at_step", end < 0, "a step of 0 or more"),
           ("start_at_step", start >= end, f"a step below end_at_step ({end}): the sampler would run no step")]
    for name, wrong, want in bad:
        if wrong:
            where = ex.where(node_id, name)
            raise ContractError("invalid_field", f"{where}: {want}, not {args[name]!r}", where)
    noise, leftover = switch(ex, node_id, args, "add_noise"), switch(ex, node_id, args, "return_with_leftover_noise")
    return Span(steps, start, min(end, steps), noise, leftover)


def cut(run: Span, order: int) -> int:
    """Where the timesteps stop: after the slice's last step, or after the first stage of it when that stage's
    prediction ends the pass (a second-order sampler's second stage would be thrown away)."""
    return run.end * order if not run.final else (run.end - 1) * order + 1


def step_index(scheduler: Any, timestep: Any) -> int:
    """The index of the step ``timestep`` is, in the scheduler's own count where it keeps one."""
    index = getattr(scheduler, "step_index", None)
    if index is None:
        index = getattr(scheduler, "begin_index", None)
    if index is None:
        index = int((scheduler.timesteps == timestep).nonzero()[0])
    return int(index)


def slice_scheduler(scheduler: Any, mixin: type, run: Span) -> None:
    """Make ``scheduler`` run ``run``'s slice: its class under ``mixin`` (a family's sliced ``set_timesteps`` and
    ``step``), and the slice set on it before the pipeline sets its timesteps."""
    scheduler.__class__ = _sliced(mixin, type(scheduler))
    order = scheduler.order
    scheduler.start_at, scheduler.cut_at = run.start * order, cut(run, order)
    scheduler.keep_latent, scheduler.final_denoise = not run.noise, run.final


@functools.cache
def _sliced(mixin: type, cls: type) -> type:
    own = {name: _forward(getattr(mixin, name), getattr(cls, name)) for name in ("set_timesteps", "step")}
    return type(cls.__name__, (mixin, cls), {"__module__": mixin.__module__, **own})


def _forward(fn: Any, like: Any) -> Any:
    """``fn`` under ``like``'s signature: diffusers reads a scheduler's (its ``step`` gets the generators only
    where it takes a ``generator``)."""

    @functools.wraps(fn)
    def call(self: Any, *args: Any, **kwargs: Any) -> Any:
        return fn(self, *args, **kwargs)

    call.__signature__ = inspect.signature(like)  # type: ignore[attr-defined]
    return call
