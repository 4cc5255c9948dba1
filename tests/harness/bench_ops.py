"""What tracing and metrics cost a worker: the goal is under 1% of throughput.

Two measurements, because the second alone cannot resolve 1% on a shared two-core machine:

1. The hooks themselves, in this process: one job delivery as ``JobRunner`` makes it (begin, started, N steps
   through the phase clock, phases, checkpoint, store, notify, end) with metrics, tracing (OTLP export in a
   batch thread to a loopback receiver) and log context on, against the no-op observer; the difference in
   microseconds is then set against the time of a real job of the same steps on this machine.
2. End to end: the same jobs through the embedded stack with a worker that has metrics and tracing on
   (exporting to a loopback receiver) and one that has both off, in alternating rounds; throughput ratio.

``python tests/harness/bench_ops.py`` runs it alone; ``make bench`` runs it after the other figures.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
#: (size in px, steps) of the short and the long job the hooks' cost is compared with.
SMALL, LARGE = (64, 20), (512, 30)
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def _delivery(observer: Any, steps: int) -> None:
    """The hook calls of one job delivery, in the order and number ``JobRunner`` makes them."""
    from runtime.ops.observe import JobInfo, PhaseClock
    from runtime.worker.stages import observing

    job = JobInfo(id="bench", pipeline="txt2img", model="tiny-sd", prompt="a red fox", trace_id=None)
    with observing(observer, job):
        job.attempt = 1
        observer.job_started(job)
        with observer.phase("generate", pipeline="txt2img", model="tiny-sd"):
            clock = PhaseClock()
            clock.mark("encode")
            observer.cache_lookup("memory", True, "tiny-sd")
            clock.mark("denoise")
            for step in range(1, steps + 1):
                observer.step(job, step, steps, clock.step(step, steps))
            observer.phases(job, clock.phases())
        with observer.phase("checkpoint", job, bytes=1000):
            pass
        observer.checkpoint_written(job, 1000, 0.01)
        with observer.phase("store_outputs", images=1):
            pass
        with observer.phase("notify", state="succeeded"):
            pass
        job.outcome, job.images = "succeeded", 1


def hook_cost_s(steps: tuple[int, ...], rounds: int = 1000) -> dict[int, dict[str, float]]:
    """Seconds the hooks of one delivery of each number of ``steps`` take with everything on, and with the
    no-op observer (median of 5 batches)."""
    import logging

    from runtime.config import Settings
    from runtime.local.spanreceiver import SpanReceiver
    from runtime.ops import logs, tracing
    from runtime.ops.metrics import Metrics
    from runtime.ops.observe import NOOP, combine

    receiver = SpanReceiver().start()
    saved = dict(os.environ)
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    # deliveries back to back outrun the exporter (real ones are seconds apart): queue them all
    os.environ |= {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": receiver.endpoint, "OTEL_BSP_MAX_QUEUE_SIZE": "100000"}
    devnull = open(os.devnull, "w")  # noqa: SIM115 - closed below
    try:
        provider = tracing.setup("bench")
        # logging as a worker in production has it (JSON lines at INFO, every job's two lines formatted and
        # written), to a sink that costs what a pipe to the container runtime costs at most
        context = logs.configure(Settings(log_format="json"), devnull)
        on = combine([logs.JobLog(context, Settings().log_prompt_chars), Metrics(), tracing.Tracing(provider)])
        out: dict[int, dict[str, float]] = {}
        for n in steps:
            for name, observer in (("off", NOOP), ("on", on)):
                _delivery(observer, n)  # warm-up
                samples = []
                for _ in range(5):
                    began = time.perf_counter()
                    for _ in range(rounds // 5):
                        _delivery(observer, n)
                    samples.append((time.perf_counter() - began) / (rounds // 5))
                out.setdefault(n, {})[name] = statistics.median(samples)
        provider.force_flush()
        return out
    finally:
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in handlers:
            root.addHandler(handler)
        root.setLevel(level)
        devnull.close()
        receiver.stop()
        os.environ.clear()
        os.environ.update(saved)


def job_seconds(models: Path, size: int, steps: int, n: int = 3) -> float:
    """Median seconds of the txt2img pipeline for one image, run directly (no API, queue or storage)."""
    from runtime.models.store import ModelStore
    from tests.harness.benchmark import direct_seconds

    store = ModelStore(models, "cpu")
    inputs = {"prompt": "a red fox", "width": size, "height": size, "steps": steps}
    direct_seconds(store, inputs, range(1))
    return statistics.median(direct_seconds(store, inputs, range(i, i + 1)) for i in range(n))


def e2e_ratio(models: Path, jobs: int, rounds: int, inputs: dict[str, Any]) -> dict[str, Any]:
    """Images per second through the stack, ops on vs off, in alternating rounds (a fresh worker each)."""
    from runtime.config import Settings
    from runtime.local.devstack import EMULATOR_CREDENTIALS, DevStack
    from runtime.local.spanreceiver import SpanReceiver
    from runtime.ops.health import READY_PATH, check
    from tests.rest import call, wait_for

    saved = dict(os.environ)
    receiver = SpanReceiver().start()
    # Short polls: a stopped worker's long poll stays open in SQS and can still take a message of the next round
    # (then invisible for the whole visibility timeout); a round starts once such a poll has surely ended.
    settings = Settings(models_dir=models, poll_wait_s=2, metrics_port=0)
    times: dict[str, list[float]] = {"on": [], "off": []}
    try:
        with DevStack(settings, port=0, aws_port=0, workers=0, log_dir=models.parent / "logs") as stack:
            api = stack.api_url
            for n in range(rounds):
                for mode in ("on", "off") if n % 2 == 0 else ("off", "on"):
                    port = stack._metrics_port() if mode == "on" else 0
                    env = {**os.environ, "PYTHONPATH": str(ROOT), **stack.settings.to_env(), **EMULATOR_CREDENTIALS,
                           "SPOTGEN_LOG_FORMAT": "json", "SPOTGEN_METRICS_PORT": str(port),
                           "OMP_NUM_THREADS": "1"}  # a thread pool that spins on a busy shared machine is noise
                    env.pop("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", None)
                    if mode == "on":
                        env["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"] = receiver.endpoint
                    log_path = models.parent / f"worker-{mode}-{n}.log"
                    with open(log_path, "ab") as log:
                        proc = subprocess.Popen([sys.executable, "-m", "runtime.cli", "worker"], env=env, stdout=log,
                                                stderr=subprocess.STDOUT)
                    try:
                        # ready: the probe with metrics on; the "ready." line of Celery's log without them
                        while not (check(port, path=READY_PATH)[0] if port else " ready." in log_path.read_text()):
                            assert proc.poll() is None, "the worker did not start"
                            time.sleep(0.1)
                        # warm-up: first-use costs (lazy imports, the first span export) are not what a busy
                        # worker pays per job
                        for seed in (-1, -2, -3):
                            warm = call("POST", f"{api}/v1/jobs", {"pipeline": "txt2img", "model": "tiny-sd",
                                                                   "inputs": {**inputs, "seed": 10**6 + seed}})[1]["id"]
                            wait_for(api, warm, poll_s=0.2)
                        started = time.time()
                        ids = [call("POST", f"{api}/v1/jobs", {"pipeline": "txt2img", "model": "tiny-sd",
                                                               "inputs": {**inputs, "seed": s}})[1]["id"]
                               for s in range(1, jobs + 1)]
                        docs = [wait_for(api, i, poll_s=1.0, timeout=900) for i in ids]
                        assert all(d["state"] == "succeeded" for d in docs)
                        finished = max(datetime.fromisoformat(d["finished_at"]).timestamp() for d in docs)
                        times[mode].append(finished - started)
                    finally:
                        proc.terminate()
                        proc.wait(60)
                        time.sleep(settings.poll_wait_s + 1)
    finally:
        receiver.stop()
        os.environ.clear()
        os.environ.update(saved)
    on, off = sum(times["on"]), sum(times["off"])
    spread = [a / b for a, b in zip(times["off"], times["on"], strict=True)]
    return {"width": inputs["width"], "height": inputs["height"], "steps": inputs["steps"],
            "jobs_per_side": jobs * rounds, "on_images_per_s": jobs * rounds / on,
            "off_images_per_s": jobs * rounds / off, "ratio": off / on, "median_round_ratio": statistics.median(spread),
            "round_ratios": spread}


def ops_overhead(jobs: int = 16, rounds: int = 4) -> dict[str, Any]:
    """Measure, print a summary, and return the figures (``make bench`` puts them in its JSON line)."""
    from runtime.models.tiny import build_tiny_models

    with tempfile.TemporaryDirectory() as tmp:
        models = Path(tmp) / "models"
        build_tiny_models(models)
        (small_px, small_steps), (large_px, large_steps) = SMALL, LARGE
        hooks = hook_cost_s((small_steps, large_steps))
        small = job_seconds(models, small_px, small_steps)
        large = job_seconds(models, large_px, large_steps, n=1)
        e2e = e2e_ratio(models, jobs, rounds, {"prompt": "a red fox", "width": 128, "height": 128, "steps": 20})
    per_small = hooks[small_steps]["on"] - hooks[small_steps]["off"]
    per_large = hooks[large_steps]["on"] - hooks[large_steps]["off"]
    from tests.harness.verdicts import goal

    figures = {f"hooks_us_per_job_{small_steps}_steps": per_small * 1e6,
               f"hooks_us_per_job_{large_steps}_steps": per_large * 1e6,
               f"job_{small_px}px_{small_steps}steps_s": small, f"job_{large_px}px_{large_steps}steps_s": large,
               f"overhead_{small_px}px": per_small / small, f"overhead_{large_px}px": per_large / large, "e2e": e2e,
               # the hooks' share of a job: the precise figure (the end-to-end ratio is the machine's noise)
               "goals": {f"overhead_{px}px": goal(share, "<", 0.01)
                         for px, share in ((small_px, per_small / small), (large_px, per_large / large))}}
    print(f"operations overhead (tracing + metrics + log context on vs off; goal < 1%):\n"
          f"  hooks: {per_small * 1e6:.0f} us per {small_steps}-step job = {per_small / small:.3%} of a "
          f"{small_px} px job ({small * 1000:.0f} ms), {per_large * 1e6:.0f} us per {large_steps}-step job = "
          f"{per_large / large:.4%} of a {large_px} px job ({large:.1f} s)\n"
          f"  end to end ({e2e['width']}x{e2e['height']} px, {e2e['steps']} steps, {e2e['jobs_per_side']} jobs per "
          f"side): on {e2e['on_images_per_s']:.2f} "
          f"img/s, off {e2e['off_images_per_s']:.2f} img/s, on/off throughput {e2e['ratio']:.3f}, median of rounds "
          f"{e2e['median_round_ratio']:.3f} (rounds: {', '.join(f'{r:.3f}' for r in e2e['round_ratios'])}; their "
          f"spread is this shared machine's noise, far above 1%: the hooks' figure is the precise one)")
    return figures


if __name__ == "__main__":
    ops_overhead()
