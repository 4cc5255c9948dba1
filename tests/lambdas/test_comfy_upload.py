"""ComfyUI's ``POST /upload/image`` and the names ``POST /prompt`` resolves (issue 30, item 1): an upload answers as
ComfyUI does (``name``, ``subfolder``, ``type``; a taken name renamed ``name (1).png`` unless ``overwrite``), is
kept in the input bucket under the caller's prefix, and a LoadImage naming it is queued with that object's
reference; what is no PNG/JPEG/WebP, too large, or never uploaded by this caller is refused naming the field. The
routes' Lambda code runs in this process against ``spotgen dev``'s emulator with no worker (tests/comfy runs the
graphs)."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from lambdas import api as routes
from runtime.contract.images import MAX_IMAGE_BYTES
from runtime.local.devstack import DevStack
from runtime.storage import aws
from tests.lambdas.sdapi_stack import api_fixture, queued_spec  # noqa: F401 - the fixture "api"

WORKFLOWS = Path(__file__).resolve().parent.parent / "comfy" / "workflows"
BOUNDARY = "----spotgenTestBoundary7MA4YWxkTrZu0gW"


def png(color: tuple[int, int, int] = (200, 30, 30), size: tuple[int, int] = (16, 12)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, color).save(out, "PNG")
    return out.getvalue()


def form(files: dict[str, tuple[str, bytes]], fields: dict[str, str]) -> bytes:
    """A multipart/form-data body, as requests and browsers write one."""
    parts = []
    for name, value in fields.items():
        parts.append(f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
    for name, (filename, data) in files.items():
        head = (f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
                "Content-Type: image/png\r\n\r\n").encode()
        parts.append(head + data + b"\r\n")
    return b"".join(parts) + f"--{BOUNDARY}--\r\n".encode()


def upload(who: str, filename: str, data: bytes, **fields: str) -> tuple[int, Any]:
    event = {"rawPath": "/upload/image", "rawQueryString": "", "isBase64Encoded": True,
             "headers": {"content-type": f"multipart/form-data; boundary={BOUNDARY}"},
             "body": base64.b64encode(form({"image": (filename, data)}, fields)).decode(),
             "requestContext": {"http": {"method": "POST", "sourceIp": who}}}
    answer = routes.handler(event)
    return answer["statusCode"], json.loads(answer["body"])


def prompt(who: str, graph: dict[str, Any]) -> tuple[int, Any]:
    event = {"rawPath": "/prompt", "rawQueryString": "", "body": json.dumps({"prompt": graph}),
             "requestContext": {"http": {"method": "POST", "sourceIp": who}}}
    answer = routes.handler(event)
    return answer["statusCode"], json.loads(answer["body"])


def img2img(image: str) -> dict[str, Any]:
    graph = json.loads((WORKFLOWS / "img2img.json").read_text())
    graph["14"]["inputs"]["ckpt_name"] = "tiny-sd"
    graph["10"]["inputs"]["image"] = image
    return graph


def test_an_upload_answers_as_comfyui_and_a_taken_name_is_renamed(api: DevStack) -> None:
    who = "10.0.4.1"
    assert upload(who, "photo.png", png()) == (200, {"name": "photo.png", "subfolder": "", "type": "input"})
    assert upload(who, "photo.png", png()) == (200, {"name": "photo.png", "subfolder": "", "type": "input"})  # same
    assert upload(who, "photo.png", png((0, 0, 0)))[1]["name"] == "photo (1).png"
    assert upload(who, "photo.png", png((0, 0, 9)))[1]["name"] == "photo (2).png"
    assert upload(who, "photo.png", png((1, 2, 3)), overwrite="true")[1]["name"] == "photo.png"
    assert upload(who, "photo.png", png(), subfolder="clipspace", type="temp") == \
        (200, {"name": "photo.png", "subfolder": "clipspace", "type": "temp"})
    assert upload("10.0.4.2", "photo.png", png((0, 0, 0)))[1]["name"] == "photo.png"  # another caller's folder
    keys = [obj["Key"] for obj in aws.client("s3", api.settings).list_objects_v2(
        Bucket=api.settings.input_bucket, Prefix="comfy/").get("Contents", [])]
    assert len(keys) == 5 and all(key.startswith("comfy/ip-") for key in keys)


@pytest.mark.parametrize(("filename", "data", "fields", "field"), [
    ("notes.png", b"just some text, not an image", {}, "image"),
    ("big.png", png()[:33] + b"\0" * MAX_IMAGE_BYTES, {}, "image"),
    ("huge.png", png(size=(5000, 4000)), {}, "image"),
    ("photo.png", png(), {"type": "output"}, "type"),
    ("photo.png", png(), {"subfolder": "../../other"}, "subfolder"),
    ("", png(), {}, "image"),
])
def test_what_is_no_acceptable_image_is_refused_naming_the_field(api: DevStack, filename: str, data: bytes,
                                                                 fields: dict[str, str], field: str) -> None:
    status, answer = upload("10.0.4.3", filename, data, **fields)
    assert status == 400 and answer["error"]["field"] == field, answer


def test_a_graph_names_the_callers_uploads_only(api: DevStack) -> None:
    who = "10.0.4.4"
    name = upload(who, "cat.png", png())[1]["name"]
    assert upload(who, "cat.png", png((9, 9, 9)), subfolder="pets")[1] == \
        {"name": "cat.png", "subfolder": "pets", "type": "input"}
    for image in (name, "pets/cat.png", "cat.png [input]"):
        status, answer = prompt(who, img2img(image))
        assert status == 200, answer
        ref = queued_spec(api, answer["prompt_id"])["inputs"]["graph"]["10"]["inputs"]["image"]
        assert ref.startswith(f"s3://{api.settings.input_bucket}/comfy/ip-"), ref
    bucket = api.settings.input_bucket
    for image, who_else in (("cat.png", "10.0.4.5"), ("dog.png", who), (ref, who),
                            (f"s3://{bucket}/{ref.split('/', 3)[3]}", "10.0.4.5")):
        status, answer = prompt(who_else, img2img(image))
        assert status == 400 and answer["error"]["type"] == "prompt_outputs_failed_validation", answer
        (error,) = answer["node_errors"]["10"]["errors"]
        assert answer["node_errors"]["10"]["class_type"] == "LoadImage"
        assert answer["node_errors"]["10"]["dependent_outputs"] == ["9"]
        assert error["type"] == "value_not_in_list" and error["extra_info"]["input_name"] == "image", error
