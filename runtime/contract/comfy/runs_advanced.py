"""The advanced sampler the interpreter runs (``pipelines/comfyui/advanced.py``); ``table.RUNS`` joins it to the
core set for the API."""

from __future__ import annotations

RUNS_ADVANCED: frozenset[str] = frozenset({"KSamplerAdvanced"})
