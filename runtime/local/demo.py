"""The demo a new user runs first: nine jobs through the HTTP API, sent with ``spotgen.Client`` as a client
would send them.

txt2img, then from its output (sent inline as base64): img2img, ControlNet from an edge map of it, inpainting of an
ellipse in its middle, and a 2x upscale; hires fix (a second pass at twice the size); then SDXL with a LoRA, Flux.1
dev with its distilled guidance and SD 3.5 with skip-layer guidance (both on a non-square size: their sizes are
multiples of 16). A rich progress bar per job while they run; the PNGs under ``out/``; summary tables at the end.
"""

from __future__ import annotations

import base64
import io
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image, ImageDraw, ImageFilter
from rich import box
from rich.console import Console
from rich.table import Table

from spotgen.client import Client
from spotgen.errors import ApiError
from spotgen.progress import JobBar

if TYPE_CHECKING:
    from runtime.local.spanreceiver import SpanReceiver


def edge_map(png: bytes) -> bytes:
    return _png(Image.open(io.BytesIO(png)).convert("L").filter(ImageFilter.FIND_EDGES).convert("RGB"))


def ellipse_mask(png: bytes) -> bytes:
    """White (repaint) on an ellipse in the middle of the image, black (keep) around it."""
    width, height = Image.open(io.BytesIO(png)).size
    mask = Image.new("L", (width, height))
    ImageDraw.Draw(mask).ellipse((width // 4, height // 4, width * 3 // 4, height * 3 // 4), fill=255)
    return _png(mask)


def _png(image: Image.Image) -> bytes:
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


def console() -> Console:
    """Standard output; wide when it is a log, so that tables keep one line per row."""
    plain = Console()
    return plain if plain.is_terminal else Console(width=200)


def run_job(client: Client, name: str, pipeline: str, model: str, inputs: dict[str, Any], out: Path,
            shown: Console) -> tuple[Row, bytes | None]:
    """Submit one job, draw its bar until it ends, save its PNG as ``out/{name}.png``; its row and PNG."""
    started = time.monotonic()
    job = client.submit(pipeline, model, inputs)
    with JobBar(name, shown) as bar:
        status = job.wait(timeout=300, on_progress=bar.update, poll_s=0.1)
    png, file = None, "-"
    if status.state == "succeeded":
        png = job.png_bytes()[0]
        path = out / f"{name}.png"
        path.write_bytes(png)
        file = str(path)
    elif status.error is not None:
        shown.print(f"  {name} failed: {status.error.code}: {status.error.message}", markup=False)
    return Row(job.id, name, pipeline, model, status.state, time.monotonic() - started, file, status.trace_id), png


#: The demo's jobs by name, in order (``make run`` writes ``out/{name}.png`` for each).
JOBS = ("txt2img", "img2img", "controlnet", "inpaint", "upscale", "hires", "sdxl-lora", "flux", "sd3")
#: The Flux and SD 3.5 jobs' width and height: not square, so that a mix-up of the two shows.
FLOW_SIZE = (96, 64)


def demo(api_url: str, out: Path, model: str = "tiny-sd", controlnet: str = "tiny-controlnet",
         size: int = 64, steps: int = 20, traces: SpanReceiver | None = None,
         sdxl: str = "tiny-sdxl", lora: str = "tiny-lora-sdxl", upscaler: str = "tiny-esrgan",
         flux: str = "tiny-flux", sd3: str = "tiny-sd3") -> bool:
    """Returns True when all the ``JOBS`` succeeded: txt2img, img2img, ControlNet, inpainting, upscaling and hires
    fix on an SD 1.x model, then SDXL with a LoRA and "DPM++ 2M Karras", Flux.1 dev with distilled guidance and
    SD 3.5 with skip-layer guidance. With ``traces``, the summary ends with each job's phases."""
    out.mkdir(parents=True, exist_ok=True)
    shown = console()
    common = {"width": size, "height": size, "steps": steps, "seed": 7}
    rows: list[Row] = []
    with Client(api_url) as client:
        def run(name: str, pipeline: str, model: str, **inputs: Any) -> bytes | None:
            fields = inputs if pipeline == "upscale" else {**common, **inputs}  # an upscale has no prompt or steps
            row, png = run_job(client, name, pipeline, model, fields, out, shown)
            rows.append(row)
            return png

        try:
            first = run("txt2img", "txt2img", model, prompt="a red fox in the snow")
            if first is not None:
                run("img2img", "img2img", model, prompt="a red fox in the snow, oil painting", image=_b64(first),
                    strength=0.6)
                run("controlnet", "controlnet", model, prompt="a red fox in the snow",
                    control_image=_b64(edge_map(first)), controlnet=controlnet)
                run("inpaint", "inpaint", model, prompt="a snowman", image=_b64(first),
                    mask=_b64(ellipse_mask(first)), fill="latent_noise", strength=0.9)
                run("upscale", "upscale", upscaler, image=_b64(first), scale=2.0)
            run("hires", "txt2img", model, prompt="a red fox in the snow",
                hires={"scale": 2.0, "upscaler": "latent", "denoising_strength": 0.6})
            run("sdxl-lora", "txt2img", sdxl, prompt="a (red fox:1.2) in the snow, BREAK winter forest",
                loras=[{"id": lora, "weight": 0.8}], scheduler="dpmpp_2m", schedule="karras")
            width, height = FLOW_SIZE
            run("flux", "txt2img", flux, prompt="a red fox in the snow, winter forest", guidance=4.0, width=width,
                height=height)
            run("sd3", "txt2img", sd3, prompt="a red fox in the snow, winter forest", width=width, height=height,
                skip_layer_guidance={"layers": [7, 8, 9]})
        except (ApiError, TimeoutError) as exc:  # refused, unreachable or stuck: say so and stop
            shown.print(f"demo stopped: {exc}", markup=False)
            rows.append(Row("-", "-", "-", "-", "not run", 0.0, "-"))
    print_table(rows, shown)
    if traces is not None:
        print_phases(rows, traces, shown)
    return [r.name for r in rows] == list(JOBS) and all(r.state == "succeeded" for r in rows)


def _b64(png: bytes) -> str:
    return base64.b64encode(png).decode("ascii")


def _table(header: tuple[str, ...], rows: list[tuple[str, ...]], right: set[str]) -> Table:
    """A plain table (header, rule, rows) that reads the same in a terminal and in a log."""
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, header_style="bold")
    for name in header:
        table.add_column(name, justify="right" if name in right else "left", no_wrap=True)
    for row in rows:
        table.add_row(*row)
    return table


def print_table(rows: list[Row], shown: Console) -> None:
    header = ("job", "pipeline", "state", "model", "seconds", "file")
    shown.print()
    shown.print(_table(header, [(r.job, r.pipeline, r.state, r.model, f"{r.seconds:.2f}", r.file) for r in rows],
                       {"seconds"}))


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


def print_phases(rows: list[Row], traces: SpanReceiver, shown: Console, timeout_s: float = 10.0) -> None:
    """Per-phase milliseconds of each job, from its trace (waiting for the workers' last spans to arrive)."""
    ids = {row.trace_id for row in rows if row.trace_id}
    spans = traces.wait(lambda got: ids <= {s.trace_id for s in got if s.name == "spotgen.notify"}, timeout_s)
    table = []
    for row in rows:
        got = phase_seconds([s for s in spans if s.trace_id == row.trace_id]) if row.trace_id else {}
        table.append((row.name, *(f"{got[p] * 1000:.0f}" if p in got else "-" for p in PHASES)))
    shown.print("\nwhere the time went (ms, from the traces):")
    shown.print(_table(("job", *PHASES), table, set(PHASES)))
