"""`make bench`: the runtime's overhead, measured in one run on the embedded stack with the tiny model.

For each workload, in alternating rounds so that drift on a shared machine hits both alike:
1. Direct: the worker's own txt2img pipeline (diffusers) called in a loop in this process.
2. End to end: the same jobs through HTTP API -> SNS -> SQS -> Celery worker -> S3 -> SNS, queued at once;
   time from the first submit until the client has received the last job's notification.
Throughput ratio = direct time / end-to-end time for the same images (``GOALS``). Alongside it, where the CPU
went: this process's (the emulator, the API and the client) and the worker's, per image, against the direct
pipeline's; on this machine the "device" is the same cores, so the emulator's CPU is taken from the device.
Then the same workloads with a device of its own (``pinned_figures``): one torch thread on one pinned CPU, for
the direct loop and for the worker, with the emulator, the API and the client on the other CPUs, as on a GPU node.
Then submit -> `running` latency of an idle worker (status `started_at - created_at`), one job at a time.
Then the cost of an interruption for a 512 px job: checkpoint size, time to serialize and store it, and time
from the start of a resumed run to its first step against a fresh run's, all in units of one denoising step.
Then the model cache (tests/harness/bench_cache.py, which says how EFS is simulated), the SDXL memory ratio and
the LoRA costs (tests/harness/bench_models.py), AWS requests per job and the device's idle time between jobs,
with and without 20 ms of latency per request (tests/harness/bench_requests.py), bytes and encoding CPU per
image of each output format (tests/harness/bench_formats.py), the editing pipelines (hires fix against its two passes
called directly, tiled against untiled upscaling, ``only_masked`` against full-image inpainting, the cost per step of
ControlNet units and of an IP-Adapter: tests/harness/bench_hires.py, bench_upscale.py, bench_inpaint.py,
bench_controlnets.py, bench_ipadapter.py), Flux.1's and SD 3.5's memory sharing, cost per step against plain
diffusers and per-job view (tests/harness/bench_flow.py) and the telemetry overhead
(tests/harness/bench_ops.py), and how fast a new node serves: a tier-1 load against reading its files, and a worker
process's start to its first image by phase, each against its floor (tests/harness/bench_coldstart.py).

Prints tables (the goals' last) and, as the last line, one JSON object with every figure. Each figure that has a
goal has its verdict beside it (a ``"goals"`` map: value, goal, ``"met"``), and ``goals_missed`` lists those not
met; a goal missed is a finding about this machine, not a failure: the exit status is non-zero only when the benchmark
itself failed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from runtime.config import Settings  # noqa: E402
from runtime.models.store import ModelStore  # noqa: E402
from tests.harness.bench_checkpoint import checkpoint_figures  # noqa: E402
from tests.harness.bench_requests import percentile  # noqa: E402
from tests.harness.verdicts import goal, goals_count, goals_missed  # noqa: E402
from tests.rest import call, wait_for  # noqa: E402

#: End-to-end / direct throughput to reach, per workload: the shorter the job, the more its fixed cost weighs.
GOALS = {"64px-20steps": 0.85, "256px-30steps": 0.95, "512px-30steps": 0.97}


def direct_seconds(store: ModelStore, inputs: dict[str, Any], seeds: range) -> float:
    """Seconds for the worker's txt2img pipeline to make one image per seed, with no API, queue or storage."""
    from pipelines.txt2img import Txt2Img
    from runtime.contract import Txt2ImgInputs
    from runtime.plugins import RunContext

    pipeline, parsed = Txt2Img(), Txt2ImgInputs(**inputs)
    started = time.perf_counter()
    for seed in seeds:
        pipeline.run(parsed, RunContext(job_id="direct", model="tiny-sd", seed=seed, device="cpu", models=store,
                                        report=lambda step, total, state: None, fetch_image=lambda ref: None))
    return time.perf_counter() - started


def cpu_seconds(pid: int | None = None) -> float:
    """CPU seconds (user + system, every thread, living or ended) of this process or of ``pid`` (Linux)."""
    if pid is None:
        times = os.times()
        return times.user + times.system
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def ts(value: str) -> float:
    return datetime.fromisoformat(value).timestamp()


