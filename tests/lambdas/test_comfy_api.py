"""ComfyUI's HTTP API (issue 30, item 1) at the API: ``POST /prompt`` checks a graph ComfyUI saved and queues one
``comfyui`` job with its model names as catalog ids, or answers ComfyUI's 400 naming the node; ``/history``,
``/queue``, ``/interrupt``, ``/view``, ``/object_info`` and ``/system_stats`` answer in ComfyUI's shapes, each caller
seeing its own prompts only. The routes' Lambda code runs in this process against ``spotgen dev``'s real emulator
with no worker (the job is read off the work queue as the API queued it); the graphs run on workers in
tests/comfy/."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lambdas import api as routes
from runtime.contract.comfy.table import RUNS
from runtime.local.devstack import DevStack
from tests.lambdas.sdapi_stack import api_fixture, queued_spec  # noqa: F401 - the fixture "api"

WORKFLOWS = Path(__file__).resolve().parent.parent / "comfy" / "workflows"


def call(method: str, path: str, who: str, body: Any = None, query: str = "") -> tuple[int, Any, dict[str, str]]:
    event = {"rawPath": path, "rawQueryString": query, "body": None if body is None else json.dumps(body),
             "requestContext": {"http": {"method": method, "sourceIp": who}}}
    answer = routes.handler(event)
    return answer["statusCode"], json.loads(answer["body"]), answer.get("headers") or {}


def workflow(name: str) -> dict[str, Any]:
    return json.loads((WORKFLOWS / name).read_text())


def test_a_saved_graph_is_queued_as_one_job_with_catalog_ids(api: DevStack) -> None:
    who = "10.0.3.1"
    status, answer, _ = call("POST", "/prompt", who, {"prompt": workflow("default_txt2img.json"),
                                                      "client_id": "c1"})
    assert status == 200 and answer["node_errors"] == {} and isinstance(answer["number"], int), answer
    spec = queued_spec(api, answer["prompt_id"])
    assert (spec["pipeline"], spec["model"]) == ("comfyui", "tiny-sd")
    loader = next(n for n in spec["inputs"]["graph"].values() if n["class_type"] == "CheckpointLoaderSimple")
    assert loader["inputs"]["ckpt_name"] == "tiny-sd"  # the file name ComfyUI saved, as the catalog's id
    # queued, not run: no history yet (ComfyUI's {} until a prompt has run), one in the caller's queue
    assert call("GET", f"/history/{answer['prompt_id']}", who)[:2] == (200, {})
    status, queue, _ = call("GET", "/queue", who)
    assert [entry[1] for entry in queue["queue_pending"]] == [answer["prompt_id"]] and queue["queue_running"] == []
    assert call("GET", "/prompt", who)[1] == {"exec_info": {"queue_remaining": 1}}
    # another caller sees none of it
    assert call("GET", "/queue", "10.0.3.2")[1] == {"queue_running": [], "queue_pending": []}
    assert call("GET", f"/history/{answer['prompt_id']}", "10.0.3.2")[1] == {}


def test_interrupt_cancels_the_callers_prompt_and_history_says_so(api: DevStack) -> None:
    who = "10.0.3.3"
    prompt_id = call("POST", "/prompt", who, {"prompt": workflow("default_txt2img.json")})[1]["prompt_id"]
    assert call("POST", "/interrupt", "10.0.3.4", {"prompt_id": prompt_id})[:2] == (200, {})  # not theirs
    assert call("GET", f"/history/{prompt_id}", who)[1] == {}
    assert call("POST", "/interrupt", who, {"prompt_id": prompt_id})[:2] == (200, {})
    entry = call("GET", f"/history/{prompt_id}", who)[1][prompt_id]
    assert entry["status"]["status_str"] == "error" and not entry["status"]["completed"]
    assert [message[0] for message in entry["status"]["messages"]] == ["execution_start", "execution_interrupted"]
    assert entry["prompt"][1] == prompt_id and entry["prompt"][2] == workflow("default_txt2img.json")
    assert prompt_id in call("GET", "/history", who, query="max_items=5")[1]


def test_graph_errors_are_comfyuis_400_naming_the_node(api: DevStack) -> None:
    graph = workflow("default_txt2img.json")
    graph["4"]["inputs"]["ckpt_name"] = "no-such-model.safetensors"
    graph["99"] = {"class_type": "SomeCustomNode", "inputs": {}}
    status, answer, _ = call("POST", "/prompt", "10.0.3.5", {"prompt": graph})
    assert status == 400 and answer["error"]["type"] == "missing_node_type", answer  # custom nodes are not run
    assert "99" in json.dumps(answer["error"]) and "SomeCustomNode" in json.dumps(answer["error"])
    del graph["99"]
    status, answer, _ = call("POST", "/prompt", "10.0.3.5", {"prompt": graph})
    assert status == 400 and answer["error"]["type"] == "prompt_outputs_failed_validation", answer
    (error,) = answer["node_errors"]["4"]["errors"]
    assert answer["node_errors"]["4"]["class_type"] == "CheckpointLoaderSimple"
    assert error["type"] == "value_not_in_list" and error["extra_info"]["input_name"] == "ckpt_name"
    for body in ({"client_id": "x"}, [1], {"prompt": "not a graph"}):
        status, answer, _ = call("POST", "/prompt", "10.0.3.5", body)
        assert status == 400 and answer["error"]["type"] in ("invalid_prompt",), (body, answer)
    assert call("GET", "/queue", "10.0.3.5")[1]["queue_pending"] == []  # nothing refused was queued


def test_view_opens_only_outputs_of_the_callers_prompts(api: DevStack) -> None:
    for query in ("filename=0.png&subfolder=outputs/" + "0" * 32 + "&type=output",
                  "filename=../../secret&subfolder=comfy/prompts&type=output", "filename=x.png"):
        status, answer, _ = call("GET", "/view", "10.0.3.6", query=query)
        assert status == 404 and answer["error"]["field"] == "filename", (query, answer)


def test_object_info_lists_the_nodes_with_the_deployments_models(api: DevStack) -> None:
    status, info, _ = call("GET", "/object_info", "10.0.3.7")
    assert status == 200 and set(info) == RUNS  # what the interpreter runs, no more
    assert {"KSampler", "CheckpointLoaderSimple", "SaveImage"} <= set(info)
    checkpoints = info["CheckpointLoaderSimple"]["input"]["required"]["ckpt_name"][0]
    assert {"tiny-sd", "v1-5-pruned-emaonly.safetensors"} <= set(checkpoints)
    assert "euler" in info["KSampler"]["input"]["required"]["sampler_name"][0]
    assert call("GET", "/object_info/KSampler", "10.0.3.7")[1] == {"KSampler": info["KSampler"]}
    assert call("GET", "/object_info/SomeCustomNode", "10.0.3.7")[1] == {}
    stats = call("GET", "/system_stats", "10.0.3.7")[1]
    assert set(stats) == {"system", "devices"} and "python_version" in stats["system"]
