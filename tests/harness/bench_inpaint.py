"""Inpainting's ``only_masked`` (``make bench``, docs/benchmarks.md "Inpainting"): WebUI's "inpaint at full
resolution" against full-image inpainting, on a small mask in a larger image, measured in one run.

A 256x256 picture with a 32x32 mask: full-image inpainting denoises the whole picture at 256x256; ``only_masked``
crops around the mask (plus 16 pixels of padding), works at 64x64 and pastes the crop back. Both go through the
worker's own ``Inpaint.run`` on tiny-sd (the same steps, strength, fill and seed), rounds alternating so that drift
on a shared machine hits both alike; the figure is the ratio of their median wall times, the speed-up. Both
outputs keep the picture's pixels outside the mask, which is checked too.

    python -m tests.harness.bench_inpaint
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from tests.harness.tinymodels import on_tiny_models

SIZE, MASK, WORK = 256, 32, 64
ROUNDS, STEPS = 4, 10


def _inputs() -> dict[str, Image.Image]:
    rng = np.random.default_rng(3)
    mask = Image.new("L", (SIZE, SIZE))
    corner = (SIZE - MASK) // 2
    mask.paste(255, (corner, corner, corner + MASK, corner + MASK))
    return {"s3://in/picture.png": Image.fromarray(rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)),
            "s3://in/mask.png": mask}


@on_tiny_models
def figures(models: Path) -> dict[str, Any]:
    from pipelines.inpaint import Inpaint
    from runtime.models.store import ModelStore
    from runtime.plugins import RunContext
    from tests.harness.verdicts import goal

    store, images = ModelStore(models, "cpu"), _inputs()
    common = {"prompt": "a red fox in the snow", "image": "s3://in/picture.png", "mask": "s3://in/mask.png",
              "steps": STEPS, "strength": 0.75, "mask_blur": 4}
    modes = {"full_image": {**common, "width": SIZE, "height": SIZE},
             "only_masked": {**common, "only_masked": True, "padding": 16, "width": WORK, "height": WORK}}

    def run(fields: dict[str, Any]) -> tuple[float, Image.Image]:
        inputs = Inpaint.Inputs.model_validate(fields, context={"input_bucket": "in"})
        ctx = RunContext(job_id="bench", model="tiny-sd", seed=7, device="cpu", models=store,
                         report=lambda *a: None, fetch_image=images.__getitem__)
        started = time.perf_counter()
        (image,) = Inpaint().run(inputs, ctx)
        return time.perf_counter() - started, image

    for fields in modes.values():  # warm: the model's load and first-call costs are no part of either
        run(fields)
    times: dict[str, list[float]] = {name: [] for name in modes}
    outputs: dict[str, Image.Image] = {}
    for round_ in range(ROUNDS):
        for name in (list(modes) if round_ % 2 == 0 else list(reversed(modes))):
            elapsed, outputs[name] = run(modes[name])
            times[name].append(elapsed)
    median = {name: statistics.median(values) for name, values in times.items()}
    speedup = median["full_image"] / median["only_masked"]
    kept = np.ones((SIZE, SIZE), bool)
    low, high = (SIZE - MASK) // 2 - 16, (SIZE + MASK) // 2 + 16  # the mask, its blur and resize around it
    kept[low:high, low:high] = False
    picture = np.asarray(images["s3://in/picture.png"])
    unchanged = {name: bool(np.array_equal(np.asarray(image)[kept], picture[kept])) for name, image in outputs.items()}
    return {"image_px": SIZE, "mask_px": MASK, "only_masked_px": WORK, "steps": STEPS, "rounds": ROUNDS,
            "seconds": {name: round(value, 4) for name, value in median.items()},
            "outside_mask_unchanged": unchanged,
            "goals": {"only_masked_speedup": goal(round(speedup, 2), ">=", 1.0)}}


def report(f: dict[str, Any]) -> list[str]:
    seconds = f["seconds"]
    return [f"inpainting, a {f['mask_px']} px mask in a {f['image_px']} px picture, tiny-sd, {f['steps']} steps x 0.75 "
            f"(median of {f['rounds']} alternating rounds):",
            f"  full image at {f['image_px']}x{f['image_px']}: {seconds['full_image'] * 1000:8.1f} ms",
            f"  only_masked at {f['only_masked_px']}x{f['only_masked_px']}:  {seconds['only_masked'] * 1000:8.1f} ms   "
            f"speed-up x{f['goals']['only_masked_speedup']['value']:.2f}",
            f"  pixels outside the mask unchanged: {f['outside_mask_unchanged']}"]


if __name__ == "__main__":
    result = figures()
    print("\n".join(report(result)))
    print(json.dumps({"bench": "inpaint", **result}, sort_keys=True))
