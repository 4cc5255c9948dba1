"""A graph evaluated in dependency order, each node's outputs computed once; each sampler node one pass of the
job's checkpoint stream (``pipelines.phases.Phases``).

Only the nodes an output node (SaveImage, PreviewImage) depends on run, as in ComfyUI. Their order is a
topological one with ties broken by node id (numbers as numbers), so it is the same on every worker, and the
sampler nodes in it are the passes, named by class and node id (``ksampler-3``). Every pass is planned (its steps
counted) before the first runs, so progress is one count over all of them.

Resume: everything before the pass a checkpoint was taken in is evaluated again, and all of it is deterministic
(text encodes, empty latents, latent upscales, VAE encodes and decodes), except the earlier sampler nodes, whose
outputs ``Phases`` returns from the checkpoint instead of running them; the saved pass continues at its step.
So an interrupted graph resumes byte-identical to an uninterrupted run.

The API checks a graph before it is queued and ``ComfyInputs`` checks it again on the worker
(``runtime.contract.comfy``); what this module refuses on top (a node class not run here yet, a value of the
wrong kind on a link) is a ``ContractError`` naming the node's input, ``inputs.graph.<id>.inputs.<name>``.
"""

from __future__ import annotations

import functools
import heapq
from collections.abc import Callable
from typing import Any, TypeVar

from PIL.Image import Image

from pipelines.comfyui import (
    advanced,
    controlnodes,
    flownodes,
    imagenodes,
    images,
    latents,
    loaders,
    pixels,
    sampling,
    text,
    upscalenodes,
)
from pipelines.comfyui.registry import Node
from pipelines.comfyui.values import type_name
from pipelines.phases import PHASE_NAME, Phases
from runtime.contract import ContractError
from runtime.contract.comfy.outputs import node_order
from runtime.models.store import ModelStore
from runtime.plugins import RunContext

T = TypeVar("T")


@functools.cache
def node_table() -> dict[str, Node]:
    """The node classes this interpreter runs."""
    return {
        "CheckpointLoaderSimple": Node(loaders.checkpoint_loader_simple),
        "LoraLoader": Node(loaders.lora_loader),
        "LoraLoaderModelOnly": Node(loaders.lora_loader_model_only),
        "CLIPTextEncode": Node(text.clip_text_encode),
        "CLIPSetLastLayer": Node(text.clip_set_last_layer),
        "ConditioningZeroOut": Node(text.conditioning_zero_out),
        "ConditioningCombine": Node(text.conditioning_combine),
        "EmptyLatentImage": Node(latents.empty_latent_image),
        "LatentUpscale": Node(latents.latent_upscale),
        "LatentUpscaleBy": Node(latents.latent_upscale_by),
        "KSampler": Node(sampling.ksampler, plan=sampling.plan),
        "VAEDecode": Node(images.vae_decode),
        "VAEEncode": Node(images.vae_encode),
        "ImageScale": Node(pixels.image_scale),
        "ImageScaleBy": Node(pixels.image_scale_by),
        "ImageInvert": Node(pixels.image_invert),
        "SaveImage": Node(images.save_image, output=True),
        "PreviewImage": Node(images.preview_image, output=True),
        **flownodes.NODES,
        **imagenodes.NODES,
        **controlnodes.NODES,
        **upscalenodes.NODES,
        **advanced.NODES,
    }


def is_link(value: Any) -> bool:
    return isinstance(value, list) and len(value) == 2 and isinstance(value[0], str) and \
        isinstance(value[1], int) and not isinstance(value[1], bool)


def _field(node_id: str, name: str | None = None) -> str:
    return f"inputs.graph.{node_id}" + ("" if name is None else f".inputs.{name}")


def run_order(graph: dict[str, Any]) -> list[str]:
    """The nodes the output nodes need, in dependency order, ties broken by id."""
    table = node_table()
    for node_id, node in graph.items():
        kind = node.get("class_type") if isinstance(node, dict) else None
        if kind not in table:
            raise ContractError("unsupported_node", f"{_field(node_id)}: node class {kind!r} is not run by spotgen "
                                f"yet; it runs {', '.join(sorted(table))}", _field(node_id))
    outputs = sorted((n for n, node in graph.items() if table[node["class_type"]].output), key=node_order)
    if not outputs:
        raise ContractError("prompt_no_outputs", "inputs.graph: the graph has no output node (SaveImage, "
                            "PreviewImage)", "inputs.graph")
    needed, stack = set(outputs), list(outputs)
    deps: dict[str, set[str]] = {}
    while stack:
        node_id = stack.pop()
        deps[node_id] = set()
        for name, value in graph[node_id].get("inputs", {}).items():
            if is_link(value):
                if value[0] not in graph:
                    raise ContractError("invalid_link", f"{_field(node_id, name)}: links to node {value[0]!r}, "
                                        "which the graph lacks", _field(node_id, name))
                deps[node_id].add(value[0])
                if value[0] not in needed:
                    needed.add(value[0])
                    stack.append(value[0])
    users: dict[str, list[str]] = {node_id: [] for node_id in needed}
    for node_id, sources in deps.items():
        for source in sources:
            users[source].append(node_id)
    waiting = {node_id: len(sources) for node_id, sources in deps.items()}
    ready = [(node_order(n), n) for n, count in waiting.items() if count == 0]
    heapq.heapify(ready)
    order: list[str] = []
    while ready:
        _, node_id = heapq.heappop(ready)
        order.append(node_id)
        for user in users[node_id]:
            waiting[user] -= 1
            if waiting[user] == 0:
                heapq.heappush(ready, (node_order(user), user))
    if len(order) != len(needed):
        raise ContractError("dependency_cycle", "inputs.graph: the graph's links make a cycle", "inputs.graph")
    return order


