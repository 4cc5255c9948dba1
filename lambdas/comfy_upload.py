"""ComfyUI's ``POST /upload/image``: a LoadImage input, uploaded as ComfyUI's frontend and scripts upload it
(multipart/form-data: the ``image`` file, ``subfolder``, ``type`` input or temp, ``overwrite``), kept in the input
bucket under the caller's own prefix, so that one caller's graph can name only its own uploads
(``lambdas.comfy_images`` resolves the names ``POST /prompt`` gets).

The file is checked as an inline image is (``runtime.contract.images``: PNG, JPEG or WebP from its header, within
``MAX_IMAGE_BYTES`` and ``MAX_IMAGE_PIXELS``), without decoding it: the worker decodes it with Pillow's limits. A
ComfyUI name (``name (1).png``, subfolders, spaces) is no safe S3 key, so the key is a digest of the name
(``upload_key``), which ``POST /prompt`` computes again from the name the graph holds; the name itself is kept in
the object's metadata for whoever reads the bucket. As ComfyUI, a taken name without ``overwrite`` is renamed
``name (1).png``, ``name (2).png``..., unless the same bytes are there already (ComfyUI's duplicate check), which
answers the existing name.

A digest cannot be listed back as a name, so an ``input`` upload also writes an empty marker whose key holds its
name (``name_marker``: ``subfolder/name`` in base64url, in the output bucket beside the caller's prompts, so that
the input bucket holds images only): ``GET /object_info`` lists the caller's newest ``MAX_LISTED`` of them as
LoadImage's choices, as ComfyUI lists its input folder (``uploaded_names``).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import posixpath
import re
from typing import Any

from botocore.exceptions import ClientError
from python_multipart import FormParser
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import parse_options_header

from lambdas import telemetry
from lambdas.common import Deployment, deployment, error, raw_body, response
from lambdas.sdapi import caller
from runtime.contract.images import MAX_IMAGE_BYTES, MAX_IMAGE_PIXELS, ImageRefError, sniff

#: The upload types ComfyUI takes (``output`` is the server's own folder, not a client's to write).
TYPES = ("input", "temp")
#: The longest name or subfolder taken (ComfyUI's file systems allow 255 bytes a name).
MAX_NAME = 255
#: How many ``name (i)`` renamings are tried before a name is refused as taken.
MAX_RENAMES = 1000
#: The most uploaded names ``/object_info`` lists (the newest; ComfyUI lists its whole input folder).
MAX_LISTED = 1000
#: S3's longest key: a name whose marker would be longer is uploaded and usable, but not listed.
MAX_KEY = 1024
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


class UploadError(ValueError):
    """A refused upload: ``field`` names the form field."""

    def __init__(self, field: str, message: str, code: str = "invalid_field") -> None:
        super().__init__(message)
        self.field, self.code = field, code


def upload_key(who: str, kind: str, subfolder: str, name: str) -> str:
    """The input bucket's key of ``who``'s upload ``subfolder/name`` of ``kind``: a digest of the name (any name
    ComfyUI takes maps to a valid key), with its safe characters after it for whoever lists the bucket."""
    path = f"{subfolder}/{name}" if subfolder else name
    digest = hashlib.sha256(path.encode()).hexdigest()[:32]
    return f"comfy/{who}/{kind}/{digest}-{_UNSAFE.sub('_', name)[-64:]}"


def name_marker(who: str, path: str) -> str | None:
    """The key of the marker that lists ``who``'s input upload ``path`` (``subfolder/name``); None when too long."""
    key = f"comfy/uploads/{who}/input/{base64.urlsafe_b64encode(path.encode()).decode().rstrip('=')}"
    return key if len(key.encode()) <= MAX_KEY else None


def uploaded_names(dep: Deployment, who: str, limit: int = MAX_LISTED) -> list[str]:
    """``who``'s newest ``limit`` input uploads as a graph names them (``name`` or ``subfolder/name``), sorted as
    ComfyUI sorts its input folder's files."""
    prefix = f"comfy/uploads/{who}/input/"
    found: list[tuple[Any, str]] = []
    pages = dep.store.s3.get_paginator("list_objects_v2").paginate(Bucket=dep.store.output_bucket, Prefix=prefix)
    for page in pages:
        for obj in page.get("Contents", []):
            encoded = obj["Key"][len(prefix):]
            try:
                name = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)).decode()
            except (binascii.Error, UnicodeDecodeError):
                continue
            found.append((obj["LastModified"], name))
    newest = sorted(found, key=lambda item: item[0], reverse=True)[:limit]
    return sorted({name for _, name in newest})


def normal_subfolder(value: str) -> str:
    """The subfolder as a relative path without ``.``/``..`` escapes (ComfyUI refuses a path out of its folder)."""
    value = value.strip().replace("\\", "/").strip("/")
    if not value:
        return ""
    clean = posixpath.normpath(value)
    if clean.startswith("..") or clean.startswith("/") or len(clean) > MAX_NAME:
        raise UploadError("subfolder", f"subfolder: {value!r} leaves the upload folder")
    return clean


