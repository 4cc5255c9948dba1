"""The ``comfyui`` pipeline's inputs: one API-format graph (``{node_id: {"class_type", "inputs"}}``).

The API resolves the graph's model names (``ckpt_name``, ``lora_name``...) to catalog ids and its uploaded images
to the input bucket's references before it queues the job, so the worker's graph names nothing it has to look up
by a client's name; what a client sent stays in the job's request for ``/history``.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, field_validator


class ComfyInputs(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    graph: dict[str, Any]

    @field_validator("graph")
    @classmethod
    def _checked(cls, graph: dict[str, Any]) -> dict[str, Any]:
        from runtime.contract.comfy.graph import check_graph  # the node table is large: imported when a graph comes

        return check_graph(graph)  # as the interpreter runs it: values converted, the needed nodes only
