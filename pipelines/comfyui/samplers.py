"""ComfyUI's sampler and scheduler names on spotgen's sampler table (``pipelines.schedulers``).

The mapping is the contract's (``runtime.contract.comfy.nodes_sampling``: the API offers and checks the same
names); this module turns it into what a family's ``make_scheduler`` reads, and a name the table lacks into a
refusal naming the node's input (the API refuses it first, so a worker meets one only in a graph that skipped it).
"""

from __future__ import annotations

from typing import Any, NamedTuple

from runtime.contract import ContractError
from runtime.contract.comfy.nodes_sampling import spotgen_sampler


class Choice(NamedTuple):
    """A spotgen sampler and schedule, in the attributes ``Family.make_scheduler`` reads of a job's inputs."""

    scheduler: str
    schedule: str


def choice(sampler_name: Any, scheduler: Any, where: str) -> Choice:
    """The spotgen sampler for ComfyUI's pair; ``where`` is the node's field prefix (``inputs.graph.<id>``)."""
    try:
        return Choice(*spotgen_sampler(str(sampler_name), str(scheduler)))
    except ValueError as exc:
        name = str(exc).split(":", 1)[0]
        field = f"{where}.inputs.{name}"
        raise ContractError("value_not_in_list", f"{field}: {str(exc).split(': ', 1)[1]}", field) from None
