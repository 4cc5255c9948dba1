"""ComfyUI's ``steps`` and ``denoise`` as a schedule that diffusers' img2img classes run, shared by every sampler
node (KSampler on each family, SamplerCustomAdvanced): ``steps`` steps are run, the last ones of a schedule of
``steps / denoise`` (diffusers' img2img would run ``steps x strength`` of ``steps``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, NamedTuple

from pipelines.comfyui import samplers
from runtime.contract import ContractError
from runtime.contract.inputs import LCM_MAX_STEPS, MAX_SCHEDULE

if TYPE_CHECKING:
    from pipelines.comfyui.executor import Execution

#: Seeds wrap below 2**64 by this much, so that seed + i of a batch is still a seed torch takes.
SEED_ROOM = 4096


class Schedule(NamedTuple):
    """A sampler node's run: ``total`` steps of schedule, of which img2img's ``strength`` runs the last ones; a
    ``total`` of 0 runs none (denoise 0: ComfyUI hands the latent on unchanged)."""

    total: int
    strength: float


def schedule(ex: Execution, node_id: str, args: dict[str, Any], choice: samplers.Choice) -> Schedule:
    """ComfyUI's denoise as diffusers' img2img counts: ``steps`` of ``int(steps / denoise)``; the strength is
    put half a step above the count so that img2img's ``int(total x strength)`` is ``steps`` exactly."""
    steps = ex.integer(node_id, args, "steps")
    denoise = ex.number(node_id, args, "denoise")
    if steps < 1 or not 0 <= denoise <= 1:
        where = ex.where(node_id, "steps" if steps < 1 else "denoise")
        raise ContractError("invalid_field", f"{where}: steps must be 1 or more and denoise between 0 and 1", where)
    if denoise == 0:
        return Schedule(0, 0.0)
    if denoise >= 1:
        return Schedule(steps, 1.0)
    total = max(steps, int(steps / denoise))
    limit = LCM_MAX_STEPS if choice.scheduler == "lcm" else MAX_SCHEDULE
    if total > limit:
        where = ex.where(node_id, "denoise")
        raise ContractError("invalid_field", f"{where}: {steps} steps at denoise {denoise} make a schedule of "
                            f"{total} steps, above the {limit} this sampler runs (fewer steps, or more denoise)",
                            where)
    return Schedule(total, min(1.0, (steps + 0.5) / total))


def seed(ex: Execution, node_id: str, args: dict[str, Any], name: str = "seed") -> int:
    """The node's seed, wrapped below 2**64 so that image i of a batch draws from seed + i."""
    return ex.integer(node_id, args, name) % (2**64 - SEED_ROOM)