def submit(api: str, inputs: dict[str, Any], seed: int) -> str:
    status, body = call("POST", f"{api}/v1/jobs", {"pipeline": "txt2img", "model": "tiny-sd",
                                                  "inputs": {**inputs, "seed": seed}})
    assert status == 202, body
    return body["id"]


def notifications_until(results: tuple[Any, str], ids: set[str], timeout: float = 900) -> float:
    """Receive from the results queue until every job of ``ids`` was announced; when the last one arrived.
    Long polls: this client shares the two cores with the worker and the emulator, and waits without spinning."""
    sqs, url = results
    pending, deadline, last = set(ids), time.monotonic() + timeout, time.time()
    while pending:
        assert time.monotonic() < deadline, f"no notification for {sorted(pending)[:3]}"
        for msg in sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=1).get("Messages", []):
            sqs.delete_message(QueueUrl=url, ReceiptHandle=msg["ReceiptHandle"])
            if json.loads(msg["Body"])["id"] in pending:
                pending.discard(json.loads(msg["Body"])["id"])
                last = time.time()
    return last


def e2e_seconds(api: str, inputs: dict[str, Any], seeds: range, results: tuple[Any, str],
                worker: int) -> tuple[float, list[str], tuple[float, float]]:
    """From the first submit until the client has heard the last job's notification (which the worker sends
    after the outputs, the result document and the final status): the whole path, nothing left out. Also the
    jobs' ids, and the CPU seconds that this process (emulator, API, client) and the worker process used
    meanwhile (the checks afterwards are not counted)."""
    mine, theirs = cpu_seconds(), cpu_seconds(worker)
    started = time.time()
    ids = [submit(api, inputs, seed) for seed in seeds]
    ended = notifications_until(results, set(ids))
    cpu = (cpu_seconds() - mine, cpu_seconds(worker) - theirs)
    docs = [wait_for(api, job_id, timeout=60, poll_s=1.0) for job_id in ids]
    assert all(d["state"] == "succeeded" for d in docs), [d["error"] for d in docs]
    return ended - started, ids, cpu


def pipeline_seconds(log_dir: Path, ids: list[str]) -> list[float]:
    """The pipeline time of each job, as the worker logged it (``job ... succeeded: pipeline X s``): the model's
    work in the worker, while the emulator, the API, the client and the output stage share the cores."""
    found: dict[str, float] = {}
    for log in log_dir.glob("worker-*.log"):
        for job_id, seconds in re.findall(r"job (\w+) succeeded: pipeline ([\d.]+) s", log.read_text(errors="replace")):
            found[job_id] = float(seconds)
    return [found[job_id] for job_id in ids if job_id in found]


def idle_latency(api: str, n: int) -> list[float]:
    latencies = []
    for seed in range(n):
        time.sleep(0.5)  # let the worker go back to an idle long poll
        doc = wait_for(api, submit(api, {"prompt": "latency", "width": 64, "height": 64, "steps": 2}, seed))
        latencies.append(ts(doc["started_at"]) - ts(doc["created_at"]))
    return latencies


