"""Model-family and LoRA figures for `make bench` (run alone: `python -m tests.harness.bench_models`).

All on the tiny models in this process, measured in one run and printed as ratios:

* SDXL memory: the distinct tensors behind txt2img, img2img and ControlNet jobs on one SDXL base, divided by the
  base model plus the ControlNet (the goal is 1.0: the three tasks share every module);
* LoRA first load (read the file, convert, inject), a switch between two loaded adapters, and unloading (the
  ``disable`` a job without LoRAs does, and deleting an adapter), each in units of one 512 px denoising step of
  the same model;
* the cost per step of one and of three active, unfused adapters against none (the goal is at most 1.10);
* fusing one adapter: the step time fused against unfused, and what fusing and unfusing cost, so how many steps
  a job needs before fusing pays.

The two goals' verdicts are in the figures (``"goals"``: value, goal, ``"met"``): the SDXL memory ratio within
0.05 of 1.0 (one shared module counted twice would add far more) and one active adapter at most 1.10 per step
on the tiny model.

The tiny models' layers are small, so a LoRA's extra matrix products weigh more against a step here than on a
real model on a GPU, where the per-step ratio is what to check (``make bench-gpu`` where there is one).
"""

from __future__ import annotations

import contextlib
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

STEP_SIZE, STEPS = 512, 8
#: The step size of the larger UNet (a 512 px step of it would take most of a second on these CPUs).
MEDIUM_SIZE = 256


def _context(store: Any, model: str, on_step: Any = None) -> Any:
    from runtime.plugins import RunContext

    return RunContext(job_id="bench", model=model, seed=1, device="cpu", models=store,
                      report=on_step or (lambda step, total, state: None), fetch_image=lambda ref: None)


def step_seconds(base: Any, size: int = STEP_SIZE, repeats: int = 2) -> float:
    """Median seconds of one txt2img denoising step on a view of ``base`` in whatever adapter state it is in
    (steps 2.. of each run, so the first step's warm-up is left out)."""
    import torch
    from diffusers import StableDiffusionPipeline

    from pipelines.common import job_pipeline
    from runtime.contract import Txt2ImgInputs

    pipe = job_pipeline(StableDiffusionPipeline, base, Txt2ImgInputs(prompt="a red fox"))
    times: list[float] = []
    stamps: list[float] = []

    def stamp(pipe: Any, i: int, t: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
        stamps.append(time.perf_counter())
        return kwargs

    for _ in range(repeats):
        stamps.clear()
        with torch.inference_mode():
            pipe(prompt="a red fox", width=size, height=size, num_inference_steps=STEPS, callback_on_step_end=stamp,
                 generator=torch.Generator().manual_seed(1))
        times += [b - a for a, b in zip(stamps, stamps[1:], strict=False)]
    return statistics.median(times)


def timed(fn: Any, repeats: int = 5) -> float:
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - started)
    return statistics.median(samples)


@contextlib.contextmanager
def recorded_views() -> Iterator[list[Any]]:
    """Every per-job pipeline view the built-ins make meanwhile (``pipelines.common.job_pipeline``), so that their
    modules can be counted: views that shared the base's modules add nothing to its bytes."""
    import pipelines.common

    views: list[Any] = []
    original = pipelines.common.job_pipeline

    def recording(*args: Any, **kwargs: Any) -> Any:
        views.append(original(*args, **kwargs))
        return views[-1]

    pipelines.common.job_pipeline = recording
    try:
        yield views
    finally:
        pipelines.common.job_pipeline = original


def all_modules(views: list[Any]) -> Any:
    """The views' components as one object ``object_bytes`` counts (each tensor once)."""
    return SimpleNamespace(components={f"{i}.{k}": v for i, view in enumerate(views)
                                       for k, v in view.components.items()})