def phase_names(graph: dict[str, Any], samplers: list[str]) -> dict[str, str]:
    """Each sampler node's pass name: its class and id (``ksampler-3``), or its place when that is no name."""
    names: dict[str, str] = {}
    for i, node_id in enumerate(samplers):
        name = f"{graph[node_id]['class_type'].lower()}-{node_id.lower()}"
        names[node_id] = name if PHASE_NAME.match(name) and name not in names.values() else f"sampler-{i}"
    return names


class Execution:
    """One graph's run for one job: the nodes' outputs, the passes, and the output nodes' images."""

    def __init__(self, graph: dict[str, Any], ctx: RunContext) -> None:
        self.graph, self.ctx = graph, ctx
        self.order = run_order(graph)
        self.values: dict[str, tuple[Any, ...]] = {}
        self.images: dict[str, list[Image]] = {}
        self.phases: Phases | None = None
        self._names: dict[str, str] = {}

    @property
    def store(self) -> ModelStore:
        return self.ctx.models

    def run(self) -> dict[str, list[Image]]:
        """Every needed node once, in order; the output nodes' images by node id, in id order."""
        table = node_table()
        samplers = [n for n in self.order if table[self.graph[n]["class_type"]].plan is not None]
        if samplers:
            self._names = phase_names(self.graph, samplers)
            plan = {self._names[n]: self._plan(n) for n in samplers}
            self.phases = Phases(self.ctx, plan)
        for node_id in self.order:
            self.evaluate(node_id)
        return {node_id: self.images[node_id] for node_id in sorted(self.images, key=node_order)}

    def _plan(self, node_id: str) -> int:
        node = self.graph[node_id]
        planner = node_table()[node["class_type"]].plan
        assert planner is not None
        args = dict(node.get("inputs", {}))
        if "model" in args:  # SamplerCustomAdvanced has none: its planner reads its sigmas' model itself
            args["model"] = self.resolve(node_id, "model")
        return planner(self, node_id, args)

    def evaluate(self, node_id: str) -> tuple[Any, ...]:
        """The node's outputs, computed the first time they are asked for."""
        if node_id not in self.values:
            node = self.graph[node_id]
            args = {name: self.resolve(node_id, name) for name in node.get("inputs", {})}
            self.values[node_id] = node_table()[node["class_type"]].run(self, node_id, args)
        return self.values[node_id]

    def resolve(self, node_id: str, name: str) -> Any:
        """An input's value: a literal, or the linked node's output."""
        inputs = self.graph[node_id].get("inputs", {})
        if name not in inputs:
            raise ContractError("missing_input", f"{_field(node_id, name)}: required input is missing",
                                _field(node_id, name))
        value = inputs[name]
        if not is_link(value):
            return value
        outputs = self.evaluate(value[0])
        if not 0 <= value[1] < len(outputs):
            raise ContractError("invalid_link", f"{_field(node_id, name)}: node {value[0]} has no output "
                                f"{value[1]}", _field(node_id, name))
        return outputs[value[1]]

    def sample(self, node_id: str, fn: Callable[[RunContext], T]) -> T:
        """Run a sampler node as its pass of the checkpoint stream."""
        assert self.phases is not None, "a sampler node runs only in a planned graph"
        return self.phases.run(self._names[node_id], fn)

    def emit(self, node_id: str, out: list[Image]) -> None:
        self.images[node_id] = out

    # What the nodes share to read their inputs, each refusal naming the node's input.

    @staticmethod
    def where(node_id: str, name: str | None = None) -> str:
        return _field(node_id, name)

    def want(self, value: Any, cls: type[T], node_id: str, name: str) -> T:
        if not isinstance(value, cls):
            raise ContractError("invalid_link", f"{_field(node_id, name)}: wants a {type_name(cls)}, the link "
                                f"gives a {type_name(type(value))}", _field(node_id, name))
        return value

    def integer(self, node_id: str, args: dict[str, Any], name: str) -> int:
        value = args.get(name)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ContractError("invalid_field", f"{_field(node_id, name)}: wants an integer, not {value!r}",
                                _field(node_id, name))
        return value

    def number(self, node_id: str, args: dict[str, Any], name: str) -> float:
        value = args.get(name)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ContractError("invalid_field", f"{_field(node_id, name)}: wants a number, not {value!r}",
                                _field(node_id, name))
        return float(value)
