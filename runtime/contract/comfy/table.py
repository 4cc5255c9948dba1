"""The whole table of nodes: ``nodes``' loaders, conditioning, latent and image nodes with ``nodes_sampling``'s
sampling nodes, in the order docs list them (a module of its own, so that neither of those imports the other
back)."""

from __future__ import annotations

from collections.abc import Mapping
from functools import cache
from types import MappingProxyType

from runtime.contract.comfy.nodes import CONDITIONING, IMAGES_, LATENTS, LOADERS, Node
from runtime.contract.comfy.nodes_sampling import SAMPLING
from runtime.contract.comfy.runs_advanced import RUNS_ADVANCED
from runtime.contract.comfy.runs_control import RUNS_CONTROL
from runtime.contract.comfy.runs_flow import RUNS_FLOW
from runtime.contract.comfy.runs_images import RUNS_IMAGES
from runtime.contract.comfy.runs_upscale import RUNS_UPSCALE


@cache
def all_nodes() -> Mapping[str, Node]:
    """Every node class spotgen runs, by class name, in the order docs list them (read-only: it is cached)."""
    return MappingProxyType({node.name: node for node in (*LOADERS, *CONDITIONING, *LATENTS, *SAMPLING, *IMAGES_)})


def node_rows() -> list[tuple[str, list[str], list[str]]]:
    """(class, inputs, outputs) per node for docs/comfyui.md's table: each input as ``name: TYPE`` (choices shown
    as ``choice``, an optional input in brackets, a range as ``min..max``), each output as ``NAME (type)``."""
    rows = []
    for node in all_nodes().values():
        inputs = []
        for spec in node.inputs:
            kind = spec.type if isinstance(spec.type, str) else "choice"
            text = f"{spec.name}: {kind}"
            if "min" in spec.options and "max" in spec.options:
                text += f" {spec.options['min']}..{spec.options['max']}"
            inputs.append(f"[{text}]" if spec.optional else text)
        outputs = [f"{name} ({kind})" if name != kind else kind
                   for name, kind in zip(node.names_of_outputs, node.outputs, strict=True)]
        if node.output_node and not outputs:
            outputs = ["(output node)"]
        rows.append((node.name, inputs, outputs))
    return rows


#: The node classes the worker's interpreter runs today (``pipelines/comfyui/executor.py``'s table; a test keeps
#: the two equal). The API refuses a graph with any other, before it is queued, and ``/object_info`` lists only
#: these; the rest of the table is declared for when the interpreter runs them (docs/comfyui.md lists both).
RUNS = frozenset({
    "CheckpointLoaderSimple", "LoraLoader", "LoraLoaderModelOnly", "CLIPTextEncode", "CLIPSetLastLayer",
    "ConditioningZeroOut", "ConditioningCombine", "EmptyLatentImage", "LatentUpscale", "LatentUpscaleBy", "KSampler",
    "VAEDecode", "VAEEncode", "ImageScale", "ImageScaleBy", "ImageInvert", "SaveImage", "PreviewImage",
}) | RUNS_FLOW | RUNS_IMAGES | RUNS_CONTROL | RUNS_UPSCALE | RUNS_ADVANCED

