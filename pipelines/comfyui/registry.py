"""What a node class is to the interpreter (``Node``), and the tables of the node classes it runs, by area: the core
nodes in ``executor``; Flux's and SD 3.5's (custom sampling, their loaders) in ``flownodes``; images from the input
bucket and masks in ``imagenodes``; ControlNets in ``controlnodes``; upscale models in ``upscalenodes``;
KSamplerAdvanced (a slice of a schedule: SDXL's base + refiner) in ``advanced`` (``flowadvanced`` on Flux and
SD 3.5). ``executor.node_table`` runs them all; ``runtime.contract.comfy.table``'s ``RUNS`` says the same to the API
(tests/comfy/test_runs.py keeps the two equal).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pipelines.comfyui.executor import Execution

NodeFn = Callable[["Execution", str, dict[str, Any]], tuple[Any, ...]]


@dataclass(frozen=True)
class Node:
    """How one node class runs: its function, whether it is an output node, and, for a sampler, how its steps are
    planned before any pass runs (from its literal inputs, its ``model`` input where it has one, and the nodes
    its schedule comes from: a custom sampler's ``sigmas``)."""

    run: NodeFn
    output: bool = False
    plan: Callable[[Execution, str, dict[str, Any]], int] | None = None
