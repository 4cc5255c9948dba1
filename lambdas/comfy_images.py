"""The uploaded images a graph names, as the worker opens them: each LoadImage's and LoadImageMask's ``image``
(``name``, ``subfolder/name``, or either with ComfyUI's `` [input]``/`` [temp]`` annotation, as its frontend
writes them) becomes the input bucket's reference of the caller's own upload (``lambdas.comfy_upload``), before
the job is queued. A name the caller never uploaded is ComfyUI's ``value_not_in_list`` naming the node and the
input: another caller's uploads, an ``s3://`` reference or a path are names like any other, found or not under
the caller's prefix, so a graph reaches no image but its caller's.

``GET /view?type=input`` (and ``type=temp`` for a temp upload) answers an upload the same way: the filename and
subfolder are checked as ComfyUI checks them (a path in the filename, ``..``, an absolute or encoded path: 400,
a subfolder out of the folder: 403) before anything is read, the key is ``upload_key``'s digest under the caller's
prefix (no path from a client is ever a key), and the answer is a redirect to a presigned URL of the input bucket,
or a 404 when the caller has no such upload.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import parse_qs

from botocore.exceptions import ClientError

from lambdas.comfy_upload import MAX_NAME, TYPES, UploadError, normal_subfolder, upload_key
from lambdas.common import Deployment, error, response
from runtime.contract.comfy.graph import GraphError
from runtime.contract.comfy.values import node_error

#: The node classes whose ``image`` input names an upload.
LOADERS = frozenset({"LoadImage", "LoadImageMask"})
_ANNOTATED = re.compile(r"^(?P<path>.*?) ?\[(?P<kind>input|temp|output)\]$")
#: What no upload's filename holds: a path, ``..``, a control character, a percent-encoded dot or slash left after
#: the query's own decoding (a doubly encoded path).
_NOT_A_NAME = re.compile(r"[/\\\x00-\x1f]|\.\.|%(2e|2f|5c)", re.IGNORECASE)
_NOT_A_FOLDER = re.compile(r"^([/\\]|[A-Za-z]:)|(^|[/\\])\.\.([/\\]|$)|[\x00-\x1f]|%(2e|2f|5c)", re.IGNORECASE)


def _key(who: str, value: str) -> str | None:
    """The input bucket's key ``value`` names among ``who``'s uploads (None: it names none)."""
    kind = "input"
    if found := _ANNOTATED.match(value):
        value, kind = found["path"], found["kind"]
    if kind not in TYPES:
        return None
    subfolder, _, name = value.replace("\\", "/").rpartition("/")
    try:
        subfolder = normal_subfolder(subfolder)
    except UploadError:
        return None
    return upload_key(who, kind, subfolder, name) if name else None


def _exists(dep: Deployment, key: str) -> bool:
    try:
        dep.store.s3.head_object(Bucket=dep.store.input_bucket, Key=key)
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
            return False
        raise
    return True


def _outputs_of(graph: dict[str, Any], key: str) -> list[str]:
    """The output nodes (SaveImage, PreviewImage) that depend on node ``key``."""
    users: dict[str, set[str]] = {}
    for node_id, node in graph.items():
        for value in node.get("inputs", {}).values():
            if isinstance(value, list) and len(value) == 2 and value[0] in graph:
                users.setdefault(str(value[0]), set()).add(node_id)
    seen, todo = {key}, [key]
    while todo:
        for user in users.get(todo.pop(), ()):
            if user not in seen:
                seen.add(user)
                todo.append(user)
    return sorted(n for n in seen if graph[n]["class_type"] in ("SaveImage", "PreviewImage"))


def resolve_images(dep: Deployment, who: str, graph: dict[str, Any]) -> dict[str, Any]:
    """``graph`` (checked by ``check_graph``) with each loader's ``image`` as ``s3://`` reference of ``who``'s
    upload; GraphError (ComfyUI's ``prompt_outputs_failed_validation``) naming every node whose name is none."""
    out = dict(graph)
    errors: dict[str, Any] = {}
    for node_id, node in graph.items():
        if node["class_type"] not in LOADERS:
            continue
        value = node["inputs"].get("image")
        key = _key(who, value) if isinstance(value, str) else None
        if key is not None and _exists(dep, key):
            out[node_id] = {**node, "inputs": {**node["inputs"], "image": f"s3://{dep.store.input_bucket}/{key}"}}
            continue
        error = node_error("value_not_in_list", "Value not in list",
                           f"image: '{value}' not in the images you uploaded (POST /upload/image)",
                           input_name="image", input_config=None, received_value=value)
        errors[node_id] = {"errors": [error], "dependent_outputs": _outputs_of(graph, node_id),
                           "class_type": node["class_type"]}
    if errors:
        details = "\n".join(f"{e['message']}: {e['details']}" for entry in errors.values() for e in entry["errors"])
        raise GraphError({"type": "prompt_outputs_failed_validation", "message": "Prompt outputs failed validation",
                          "details": details, "extra_info": {}}, errors)
    return out


def annotation(filename: str) -> str | None:
    """The folder a ComfyUI-annotated name (``name [input]``) says, which a ``/view`` takes over its ``type``."""
    found = _ANNOTATED.match(filename)
    return found["kind"] if found else None


def view_upload(dep: Deployment, event: dict[str, Any], who: str, kind: str) -> dict[str, Any]:
    """``GET /view?filename=&subfolder=&type=input`` (or ``temp``): a redirect to ``who``'s upload of that name."""
    query = {k: v[0] for k, v in parse_qs(event.get("rawQueryString") or "", keep_blank_values=True).items()}
    filename, subfolder = query.get("filename", ""), query.get("subfolder", "")
    if found := _ANNOTATED.match(filename):
        filename, kind = found["path"], found["kind"]
    if kind not in TYPES:
        return error(400, "invalid_field", f"type: {kind!r} is not one of output, {', '.join(TYPES)}", "type")
    if not filename.strip() or len(filename) > MAX_NAME or _NOT_A_NAME.search(filename):
        return error(400, "invalid_field", f"filename: {filename!r} is not a file name", "filename")
    if _NOT_A_FOLDER.search(subfolder):
        return error(403, "forbidden", f"subfolder: {subfolder!r} leaves the {kind} folder", "subfolder")
    try:
        key = upload_key(who, kind, normal_subfolder(subfolder), filename)
    except UploadError as exc:
        return error(403, "forbidden", str(exc), "subfolder")
    if not _exists(dep, key):
        return error(404, "not_found", f"no {kind} image {filename!r} in {subfolder!r} among your uploads", "filename")
    url = dep.store.s3.generate_presigned_url("get_object", Params={"Bucket": dep.store.input_bucket, "Key": key},
                                              ExpiresIn=dep.store.presign_expiry_s)
    return response(302, {"location": url}, {"Location": url})
