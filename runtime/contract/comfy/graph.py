"""``check_graph``: every check of an API-format graph before it runs, with ComfyUI's error shapes.

The API checks a graph before anything is queued, so a client learns of an unknown node, a broken link or a value
out of range from ``POST /prompt``'s 400, in the shape ComfyUI's frontend and clients already show (``error`` and
``node_errors`` by node id, each with ComfyUI's error types and texts), instead of from a failed job on a GPU; the
worker checks again (``ComfyInputs``), as a job may come by another road. As in ComfyUI, only the nodes an output
node depends on are checked and run, and every node's errors are reported, not the first. Unlike ComfyUI, a graph
with an invalid output is refused whole, not run for its other outputs: a client pays for what it asked for or
for nothing.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from runtime.contract.comfy.nodes import Node
from runtime.contract.comfy.objectinfo import declaration
from runtime.contract.comfy.pairs import check_sampler_pairs
from runtime.contract.comfy.table import RUNS, all_nodes
from runtime.contract.comfy.values import check_value, link_of, node_error
from runtime.contract.errors import ContractError
from runtime.contract.webui_rules import Names

#: The most nodes a graph may have (ComfyUI's own example workflows have up to a few dozen).
MAX_NODES = 500
#: The longest graph, as JSON; prompts and uploaded images' references make most of it.
MAX_GRAPH_CHARS = 1_000_000


class GraphError(ValueError):
    """A graph ComfyUI would refuse: ``error`` and ``node_errors`` are ``POST /prompt``'s 400 body (``body()``).
    A ValueError, so that pydantic reports it where a model checks a graph (``ComfyInputs``)."""

    def __init__(self, error: dict[str, Any], node_errors: dict[str, Any] | None = None) -> None:
        super().__init__(f"{error['message']}: {error['details']}" if error["details"] else error["message"])
        self.error = error
        self.node_errors = node_errors or {}

    def body(self) -> dict[str, Any]:
        return {"error": self.error, "node_errors": self.node_errors}

    def contract_error(self, prefix: str) -> ContractError:
        """The same refusal in spotgen's shape, for a graph inside another request (the AWS sample's
        ``task.content``): the first node error's input as ``{prefix}.{node}.inputs.{input}``."""
        for key, entry in self.node_errors.items():
            first = entry["errors"][0]
            name = first.get("extra_info", {}).get("input_name")
            field = f"{prefix}.{key}.inputs.{name}" if name else f"{prefix}.{key}"
            return ContractError("invalid_field", f"{field}: {first['message']}: {first['details']} "
                                 f"(node {key}, {entry['class_type']})", field)
        return ContractError("invalid_field", f"{prefix}: {self}", prefix)


def _error(kind: str, message: str, details: str = "", **extra: Any) -> dict[str, Any]:
    return {"type": kind, "message": message, "details": details, "extra_info": extra}


def check_graph(prompt: Any, names: Names | None = None, max_nodes: int = MAX_NODES,
                max_chars: int = MAX_GRAPH_CHARS) -> dict[str, Any]:
    """The graph as the interpreter runs it: the nodes the output nodes depend on (in the graph's order, with
    their ``_meta``), each with the inputs its class declares, values converted as ComfyUI converts them, links as
    ``[node_id, output_index]`` and model names resolved to catalog ids when ``names`` (the deployment's catalog)
    is given; without it any model name is taken (the worker's check of a graph the API resolved). GraphError
    otherwise. Checking the result again gives the same graph."""
    _check_shape(prompt, max_nodes, max_chars)
    table = all_nodes()
    unknown = [(key, node["class_type"]) for key, node in prompt.items() if node["class_type"] not in table]
    if unknown:
        raise _missing_nodes(unknown)
    outputs = [key for key, node in prompt.items() if table[node["class_type"]].output_node]
    if not outputs:
        raise GraphError(_error("prompt_no_outputs", "Prompt has no outputs"))
    reach = {out: _upstream(prompt, out) for out in outputs}
    needed = [key for key in prompt if any(key in nodes for nodes in reach.values())]
    errors: dict[str, list[dict[str, Any]]] = {}
    checked: dict[str, dict[str, Any]] = {}
    for key in needed:
        checked[key], node_errors = _check_node(prompt, key, table[prompt[key]["class_type"]], names)
        if node_errors:
            errors[key] = node_errors
    for key in _on_cycles(prompt, needed):
        errors.setdefault(key, []).append(node_error(
            "dependency_cycle", "Dependency cycle detected", f"Node ID '#{key}' depends on its own output"))
    check_sampler_pairs(prompt, checked, errors, names)
    if errors:
        raise _failed(prompt, outputs, reach, errors)
    graph = {}
    for key in needed:
        graph[key] = {"class_type": prompt[key]["class_type"], "inputs": checked[key]}
        if isinstance(prompt[key].get("_meta"), dict):
            graph[key]["_meta"] = prompt[key]["_meta"]
    return graph


