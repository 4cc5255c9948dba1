"""The demo a new user runs first: three jobs through the HTTP API, as a client would send them.

txt2img, then img2img from its output (sent inline as base64), then ControlNet from an edge map of it.
Progress bars while they run; the PNGs under ``out/``; a summary table at the end.
"""

from __future__ import annotations

import base64
import io
import json
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image, ImageFilter

from runtime.contract import JobState


class ApiError(RuntimeError):
    pass


def call(method: str, url: str, body: dict[str, Any] | None = None, timeout: float = 30) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method, headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


def download(url: str, timeout: float = 30) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return resp.read()


def wait_for(api_url: str, job_id: str, timeout: float = 300, label: str = "", show: bool = True,
             poll_s: float = 0.1) -> dict[str, Any]:
    """Poll the status until the job ends, drawing a progress bar."""
    deadline = time.monotonic() + timeout
    tty = sys.stdout.isatty()
    last = None
    while True:
        status, doc = call("GET", f"{api_url}/v1/jobs/{job_id}")
        if status != 200:
            raise ApiError(f"GET status of {job_id}: {status} {doc}")
        step, total, state = doc["progress"]["step"], doc["progress"]["total"], doc["state"]
        if show and (tty or (state, step) != last):  # redraw in a terminal; one line per change in a log
            filled = int(30 * step / total) if total else 0
            bar = "#" * filled + "." * (30 - filled)
            line = f"  {label:<11} [{bar}] {step:>3}/{total or '?':<3} {state:<10}"
            sys.stdout.write("\r" + line if tty else line + "\n")
            sys.stdout.flush()
            last = (state, step)
        if JobState(state).final:
            if show and tty:
                sys.stdout.write("\n")
            return doc
        if time.monotonic() > deadline:
            raise ApiError(f"job {job_id} did not finish within {timeout} s (state {doc['state']})")
        time.sleep(poll_s)


def png_b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def edge_map(png: bytes) -> bytes:
    image = Image.open(io.BytesIO(png)).convert("L").filter(ImageFilter.FIND_EDGES).convert("RGB")
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


@dataclass
class Row:
    job: str
    pipeline: str
    state: str
    seconds: float
    file: str


def run_job(api_url: str, request: dict[str, Any], out: Path, name: str) -> tuple[Row, bytes | None]:
    started = time.monotonic()
    status, body = call("POST", f"{api_url}/v1/jobs", request)
    if status not in (200, 202):
        raise ApiError(f"submit {name}: {status} {body}")
    doc = wait_for(api_url, body["id"], label=name)
    png = None
    file = "-"
    if doc["state"] == "succeeded":
        png = download(doc["outputs"][0]["url"])
        path = out / f"{name}.png"
        path.write_bytes(png)
        file = str(path)
    elif doc.get("error"):
        print(f"  {name} failed: {doc['error']['code']}: {doc['error']['message']}")
    return Row(body["id"], request["pipeline"], doc["state"], time.monotonic() - started, file), png


def demo(api_url: str, out: Path, model: str = "tiny-sd", controlnet: str = "tiny-controlnet",
         size: int = 64, steps: int = 20) -> bool:
    """Returns True when all three jobs succeeded."""
    out.mkdir(parents=True, exist_ok=True)
    common = {"width": size, "height": size, "steps": steps, "seed": 7}
    rows: list[Row] = []
    row, first = run_job(api_url, {"pipeline": "txt2img", "model": model,
                                   "inputs": {"prompt": "a red fox in the snow", **common}}, out, "txt2img")
    rows.append(row)
    if first is not None:
        row, _ = run_job(api_url, {"pipeline": "img2img", "model": model, "inputs": {
            "prompt": "a red fox in the snow, oil painting", "image": png_b64(first), "strength": 0.6, **common}},
            out, "img2img")
        rows.append(row)
        row, _ = run_job(api_url, {"pipeline": "controlnet", "model": model, "inputs": {
            "prompt": "a red fox in the snow", "control_image": png_b64(edge_map(first)),
            "controlnet": controlnet, **common}}, out, "controlnet")
        rows.append(row)
    print_table(rows)
    return len(rows) == 3 and all(r.state == "succeeded" for r in rows)


def print_table(rows: list[Row]) -> None:
    header = ("job", "pipeline", "state", "seconds", "file")
    table = [header] + [(r.job, r.pipeline, r.state, f"{r.seconds:.2f}", r.file) for r in rows]
    widths = [max(len(str(line[i])) for line in table) for i in range(len(header))]
    print()
    for index, line in enumerate(table):
        print("  ".join(str(cell).ljust(width) for cell, width in zip(line, widths, strict=True)))
        if index == 0:
            print("  ".join("-" * width for width in widths))
