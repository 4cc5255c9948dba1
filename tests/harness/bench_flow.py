"""Flux.1 and SD 3.5 (``make bench``, docs/benchmarks.md "Flux.1 and SD 3.5"): what the flow-matching families
cost in memory and per step on the worker's path, on the tiny models, measured in one run.

For each family (tiny-flux, Flux.1 dev's shape, with tiny-flux-controlnet; tiny-sd3, SD 3.5 medium's, with
tiny-sd3-controlnet):

* **Memory sharing:** a txt2img, an img2img, an inpaint and a ControlNet job through the worker's own pipelines
  (``Txt2Img``, ``Img2Img``, ``Inpaint``, ``ControlNet``) on one base; the distinct tensors behind every per-job view
  they built (``bench_models.recorded_views``, counted once each by ``object_bytes``), divided by the loaded base
  plus its ControlNet. 1.00 when the views share every module (goal within 0.05; one module held twice would add
  far more: the smallest, the tiny VAE, is a tenth of the base).
* **Per step against plain diffusers:** the same txt2img job (size, steps, seed, guidance, T5 length) through
  spotgen's path (``Txt2Img.run``: the family's per-job view, ``run_resumable`` with the worker's per-step report
  and its checkpoint-ready state) and through plain diffusers (``FluxPipeline`` / ``StableDiffusion3Pipeline``
  ``from_pretrained`` on the same tiny directory, called with a ``callback_on_step_end`` that only stamps the
  time): the median CPU seconds between two steps' ends (the first step's warm-up left out), rounds alternating
  which side goes first, torch on one thread (as ``bench_hires``: threads sharing cores with other processes wait
  on each other unevenly). The figure is diffusers' step / spotgen's (goal >= 0.95, as the hires fix's), and beside
  it the same per image (prompt encoding, steps, decoding). Whether both sides made the same pixels is reported too.
* **A per-job view:** the median time to build one (``DiffusersPipeline.view``: a new pipeline object on the
  base's modules, with its own scheduler), in milliseconds and in steps.

    python -m tests.harness.bench_flow
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.harness.tinymodels import on_tiny_models  # noqa: E402

#: family -> (base model, its ControlNet, the diffusers class a user would load, the call's family arguments)
FAMILIES: dict[str, tuple[str, str, str, dict[str, Any]]] = {
    "flux": ("tiny-flux", "tiny-flux-controlnet", "FluxPipeline",
             {"guidance_scale": 3.5, "max_sequence_length": 512}),
    "sd3": ("tiny-sd3", "tiny-sd3-controlnet", "StableDiffusion3Pipeline",
            {"guidance_scale": 4.5, "max_sequence_length": 256}),
}
SIZE, STEPS, ROUNDS, VIEWS = 256, 8, 8, 50
PROMPT = "a red fox in the snow"


@on_tiny_models
def figures(models: Path) -> dict[str, Any]:
    import torch

    from runtime.models.store import ModelStore
    from tests.harness.verdicts import goal

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    out: dict[str, Any] = {"size": SIZE, "steps": STEPS, "rounds": ROUNDS, "torch_threads": 1}
    try:
        for name, (model, controlnet, cls, call) in FAMILIES.items():
            store = ModelStore(models, "cpu")
            got = {"model": model, "controlnet": controlnet, "memory_ratio": round(memory_ratio(store, model,
                                                                                                controlnet), 4),
                   **step_costs(store, model, cls, call)}
            got["view_steps"] = round(got["view_s"] / got["spotgen_step_cpu_s"], 4)
            got["goals"] = {"memory_ratio": goal(got["memory_ratio"], "~", 1.0, 0.05),
                            "diffusers_over_spotgen_step": goal(got["diffusers_over_spotgen_step"], ">=", 0.95)}
            out[name] = got
    finally:
        torch.set_num_threads(threads)
    return out


def _context(store: Any, model: str, on_step: Any = None, seed: int = 1) -> Any:
    from PIL import Image

    from runtime.plugins import RunContext

    image = Image.new("RGB", (64, 64), (200, 120, 40))
    image.paste((255, 255, 255), (16, 16, 48, 48))
    return RunContext(job_id="bench", model=model, seed=seed, device="cpu", models=store,
                      report=on_step or (lambda step, total, state: None), fetch_image=lambda ref: image)


def memory_ratio(store: Any, model: str, controlnet: str) -> float:
    """Distinct tensors behind four tasks' views on ``model`` / (the loaded base + its ControlNet)."""
    from pipelines.common import base_pipeline, controlnet_model
    from pipelines.controlnet import ControlNet
    from pipelines.img2img import Img2Img
    from pipelines.inpaint import Inpaint
    from pipelines.txt2img import Txt2Img
    from runtime.models.store import object_bytes
    from tests.harness.bench_models import all_modules, recorded_views

    common = {"prompt": "a fox", "width": 64, "height": 64, "steps": 2}
    with recorded_views() as views:
        for cls, extra in ((Txt2Img, {}), (Img2Img, {"image": "s3://b/x.png", "strength": 0.8}),
                           (Inpaint, {"image": "s3://b/x.png", "mask": "s3://b/x.png", "strength": 0.9}),
                           (ControlNet, {"control_image": "s3://b/x.png", "controlnet": controlnet})):
            cls().run(cls.Inputs.model_validate({**common, **extra}, context={"input_bucket": "b"}),
                      _context(store, model))
    assert len(views) == 4, f"each job builds one view, not {len(views)}"
    base = base_pipeline(store, model)
    return object_bytes(all_modules(views)) / (object_bytes(base) + object_bytes(controlnet_model(store, controlnet)))