def sdxl_memory_ratio(store: Any) -> float:
    import pipelines.common
    from pipelines.controlnet import ControlNet
    from pipelines.img2img import Img2Img
    from pipelines.txt2img import Txt2Img
    from runtime.models.store import object_bytes

    with recorded_views() as views:
        from PIL import Image

        image = Image.new("RGB", (64, 64), (200, 120, 40))
        ctx = _context(store, "tiny-sdxl")
        ctx.fetch_image = lambda ref: image
        common = {"prompt": "a fox", "width": 64, "height": 64, "steps": 2}
        for cls, extra in ((Txt2Img, {}), (Img2Img, {"image": "s3://b/x.png"}),
                           (ControlNet, {"control_image": "s3://b/x.png", "controlnet": "tiny-sdxl-controlnet"})):
            cls().run(cls.Inputs.model_validate({**common, **extra}, context={"input_bucket": "b"}), ctx)
    everything = all_modules(views)
    base = pipelines.common.base_pipeline(store, "tiny-sdxl")
    controlnet = pipelines.common.controlnet_model(store, "tiny-sdxl-controlnet")
    return object_bytes(everything) / (object_bytes(base) + object_bytes(controlnet))


def adapter_states(store: Any, plain: Any, base: Any, a: Any, b: Any, size: int, rounds: int = 3) -> dict[str, float]:
    """Median step seconds of ``plain`` (a copy of the model that never loads an adapter) and of ``base`` with one
    and two adapters active, all disabled, and one fused, measured in alternating rounds so that drift on a
    shared machine hits every state alike."""
    from pipelines import loras

    samples: dict[str, list[float]] = {"none": [], "one": [], "two": [], "disabled": [], "fused": []}
    for _ in range(rounds):
        samples["none"].append(step_seconds(plain, size, repeats=1))
        loras.activate(store, base, [a])
        samples["one"].append(step_seconds(base, size, repeats=1))
        loras.activate(store, base, [a, b])
        samples["two"].append(step_seconds(base, size, repeats=1))
        loras.activate(store, base, [])
        samples["disabled"].append(step_seconds(base, size, repeats=1))
        loras.activate(store, base, [a])
        base.fuse_lora(adapter_names=[loras.adapter_name(a.id)])  # merged into the weights: no extra work
        samples["fused"].append(step_seconds(base, size, repeats=1))
        base.unfuse_lora()
    return {state: statistics.median(values) for state, values in samples.items()}


def copy_entry(models: Path, model_id: str, copy_id: str) -> None:
    """A second catalog id for the same files: the store loads it as a model of its own."""
    catalog = json.loads((models / "catalog.json").read_text())
    catalog["models"][copy_id] = {**catalog["models"][model_id], "aliases": []}  # an alias names one model
    (models / "catalog.json").write_text(json.dumps(catalog))