def parse_form(event: dict[str, Any]) -> tuple[dict[str, str], tuple[str, bytes] | None]:
    """(the text fields, (file name, bytes) of the ``image`` file or None) of a multipart/form-data body."""
    headers = {k.lower(): v for k, v in (event.get("headers") or {}).items()}
    kind, options = parse_options_header(headers.get("content-type", ""))
    if kind != b"multipart/form-data" or not options.get(b"boundary"):
        raise UploadError("image", "the body must be multipart/form-data with an 'image' file", "invalid_body")
    body = raw_body(event)
    fields: dict[str, str] = {}
    files: list[tuple[str, bytes]] = []

    def on_field(field: Any) -> None:
        if field.field_name and field.value is not None:
            fields[field.field_name.decode("utf-8", "replace")] = field.value.decode("utf-8", "replace")

    def on_file(file: Any) -> None:
        if file.field_name == b"image":
            file.file_object.seek(0)
            files.append(((file.file_name or b"").decode("utf-8", "replace"), file.file_object.read()))

    config = {"MAX_MEMORY_FILE_SIZE": len(body) + 1, "MAX_BODY_SIZE": len(body) + 1}
    parser = FormParser("multipart/form-data", on_field, on_file, boundary=options[b"boundary"], config=config)
    try:
        parser.write(body)
        parser.finalize()
    except (FormParserError, ValueError) as exc:
        raise UploadError("image", f"the multipart body is malformed: {exc}", "invalid_body") from None
    return fields, files[0] if files else None


def check_image(name: str, data: bytes) -> str:
    """The image's content type: PNG, JPEG or WebP within the inline images' limits, else UploadError."""
    if len(data) > MAX_IMAGE_BYTES:
        raise UploadError("image", f"image: the file is larger than {MAX_IMAGE_BYTES} bytes", "image_too_large")
    try:
        fmt, width, height = sniff(data)
    except ImageRefError as exc:
        raise UploadError("image", f"image: {name!r}: {exc}") from None
    if width <= 0 or height <= 0:
        raise UploadError("image", f"image: {name!r} has no pixels")
    if width * height > MAX_IMAGE_PIXELS:
        raise UploadError("image", f"image: {name!r} has {width}x{height} pixels, more than the limit of "
                          f"{MAX_IMAGE_PIXELS}", "image_too_large")
    return f"image/{fmt}"


def _etag(dep: Deployment, key: str) -> str | None:
    """The object's ETag, None when there is none."""
    try:
        head = dep.store.s3.head_object(Bucket=dep.store.input_bucket, Key=key)
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
            return None
        raise
    return str(head.get("ETag", "")).strip('"')


def free_name(dep: Deployment, who: str, kind: str, subfolder: str, name: str, data: bytes) -> str:
    """ComfyUI's renaming: ``name``, else ``base (1).ext``, ``base (2).ext``...; a name holding these very bytes
    (an upload repeated) is answered as it is. A single PUT's ETag is its MD5 (not with KMS encryption: then a
    repeated upload is renamed, as older ComfyUI versions do)."""
    digest = hashlib.md5(data, usedforsecurity=False).hexdigest()
    base, ext = posixpath.splitext(name)
    candidate = name
    for i in range(1, MAX_RENAMES + 1):
        tag = _etag(dep, upload_key(who, kind, subfolder, candidate))
        if tag is None or tag == digest:
            return candidate
        candidate = f"{base} ({i}){ext}"
    raise UploadError("image", f"image: {MAX_RENAMES} files named like {name!r} exist; upload with overwrite")


def upload_image(dep: Deployment, event: dict[str, Any]) -> dict[str, Any]:
    try:
        fields, file = parse_form(event)
        if file is None:
            raise UploadError("image", "image: the form has no 'image' file", "missing_field")
        name = posixpath.basename(file[0].replace("\\", "/")).strip()
        if not name or name in (".", "..") or len(name) > MAX_NAME:
            raise UploadError("image", f"image: the file name {file[0]!r} is not a file name")
        kind = fields.get("type", "input") or "input"
        if kind not in TYPES:
            raise UploadError("type", f"type: {kind!r} is not one of {', '.join(TYPES)}")
        subfolder = normal_subfolder(fields.get("subfolder", ""))
        content_type = check_image(name, file[1])
        who = caller(event)
        if fields.get("overwrite", "").strip().lower() not in ("true", "1"):
            name = free_name(dep, who, kind, subfolder, name, file[1])
    except UploadError as exc:
        return error(400, exc.code, str(exc), exc.field)
    dep.store.s3.put_object(Bucket=dep.store.input_bucket, Key=upload_key(who, kind, subfolder, name),
                            Body=file[1], ContentType=content_type, Metadata={"comfy-name": _ascii(name)})
    marker = name_marker(who, f"{subfolder}/{name}" if subfolder else name) if kind == "input" else None
    if marker is not None:  # after the image: a listed name is always there
        dep.store.s3.put_object(Bucket=dep.store.output_bucket, Key=marker, Body=b"")
    return response(200, {"name": name, "subfolder": subfolder, "type": kind})


def _ascii(text: str) -> str:
    """S3 metadata values are ASCII: the name with anything else escaped."""
    return text.encode("ascii", "backslashreplace").decode("ascii")


def handler(event: dict[str, Any], context: Any = None) -> dict[str, Any]:
    """``POST /upload/image`` (lambdas/api.py routes it; the template too)."""
    with telemetry.span("spotgen.comfyui.upload", "SERVER", event.get("headers")):
        return upload_image(deployment(), event)
