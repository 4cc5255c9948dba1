"""The Flux and SD 3.5 node classes the interpreter runs (``pipelines/comfyui/flownodes.py``); ``table.RUNS``
joins them to the core set for the API."""

from __future__ import annotations

RUNS_FLOW: frozenset[str] = frozenset()
