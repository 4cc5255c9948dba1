"""ComfyUI's HTTP API (issue 30, item 1) at the API: ``POST /prompt`` checks a graph ComfyUI saved and queues one
``comfyui`` job with its model names as catalog ids, or answers ComfyUI's 400 naming the node; ``/history``,
``/queue``, ``/interrupt``, ``/view``, ``/object_info`` and ``/system_stats`` answer in ComfyUI's shapes, each caller
seeing its own prompts only. The routes' Lambda code runs in this process against ``spotgen dev``'s real emulator
with no worker (the job is read off the work queue as the API queued it); the graphs run on workers in
tests/comfy/."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from lambdas import api as routes
from lambdas.comfy_upload import uploaded_names
from lambdas.common import deployment
from lambdas.sdapi import caller
from runtime.contract.comfy.table import RUNS
from runtime.local.devstack import DevStack
from runtime.storage import aws
from tests.lambdas.sdapi_stack import api_fixture, queued_spec  # noqa: F401 - the fixture "api"
from tests.lambdas.test_comfy_upload import png, upload

WORKFLOWS = Path(__file__).resolve().parent.parent / "comfy" / "workflows"
#: The source addresses whose uploads this module's tests make (``uploads`` takes them away again).
UPLOADERS = [f"10.0.3.{i}" for i in (8, 9, 10, 11)]


def who(address: str) -> str:
    """The caller the API makes of a source address (its prefix in the buckets)."""
    return caller({"requestContext": {"http": {"sourceIp": address}}})


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


@pytest.fixture
def uploads(api: DevStack) -> Iterator[None]:
    """The uploads a test makes are taken away after it: the stack is shared, and tests/lambdas/test_comfy_upload.py
    counts the input bucket's."""
    yield
    mine, s3 = {who(address) for address in UPLOADERS}, aws.client("s3", api.settings)
    for bucket, prefix in ((api.settings.input_bucket, "comfy/"), (api.settings.output_bucket, "comfy/uploads/")):
        for obj in s3.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", []):
            if obj["Key"].split("/")[1 if bucket == api.settings.input_bucket else 2] in mine:
                s3.delete_object(Bucket=bucket, Key=obj["Key"])


def test_view_of_type_input_gives_the_callers_upload_back(uploads: None) -> None:
    """ComfyUI's clients show an uploaded image so: the very bytes, through the redirect; another caller's, a
    missing one and one of a wrong type are not found or refused."""
    address, data = "10.0.3.8", png((10, 200, 30))
    assert upload(address, "mine.png", data, subfolder="pets", overwrite="true")[0] == 200
    assert upload(address, "scratch.png", png((1, 1, 1)), type="temp", overwrite="true")[0] == 200
    for query, sent in (("filename=mine.png&subfolder=pets&type=input", data),
                        ("filename=mine.png%20%5Binput%5D&subfolder=pets&type=output", data),  # ComfyUI's annotation
                        ("filename=scratch.png&type=temp", png((1, 1, 1)))):
        status, _, headers = call("GET", "/view", address, query=query)
        assert status == 302, query
        assert httpx.get(headers["Location"], timeout=30).content == sent
    for query, other, wanted in (("filename=mine.png&subfolder=pets&type=input", "10.0.3.9", 404),
                                    ("filename=mine.png&type=input", address, 404),  # not in that subfolder
                                    ("filename=mine.png&subfolder=pets&type=temp", address, 404),
                                    ("filename=mine.png&subfolder=pets&type=models", address, 400)):
        status, answer, headers = call("GET", "/view", other, query=query)
        assert (status, "Location" in headers) == (wanted, False), (query, answer)


@pytest.mark.parametrize(("query", "wanted"), [
    ("filename=../../ip-x/input/mine.png&type=input", 400),
    ("filename=..%2Fsecret.png&subfolder=pets&type=input", 400),  # decoded once: ../secret.png
    ("filename=..%252Fsecret.png&type=input", 400),  # doubly encoded
    ("filename=%2Fetc%2Fpasswd&type=input", 400),
    ("filename=mine.png&subfolder=..%2F..%2Fcomfy&type=input", 403),
    ("filename=mine.png&subfolder=%2Fetc&type=input", 403),
    ("filename=mine.png&subfolder=pets%2F..%2F..&type=input", 403),
    ("filename=mine.png&subfolder=C:%5Cpets&type=input", 403),
    ("filename=mine.png&subfolder=%252e%252e&type=input", 403),
    ("filename=&type=input", 400),
    ("filename=never-uploaded.png&subfolder=pets&type=input", 404),  # a name: looked up (the hook sees reads)
])
def test_view_of_an_upload_refuses_a_path_before_reading_anything(uploads: None, query: str, wanted: int) -> None:
    reads: list[str] = []

    def count(event_name: str, **_kwargs: Any) -> None:
        reads.append(event_name)

    events = deployment().store.s3.meta.events
    events.register("before-call.s3", count)
    try:
        status, answer, headers = call("GET", "/view", "10.0.3.8", query=query)
    finally:
        events.unregister("before-call.s3", count)
    assert (status, "Location" in headers, reads) == (wanted, False, [] if wanted != 404 else
                                                      ["before-call.s3.HeadObject"]), answer


def test_object_info_lists_the_callers_uploads_as_load_images_choices(uploads: None) -> None:
    address = "10.0.3.10"
    for name, subfolder in (("b.png", ""), ("a.png", "pets")):
        assert upload(address, name, png(), subfolder=subfolder, overwrite="true")[0] == 200
    assert upload(address, "t.png", png(), type="temp")[0] == 200  # not the input folder: not listed
    info = call("GET", "/object_info/LoadImage", address)[1]
    assert info["LoadImage"]["input"]["required"]["image"] == [["b.png", "pets/a.png"], {"image_upload": True}]
    everything = call("GET", "/object_info", address)[1]
    assert everything["LoadImage"] == info["LoadImage"]
    assert everything["LoadImageMask"]["input"]["required"]["image"][0] == ["b.png", "pets/a.png"]
    assert call("GET", "/object_info/LoadImage", "10.0.3.11")[1]["LoadImage"]["input"]["required"]["image"][0] == []
    assert len(uploaded_names(deployment(), who(address), limit=1)) == 1
    # the graph check takes a listed name and refuses another, naming the node and the input
    graph = workflow("img2img.json")
    graph["14"]["inputs"]["ckpt_name"] = "tiny-sd"
    graph["10"]["inputs"]["image"] = "pets/a.png"
    assert call("POST", "/prompt", address, {"prompt": graph})[0] == 200
    graph["10"]["inputs"]["image"] = "pets/never.png"
    status, answer, _ = call("POST", "/prompt", address, {"prompt": graph})
    (error,) = answer["node_errors"]["10"]["errors"]
    assert status == 400 and answer["node_errors"]["10"]["class_type"] == "LoadImage"
    assert error["type"] == "value_not_in_list" and error["extra_info"]["input_name"] == "image"


def test_a_graph_with_a_refiner_checkpoint_is_queued_with_its_catalog_id(api: DevStack) -> None:
    status, answer, _ = call("POST", "/prompt", "10.0.3.12", {"prompt": workflow("sdxl_refiner.json")})
    assert status == 200, answer
    spec = queued_spec(api, answer["prompt_id"])
    assert spec["model"] == "tiny-sdxl" and spec["inputs"]["graph"]["12"]["inputs"]["ckpt_name"] == "tiny-sdxl-refiner"
