"""The uploaded images a graph names, as the worker opens them: each LoadImage's and LoadImageMask's ``image``
(``name``, ``subfolder/name``, or either with ComfyUI's `` [input]``/`` [temp]`` annotation, as its frontend
writes them) becomes the input bucket's reference of the caller's own upload (``lambdas.comfy_upload``), before
the job is queued. A name the caller never uploaded is ComfyUI's ``value_not_in_list`` naming the node and the
input: another caller's uploads, an ``s3://`` reference or a path are names like any other, found or not under
the caller's prefix, so a graph reaches no image but its caller's.
"""

from __future__ import annotations

import re
from typing import Any

from botocore.exceptions import ClientError

from lambdas.comfy_upload import TYPES, UploadError, normal_subfolder, upload_key
from lambdas.common import Deployment
from runtime.contract.comfy.graph import GraphError
from runtime.contract.comfy.values import node_error

#: The node classes whose ``image`` input names an upload.
LOADERS = frozenset({"LoadImage", "LoadImageMask"})
_ANNOTATED = re.compile(r"^(?P<path>.*?) ?\[(?P<kind>input|temp|output)\]$")


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
