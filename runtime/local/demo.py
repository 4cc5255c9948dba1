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
from typing import TYPE_CHECKING, Any

from PIL import Image, ImageFilter

from runtime.contract import JobState

if TYPE_CHECKING:
    from runtime.local.spanreceiver import SpanReceiver


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
    name: str
    pipeline: str
    model: str
    state: str
    seconds: float
    file: str
    trace_id: str | None = None


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
    return Row(body["id"], name, request["pipeline"], request["model"], doc["state"], time.monotonic() - started,
               file, doc.get("trace_id")), png


def demo(api_url: str, out: Path, model: str = "tiny-sd", controlnet: str = "tiny-controlnet",
         size: int = 64, steps: int = 20, traces: SpanReceiver | None = None,
         sdxl: str = "tiny-sdxl", lora: str = "tiny-lora-sdxl") -> bool:
    """Returns True when all four jobs succeeded: txt2img, img2img and ControlNet on an SD 1.x model, then SDXL
    with a LoRA and "DPM++ 2M Karras". With ``traces``, the summary ends with each job's phases."""
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
    row, _ = run_job(api_url, {"pipeline": "txt2img", "model": sdxl, "inputs": {
        "prompt": "a (red fox:1.2) in the snow, BREAK winter forest", "loras": [{"id": lora, "weight": 0.8}],
        "scheduler": "dpmpp_2m", "schedule": "karras", **common}}, out, "sdxl-lora")
    rows.append(row)
    print_table(rows)
    if traces is not None:
        print_phases(rows, traces)
    return len(rows) == 4 and all(r.state == "succeeded" for r in rows)


def print_table(rows: list[Row]) -> None:
    header = ("job", "pipeline", "state", "model", "seconds", "file")
    table = [header] + [(r.job, r.pipeline, r.state, r.model, f"{r.seconds:.2f}", r.file) for r in rows]
    widths = [max(len(str(line[i])) for line in table) for i in range(len(header))]
    print()
    for index, line in enumerate(table):
        print("  ".join(str(cell).ljust(width) for cell, width in zip(line, widths, strict=True)))
        if index == 0:
            print("  ".join("-" * width for width in widths))


#: Columns of the phase table: a span name, or how to compute the column from a trace's spans.
PHASES = ("submit", "queued", "model_load", "encode", "denoise", "decode", "checkpoint", "store_outputs", "notify",
          "total")


def phase_seconds(spans: list[Any]) -> dict[str, float]:
    """Seconds per phase of one trace: spans of the same name added up; ``queued`` from the end of the
    publish to the start of the worker's task span; ``total`` from the submit to the last span's end."""
    out: dict[str, float] = {}
    for span in spans:
        if span.name.startswith("spotgen."):
            name = span.name.removeprefix("spotgen.")
            out[name] = out.get(name, 0.0) + span.seconds
    publish = [s for s in spans if s.name == "spotgen.publish"]
    task = [s for s in spans if s.name.startswith("run/")]
    if publish and task:
        out["queued"] = max(0.0, (min(s.start_ns for s in task) - publish[0].end_ns) / 1e9)
    if spans:
        out["total"] = (max(s.end_ns for s in spans) - min(s.start_ns for s in spans)) / 1e9
    return out


def print_phases(rows: list[Row], traces: SpanReceiver, timeout_s: float = 10.0) -> None:
    """Per-phase milliseconds of each job, from its trace (waiting for the workers' last spans to arrive)."""
    ids = {row.trace_id for row in rows if row.trace_id}
    spans = traces.wait(lambda got: ids <= {s.trace_id for s in got if s.name == "spotgen.notify"}, timeout_s)
    table = [("job", *PHASES)]
    for row in rows:
        got = phase_seconds([s for s in spans if s.trace_id == row.trace_id]) if row.trace_id else {}
        table.append((row.name, *(f"{got[p] * 1000:.0f}" if p in got else "-" for p in PHASES)))
    widths = [max(len(line[i]) for line in table) for i in range(len(table[0]))]
    print("\nwhere the time went (ms, from the traces):")
    for index, line in enumerate(table):
        print("  ".join(cell.rjust(width) if i else cell.ljust(width)
                        for i, (cell, width) in enumerate(zip(line, widths, strict=True))))
        if index == 0:
            print("  ".join("-" * width for width in widths))
