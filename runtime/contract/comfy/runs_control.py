"""The ControlNet node classes the interpreter runs (``pipelines/comfyui/controlnodes.py``); ``table.RUNS`` joins
them to the core set for the API (KSampler with a controlled conditioning is the core KSampler's name)."""

from __future__ import annotations

RUNS_CONTROL: frozenset[str] = frozenset({"ControlNetLoader", "ControlNetApply", "ControlNetApplyAdvanced", "Canny"})