def figures() -> dict[str, Any]:
    from safetensors.torch import save_file

    from pipelines import loras
    from pipelines.common import base_pipeline
    from runtime.contract import LoraRef
    from runtime.models.store import ModelStore
    from runtime.models.tinylora import lora_weights
    from tests.harness.bench_cache import MEDIUM, build_medium_models

    with tempfile.TemporaryDirectory() as tmp:
        models = Path(tmp) / "models"
        build_medium_models(models)
        copy_entry(models, "tiny-sd", "plain-sd")
        copy_entry(models, MEDIUM, "plain-medium")
        store = ModelStore(models, "cpu")
        out: dict[str, Any] = {"sdxl_memory_ratio": sdxl_memory_ratio(store)}
        a, b = LoraRef(id="tiny-lora-sd1"), LoraRef(id="tiny-lora-sd1-kohya")
        base = base_pipeline(store, "tiny-sd")
        tiny = adapter_states(store, base_pipeline(store, "plain-sd"), base, a, b, STEP_SIZE)
        name = loras.adapter_name(a.id)

        def load_and_drop() -> None:
            loras.activate(store, base, [a])
            loras._delete(base, name)
            del loras.loaded(base)[name]

        first_load = timed(load_and_drop)
        loras.activate(store, base, [a, b])
        switch = timed(lambda: (loras.activate(store, base, [a]), loras.activate(store, base, [b]))) / 2
        disable = timed(lambda: (loras.activate(store, base, [a]), loras.activate(store, base, []))) - switch
        fuse = timed(lambda: (loras.activate(store, base, [a]), base.fuse_lora(adapter_names=[name]),
                              base.unfuse_lora())) - switch
        # A larger UNet of SD's layout, whose step has about a real model's balance of matrix sizes.
        medium = base_pipeline(store, MEDIUM)
        catalog = json.loads((models / "catalog.json").read_text())
        for lora_id, seed in (("medium-lora-a", 1), ("medium-lora-b", 2)):
            save_file(lora_weights(medium, seed), models / f"{lora_id}.safetensors")
            catalog["models"][lora_id] = {"path": f"{lora_id}.safetensors", "kind": "lora", "family": "sd1"}
        (models / "catalog.json").write_text(json.dumps(catalog))
        store._catalog = None  # read the catalog again
        big = adapter_states(store, base_pipeline(store, "plain-medium"), medium, LoraRef(id="medium-lora-a"),
                             LoraRef(id="medium-lora-b"), MEDIUM_SIZE)
        medium_mib = sum(p.numel() * p.element_size() for p in medium.unet.parameters()) / 2**20
    saved = tiny["one"] - tiny["fused"]
    out.update({
        "tiny_model": "tiny-sd", "tiny_size": STEP_SIZE, "medium_model": MEDIUM, "medium_size": MEDIUM_SIZE,
        "medium_unet_mib": round(medium_mib),
        "step_s": tiny["none"],
        "lora_first_load_steps": first_load / tiny["none"], "lora_switch_steps": switch / tiny["none"],
        "lora_disable_steps": disable / tiny["none"],
        "tiny_step_ratio": {k: v / tiny["none"] for k, v in tiny.items()},
        "medium_step_ratio": {k: v / big["none"] for k, v in big.items()},
        "fuse_unfuse_steps": fuse / tiny["none"],
        "fusing_pays_after_steps": fuse / saved if saved > 0 else None,
    })
    from tests.harness.verdicts import goal

    out["goals"] = {"sdxl_memory_ratio": goal(out["sdxl_memory_ratio"], "~", 1.0, 0.05),
                    "tiny_step_ratio.one": goal(out["tiny_step_ratio"]["one"], "<=", 1.10)}
    return out


def report(f: dict[str, Any]) -> list[str]:
    pays = f["fusing_pays_after_steps"]
    tiny, medium = f["tiny_step_ratio"], f["medium_step_ratio"]
    return [
        f"SDXL memory, three tasks on one base + ControlNet: {f['sdxl_memory_ratio']:.3f} x (base + ControlNet) "
        "(goal 1.0)",
        f"LoRA, in {f['tiny_size']} px steps of {f['tiny_model']} ({f['step_s'] * 1000:.0f} ms): first load "
        f"{f['lora_first_load_steps']:.2f}, cached switch {f['lora_switch_steps']:.3f}, unload (disable) "
        f"{f['lora_disable_steps']:.3f}",
        "per step vs a copy that never loaded one (goal <= 1.10 for one active):",
        "                                             one     two     all disabled  one fused",
        f"  {f['tiny_model'] + ', ' + str(f['tiny_size']) + ' px':<43}  {tiny['one']:.3f}   {tiny['two']:.3f}   "
        f"{tiny['disabled']:.3f}         {tiny['fused']:.3f}",
        f"  {f['medium_model'] + ' (UNet ' + str(f['medium_unet_mib']) + ' MiB), ' + str(f['medium_size']) + ' px':<43}"
        f"  {medium['one']:.3f}   {medium['two']:.3f}   {medium['disabled']:.3f}         {medium['fused']:.3f}",
        f"fusing one LoRA: fuse + unfuse {f['fuse_unfuse_steps']:.2f} steps, "
        + (f"pays after {pays:.0f} steps" if pays else "never pays here")
        + "; unfusing is not exact in float, so a fused worker would break byte-identity for the next job",
    ]


if __name__ == "__main__":
    result = figures()
    print("\n".join(report(result)))
    print(json.dumps({"bench": "models", **result}, sort_keys=True))