def workload_figures(stack: Any, store: ModelStore, log_dir: Path, workloads: dict[str, Any], rounds: int,
                     device_cpu: int | None = None) -> dict[str, Any]:
    """Each workload in ``rounds`` alternating rounds of direct and end to end. ``device_cpu``: the direct loop
    and the worker (every thread of it) run on that CPU alone, and this process's other threads (the emulator,
    the API, the client) on the others, as a GPU is a device of its own."""
    from runtime.storage import aws

    api, worker = stack.api_url, stack.state()["worker_pids"][0]
    results = (aws.client("sqs", stack.settings), stack.resources.results_queue_url)
    if device_cpu is not None:
        pin(worker, {device_cpu})
    figures: dict[str, Any] = {}
    for name, (inputs, jobs) in workloads.items():
        with on_cpu(device_cpu):
            direct_seconds(store, inputs, range(1))  # warm-up for this size, in both processes
        notifications_until(results, {submit(api, inputs, 0)}, 300)
        per_round = max(1, jobs // 2)
        n = per_round * rounds
        direct = e2e = direct_cpu = stack_cpu = worker_cpu = 0.0
        ran: list[str] = []
        by_round: list[float] = []  # each round's ratio: their spread is the machine's noise
        for start in range(0, n, per_round):
            before = cpu_seconds()
            with on_cpu(device_cpu):
                direct_s = direct_seconds(store, inputs, range(start, start + per_round))
            direct_cpu += cpu_seconds() - before
            seconds, ids, (mine, theirs) = e2e_seconds(api, inputs, range(start, start + per_round), results, worker)
            direct, e2e, ran, stack_cpu, worker_cpu = (direct + direct_s, e2e + seconds, ran + ids, stack_cpu + mine,
                                                       worker_cpu + theirs)
            by_round.append(direct_s / seconds)
        in_worker = pipeline_seconds(log_dir, ran)
        figures[name] = {"jobs": n, "rounds": rounds, "direct_images_per_s": n / direct,
                         "e2e_images_per_s": n / e2e, "ratio": direct / e2e, "round_ratios": by_round,
                         "goals": {"ratio": goal(direct / e2e, ">=", GOALS.get(name, 0.95))},
                         # where end to end's time per image goes: the pipeline in the worker, the rest
                         "direct_s": direct / n, "e2e_s": e2e / n,
                         "worker_pipeline_s": sum(in_worker) / max(1, len(in_worker)),
                         # and where the CPU went, per image
                         "cores": os.cpu_count() if device_cpu is None else 1,
                         "host_cores": (os.cpu_count() or 1) - (device_cpu is not None),
                         "direct_cpu_s": direct_cpu / n, "stack_cpu_s": stack_cpu / n, "worker_cpu_s": worker_cpu / n}
    return figures


def pin(pid: int, cpus: set[int]) -> None:
    """Every thread of process ``pid`` on ``cpus``; the threads they start later inherit it (Linux)."""
    for tid in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(ProcessLookupError):
            os.sched_setaffinity(int(tid), cpus)


@contextlib.contextmanager
def on_cpu(cpu: int | None) -> Any:
    """This thread alone on ``cpu`` for a while (nothing when None)."""
    if cpu is None:
        yield
        return
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {cpu})
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def pinned_figures(settings: Settings, store: ModelStore, log_dir: Path, workloads: dict[str, Any],
                   rounds: int) -> dict[str, Any]:
    """The workloads again with a device of its own: one torch thread on the last CPU, for the direct loop and
    for a worker pinned there, while the emulator, the API and the client use the other CPUs. So the ratio shows
    what the runtime costs the device when the AWS emulator's CPU is not taken from it, as on a GPU node."""
    import torch

    from runtime.local.devstack import DevStack

    cpus, threads = sorted(os.sched_getaffinity(0)), torch.get_num_threads()
    device = cpus[-1]
    pin(os.getpid(), set(cpus) - {device})  # the stack's threads, started below, inherit it
    omp = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
    try:
        with DevStack(settings, port=0, aws_port=0, log_dir=log_dir) as stack:
            return workload_figures(stack, store, log_dir, workloads, rounds, device_cpu=device)
    finally:
        if omp is None:
            os.environ.pop("OMP_NUM_THREADS")
        else:
            os.environ["OMP_NUM_THREADS"] = omp
        torch.set_num_threads(threads)
        pin(os.getpid(), set(cpus))


