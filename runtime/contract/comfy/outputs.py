"""Which images of a ``comfyui`` job belong to which output node: ComfyUI's ``/history`` lists them per node.

A spotgen job's outputs are one list (``outputs/{id}/{index}.png``); the interpreter returns the images of the
output nodes in the order of their ids (``node_order``: numbers as numbers, as ComfyUI orders them), each node's
batch together. How many images a node
gets is known from the graph alone, before anything runs: the batch of the latent or image it is given, traced up
its links to where a batch is made (``batch_size`` of an empty latent, one per loaded image). So the API maps a
finished job's list back to nodes without the worker writing anything more, and ``/history`` answers as ComfyUI's.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from runtime.contract.comfy.table import all_nodes

#: The output nodes whose images a job returns, and ComfyUI's ``type`` of each in ``/history`` and ``/view``.
OUTPUT_TYPES = {"SaveImage": "output", "PreviewImage": "temp"}
#: The types along which a batch flows (an IMAGE's batch is the LATENT's it was decoded from, and so on).
_BATCHED = ("LATENT", "IMAGE", "MASK")


def node_order(node_id: str) -> tuple[int, int, str]:
    """Node ids in ComfyUI's order: numbers as numbers, then any other id as text."""
    return (0, int(node_id), "") if node_id.isdigit() else (1, 0, node_id)


def output_nodes(graph: Mapping[str, Any]) -> list[tuple[str, str, int]]:
    """(node id, class, image count) of each output node, in ``node_order``: the order the job's images come
    in. ``graph`` is ``check_graph``'s result."""
    return [(key, graph[key]["class_type"], batch_of(graph, key)) for key in sorted(graph, key=node_order)
            if graph[key]["class_type"] in OUTPUT_TYPES]


def batch_of(graph: Mapping[str, Any], key: str, seen: frozenset[str] = frozenset()) -> int:
    """How many images (or latents) node ``key`` passes on: its own ``batch_size``, else the batch of the first
    batched input it is linked to, else 1 (a loaded image)."""
    node = graph[key]
    inputs = node["inputs"]
    if isinstance(inputs.get("batch_size"), int):
        return int(inputs["batch_size"])
    spec = all_nodes()[node["class_type"]]
    for declared in spec.inputs:
        value = inputs.get(declared.name)
        if declared.is_link and declared.type in _BATCHED and isinstance(value, list) and value[0] not in seen:
            return batch_of(graph, str(value[0]), seen | {key})
    return 1


def history_outputs(graph: Mapping[str, Any], keys: Sequence[str]) -> dict[str, dict[str, list[dict[str, str]]]]:
    """``/history``'s ``outputs``: per output node, its images as ``{filename, subfolder, type}``, from the job's
    output keys in order (``subfolder/filename`` is the key, what ``/view`` is asked for). A job that returned
    fewer images than planned (it failed) gives the nodes what there is."""
    out: dict[str, dict[str, list[dict[str, str]]]] = {}
    index = 0
    for key, class_type, count in output_nodes(graph):
        images = []
        for output in keys[index:index + count]:
            subfolder, _, filename = output.rpartition("/")
            images.append({"filename": filename, "subfolder": subfolder, "type": OUTPUT_TYPES[class_type]})
        index += count
        out[key] = {"images": images}
    return out
