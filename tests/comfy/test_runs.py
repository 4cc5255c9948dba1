"""The API's list of the nodes the worker runs (``runtime.contract.comfy.table.RUNS``: what ``/object_info`` shows
and ``POST /prompt`` takes) is the interpreter's own table, so the API never queues a graph the worker refuses."""

from __future__ import annotations

from pipelines.comfyui.executor import node_table
from runtime.contract.comfy.table import RUNS, all_nodes


def test_the_api_takes_exactly_the_nodes_the_interpreter_runs() -> None:
    assert set(node_table()) == RUNS
    assert set(all_nodes()) >= RUNS  # each declared with ComfyUI's inputs
