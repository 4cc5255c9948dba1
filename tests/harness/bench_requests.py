"""AWS requests per job and device idle time between jobs, with and without latency on every AWS request.

One worker runs behind the fault proxy (tests/harness/faultproxy.py), which counts every request it forwards
and can hold each one for a fixed time: 20 ms is a typical in-region S3 round trip, where the emulator answers
in about a millisecond. A backlog of short jobs is queued at once. From the worker's own spans (exported to a
loopback OTLP receiver), the device idle time between two consecutive jobs is the time from the end of job N's
decode to the start of job N+1's first model phase (its prompt's encoding): what the worker does between them
that is not model work. The time to N+1's first denoising step is printed too.

    python -m tests.harness.bench_requests     # prints a table, then one JSON line

Goals, whose verdicts are in the figures (``"goals"``: value, goal, ``"met"``): at most 8 requests per job, and a
device idle time between jobs (p50) of at most 15 ms, or 25 ms with latency on every request (docs/benchmarks.md).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.rest import call, wait_for  # noqa: E402

#: List prices in us-east-1 (USD per request): S3 PUT/DELETE and GET, SQS, SNS publish.
PRICES = {("s3", "PutObject"): 0.005 / 1000, ("s3", "DeleteObject"): 0.0, ("s3", "GetObject"): 0.0004 / 1000,
          ("sns", "Publish"): 0.50 / 1e6}
SQS_PRICE = 0.40 / 1e6
INPUTS = {"prompt": "a red fox", "width": 64, "height": 64, "steps": 20}
#: Goals: requests per short job; device idle between two jobs, p50, without and with latency per request.
REQUESTS_GOAL, IDLE_GOAL_MS, IDLE_GOAL_LATENCY_MS = 8, 15, 25


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] if ordered else float("nan")


def cost_per_million(per_job: dict[str, float]) -> float:
    total = 0.0
    for key, count in per_job.items():
        service, operation = key.split(" ")
        total += count * (SQS_PRICE if service == "sqs" else PRICES.get((service, operation), 0.0))
    return total * 1e6


#: The model phases of a job's spans: while one runs, the device works.
MODEL_PHASES = ("spotgen.encode", "spotgen.denoise", "spotgen.decode")


def idle_gaps(spans: list[Any], trace_ids: list[str], until: tuple[str, ...] = MODEL_PHASES) -> list[float]:
    """Seconds from one job's decode end to the next job's first span named in ``until`` (by default its first
    model phase, the prompt's encoding: the device is idle in between), in the order the jobs ran."""
    runs = []
    for trace_id in trace_ids:
        mine = [s for s in spans if s.trace_id == trace_id]
        first = [s.start_ns for s in mine if s.name in until]
        decode = [s.end_ns for s in mine if s.name == "spotgen.decode"]
        if first and decode:
            runs.append((min(first), max(decode)))
    runs.sort()
    return [(nxt[0] - cur[1]) / 1e9 for cur, nxt in zip(runs, runs[1:], strict=False)]


def spawn(stack: Any, proxy_url: str, receiver: str, log: Path) -> subprocess.Popen[bytes]:
    from runtime.local.devstack import EMULATOR_CREDENTIALS

    env = {**os.environ, "PYTHONPATH": str(ROOT), **stack.settings.to_env(), **EMULATOR_CREDENTIALS,
           "SPOTGEN_AWS_ENDPOINT_URL": proxy_url, "SPOTGEN_METRICS_PORT": "0", "SPOTGEN_POLL_WAIT_S": "20",
           "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": receiver, "OTEL_BSP_SCHEDULE_DELAY": "100"}
    with open(log, "ab") as out:
        return subprocess.Popen([sys.executable, "-m", "runtime.cli", "worker"], env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)


def backlog(stack: Any, proxy: Any, receiver: Any, jobs: int, seed0: int) -> dict[str, Any]:
    """Queue ``jobs`` at once; once all are final and acked, the requests per job and the idle gaps."""
    before = Counter(proxy.seen)
    ids = []
    for seed in range(seed0, seed0 + jobs):
        status, body = call("POST", f"{stack.api_url}/v1/jobs", {"pipeline": "txt2img", "model": "tiny-sd",
                                                                 "inputs": {**INPUTS, "seed": seed}})
        assert status == 202, body
        ids.append(body["id"])
    docs = [wait_for(stack.api_url, job_id, timeout=600, poll_s=0.5) for job_id in ids]
    assert all(d["state"] == "succeeded" for d in docs), [d.get("error") for d in docs]
    acks = before[("sqs", "DeleteMessage")] + jobs
    deadline = time.monotonic() + 60
    while proxy.seen[("sqs", "DeleteMessage")] < acks and time.monotonic() < deadline:
        time.sleep(0.1)
    used = Counter(proxy.seen) - before
    used[("sqs", "ReceiveMessage")] = max(jobs, used[("sqs", "ReceiveMessage")] - 1)  # the last poll still waits
    traces = [d["trace_id"] for d in docs]
    spans = receiver.wait(lambda got: sum(s.name == "spotgen.decode" and s.trace_id in traces for s in got) >= jobs,
                          30)
    gaps, to_denoise = idle_gaps(spans, traces), idle_gaps(spans, traces, ("spotgen.denoise",))
    per_job = {f"{service} {operation}": round(count / jobs, 2) for (service, operation), count in sorted(used.items())}
    return {"jobs": jobs, "requests_per_job": per_job, "requests_per_job_total": round(sum(per_job.values()), 2),
            "usd_per_million_images": round(cost_per_million(per_job), 2),
            "idle_ms_p50": round(percentile(gaps, 0.5) * 1000, 1),
            "idle_ms_p95": round(percentile(gaps, 0.95) * 1000, 1),
            # the same, to the first denoising step: the prompt's encoding (model work) included
            "to_denoise_ms_p50": round(percentile(to_denoise, 0.5) * 1000, 1),
            "to_denoise_ms_p95": round(percentile(to_denoise, 0.95) * 1000, 1)}


def figures(jobs: int = 10, latency_s: float = 0.020) -> dict[str, Any]:
    from runtime.config import Settings
    from runtime.local.devstack import DevStack
    from runtime.local.spanreceiver import SpanReceiver
    from runtime.models.tiny import build_tiny_models
    from tests.harness.faultproxy import FaultProxy
    from tests.harness.verdicts import goal

    out: dict[str, Any] = {}
    saved = dict(os.environ)
    with tempfile.TemporaryDirectory() as tmp:
        models = Path(tmp) / "models"
        build_tiny_models(models)
        receiver = SpanReceiver().start()
        settings = Settings.from_env().model_copy(update={"models_dir": models})
        stack = DevStack(settings, port=0, aws_port=0, workers=0, log_dir=Path(tmp) / "logs").start()
        emulator = urlsplit(stack.settings.aws_endpoint_url or "")
        proxy = FaultProxy((emulator.hostname, emulator.port)).start()
        worker = spawn(stack, proxy.url, receiver.endpoint, Path(tmp) / "worker.log")
        try:
            backlog(stack, proxy, receiver, 2, 10_000)  # warm-up: the model loads
            for name, latency in (("no_latency", 0.0), (f"latency_{latency_s * 1000:.0f}ms", latency_s)):
                proxy.latency = latency
                run = out[name] = {"latency_ms": latency * 1000, **backlog(stack, proxy, receiver, jobs,
                                                                          20_000 + len(out))}
                run["goals"] = {"requests_per_job_total": goal(run["requests_per_job_total"], "<=", REQUESTS_GOAL),
                                "idle_ms_p50": goal(run["idle_ms_p50"], "<=",
                                                    IDLE_GOAL_LATENCY_MS if latency else IDLE_GOAL_MS)}
        finally:
            worker.terminate()
            worker.wait(60)
            proxy.stop()
            stack.stop()
            receiver.stop()
            os.environ.clear()
            os.environ.update(saved)
    return out


def report(found: dict[str, Any]) -> list[str]:
    lines = [f"AWS requests and device idle time, {INPUTS['width']} px {INPUTS['steps']} steps, backlog of "
             f"{next(iter(found.values()))['jobs']} jobs, one worker behind a proxy that counts (and delays) requests:"]
    for name, run in found.items():
        lines.append(f"  {name:<14} {run['requests_per_job_total']:.2f} requests/job (goal <= {REQUESTS_GOAL}), "
                     f"${run['usd_per_million_images']:.2f} per million images; device idle between jobs "
                     f"p50 {run['idle_ms_p50']:.1f} ms (goal {run['goals']['idle_ms_p50']['goal']} ms), "
                     f"p95 {run['idle_ms_p95']:.1f} ms (to the first denoising "
                     f"step, prompt encoding included: p50 {run['to_denoise_ms_p50']:.1f} ms, "
                     f"p95 {run['to_denoise_ms_p95']:.1f} ms)")
    first = next(iter(found.values()))
    lines.append("  by operation: " + ", ".join(f"{op} {n:g}" for op, n in first["requests_per_job"].items()))
    return lines


def main() -> int:
    found = figures()
    print("\n".join(report(found)))
    print(json.dumps({"bench": "requests", **found}, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
