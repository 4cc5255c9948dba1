"""ControlNet units (``make bench``, docs/benchmarks.md "ControlNet units"): what one and two units cost per
denoising step, and that jobs with units hold no copy of any module.

* Per-step cost: the worker's own ``Txt2Img.run`` on tiny-sd with no unit, one unit and two units (two distinct
  ControlNets), as the CPU seconds of steps 2.. of each job (stamped at each progress report; the first step's
  warm-up left out), the median over alternating rounds, as ratios to the job without units. A ControlNet is
  about a UNet's encoder half, so one unit's step costs about 1.4 to 1.6 plain steps on a real model; the tiny
  models' balance differs, so the ratios are reported, with no goal.
* Memory: the distinct tensors behind txt2img, img2img and inpaint jobs with two ControlNets of one base (every
  view the jobs built, as ``bench_models`` counts them), divided by the base plus both nets: 1.0 when the views
  share every module (goal within 0.05; one module held twice would add far more).

torch runs on one thread meanwhile, as in ``bench_hires`` (threads sharing cores with other processes wait on each
other unevenly).

    python -m tests.harness.bench_controlnets
"""

from __future__ import annotations

import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.harness.tinymodels import on_tiny_models  # noqa: E402

SIZE, STEPS, ROUNDS = 128, 8, 6
SECOND = "tiny-controlnet-b"


def _units(count: int) -> list[dict[str, Any]]:
    nets = ["tiny-controlnet", SECOND]
    return [{"id": nets[i], "image": "s3://b/map.png", "scale": 0.8 + 0.2 * i} for i in range(count)]


@on_tiny_models
def figures(models: Path) -> dict[str, Any]:
    import torch

    from tests.harness.bench_models import copy_entry

    with tempfile.TemporaryDirectory() as tmp:
        own = Path(tmp) / "models"
        shutil.copytree(models, own)  # a second ControlNet id, without touching the caller's models
        copy_entry(own, "tiny-controlnet", SECOND)
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            from runtime.models.store import ModelStore

            store = ModelStore(own, "cpu")
            out = {"memory_ratio": _memory_ratio(store), **_step_costs(store)}
        finally:
            torch.set_num_threads(threads)
    out["goals"] = {"memory_ratio": _goal(out["memory_ratio"])}
    return out


def _goal(value: float) -> dict[str, Any]:
    from tests.harness.verdicts import goal

    return goal(round(value, 4), "~", 1.0, 0.05)


def _context(store: Any, on_step: Any = None, seed: int = 1) -> Any:
    from PIL import Image

    from runtime.plugins import RunContext

    image = Image.new("RGB", (SIZE, SIZE))
    image.paste((255, 255, 255), (SIZE // 4, SIZE // 4, 3 * SIZE // 4, 3 * SIZE // 4))
    return RunContext(job_id="bench", model="tiny-sd", seed=seed, device="cpu", models=store,
                      report=on_step or (lambda step, total, state: None), fetch_image=lambda ref: image)


def _step_costs(store: Any) -> dict[str, Any]:
    from pipelines.txt2img import Txt2Img
    from runtime.contract import Txt2ImgInputs

    jobs = {count: Txt2ImgInputs.model_validate(
        {"prompt": "a red fox", "width": SIZE, "height": SIZE, "steps": STEPS, "scheduler": "euler",
         "controlnets": _units(count)}, context={"input_bucket": "b"}) for count in (0, 1, 2)}
    samples: dict[int, list[float]] = {count: [] for count in jobs}

    def run(count: int, seed: int) -> None:
        stamps: list[float] = []
        Txt2Img().run(jobs[count], _context(store, lambda step, total, state: stamps.append(time.process_time()),
                                            seed))
        samples[count] += [b - a for a, b in zip(stamps, stamps[1:], strict=False)]

    for count in jobs:
        run(count, 0)  # warm-up: loading, first-call allocations
        samples[count].clear()
    for round_ in range(ROUNDS):
        for count in list(jobs) if round_ % 2 == 0 else list(jobs)[::-1]:
            run(count, 1 + round_)
    plain = statistics.median(samples[0])
    return {"step_cpu_s": {str(c): round(statistics.median(s), 5) for c, s in samples.items()},
            "step_ratio": {"one": round(statistics.median(samples[1]) / plain, 3),
                           "two": round(statistics.median(samples[2]) / plain, 3)},
            "size": SIZE, "steps": STEPS, "rounds": ROUNDS, "torch_threads": 1}


def _memory_ratio(store: Any) -> float:
    import pipelines.common
    from pipelines.img2img import Img2Img
    from pipelines.inpaint import Inpaint
    from pipelines.txt2img import Txt2Img
    from runtime.models.store import object_bytes
    from tests.harness.bench_models import all_modules, recorded_views

    with recorded_views() as views:
        common = {"prompt": "a fox", "width": 64, "height": 64, "steps": 2, "controlnets": _units(2)}
        for cls, extra in ((Txt2Img, {}), (Img2Img, {"image": "s3://b/x.png"}),
                           (Inpaint, {"image": "s3://b/x.png", "mask": "s3://b/x.png"})):
            cls().run(cls.Inputs.model_validate({**common, **extra}, context={"input_bucket": "b"}), _context(store))
    assert len(views) == 3, "each job builds one view"
    everything = all_modules(views)
    base = pipelines.common.base_pipeline(store, "tiny-sd")
    nets = [pipelines.common.controlnet_model(store, net) for net in ("tiny-controlnet", SECOND)]
    assert nets[0] is not nets[1], "two catalog ids load as two ControlNets"
    return object_bytes(everything) / (object_bytes(base) + sum(object_bytes(net) for net in nets))


def report(f: dict[str, Any]) -> list[str]:
    ratio, memory = f["step_ratio"], f["goals"]["memory_ratio"]
    return [f"ControlNet units, tiny-sd on CPU, {f['size']} px, {f['steps']} steps, {f['rounds']} rounds a side, "
            f"one torch thread:",
            f"  per step vs no unit: one unit {ratio['one']:.3f}, two units {ratio['two']:.3f} "
            f"(plain step {f['step_cpu_s']['0'] * 1000:.1f} CPU ms)",
            f"  memory of txt2img, img2img and inpaint jobs with two ControlNets: {memory['value']} x (base + both "
            f"nets) (goal {memory['goal']}, met: {memory['met']})"]


if __name__ == "__main__":
    result = figures()
    print("\n".join(report(result)))
    print(json.dumps({"bench": "controlnets", **result}, sort_keys=True))