def workload_report(figures: dict[str, Any], workloads: dict[str, Any]) -> list[str]:
    lines = [f"{'workload':<16}{'jobs':>6}{'direct img/s':>14}{'end-to-end img/s':>18}{'ratio':>8}{'goal':>8}"
             "   ratio of each round"]
    for name in workloads:
        f = figures[name]
        lines.append(f"{name:<16}{f['jobs']:>6}{f['direct_images_per_s']:>14.2f}{f['e2e_images_per_s']:>18.2f}"
                     f"{f['ratio']:>8.3f}{'>= ' + format(GOALS.get(name, 0.95), '.2f'):>8}   "
                     + ", ".join(f"{r:.2f}" for r in f["round_ratios"]))
    lines.append("where end to end's time per image goes: the pipeline in the worker, against the same pipeline "
                 "called directly, and the rest (the worker's own time between jobs, and the end of the last job's "
                 "output stage)")
    for name in workloads:
        f = figures[name]
        rest = f["e2e_s"] - f["worker_pipeline_s"]
        lines.append(f"  {name:<16} direct {f['direct_s'] * 1000:.0f} ms; end to end {f['e2e_s'] * 1000:.0f} ms = "
                     f"pipeline {f['worker_pipeline_s'] * 1000:.0f} ms ({f['worker_pipeline_s'] / f['direct_s']:.2f}x "
                     f"direct) + {rest * 1000:.0f} ms other")
    lines.append(f"where the CPU went, per image, on the device's {figures[next(iter(workloads))]['cores']} core(s): "
                 "direct's pipeline, and end to end's worker and stack (the emulator, the API and the client)")
    for name in workloads:
        f = figures[name]
        lines.append(f"  {name:<16} direct {f['direct_cpu_s'] * 1000:.0f} ms; end to end: worker "
                     f"{f['worker_cpu_s'] * 1000:.0f} ms + stack {f['stack_cpu_s'] * 1000:.0f} ms; cores busy "
                     f"{cores_busy(f):.0%}" + (f"; ratio with the stack's CPU off these cores (as on AWS), about "
                                               f"{ratio_without_stack(f):.2f}" if f["cores"] > 1 else ""))
    return lines


def cores_busy(f: dict[str, Any]) -> float:
    """The share of the device cores' time that the worker and the stack used, end to end (only the worker's
    when the device is a CPU of its own, the stack being on the others)."""
    return (f["worker_cpu_s"] + (f["stack_cpu_s"] if f["cores"] > 1 else 0.0)) / (f["e2e_s"] * f["cores"])


