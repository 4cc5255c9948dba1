"""A graph ComfyUI saved, end to end on the compatibility stack (issue 30): ``POST /prompt`` over HTTP, a real
worker runs the ``comfyui`` pipeline, ``/history/{id}`` lists the SaveImage node's image as ComfyUI does, and
``/view`` gives its bytes (a redirect to the output bucket, followed as ComfyUI's clients' ``urllib`` follows it);
``/ws`` tells a client its prompt's run as ComfyUI's own example script reads it; a PreviewImage's image is viewed
as ComfyUI's ``temp`` type."""

from __future__ import annotations

import io
import json
import urllib.request
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

import websocket
from PIL import Image

from tests.conftest import Stack
from tests.events import until
from tests.rest import call

WORKFLOWS = Path(__file__).resolve().parent.parent / "comfy" / "workflows"


def small_default_graph() -> dict[str, Any]:
    """ComfyUI's default workflow as it saves it, at a size and step count the tiny model answers at once."""
    graph = json.loads((WORKFLOWS / "default_txt2img.json").read_text())
    graph["5"]["inputs"].update(width=64, height=48, batch_size=2)
    graph["3"]["inputs"]["steps"] = 3
    return graph


def test_a_saved_graph_runs_and_history_and_view_answer_as_comfyui(own_stack: Stack) -> None:
    status, answer = call("POST", f"{own_stack.api_url}/prompt", {"prompt": small_default_graph(), "client_id": "t"})
    assert status == 200 and answer["node_errors"] == {}, answer
    prompt_id = answer["prompt_id"]
    done = until("the prompt's history", lambda: call("GET", f"{own_stack.api_url}/history/{prompt_id}")[1],
                 timeout=180, every=0.2)
    entry = done[prompt_id]
    assert entry["status"]["status_str"] == "success" and entry["status"]["completed"], entry["status"]
    assert [m[0] for m in entry["status"]["messages"]][-1] == "execution_success"
    images = entry["outputs"]["9"]["images"]  # the SaveImage node, its batch of two
    assert [image["filename"] for image in images] == ["0.png", "1.png"]
    assert {image["type"] for image in images} == {"output"} and images[0]["subfolder"].endswith(prompt_id)
    pixels = []
    for image in images:
        query = urlencode({"filename": image["filename"], "subfolder": image["subfolder"], "type": image["type"]})
        with urllib.request.urlopen(f"{own_stack.api_url}/view?{query}", timeout=30) as got:
            png = Image.open(io.BytesIO(got.read()))
        assert png.size == (64, 48)
        pixels.append(png.tobytes())
    assert pixels[0] != pixels[1]  # two images of the batch, each its own noise


def test_the_websocket_tells_a_client_its_prompt_as_comfyuis_example_script_reads_it(own_stack: Stack) -> None:
    """The messages ComfyUI's websockets_api_example.py waits for, in ComfyUI's order, with the real
    ``websocket-client`` it uses; then its way to the images (history, then /view)."""
    client_id = uuid.uuid4().hex
    ws = websocket.WebSocket()
    ws.connect(f"ws://{urlsplit(own_stack.api_url).netloc}/ws?clientId={client_id}", timeout=60)
    try:
        first = json.loads(ws.recv())
        assert first["type"] == "status" and first["data"]["sid"] == client_id, first
        status, answer = call("POST", f"{own_stack.api_url}/prompt", {"prompt": small_default_graph(),
                                                                      "client_id": client_id})
        assert status == 200, answer
        prompt_id, seen = answer["prompt_id"], []
        while True:  # the example script's loop: until "executing" names no node for this prompt
            message = json.loads(ws.recv())
            seen.append(message)
            data = message["data"]
            if message["type"] == "executing" and data["node"] is None and data["prompt_id"] == prompt_id:
                break
    finally:
        ws.close()
    kinds = [m["type"] for m in seen if m["type"] != "status"]
    assert kinds[:3] == ["execution_start", "execution_cached", "executing"], kinds
    assert kinds[-4:] == ["executing", "executed", "execution_success", "executing"], kinds
    steps = [m["data"] for m in seen if m["type"] == "progress"]
    assert steps and all(s["node"] == "3" and s["max"] >= s["value"] for s in steps)  # the KSampler's steps
    assert [s["value"] for s in steps] == sorted(s["value"] for s in steps)
    executed = next(m["data"] for m in seen if m["type"] == "executed")
    assert executed["node"] == "9" and len(executed["output"]["images"]) == 2
    history = call("GET", f"{own_stack.api_url}/history/{prompt_id}")[1][prompt_id]
    assert history["outputs"]["9"] == executed["output"]


def test_a_preview_is_viewed_as_comfyuis_temp_image(own_stack: Stack) -> None:
    """PreviewImage's images are ``temp`` in /history and /view gives them by that type; an upload of theirs by that
    name there is not (a client's temp folder is its uploads)."""
    graph = small_default_graph()
    graph["5"]["inputs"]["batch_size"] = 1
    graph["9"] = {"class_type": "PreviewImage", "inputs": {"images": ["8", 0]}}
    prompt_id = call("POST", f"{own_stack.api_url}/prompt", {"prompt": graph})[1]["prompt_id"]
    done = until("the prompt's history", lambda: call("GET", f"{own_stack.api_url}/history/{prompt_id}")[1],
                 timeout=180, every=0.2)
    (image,) = done[prompt_id]["outputs"]["9"]["images"]
    assert image["type"] == "temp"
    with urllib.request.urlopen(f"{own_stack.api_url}/view?{urlencode(image)}", timeout=30) as got:
        assert Image.open(io.BytesIO(got.read())).size == (64, 48)
    status, answer = call("GET", f"{own_stack.api_url}/view?{urlencode({**image, 'type': 'input'})}")
    assert status == 404 and answer["error"]["field"] == "filename", answer
