"""An image into a graph, end to end on the compatibility stack (issue 30): uploaded as ComfyUI's clients upload
it (``POST /upload/image``, multipart, with httpx's ``files=`` as requests writes it), shown back by ``/view`` and
listed by ``/object_info`` as ComfyUI's clients read them, named by ComfyUI's img2img
workflow's LoadImage, run by a real worker from the input bucket, and its image fetched through ``/history`` and
``/view`` at the uploaded image's size."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import numpy as np
from PIL import Image

from tests.conftest import Stack
from tests.events import until
from tests.rest import call

WORKFLOWS = Path(__file__).resolve().parent.parent / "comfy" / "workflows"


def photo() -> bytes:
    out = io.BytesIO()
    Image.fromarray(np.random.default_rng(3).integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(out, "PNG")
    return out.getvalue()


def img2img(image: str) -> dict[str, Any]:
    """ComfyUI's img2img workflow as it saves it, on the tiny model at 3 steps."""
    graph = json.loads((WORKFLOWS / "img2img.json").read_text())
    graph["10"]["inputs"]["image"] = image
    graph["14"]["inputs"]["ckpt_name"] = "tiny-sd"
    graph["3"]["inputs"].update(steps=3, denoise=0.75)
    return graph


def test_an_uploaded_image_runs_through_the_img2img_graph(own_stack: Stack) -> None:
    answer = httpx.post(f"{own_stack.api_url}/upload/image", files={"image": ("example.png", photo(), "image/png")},
                        data={"overwrite": "true"}, timeout=30)
    assert answer.status_code == 200 and answer.json() == {"name": "example.png", "subfolder": "", "type": "input"}
    # as ComfyUI's clients show it: the same bytes back, and a LoadImage choice; a path reads nothing
    shown = httpx.get(f"{own_stack.api_url}/view", params={"filename": "example.png", "type": "input"},
                      follow_redirects=True, timeout=30)
    assert shown.status_code == 200 and shown.content == photo()
    for params in ({"filename": "../example.png", "type": "input"},
                   {"filename": "example.png", "subfolder": "../../comfy", "type": "input"}):
        refused = httpx.get(f"{own_stack.api_url}/view", params=params, timeout=30)
        assert refused.status_code in (400, 403) and "location" not in refused.headers, params
    listed = httpx.get(f"{own_stack.api_url}/object_info/LoadImage", timeout=30).json()
    assert "example.png" in listed["LoadImage"]["input"]["required"]["image"][0]
    status, queued = call("POST", f"{own_stack.api_url}/prompt", {"prompt": img2img(answer.json()["name"])})
    assert status == 200 and queued["node_errors"] == {}, queued
    prompt_id = queued["prompt_id"]
    done = until("the prompt's history", lambda: call("GET", f"{own_stack.api_url}/history/{prompt_id}")[1],
                 timeout=180, every=0.2)
    entry = done[prompt_id]
    assert entry["status"]["status_str"] == "success", entry["status"]
    assert entry["prompt"][2]["10"]["inputs"]["image"] == "example.png"  # history shows what the client sent
    (image,) = entry["outputs"]["9"]["images"]
    query = urlencode({"filename": image["filename"], "subfolder": image["subfolder"], "type": image["type"]})
    got = httpx.get(f"{own_stack.api_url}/view?{query}", follow_redirects=True, timeout=30)
    assert got.status_code == 200 and Image.open(io.BytesIO(got.content)).size == (64, 48)
    status, refused = call("POST", f"{own_stack.api_url}/prompt", {"prompt": img2img("never-uploaded.png")})
    assert status == 400 and refused["node_errors"]["10"]["errors"][0]["type"] == "value_not_in_list", refused