def ratio_without_stack(f: dict[str, Any]) -> float:
    """An estimate of the ratio had the stack's CPU been elsewhere, as AWS is: end to end less the stack's CPU
    spread over the cores. Only an estimate to read beside the ratio measured, which stays the figure."""
    return f["direct_s"] / (f["e2e_s"] - f["stack_cpu_s"] / f["cores"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=20, help="jobs of the smallest workload (fewer of larger)")
    parser.add_argument("--rounds", type=int, default=4,
                        help="alternating direct / end-to-end rounds per workload (more: less drift)")
    parser.add_argument("--latency-jobs", type=int, default=10)
    parser.add_argument("--no-pinned", dest="pinned", action="store_false",
                        help="skip the workloads with a device of its own (one pinned CPU; Linux)")
    args = parser.parse_args()

    from runtime.local.devstack import DevStack
    from runtime.models.tiny import build_tiny_models

    # (inputs, jobs): from a job so short that the fixed cost per job dominates, to SD's native 512 px,
    # whose seconds per image on these CPUs are about what a real model takes on a GPU.
    workloads = {
        "64px-20steps": ({"prompt": "a red fox", "width": 64, "height": 64, "steps": 20}, args.jobs),
        "256px-30steps": ({"prompt": "a red fox", "width": 256, "height": 256, "steps": 30}, max(2, args.jobs // 2)),
        "512px-30steps": ({"prompt": "a red fox", "width": 512, "height": 512, "steps": 30}, max(2, args.jobs // 3)),
    }
    figures: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        models = Path(tmp) / "models"
        build_tiny_models(models)
        os.environ["SPOTGEN_POLL_WAIT_S"] = "20"
        settings = Settings.from_env().model_copy(update={"models_dir": models})
        log_dir = Path(tmp) / "logs"
        with DevStack(settings, port=0, aws_port=0, log_dir=log_dir) as stack:
            from runtime.storage import aws

            api, store = stack.api_url, ModelStore(models, "cpu")
            figures.update(workload_figures(stack, store, log_dir, workloads, args.rounds))
            lat = idle_latency(api, args.latency_jobs)
            from runtime.storage.jobstore import JobStore

            ckpt = checkpoint_figures(store, JobStore(aws.client("s3", stack.settings), stack.settings))
        if args.pinned and hasattr(os, "sched_setaffinity") and len(os.sched_getaffinity(0)) >= 2:
            figures["device_of_its_own"] = pinned_figures(settings, store, log_dir, workloads, args.rounds)
    figures["checkpoint_512px"] = ckpt
    from tests.harness import bench_cache

    figures["model_cache"] = cache = bench_cache.figures()
    figures["submit_to_running_s"] = {"p50": percentile(lat, 0.5), "p95": percentile(lat, 0.95), "n": len(lat)}

    print("\n".join(workload_report(figures, workloads)))
    if "device_of_its_own" in figures:
        print("the same with a device of its own: one torch thread on one pinned CPU, for the direct loop and for the "
              "worker, with the emulator, the API and the client on the other CPUs (as on a GPU node)")
        print("\n".join(workload_report(figures["device_of_its_own"], workloads)))
    lat_f = figures["submit_to_running_s"]
    print(f"submit -> running, idle worker: p50 {lat_f['p50'] * 1000:.0f} ms, p95 {lat_f['p95'] * 1000:.0f} ms "
          f"({lat_f['n']} jobs)")
    print(f"checkpoint, {ckpt['width']}x{ckpt['height']} px {ckpt['scheduler']} at step {ckpt['stop']} of "
          f"{ckpt['steps']}: {ckpt['checkpoint_kib']:.0f} KiB, written in "
          f"{ckpt['checkpoint_write_s'] * 1000:.0f} ms = {ckpt['checkpoint_write_steps']:.2f} steps "
          f"(serialize {ckpt['serialize_s'] * 1000:.1f} ms; a step is {ckpt['step_s'] * 1000:.0f} ms)")
    print(f"resume: read + restore + first step {ckpt['resume_to_first_step_s'] * 1000:.0f} ms vs fresh start + first "
          f"step {ckpt['fresh_start_to_first_step_s'] * 1000:.0f} ms: {ckpt['resume_overhead_steps']:+.2f} steps")
    print("\n".join(bench_cache.report(cache)))
    from tests.harness import bench_coldstart  # a new node: load against read, process start to first image

    figures["new_node"] = new_node = bench_coldstart.figures()
    bench_coldstart.print_table("How fast a new node serves (docs/models.md)",
                                ("figure", "value", "floor / against", "ratio"), bench_coldstart.rows(new_node))
    from tests.harness import bench_models

    figures["models"] = families = bench_models.figures()
    print("\n".join(bench_models.report(families)))
    from tests.harness import bench_requests

    figures["aws_requests"] = requests = bench_requests.figures()
    print("\n".join(bench_requests.report(requests)))
    from tests.harness import bench_formats

    figures["output_formats"] = formats = bench_formats.figures()
    print("\n".join(bench_formats.report(formats)))
    from tests.harness import bench_controlnets, bench_flow, bench_hires, bench_inpaint, bench_ipadapter, bench_upscale

    for key, module in (("hires_fix", bench_hires), ("upscaling", bench_upscale), ("inpainting", bench_inpaint),
                        ("controlnet_units", bench_controlnets), ("ip_adapter", bench_ipadapter),
                        ("flow_families", bench_flow)):
        figures[key] = edits = module.figures()
        print("\n".join(module.report(edits)))
    from tests.harness.bench_ops import ops_overhead  # tracing + metrics on vs off; prints its own lines

    figures["operations"] = ops_overhead()
    missed = goals_missed(figures)
    bench_coldstart.print_table("Goals", ("figure", "value", "goal", "met"), bench_coldstart.goal_rows(figures))
    print(f"goals: {goals_count(figures) - len(missed)} met, {len(missed)} not met" + "".join(f"\n  not met: {m}"
                                                                                          for m in missed))
    print(json.dumps({"bench": "e2e", **figures, "goals_missed": missed}, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
