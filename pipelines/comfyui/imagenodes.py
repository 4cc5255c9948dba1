"""Images from the input bucket and masks: LoadImage, LoadImageMask, VAEEncodeForInpaint, SetLatentNoiseMask.

``NODES``: the classes this area runs (``executor.node_table`` merges it; ``runtime.contract.comfy.table.RUNS``
lists the same names for the API).
"""

from __future__ import annotations

from pipelines.comfyui.registry import Node

NODES: dict[str, Node] = {}
