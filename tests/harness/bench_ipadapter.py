"""IP-Adapter cost (``make bench``, docs/benchmarks.md "IP-Adapter"): the per-step cost of one IP-Adapter against
the same pipeline without it, both through the worker's own ``Txt2Img.run`` on one loaded model.

What the adapter adds per step is an attention over its four image tokens in every cross-attention layer (and the
image encoder once per job, which a step figure spreads over the steps). Both sides run on the same base model in
one process, switching per job as a worker does, so the figure also covers the switch. Rounds of one image a side
alternate which side goes first; the figure is the ratio of the sides' median CPU seconds per step (this process's,
torch on one thread: see bench_hires.py for why). The tiny models' attention is a far larger share of a step than
a real model's, so the ratio here is an upper bound of what a real SD 1.5 model shows.

    python -m tests.harness.bench_ipadapter
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path
from typing import Any

from tests.harness.tinymodels import on_tiny_models

#: Rounds of one image a side; the side that goes first alternates.
ROUNDS = 16
SIZE, STEPS = 128, 16
PROMPT = "a red fox in the snow, detailed fur"
ADAPTER = "tiny-ip-adapter-sd1"


@on_tiny_models
def figures(models: Path) -> dict[str, Any]:
    import numpy as np
    import torch
    from PIL import Image

    from pipelines.txt2img import Txt2Img
    from runtime.contract import Txt2ImgInputs
    from runtime.models.store import ModelStore
    from runtime.plugins import RunContext

    store = ModelStore(models, "cpu")
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (96, 96, 3), dtype=np.uint8))
    common = {"prompt": PROMPT, "width": SIZE, "height": SIZE, "steps": STEPS, "scheduler": "euler"}
    inputs = {"plain": Txt2ImgInputs(**common),
              "ip_adapter": Txt2ImgInputs.model_validate(
                  {**common, "ip_adapters": [{"id": ADAPTER, "image": "s3://inputs/style.png", "scale": 0.8}]},
                  context={"input_bucket": "inputs"})}
    pipeline = Txt2Img()

    def side(name: str) -> Any:
        def run(seed: int) -> Any:
            ctx = RunContext(job_id="bench", model="tiny-sd", seed=seed, device="cpu", models=store,
                             report=lambda step, total, state: None, fetch_image=lambda ref: image)
            return pipeline.run(inputs[name], ctx)[0]
        return run

    sides = {name: side(name) for name in inputs}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for run in sides.values():
            run(0)  # warm-up: loading, first-call allocations, the adapter's processors built once
        cpu = _rounds(sides)
    finally:
        torch.set_num_threads(threads)
    per_step = {name: statistics.median(values) / STEPS for name, values in cpu.items()}
    return {"size": [SIZE, SIZE], "steps": STEPS, "images_per_side": ROUNDS, "torch_threads": 1,
            "plain_cpu_ms_per_step": round(per_step["plain"] * 1000, 3),
            "ip_adapter_cpu_ms_per_step": round(per_step["ip_adapter"] * 1000, 3),
            "ip_adapter_over_plain": round(per_step["ip_adapter"] / per_step["plain"], 3)}


def _rounds(sides: dict[str, Any]) -> dict[str, list[float]]:
    """CPU seconds of each side's image in each round, each side first in every other round."""
    cpu: dict[str, list[float]] = {name: [] for name in sides}
    for round_ in range(ROUNDS):
        for name in list(sides) if round_ % 2 == 0 else list(sides)[::-1]:
            started = time.process_time()
            sides[name](1 + round_)
            cpu[name].append(time.process_time() - started)
    return cpu


def report(f: dict[str, Any]) -> list[str]:
    return [f"IP-Adapter, tiny-sd txt2img on CPU, {f['size'][0]} px, {f['steps']} steps, {f['images_per_side']} "
            "images a side, alternating rounds:",
            f"  without an adapter   {f['plain_cpu_ms_per_step']:.3f} CPU ms/step (median)",
            f"  with one IP-Adapter  {f['ip_adapter_cpu_ms_per_step']:.3f} CPU ms/step (median)",
            f"  with / without = {f['ip_adapter_over_plain']}"]


if __name__ == "__main__":
    result = figures()
    print("\n".join(report(result)))
    print(json.dumps({"bench": "ip_adapter", **result}, sort_keys=True))