def _check_shape(prompt: Any, max_nodes: int, max_chars: int) -> None:
    if prompt is None:
        raise GraphError(_error("no_prompt", "No prompt provided", "No prompt provided"))
    if not isinstance(prompt, dict):
        raise GraphError(_error("invalid_prompt", "Cannot execute because the prompt is not a JSON object of "
                                "nodes by id.", f"received a {type(prompt).__name__}"))
    if len(prompt) > max_nodes:
        raise GraphError(_error("invalid_prompt", f"Cannot execute because the prompt has {len(prompt)} nodes; "
                                f"spotgen runs at most {max_nodes}.", f"{len(prompt)} nodes"))
    try:
        size = len(json.dumps(prompt))
    except (TypeError, ValueError, RecursionError) as ex:
        raise GraphError(_error("invalid_prompt", "Cannot execute because the prompt is not JSON.", str(ex))) \
            from None
    if size > max_chars:
        raise GraphError(_error("invalid_prompt", f"Cannot execute because the prompt is {size} characters of "
                                f"JSON; spotgen takes at most {max_chars}.", f"{size} characters"))
    for key, node in prompt.items():
        if not isinstance(key, str) or not isinstance(node, dict) or not isinstance(node.get("class_type"), str):
            raise GraphError(_error("invalid_prompt", "Cannot execute because a node is missing the class_type "
                                    "property.", f"Node ID '#{key}'"))
        if not isinstance(node.get("inputs", {}), dict):
            raise GraphError(_error("invalid_prompt", "Cannot execute because a node's inputs are not an object.",
                                    f"Node ID '#{key}'"))


def _missing_nodes(unknown: list[tuple[str, str]], not_yet: bool = False) -> GraphError:
    """ComfyUI names the first unknown node; every one of them is in ``node_errors``, so that a client sees all
    the custom nodes it has to replace at once. ``not_yet``: core nodes the interpreter does not run yet."""
    def message(class_type: str) -> str:
        if not_yet:
            return (f"Node '{class_type}' not found. spotgen does not run this core node yet (GET /object_info lists "
                    "the ones it runs; docs/comfyui.md the ones to come).")
        return (f"Node '{class_type}' not found. The custom node may not be installed. spotgen runs ComfyUI's "
                "core nodes only (GET /object_info lists them), not custom nodes.")

    key, class_type = unknown[0]
    node_errors = {k: {"errors": [node_error("missing_node_type", message(c), f"Node ID '#{k}'", node_id=k,
                                             class_type=c)],
                       "dependent_outputs": [], "class_type": c} for k, c in unknown}
    return GraphError(_error("missing_node_type", message(class_type), f"Node ID '#{key}'", node_id=key,
                             class_type=class_type), node_errors)


def not_run_yet(graph: Mapping[str, Any]) -> None:
    """GraphError, ComfyUI's missing node, when a checked graph holds nodes the interpreter does not run yet."""
    if waiting := [(key, node["class_type"]) for key, node in graph.items() if node["class_type"] not in RUNS]:
        raise _missing_nodes(waiting, not_yet=True)


def _links(prompt: Mapping[str, Any], key: str) -> list[str]:
    return [found[0] for value in prompt[key].get("inputs", {}).values() if (found := link_of(prompt, value))]


