"""`make bench`: the runtime's overhead, measured in one run on the embedded stack with the tiny model.

1. Direct: the worker's txt2img pipeline (diffusers), same inputs, called in a loop in this process.
2. End to end: the same jobs through HTTP API -> SNS -> SQS -> Celery worker -> S3 -> SNS, queued at once;
   throughput = jobs / (last finished_at - first submit).
3. Idle latency: submit -> `running` (status `started_at - created_at`) for one job at a time.

Prints a table per workload and, as the last line, one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from runtime.config import Settings  # noqa: E402
from runtime.demo import call, wait_for  # noqa: E402


def direct_throughput(models: Path, inputs: dict[str, Any], n: int) -> float:
    """Images per second from the worker's own txt2img pipeline called in a loop: no API, queue or storage."""
    from pipelines.txt2img import Txt2Img
    from runtime.contract import Txt2ImgInputs
    from runtime.models import ModelStore
    from runtime.plugins import RunContext

    store = ModelStore(models, "cpu")
    pipeline, parsed = Txt2Img(), Txt2ImgInputs(**inputs)

    def once(seed: int) -> None:
        pipeline.run(parsed, RunContext(job_id="direct", model="tiny-sd", seed=seed, device="cpu", models=store,
                                        report=lambda step, total: None, fetch_image=lambda ref: None))

    once(0)  # warm-up, as the worker's first job
    started = time.perf_counter()
    for seed in range(n):
        once(seed)
    return n / (time.perf_counter() - started)


def ts(value: str) -> float:
    return datetime.fromisoformat(value).timestamp()


def e2e_throughput(api: str, inputs: dict[str, Any], n: int) -> float:
    started = time.time()
    ids = []
    for seed in range(n):
        status, body = call("POST", f"{api}/v1/jobs", {"pipeline": "txt2img", "model": "tiny-sd",
                                                      "inputs": {**inputs, "seed": seed}})
        assert status == 202, body
        ids.append(body["id"])
    # polled slowly: the client shares the two cores with the worker and the emulator
    docs = [wait_for(api, job_id, show=False, timeout=900, poll_s=1.0) for job_id in ids]
    assert all(d["state"] == "succeeded" for d in docs), [d["error"] for d in docs]
    return n / (max(ts(d["finished_at"]) for d in docs) - started)


def idle_latency(api: str, inputs: dict[str, Any], n: int) -> list[float]:
    latencies = []
    for seed in range(n):
        status, body = call("POST", f"{api}/v1/jobs", {"pipeline": "txt2img", "model": "tiny-sd",
                                                      "inputs": {**inputs, "seed": seed}})
        doc = wait_for(api, body["id"], show=False)
        latencies.append(ts(doc["started_at"]) - ts(doc["created_at"]))
        time.sleep(0.5)  # let the worker go back to an idle long poll
    return latencies


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=20, help="jobs of the smallest workload (fewer of larger)")
    parser.add_argument("--latency-jobs", type=int, default=10)
    args = parser.parse_args()

    from runtime.devstack import DevStack
    from runtime.tiny import build_tiny_models

    # (inputs, jobs): from a job so short the fixed per-job cost dominates, to SD's native 512 px, whose
    # seconds per image on these CPUs are about what a real model takes on a GPU.
    workloads = {
        "64px-20steps": ({"prompt": "a red fox", "width": 64, "height": 64, "steps": 20}, args.jobs),
        "256px-30steps": ({"prompt": "a red fox", "width": 256, "height": 256, "steps": 30}, max(2, args.jobs // 2)),
        "512px-30steps": ({"prompt": "a red fox", "width": 512, "height": 512, "steps": 30}, max(2, args.jobs // 4)),
    }
    figures: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        models = Path(tmp) / "models"
        build_tiny_models(models)
        for name, (inputs, jobs) in workloads.items():
            figures[name] = {"jobs": jobs, "direct_images_per_s": direct_throughput(models, inputs, jobs)}
        os.environ["SPOTGEN_POLL_WAIT_S"] = "20"
        settings = Settings.from_env().model_copy(update={"models_dir": models})
        with DevStack(settings, port=0, aws_port=0, log_dir=Path(tmp) / "logs") as stack:
            api = stack.api_url
            wait_for(api, call("POST", f"{api}/v1/jobs", {"pipeline": "txt2img", "model": "tiny-sd", "inputs": {
                "prompt": "warm-up", "width": 64, "height": 64, "steps": 2}})[1]["id"], show=False)
            for name, (inputs, jobs) in workloads.items():
                e2e = e2e_throughput(api, inputs, jobs)
                figures[name].update(e2e_images_per_s=e2e, ratio=e2e / figures[name]["direct_images_per_s"])
            lat = idle_latency(api, {"prompt": "latency", "width": 64, "height": 64, "steps": 2},
                               args.latency_jobs)
    figures["submit_to_running_s"] = {"p50": percentile(lat, 0.5), "p95": percentile(lat, 0.95), "n": len(lat)}

    print(f"{'workload':<16}{'direct img/s':>14}{'end-to-end img/s':>18}{'ratio':>8}   (goal >= 0.95)")
    for name in workloads:
        f = figures[name]
        print(f"{name:<16}{f['direct_images_per_s']:>14.2f}{f['e2e_images_per_s']:>18.2f}{f['ratio']:>8.3f}")
    lat_f = figures["submit_to_running_s"]
    print(f"submit -> running, idle worker: p50 {lat_f['p50'] * 1000:.0f} ms, p95 {lat_f['p95'] * 1000:.0f} ms "
          f"({lat_f['n']} jobs)")
    print(json.dumps({"bench": "e2e", **figures}, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
