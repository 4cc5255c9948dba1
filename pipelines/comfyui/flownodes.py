"""Flux's and SD 3.5's nodes: UNETLoader, CLIPLoader, DualCLIPLoader, VAELoader, EmptySD3LatentImage,
ModelSamplingSD3/Flux, FluxGuidance and the custom-sampling set (SamplerCustomAdvanced, RandomNoise, KSamplerSelect,
BasicScheduler, BasicGuider, CFGGuider), and KSamplerAdvanced.

``NODES``: the classes this area runs (``executor.node_table`` merges it; ``runtime.contract.comfy.table.RUNS``
lists the same names for the API).
"""

from __future__ import annotations

from pipelines.comfyui.registry import Node

NODES: dict[str, Node] = {}
