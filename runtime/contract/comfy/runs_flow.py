"""The Flux and SD 3.5 node classes the interpreter runs (``pipelines/comfyui/flownodes.py``); ``table.RUNS``
joins them to the core set for the API (CLIPTextEncode, which flownodes also serves for flow models, is a core
one)."""

from __future__ import annotations

RUNS_FLOW: frozenset[str] = frozenset({
    "UNETLoader", "CLIPLoader", "DualCLIPLoader", "VAELoader", "ModelSamplingSD3", "ModelSamplingFlux", "FluxGuidance",
    "EmptySD3LatentImage", "RandomNoise", "KSamplerSelect", "BasicScheduler", "BasicGuider", "CFGGuider",
    "SamplerCustomAdvanced",
})
