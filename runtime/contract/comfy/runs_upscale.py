"""The upscale-model node classes the interpreter runs (``pipelines/comfyui/upscalenodes.py``); ``table.RUNS``
joins them to the core set for the API."""

from __future__ import annotations

RUNS_UPSCALE: frozenset[str] = frozenset({"UpscaleModelLoader", "ImageUpscaleWithModel"})
