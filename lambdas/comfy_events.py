"""ComfyUI's websocket messages (``/ws?clientId=``) from spotgen's status documents.

A ComfyUI client watches its prompts run through ``status``, ``execution_start``, ``executing`` (a node id, then
``null`` when the prompt is done: what ComfyUI's example scripts wait for), ``progress``, ``executed`` (an output
node's images), ``execution_success``, ``execution_error`` and ``execution_interrupted``. spotgen's status document
says the same things in its own words: the state, the pass the steps are in (a sampler node's, named after it by
the interpreter: ``ksampler-3``), the steps, and at the end the images. ``Watch`` turns each change it is shown
into the messages ComfyUI would have sent by then; ``spotgen dev``'s websocket shows it the client's prompts as
they change (``runtime/local/comfyws.py``).
"""

from __future__ import annotations

import time
from typing import Any

from runtime.contract import JobState, StatusDoc
from runtime.contract.comfy.outputs import history_outputs, node_order

Message = dict[str, Any]


def status_message(queue_remaining: int, sid: str | None = None) -> Message:
    data: dict[str, Any] = {"status": {"exec_info": {"queue_remaining": queue_remaining}}}
    if sid is not None:
        data["sid"] = sid
    return {"type": "status", "data": data}


def node_of(graph: dict[str, Any], phase: str | None) -> str | None:
    """The sampler node whose pass ``phase`` is (the interpreter names a pass ``{class}-{id}`` in lowercase)."""
    for key, node in graph.items():
        if phase is not None and phase == f"{node['class_type'].lower()}-{key.lower()}":
            return key
    return None


#: The node classes that run steps (each a pass of the job, named after its node).
SAMPLERS = ("KSampler", "KSamplerAdvanced", "SamplerCustomAdvanced")


def last_sampler(graph: dict[str, Any]) -> str | None:
    """The sampler node that runs last in a graph whose samplers feed one another: the last by id."""
    samplers = [key for key, node in graph.items() if node["class_type"] in SAMPLERS]
    return max(samplers, key=node_order) if samplers else None


def planned_steps(graph: dict[str, Any], node: str) -> int:
    """The steps a sampler node runs, from the graph: KSampler's ``steps`` (ComfyUI runs that many whatever its
    denoise), or the ``steps`` of the scheduler node a custom sampler's sigmas come from; 0 when unknown."""
    inputs = graph[node]["inputs"]
    if isinstance(inputs.get("steps"), int):
        return int(inputs["steps"])
    sigmas = inputs.get("sigmas")
    if isinstance(sigmas, list) and sigmas and str(sigmas[0]) in graph:
        steps = graph[str(sigmas[0])]["inputs"].get("steps")
        return int(steps) if isinstance(steps, int) else 0
    return 0


class Watch:
    """What one client has been told about each of its prompts, so that each message is sent once."""

    def __init__(self) -> None:
        self._started: set[str] = set()
        self._ended: set[str] = set()
        self._at: dict[str, tuple[str | None, int]] = {}

    def skip(self, prompt_id: str) -> None:
        """Say nothing of this prompt: it ended before the client was watching."""
        self._ended.add(prompt_id)

    def messages(self, kept: dict[str, Any], doc: StatusDoc) -> list[Message]:
        """The messages due for ``doc`` (the job of prompt ``kept``) since the last call for it."""
        prompt_id, graph, out = doc.id, kept["graph"], []
        stamp = int(time.time() * 1000)
        if prompt_id in self._ended:
            return out
        if prompt_id not in self._started and (doc.state is JobState.running or doc.state.final):
            self._started.add(prompt_id)
            out += [{"type": "execution_start", "data": {"prompt_id": prompt_id, "timestamp": stamp}},
                    {"type": "execution_cached", "data": {"nodes": [], "prompt_id": prompt_id, "timestamp": stamp}}]
        node = node_of(graph, doc.progress.phase)
        if node is None and doc.state.final:  # a final document names no pass: the last one seen, or the last
            node = (self._at.get(prompt_id) or (None, 0))[0] or last_sampler(graph)  # of the graph's samplers
        # the steps as last seen; a job that ended between two looks gets its last count (a fast one, all of them)
        moving = doc.state is JobState.running or doc.state is JobState.succeeded
        if moving and (node, doc.progress.step) != self._at.get(prompt_id):
            if node is not None and (self._at.get(prompt_id) or (None, 0))[0] != node:
                out.append({"type": "executing", "data": {"node": node, "display_node": node,
                                                          "prompt_id": prompt_id}})
            self._at[prompt_id] = (node, doc.progress.step)
            step, total = doc.progress.step, doc.progress.total
            if not total and doc.state is JobState.succeeded and node is not None:
                # done before any step was written (a fast job): the sampler ran all of its own steps
                step = total = planned_steps(graph, node)
            if total:
                out.append({"type": "progress", "data": {"value": step, "max": total, "prompt_id": prompt_id,
                                                         "node": node}})
        if doc.state.final:
            self._ended.add(prompt_id)
            out += self._end(prompt_id, graph, doc, stamp)
        return out

    @staticmethod
    def _end(prompt_id: str, graph: dict[str, Any], doc: StatusDoc, stamp: int) -> list[Message]:
        if doc.state is JobState.succeeded:
            out: list[Message] = []
            for key, output in history_outputs(graph, doc.outputs).items():
                out += [{"type": "executing", "data": {"node": key, "display_node": key, "prompt_id": prompt_id}},
                        {"type": "executed", "data": {"node": key, "display_node": key, "output": output,
                                                      "prompt_id": prompt_id}}]
            return [*out, {"type": "execution_success", "data": {"prompt_id": prompt_id, "timestamp": stamp}},
                    {"type": "executing", "data": {"node": None, "prompt_id": prompt_id}}]
        if doc.state is JobState.cancelled:
            ended = {"type": "execution_interrupted", "data": {"prompt_id": prompt_id, "node_id": None,
                                                               "node_type": None, "executed": [], "timestamp": stamp}}
        else:
            ended = {"type": "execution_error", "data": {
                "prompt_id": prompt_id, "node_id": None, "node_type": None, "executed": [],
                "exception_message": doc.error.message if doc.error else f"the job ended {doc.state.value}",
                "exception_type": doc.error.code if doc.error else doc.state.value, "traceback": [],
                "current_inputs": {}, "current_outputs": {}, "timestamp": stamp}}
        return [ended, {"type": "executing", "data": {"node": None, "prompt_id": prompt_id}}]