def _upstream(prompt: Mapping[str, Any], output: str) -> set[str]:
    """The output node and every node it depends on through links (a broken link leads nowhere)."""
    seen, todo = {output}, [output]
    while todo:
        for source in _links(prompt, todo.pop()):
            if source not in seen:
                seen.add(source)
                todo.append(source)
    return seen


def _check_node(prompt: Mapping[str, Any], key: str, node: Node,
                names: Names | None) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(the node's inputs as checked, its errors): ComfyUI's ``validate_inputs`` for one node; inputs the class
    does not declare are left out, as ComfyUI passes none of them to the node."""
    given = prompt[key].get("inputs", {})
    out: dict[str, Any] = {}
    errors: list[dict[str, Any]] = []
    for spec in node.inputs:
        if spec.name not in given:
            if not spec.optional:
                errors.append(node_error("required_input_missing", "Required input is missing", spec.name,
                                         input_name=spec.name))
            continue
        value = given[spec.name]
        if isinstance(value, list):
            error = _check_link(prompt, spec.name, value, spec.type, declaration(spec, names))
            if error is None:
                found = link_of(prompt, value)
                assert found is not None
                value = list(found)
        else:
            value, error = check_value(spec, value, names)
        if error is not None:
            errors.append(error)
        out[spec.name] = value
    return out, errors


def _check_link(prompt: Mapping[str, Any], name: str, value: list[Any], wanted: str | tuple[str, ...],
                config: list[Any]) -> dict[str, Any] | None:
    extra = {"input_name": name, "input_config": config, "received_value": value}
    if len(value) != 2 or isinstance(value[1], bool) or not isinstance(value[1], int):
        return node_error("bad_linked_input", "Bad linked input, must be a length-2 list of [node_id, slot_index]",
                          name, **extra)
    found = link_of(prompt, value)
    if found is None:
        return node_error("bad_linked_input", "Bad linked input, the linked node does not exist",
                          f"{name}: no node '#{value[0]}' in the prompt", **extra)
    source, index = found
    source_class = prompt[source]["class_type"]
    returns = all_nodes()[source_class].outputs
    if not 0 <= index < len(returns):
        has = f"outputs 0 to {len(returns) - 1}" if returns else "no outputs"
        return node_error("bad_linked_input", "Bad linked input, the linked node has no such output",
                          f"{name}: {source_class} node '#{source}' has {has}, not {index}", **extra)
    input_type = wanted if isinstance(wanted, str) else "COMBO"
    if returns[index] != input_type:
        return node_error("return_type_mismatch", "Return type mismatch between linked nodes",
                          f"{name}, received_type({returns[index]}) mismatch input_type({input_type})",
                          input_name=name, input_config=config, received_type=returns[index], linked_node=value)
    return None


def _on_cycles(prompt: Mapping[str, Any], needed: list[str]) -> list[str]:
    """The nodes that depend on their own output. Most graphs have none: the nodes left once those whose sources
    are all settled are taken away one by one (Kahn's order) are the only ones to search from."""
    sources = {key: set(_links(prompt, key)) for key in needed}
    settled: set[str] = set()
    progress = True
    while progress:
        ready = [key for key in needed if key not in settled and sources[key] <= settled]
        settled.update(ready)
        progress = bool(ready)
    left = [key for key in needed if key not in settled]
    return [key for key in left if any(key in _upstream(prompt, source) for source in sources[key])]


def _failed(prompt: Mapping[str, Any], outputs: list[str], reach: Mapping[str, set[str]],
            errors: Mapping[str, list[dict[str, Any]]]) -> GraphError:
    """ComfyUI's ``prompt_outputs_failed_validation``, each node's errors listing the outputs that depend on the
    node. ComfyUI's details hold the output nodes' own errors only (often none); here they hold every node's, in
    its line format, so that a client or a log that shows ``error`` alone says what is wrong."""
    node_errors = {key: {"errors": errors[key], "dependent_outputs": [o for o in outputs if key in reach[o]],
                         "class_type": prompt[key]["class_type"]} for key in prompt if key in errors}
    details = "\n".join(f"{e['message']}: {e['details']}" for key in node_errors for e in errors[key])
    return GraphError(_error("prompt_outputs_failed_validation", "Prompt outputs failed validation", details),
                      node_errors)
