"""``GET /object_info``: the nodes spotgen runs, in ComfyUI's shape, from the node table (``nodes``).

ComfyUI-aware tools (its own frontend, client libraries, graph builders) read this document to offer a node's
inputs and choices and to check a graph before they send it, so its choices are what this deployment runs: the
catalog's models under the names a workflow may use for them, only the samplers and schedulers spotgen has,
and LoadImage's and LoadImageMask's images: the caller's uploads (``uploads``, the API lists them), as ComfyUI
lists its input folder.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from runtime.contract.comfy.nodes import (
    CONTROLNETS,
    IMAGES,
    LORAS,
    MODELS,
    SAMPLERS,
    SCHEDULERS,
    UPSCALERS,
    Input,
    Node,
)
from runtime.contract.comfy.nodes_sampling import COMFY_SAMPLERS, COMFY_SCHEDULERS
from runtime.contract.comfy.table import all_nodes
from runtime.contract.webui_rules import Names

#: The ``Names`` field a catalog choice list reads (``None``: the deployment's own field is absent).
CATALOG_FIELDS = {MODELS: "models", LORAS: "loras", CONTROLNETS: "controlnets", UPSCALERS: "upscalers"}


def choices_of(spec: Input, names: Names | None, uploads: Sequence[str] | None = None) -> list[str] | None:
    """The values ``spec`` takes; None where any name is taken: a catalog list checked without a deployment (the
    worker's check of a graph the API already resolved) and uploaded images without ``uploads`` (the graph check:
    ``lambdas.comfy_images`` checks each name against the caller's uploads, listed or not)."""
    if isinstance(spec.type, tuple) and spec.choices is None:
        return list(spec.type)
    if spec.choices == SAMPLERS:
        return list(COMFY_SAMPLERS)
    if spec.choices == SCHEDULERS:
        return list(COMFY_SCHEDULERS)
    if spec.choices == IMAGES:
        return None if uploads is None else list(uploads)
    if names is None or spec.choices not in CATALOG_FIELDS:
        return None
    return sorted(getattr(names, CATALOG_FIELDS[spec.choices]), key=str.casefold)


def declaration(spec: Input, names: Names | None, uploads: Sequence[str] | None = None) -> list[Any]:
    """ComfyUI's declaration of an input as JSON: ``["INT", {options}]``, ``[[choices...], {options}]`` or
    ``["MODEL"]`` (also a node error's ``input_config``)."""
    if isinstance(spec.type, str):
        head: Any = spec.type
    else:
        head = choices_of(spec, names, uploads) or []
    return [head, dict(spec.options)] if spec.options else [head]


def node_info(node: Node, names: Names | None, uploads: Sequence[str] | None = None) -> dict[str, Any]:
    """One class's entry, as ComfyUI's ``node_info`` writes it for ``/object_info/{class}``."""
    required = {i.name: declaration(i, names, uploads) for i in node.inputs if not i.optional}
    optional = {i.name: declaration(i, names, uploads) for i in node.inputs if i.optional}
    inputs: dict[str, Any] = {"required": required}
    if optional:
        inputs["optional"] = optional
    if node.hidden:
        inputs["hidden"] = dict(node.hidden)
    return {
        "input": inputs,
        "input_order": {key: list(value) for key, value in inputs.items()},
        "output": list(node.outputs),
        "output_is_list": [False] * len(node.outputs),
        "output_name": list(node.names_of_outputs),
        "name": node.name,
        "display_name": node.display_name,
        "description": node.description,
        "python_module": node.python_module,
        "category": node.category,
        "output_node": node.output_node,
        **({"deprecated": True} if node.deprecated else {}),
    }


def object_info(names: Names | None = None, uploads: Sequence[str] | None = None) -> dict[str, Any]:
    """``GET /object_info``: every node class spotgen runs, by class; ``names``: the deployment's catalog, whose
    aliases and ids are the model inputs' choices, ``uploads``: the caller's uploaded images (without them, those
    lists are empty)."""
    return {name: node_info(node, names, uploads) for name, node in all_nodes().items()}


def object_info_of(class_type: str, names: Names | None = None,
                   uploads: Sequence[str] | None = None) -> dict[str, Any]:
    """``GET /object_info/{class}``: ``{class: entry}``, or ``{}`` for a class spotgen does not run (as ComfyUI
    answers for a class it does not have)."""
    node = all_nodes().get(class_type)
    return {} if node is None else {class_type: node_info(node, names, uploads)}
