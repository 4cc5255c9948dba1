"""Output formats (``make bench``, docs/benchmarks.md "Output formats"): bytes per image of each format at its
default quality, and the worker's CPU per image to encode it, as ratios to PNG, measured in one run.

The images are the demo's (``runtime/local/demo.py``): its txt2img, img2img and ControlNet jobs on tiny-sd and its
SDXL job with a LoRA, at 512 px, made in this process by the worker's pipelines and encoded by the worker's own
``encode_output`` with the parameters it embeds. The tiny models' random weights paint something close to white
noise, the worst case for a lossy codec; so the same figures are also given for a smooth 512 px picture (blurred
shapes and gradients, ``smooth_picture``), nearer what a trained model paints. Each encode is repeated
(``REPEATS``) and timed with ``time.process_time`` (CPU, not wall), formats interleaved so drift hits all alike.

    python -m tests.harness.bench_formats
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFilter

from tests.harness.tinymodels import on_tiny_models

REPEATS = 5
#: WebP's bytes against PNG's on the demo's images: "a fifth of the size" (issue 31).
WEBP_GOAL = 0.2
SIZE = 512


def smooth_picture(size: int = SIZE) -> Image.Image:
    """A picture of soft shapes over a gradient: what a lossy codec meets in a real model's output."""
    image = Image.linear_gradient("L").resize((size, size)).convert("RGB")
    draw = ImageDraw.Draw(image)
    for i, colour in enumerate([(200, 60, 30), (30, 120, 200), (240, 220, 80), (20, 140, 60)]):
        x = 40 + i * size // 5
        draw.ellipse((x, x // 2, x + size // 3, x // 2 + size // 3), fill=colour)
    return image.filter(ImageFilter.GaussianBlur(6))


def demo_images(models: Path) -> list[tuple[Image.Image, dict[str, Any]]]:
    """The demo's four jobs at 512 px (20 steps, seed 7), with the parameters the worker would embed."""
    from pipelines.controlnet import ControlNet
    from pipelines.img2img import Img2Img
    from pipelines.txt2img import Txt2Img
    from runtime.local.demo import edge_map
    from runtime.models.store import ModelStore
    from runtime.plugins import RunContext
    from runtime.worker.images import decode_image, encode_png

    store = ModelStore(models, "cpu")
    refs: dict[str, Image.Image] = {}
    common = {"width": SIZE, "height": SIZE, "steps": 20}

    def run(cls: Any, model: str, **inputs: Any) -> tuple[Image.Image, dict[str, Any]]:
        parsed = cls.Inputs.model_validate({**common, **inputs}, context={"input_bucket": "in"})
        ctx = RunContext(job_id="bench", model=model, seed=7, device="cpu", models=store,
                         report=lambda *a: None, fetch_image=refs.__getitem__)
        return cls().run(parsed, ctx)[0], {"pipeline": cls.name, "model": model, "seed": 7,
                                           **parsed.model_dump(mode="json"), "index": 0}

    first = run(Txt2Img, "tiny-sd", prompt="a red fox in the snow")
    png = encode_png(first[0], {})
    refs["s3://in/first.png"], refs["s3://in/edges.png"] = first[0], decode_image(edge_map(png))
    return [first,
            run(Img2Img, "tiny-sd", prompt="a red fox in the snow, oil painting", image="s3://in/first.png",
                strength=0.6),
            run(ControlNet, "tiny-sd", prompt="a red fox in the snow", control_image="s3://in/edges.png",
                controlnet="tiny-controlnet"),
            run(Txt2Img, "tiny-sdxl", prompt="a red fox in the snow", loras=[{"id": "tiny-lora-sdxl", "weight": 0.8}],
                scheduler="dpmpp_2m", schedule="karras")]


def measure(images: list[tuple[Image.Image, dict[str, Any]]]) -> dict[str, Any]:
    """Per format: bytes and CPU seconds per image (means over the images), and both as ratios to PNG."""
    from runtime.contract.formats import OutputOptions
    from runtime.worker.images import encode_output

    formats = {"png": OutputOptions(), "webp": OutputOptions(format="webp"), "jpeg": OutputOptions(format="jpeg"),
               "webp_lossless": OutputOptions(format="webp", lossless=True)}
    size = dict.fromkeys(formats, 0)
    cpu = dict.fromkeys(formats, 0.0)
    for image, parameters in images:
        for name, options in formats.items():
            size[name] += len(encode_output(image, parameters, options))
    for _ in range(REPEATS):
        for image, parameters in images:
            for name, options in formats.items():
                started = time.process_time()
                encode_output(image, parameters, options)
                cpu[name] += time.process_time() - started
    n = len(images)
    return {name: {"quality": options.effective_quality, "bytes_per_image": size[name] / n,
                   "cpu_ms_per_image": 1000 * cpu[name] / (n * REPEATS),
                   "bytes_vs_png": size[name] / size["png"], "cpu_vs_png": cpu[name] / cpu["png"]}
            for name, options in formats.items()}


@on_tiny_models
def figures(models: Path) -> dict[str, Any]:
    from tests.harness.verdicts import goal

    smooth = smooth_picture()
    demo = measure(demo_images(models))
    ratio = demo["webp"]["bytes_vs_png"]
    # The figure: WebP at Replicate's default quality stores a fifth of PNG's bytes or less.
    goals = {"webp_bytes_vs_png": goal(round(ratio, 3), "<=", WEBP_GOAL)}
    return {"demo_images": demo, "smooth_picture": measure([(smooth, {"prompt": "x"})]), "size_px": SIZE,
            "repeats": REPEATS, "goals": goals}


def report(f: dict[str, Any]) -> list[str]:
    lines = [f"output formats, {f['size_px']} px, default quality (bytes and the worker's encoding CPU per image, "
             "ratio to PNG):"]
    for label in ("demo_images", "smooth_picture"):
        for name, row in f[label].items():
            lines.append(f"  {label:<15} {name:<14} q={row['quality']!s:<4} {row['bytes_per_image']:>9.0f} B "
                         f"x{row['bytes_vs_png']:.2f}   {row['cpu_ms_per_image']:7.1f} ms CPU x{row['cpu_vs_png']:.2f}")
    return lines


if __name__ == "__main__":
    result = figures()
    print("\n".join(report(result)))
    print(json.dumps({"bench": "formats", **result}, sort_keys=True))