def step_costs(store: Any, model: str, cls_name: str, call: dict[str, Any]) -> dict[str, Any]:
    """The same txt2img job both ways, in alternating rounds: CPU seconds per step (median of steps 2..) and
    per image (median), and whether the two made the same pixels."""
    import diffusers
    import numpy as np
    import torch

    from pipelines.common import base_pipeline
    from pipelines.txt2img import Txt2Img
    from runtime.contract import Txt2ImgInputs

    inputs = Txt2ImgInputs(prompt=PROMPT, width=SIZE, height=SIZE, steps=STEPS)  # the family's defaults: ``call``
    plain = getattr(diffusers, cls_name).from_pretrained(store.source(model, "base").path, torch_dtype=torch.float32)
    plain.set_progress_bar_config(disable=True)
    steps: dict[str, list[float]] = {"spotgen": [], "diffusers": []}
    images: dict[str, list[float]] = {"spotgen": [], "diffusers": []}
    same: list[bool] = []

    def spotgen(seed: int) -> Any:
        stamps: list[float] = []
        image = Txt2Img().run(inputs, _context(store, model, lambda step, total, state: stamps.append(
            time.process_time()), seed))[0]
        return image, stamps

    def direct(seed: int) -> Any:
        stamps: list[float] = []

        def stamp(pipe: Any, i: int, t: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
            stamps.append(time.process_time())
            return kwargs

        with torch.inference_mode():
            image = plain(PROMPT, width=SIZE, height=SIZE, num_inference_steps=STEPS, callback_on_step_end=stamp,
                          generator=torch.Generator("cpu").manual_seed(seed), **call).images[0]
        return image, stamps

    sides = {"spotgen": spotgen, "diffusers": direct}
    spotgen(0), direct(0)  # warm-up: loading, first-call allocations, for neither side's figures
    for round_ in range(ROUNDS):
        made = {}
        for side in list(sides) if round_ % 2 == 0 else list(sides)[::-1]:
            started = time.process_time()
            made[side], stamps = sides[side](1 + round_)
            images[side].append(time.process_time() - started)
            assert len(stamps) == STEPS, f"{side}: {len(stamps)} step stamps, not {STEPS}"
            steps[side] += [b - a for a, b in zip(stamps, stamps[1:], strict=False)]
        same.append(np.array_equal(np.asarray(made["spotgen"]), np.asarray(made["diffusers"])))
    step = {side: statistics.median(values) for side, values in steps.items()}
    image = {side: statistics.median(values) for side, values in images.items()}
    base = base_pipeline(store, model)
    job = Txt2Img().prepare(inputs, _context(store, model))
    task = Txt2Img()
    view_s = []
    for _ in range(VIEWS):
        started = time.perf_counter()
        task.view(job)
        view_s.append(time.perf_counter() - started)
    return {"diffusers_class": cls_name, "call": call, "same_pixels": all(same),
            "spotgen_step_cpu_s": round(step["spotgen"], 6), "diffusers_step_cpu_s": round(step["diffusers"], 6),
            "diffusers_over_spotgen_step": round(step["diffusers"] / step["spotgen"], 3),
            "spotgen_image_cpu_s": round(image["spotgen"], 5), "diffusers_image_cpu_s": round(image["diffusers"], 5),
            "diffusers_over_spotgen_image": round(image["diffusers"] / image["spotgen"], 3),
            "view_s": statistics.median(view_s), "base_class": type(base).__name__}


def report(f: dict[str, Any]) -> list[str]:
    lines = [f"Flux.1 and SD 3.5, tiny models on CPU, txt2img {f['size']} px, {f['steps']} steps, {f['rounds']} rounds "
             "a side, one torch thread:"]
    for name in FAMILIES:
        g = f[name]
        memory, step = g["goals"]["memory_ratio"], g["goals"]["diffusers_over_spotgen_step"]
        lines += [
            f"  {name} ({g['model']} + {g['controlnet']}): views of 4 tasks (txt2img, img2img, inpaint, ControlNet) "
            f"/ base + ControlNet = {memory['value']:.2f} (goal {memory['goal']}, met: {memory['met']})",
            f"    per step: spotgen {g['spotgen_step_cpu_s'] * 1000:.2f} CPU ms, plain diffusers "
            f"{g['diffusers_class']} {g['diffusers_step_cpu_s'] * 1000:.2f} CPU ms: diffusers / spotgen "
            f"{step['value']:.3f} (goal {step['goal']}, met: {step['met']}); per image {g['spotgen_image_cpu_s']:.3f} "
            f"vs {g['diffusers_image_cpu_s']:.3f} CPU s: {g['diffusers_over_spotgen_image']:.3f}; same pixels: "
            f"{g['same_pixels']}",
            f"    a per-job view: {g['view_s'] * 1000:.2f} ms = {g['view_steps']:.3f} steps"]
    return lines


if __name__ == "__main__":
    result = figures(Path(sys.argv[1]) if len(sys.argv) > 1 else None)
    print("\n".join(report(result)))
    print(json.dumps({"bench": "flow", **result}, sort_keys=True))
