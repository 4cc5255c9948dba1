"""``POST /sdapi/v1/png-info``: the generation parameters an image carries, as WebUI's PNG Info answers them.

WebUI answers ``{"info": the text, "items": the image's other text, "parameters": the text parsed}``, the parsed
form being what its UI pastes into its fields (``parse_generation_parameters``: ``Prompt``, ``Negative prompt``,
``Steps``, ``Size-1``/``Size-2``... with its defaults for what the text leaves out). WebUI's images carry its
infotext; spotgen's carry their job's parameters as JSON (``runtime.worker.images``), which are read here into the
very infotext WebUI would have written for that job (``webui_answer.webui_info``) before being parsed, so a client
pastes either the same way. ``info`` stays the text as the image holds it.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import re
from typing import Any

from lambdas import compat
from lambdas.body import parse_json
from lambdas.common import Deployment, error, raw_body, response
from runtime.contract import ContractError
from runtime.contract.imagetext import NotAnImage, image_text
from runtime.contract.webui import WebuiJob
from runtime.contract.webui_answer import webui_info

_PARAM = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
_SIZE = re.compile(r"^(\d+)x(\d+)$")
#: What WebUI fills in when an infotext leaves it out (its defaults, as its parser adds them).
_DEFAULTS: dict[str, Any] = {
    "Clip skip": "1", "Hires resize-1": 0, "Hires resize-2": 0, "Hires sampler": "Use same sampler",
    "Hires schedule type": "Use same scheduler", "Hires checkpoint": "Use same checkpoint", "Hires prompt": "",
    "Hires negative prompt": "", "Mask mode": "Inpaint masked", "Masked content": "original",
    "Inpaint area": "Whole picture", "Masked area padding": 32, "RNG": "GPU", "Schedule type": "Automatic",
    "Schedule max sigma": 0, "Schedule min sigma": 0, "Schedule rho": 0, "VAE Encoder": "Full",
    "VAE Decoder": "Full", "FP8 weight": "Disable", "Refiner switch by sampling steps": False,
}


def parse_infotext(text: str) -> dict[str, Any]:
    """WebUI 1.10's ``parse_generation_parameters``: the prompt lines, ``Negative prompt:`` lines, and the last
    line's ``Key: value`` pairs (a ``WxH`` value as ``Key-1`` and ``Key-2``, a quoted one unquoted)."""
    *lines, last = text.strip().split("\n")
    if len(_PARAM.findall(last)) < 3:
        lines.append(last)
        last = ""
    prompt, negative, in_negative = [], [], False
    for line in lines:
        line = line.strip()
        if line.startswith("Negative prompt:"):
            in_negative, line = True, line[16:].strip()
        (negative if in_negative else prompt).append(line)
    parsed: dict[str, Any] = {}
    for key, value in _PARAM.findall(last):
        if len(value) > 1 and value[0] == value[-1] == '"':
            with contextlib.suppress(ValueError):
                value = json.loads(value)
        size = _SIZE.match(value) if isinstance(value, str) else None
        if size:
            parsed[f"{key}-1"], parsed[f"{key}-2"] = size.group(1), size.group(2)
        else:
            parsed[key] = value
    parsed["Prompt"], parsed["Negative prompt"] = "\n".join(prompt), "\n".join(negative)
    return {**_DEFAULTS, **parsed}


def spotgen_infotext(text: str, titles: dict[str, str]) -> str | None:
    """The infotext WebUI would write for the job whose parameters spotgen wrote as ``text`` (JSON), or None when
    ``text`` is not that (then it is read as an infotext)."""
    try:
        params = json.loads(text)
    except ValueError:
        return None
    if not isinstance(params, dict) or not {"pipeline", "model", "seed"} <= params.keys():
        return None
    inputs = {k: v for k, v in params.items() if k not in ("pipeline", "model", "seed", "index")}
    try:
        job = WebuiJob.model_construct(pipeline=params["pipeline"], model=params["model"],
                                       inputs={**inputs, "num_images": 1}, server_seed=False)
        body = {"prompt": inputs.get("prompt", ""), "negative_prompt": inputs.get("negative_prompt", "")}
        seed = int(params["seed"]) + int(params.get("index") or 0)
        info = webui_info(job, body, seed, titles.get(params["model"], str(params["model"])))
    except (KeyError, TypeError, ValueError):  # an upscale's parameters: no steps, no prompt
        return str(inputs.get("prompt", ""))
    return str(info["infotexts"][0])


def png_info(dep: Deployment, event: dict[str, Any]) -> dict[str, Any]:
    """WebUI's ``PNGInfoResponse`` for ``image`` (base64, a data URL too); an image without parameters is
    ``info: ""``, as on WebUI; what is not an image is a 400 naming ``image``."""
    try:
        body = parse_json(raw_body(event))
    except ContractError as exc:
        return error(400, exc.code, exc.message, exc.field)
    encoded = body.get("image") if isinstance(body, dict) else None
    if not isinstance(encoded, str) or not encoded.strip():
        return error(400, "invalid_field", "image: a base64-encoded PNG, JPEG or WebP is required", "image")
    encoded = encoded.strip()
    if encoded.startswith("data:image/"):
        encoded = encoded.partition(",")[2]
    try:
        text, items = image_text(base64.b64decode(encoded, validate=True))
    except (binascii.Error, ValueError) as exc:
        reason = str(exc) if isinstance(exc, NotAnImage) else f"not base64 ({exc})"
        return error(400, "invalid_field", f"image: {reason}", "image")
    text = text or ""
    infotext = spotgen_infotext(text, compat.titles(dep.settings))
    return response(200, {"info": text, "items": items,
                          "parameters": parse_infotext(text if infotext is None else infotext)})
