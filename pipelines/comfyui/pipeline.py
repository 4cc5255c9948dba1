"""The ``comfyui`` pipeline: one ComfyUI API-format graph per job (``runtime.contract.comfy.inputs.ComfyInputs``),
run by the interpreter of ``pipelines.comfyui.executor``.

It returns the images of the output nodes (SaveImage and PreviewImage), node after node in id order, each node's
batch in order: the order ``runtime.contract.comfy.outputs.output_nodes`` maps back to nodes for ``/history``.
The job's checkpoints are the sampler nodes' passes (``pipelines.phases``): ``checkpoints = True``.
"""

from __future__ import annotations

from typing import Any

from PIL.Image import Image

from pipelines.comfyui.executor import Execution
from pipelines.common import DiffusersPipeline
from runtime.contract.comfy.inputs import ComfyInputs
from runtime.plugins import RunContext


def run_graph(graph: dict[str, Any], ctx: RunContext) -> dict[str, list[Image]]:
    """The output nodes' images by node id (in id order) of one graph's run."""
    return Execution(graph, ctx).run()


class ComfyUI(DiffusersPipeline):
    """ComfyUI's core nodes on spotgen's models: loaders, text encoding, latents, KSampler, VAE, outputs.
    As a ``DiffusersPipeline`` it checks the attention kernel at start-up and preloads base models."""

    name = "comfyui"
    Inputs = ComfyInputs
    checkpoints = True

    def run(self, inputs: ComfyInputs, ctx: RunContext) -> list[Image]:
        return [image for out in run_graph(inputs.graph, ctx).values() for image in out]
