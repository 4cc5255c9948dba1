"""`make faults`: break the network between the workers and AWS while jobs run, then check nothing was harmed.

Like `make chaos`, but the workers stay up and the network fails instead. The embedded stack runs jobs of
every built-in pipeline on W workers that reach the emulator only through the fault proxy
(tests/harness/faultproxy.py), while a driver works through a plan of faults, each at a random moment and
each several times:

* outages (new connections refused, open ones cut) of 5 s, 25 s and 90 s: longer than the lease, shorter than
  the output stage's retry budget;
* a 5 s outage timed to land on a receive, mid-denoise, on an output upload, on an ack whose answer is lost,
  and on a notification;
* 200 ms of latency per request, then a slow trickle of answers;
* bursts of S3 503 SlowDown and of SQS throttling.

A small kubelet plays Kubernetes: it asks every worker's ``/livez`` each second and restarts a worker whose
probe failed three times in a row. At the end it checks and prints: every job ended ``succeeded`` exactly once
(one final status, one notification); none lost; no duplicate outputs or notifications; every PNG equal, byte
for byte, to an uninterrupted run in a separate process; no worker wedged (each serves a last job after the
faults, or was restarted by its probes); no checkpoint left behind; and the steps recomputed per outage. The
last line is a JSON object with the figures; the exit status is 1 if a check failed.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import random
import sys
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from tests.harness.chaos import Fleet, drain, outcome, parse_args, prepare
from tests.harness.faultproxy import FaultProxy, Request
from tests.harness.jobmix import Job, _reference_init, input_images, make_jobs, reference

ROOT = Path(__file__).resolve().parents[2]

#: Outage lengths, the length of a timed cut, how long latency or a trickle lasts and the healthy gap between
#: two faults, by ``--scale``.
SCALES = {"full": {"outages": (5, 25, 90), "cut_s": 5, "slow_s": 15, "gap_s": (1, 4)},
          "small": {"outages": (3,), "cut_s": 2, "slow_s": 2, "gap_s": (0.5, 2)}}

OPTIONS: list[tuple[str, Any, str]] = [
    ("--workers", 2, ""), ("--repeat", 2, "times each timed fault runs"), ("--scale", "full", "full or small"),
    ("--size", 64, "image side in pixels"), ("--steps", 12, "denoising steps per job"),
    ("--checkpoint-every", 4, ""), ("--seed", 1, ""),
    ("--models", ROOT / ".spotgen" / "models", "tiny models (built if missing)"),
    ("--log-dir", ROOT / ".spotgen" / "faults", "worker logs, the step log and the fault log"),
]


def when(service: str, operation: str, path_part: str = "") -> Callable[[Request], bool]:
    return lambda r: r.service == service and r.operation == operation and path_part in r.path


class Kubelet:
    """Liveness probes every second; three failures in a row and the worker is replaced, as Kubernetes would.
    A worker is probed once its ``/livez`` first answered (what the startup probe waits for)."""

    def __init__(self, fleet: Fleet, ports: dict[int, int], spawn: Callable[[], int]) -> None:
        self.fleet, self.ports, self.spawn = fleet, ports, spawn
        self.failures: Counter[int] = Counter()
        self.started: set[int] = set()
        self.restarts = 0
        self.owed = 0  # replacements to start, from the main thread (see ``respawn``)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def live(self, pid: int, path: str = "/livez") -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.ports[pid]}{path}", timeout=3) as r:  # noqa: S310
                return r.status == 200
        except OSError:
            return False

    def _run(self) -> None:
        while not self.stop.wait(1.0):
            for pid in list(self.fleet.procs):
                if pid not in self.ports:
                    continue
                live = self.live(pid)
                if pid not in self.started:
                    if live:
                        self.started.add(pid)
                    continue
                self.failures[pid] = 0 if live else self.failures[pid] + 1
                if self.failures[pid] >= 3 and self.fleet.procs[pid].poll() is None:
                    print(f"  kubelet: worker {pid} failed /livez 3 times: restarted", flush=True)
                    self.fleet.procs[pid].kill()
                    self.restarts += 1
                    self.owed += 1

    def respawn(self) -> None:
        """Start the replacements owed. From the main thread: a child started from a thread gets its
        parent-death signal when that thread ends (PR_SET_PDEATHSIG, ``runtime.local.devstack``)."""
        self.fleet.reap()
        while self.owed:
            self.owed -= 1
            self.spawn()


class Faults:
    """One run: the stack, the proxy, the fleet, the jobs and what was observed."""

    def __init__(self, args: argparse.Namespace, stack: Any, proxy: FaultProxy, fleet: Fleet) -> None:
        from runtime.storage import aws

        self.args, self.stack, self.proxy, self.fleet = args, stack, proxy, fleet
        self.s3, self.sqs = aws.client("s3", stack.settings), aws.client("sqs", stack.settings)
        self.notes: list[dict[str, Any]] = []
        self.done: list[tuple[str, float]] = []  # (fault, seconds) as run
        self.outages = 0

    def drain(self) -> int:
        return drain(self.sqs, self.stack.resources.results_queue_url, self.notes)

    def plan(self, rng: random.Random) -> list[tuple[str, Callable[[], float]]]:
        """The faults, shuffled within their kind; each returns how long the network is bad."""
        scale, proxy = SCALES[self.args.scale], self.proxy
        cut = scale["cut_s"]

        def outage(seconds: float) -> Callable[[], float]:
            return lambda: (proxy.outage(seconds), seconds)[1]

        def timed(match: Callable[[Request], bool], after: bool = False) -> Callable[[], float]:
            return lambda: (proxy.on(match, cut, after), cut)[1]

        def slow(attribute: str, value: Any) -> Callable[[], float]:
            def run() -> float:
                setattr(proxy, attribute, value)
                time.sleep(scale["slow_s"])
                setattr(proxy, attribute, 0)
                return 0.0
            return run

        def burst() -> float:
            proxy.fail("s3", 6, 503)
            proxy.fail("sqs", 6, 400)
            return 0.0

        steps: list[tuple[str, Callable[[], float]]] = []
        for _ in range(self.args.repeat):
            steps += [(f"outage {s} s", outage(s)) for s in scale["outages"]]
            steps += [("cut on a receive", timed(when("sqs", "ReceiveMessage"))),
                      ("cut mid-denoise", outage(cut)),
                      ("cut on an output upload", timed(when("s3", "PutObject", "/outputs/"))),
                      ("cut on an ack, answer lost", timed(when("sqs", "DeleteMessage"), after=True)),
                      ("cut on a notification", timed(when("sns", "Publish"))),
                      ("latency 200 ms", slow("latency", 0.2)), ("slow trickle", slow("trickle", 20_000)),
                      ("S3 SlowDown and SQS throttling", burst)]
        rng.shuffle(steps)
        return steps

    def run_plan(self, rng: random.Random, feed: Callable[[], None], step_log: Path) -> None:
        for name, fault in self.plan(rng):
            time.sleep(rng.uniform(*SCALES[self.args.scale]["gap_s"]))
            if name == "cut mid-denoise":  # wait for a step to be logged, so that a job is denoising
                size = step_log.stat().st_size
                deadline = time.monotonic() + 30
                while step_log.stat().st_size == size and time.monotonic() < deadline:
                    feed()
                    time.sleep(0.05)
            started = time.monotonic()
            bad_s = fault()
            self.outages += 1
            print(f"  {name} ({self.fleet_state()})", flush=True)
            while time.monotonic() - started < bad_s + 1 or self.proxy.is_down:
                feed()
                time.sleep(0.2)
            self.done.append((name, round(time.monotonic() - started, 1)))

    def fleet_state(self) -> str:
        return f"{len(self.fleet.procs)} workers, {len(self.notes)} notifications"

    def verify(self, jobs: list[Job], refs: dict[str, Any], kubelet: Kubelet, step_log: Path) -> dict[str, Any]:
        from runtime.worker import steplog

        records = steplog.read(step_log)
        recomputed = len(records) - len({(job, step) for _, job, _, step in records})  # steps done twice
        doubled = sorted(job for job, n in Counter(n["id"] for n in self.notes).items() if n > 1)
        return {
            **outcome(self.s3, self.stack.settings, jobs, refs, self.notes), "doubly_notified": doubled,
            "faults": len(self.done), "outages": self.outages,
            "steps_recomputed": recomputed, "steps_recomputed_per_outage": round(recomputed / max(1, self.outages), 3),
            "kubelet_restarts": kubelet.restarts,
        }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(__doc__, OPTIONS, argv)
    started = time.monotonic()

    from runtime.local.devstack import EMULATOR_CREDENTIALS, DevStack
    from tests.rest import call

    # A lease shorter than the longest outage, a retry budget longer; short polls so that receives are frequent.
    settings, step_log = prepare(args, {"heartbeat_s": 2.0, "lease_s": 20, "poll_wait_s": 2,
                                        "checkpoint_every": args.checkpoint_every, "store_retry_s": 120})
    stack = DevStack(settings, port=0, aws_port=0, workers=0, visibility_timeout_s=5).start()
    emulator = urlsplit(stack.settings.aws_endpoint_url)
    proxy = FaultProxy((emulator.hostname, emulator.port)).start()
    base_env = {**os.environ, "PYTHONPATH": str(ROOT), **stack.settings.to_env(), **EMULATOR_CREDENTIALS,
                "OMP_NUM_THREADS": "1", "SPOTGEN_AWS_ENDPOINT_URL": proxy.url}
    fleet = Fleet(base_env, args.log_dir)
    ports: dict[int, int] = {}

    def spawn() -> int:
        port = free_port()
        fleet.env = {**base_env, "SPOTGEN_METRICS_PORT": str(port)}
        pid = fleet.spawn()
        ports[pid] = port
        return pid

    kubelet = Kubelet(fleet, ports, spawn)
    pool = None
    rng = random.Random(args.seed)
    jobs: list[Job] = []
    try:
        for _ in range(args.workers):
            spawn()
        bucket, images = stack.settings.input_bucket, input_images(args.size)
        run = Faults(args, stack, proxy, fleet)
        for key, data in images.items():
            run.s3.put_object(Bucket=bucket, Key=key, Body=data, ContentType="image/png")
        pool = ProcessPoolExecutor(1, multiprocessing.get_context("spawn"), _reference_init,
                                   (str(args.models.resolve()), bucket, images, str(args.log_dir / "reference.log")))
        refs: dict[str, Any] = {}
        pending = iter(make_jobs(10_000, args.size, args.steps, args.seed, bucket))

        def submit() -> None:
            job = next(pending)
            job.request["id"] = job.id = job.id.replace("chaos", "faults")
            status, body = call("POST", f"{stack.api_url}/v1/jobs", job.request)
            assert status == 202, (status, body)
            refs[job.id] = pool.submit(reference, job.id, job.request["pipeline"], job.inputs, job.request["model"])
            jobs.append(job)

        def feed() -> None:
            """Keep about two jobs per worker waiting, so that every fault meets work in flight."""
            kubelet.respawn()
            run.drain()
            while len(jobs) - len({n["id"] for n in run.notes}) < 2 * args.workers:
                submit()

        wait_ready(kubelet, fleet)
        kubelet.thread.start()
        print(f"{args.workers} workers behind the fault proxy ({time.monotonic() - started:.1f} s)", flush=True)
        run.run_plan(rng, feed, step_log)
        faults_s = time.monotonic() - started
        canaries = [submit() or jobs[-1].id for _ in range(2 * args.workers)]  # after the faults: all consume
        deadline = time.monotonic() + 300
        while not {j.id for j in jobs} <= {n["id"] for n in run.notes} and time.monotonic() < deadline:
            kubelet.respawn()
            run.drain()
            time.sleep(0.2)
        canaries_s = round(time.monotonic() - (started + faults_s), 1)
        kubelet.stop.set()
        kubelet.respawn()
        wedged = not_ready(kubelet, fleet, 60)
        alive = len(fleet.procs)
        time.sleep(settings.lease_s + 2)  # a redelivery of a finished job would notify again now, if ever
        fleet.stop()
        run.drain()
        figures = run.verify(jobs, refs, kubelet, step_log)
        figures |= {"wedged_workers": len(wedged), "canaries": len(canaries), "canaries_s": canaries_s,
                    "fault_log": run.done, "workers_at_end": alive}
    finally:
        kubelet.stop.set()
        fleet.stop()
        proxy.stop()
        if pool is not None:
            pool.shutdown(cancel_futures=True)
        stack.stop()
    figures |= {"workers": args.workers, "scale": args.scale, "repeat": args.repeat, "size": args.size,
                "steps": args.steps, "faults_seconds": round(faults_s, 1),
                "seconds": round(time.monotonic() - started, 1)}
    f = figures
    checks = {
        "every job succeeded once": f["succeeded"] == f["jobs"], "no job lost": f["lost"] == 0,
        "no duplicate outputs": f["duplicate_outputs"] == 0,
        "no duplicate notifications": f["duplicate_notifications"] == 0,
        "outputs identical to the reference": f["mismatched_outputs"] == 0,
        "no worker wedged": f["wedged_workers"] == 0,
        "no checkpoint left behind": f["leftover_checkpoints"] == 0,
    }
    for name, ok in checks.items():
        print(f"{'ok  ' if ok else 'FAIL'} {name}")
    print(json.dumps({**figures, "ok": all(checks.values())}))
    return 0 if all(checks.values()) else 1


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def not_ready(kubelet: Kubelet, fleet: Fleet, timeout: float) -> list[int]:
    """The workers whose ``/readyz`` does not say 200 within ``timeout``."""
    deadline = time.monotonic() + timeout
    while (waiting := [pid for pid in fleet.procs if not kubelet.live(pid, "/readyz")]) and \
            time.monotonic() < deadline:
        time.sleep(0.2)
    return waiting


def wait_ready(kubelet: Kubelet, fleet: Fleet, timeout: float = 180) -> None:
    if not_ready(kubelet, fleet, timeout):
        raise RuntimeError("the workers did not become ready")


if __name__ == "__main__":
    sys.exit(main())
