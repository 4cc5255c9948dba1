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
for byte, to an uninterrupted run in a separate process; every kind of fault fired; no worker wedged (each
worker alive at the end is ready and ran a job submitted after the faults); no checkpoint left behind; and the
steps recomputed per outage. The
last line is a JSON object with the figures; the exit status is 1 if a check failed.

A fault counts once it fired, not once it was asked for: a cut timed on a request waits (up to ``arm_s``) for a
request to match, a burst for its errors to be answered, latency for a request to be delayed; one that never
did is dropped, and a kind of fault that never fired fails the run (``fault_kinds``: planned and fired per
kind). "No worker wedged" is shown, not inferred from ``/readyz`` (which says only that the last receive
reached SQS): after the last fault, jobs are submitted until every worker has run one of them (``jobs_taken``
from the step log), and a worker that never does fails the run. A second notification counts as a duplicate
unless the proxy saw that job's Publish reach SNS while its answer was lost, which the worker must retry
(``notifications_resent_after_lost_answer``, as ``make chaos`` counts a publish cut by SIGKILL). The checks
themselves are ``tests.harness.verdicts.faults_checks``.
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from tests.harness import webhook_receiver as hooks
from tests.harness.chaos import Fleet, drain, outcome, parse_args, prepare
from tests.harness.faultproxy import FaultProxy, Request
from tests.harness.jobmix import Job, _reference_init, input_images, make_jobs, reference
from tests.harness.verdicts import fault_kinds, faults_checks, jobs_taken, published_unanswered, report

ROOT = Path(__file__).resolve().parents[2]

#: Outage lengths, the length of a timed cut, how long latency or a trickle lasts, the healthy gap between two
#: faults and how long a fault may wait for something to land on, by ``--scale``.
SCALES = {"full": {"outages": (5, 25, 90), "cut_s": 5, "slow_s": 15, "gap_s": (1, 4), "arm_s": 60},
          "small": {"outages": (3,), "cut_s": 2, "slow_s": 2, "gap_s": (0.5, 2), "arm_s": 20}}
#: After the last fault, how long every worker has to run a job submitted after it.
PROOF_S = 120

OPTIONS: list[tuple[str, Any, str]] = [
    ("--workers", 2, ""), ("--repeat", 2, "times each timed fault runs"), ("--scale", "full", "full or small"),
    ("--size", 64, "image side in pixels"), ("--steps", 12, "denoising steps per job"),
    ("--checkpoint-every", 4, ""), ("--seed", 1, ""),
    ("--models", ROOT / ".spotgen" / "models", "tiny models (built if missing)"),
    ("--log-dir", ROOT / ".spotgen" / "faults", "worker logs, the step log and the fault log"),
]


def when(service: str, operation: str, path_part: str = "") -> Callable[[Request], bool]:
    return lambda r: r.service == service and r.operation == operation and path_part in r.path


@dataclass
class Armed:
    """A fault once set off: how long the network stays bad after it landed, whether it has landed yet, and
    what ends it (the proxy's own timer ends an outage)."""

    bad_s: float
    fired: Callable[[], bool]
    end: Callable[[], None] = lambda: None


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
        self.planned: list[str] = []
        self.done: list[tuple[str, float, bool]] = []  # (fault, seconds, fired) as run
        self.outages = 0  # faults that fired

    def drain(self) -> int:
        return drain(self.sqs, self.stack.resources.results_queue_url, self.notes)

    def plan(self, rng: random.Random, step_log: Path) -> list[tuple[str, Callable[[Callable[[], None]], Armed]]]:
        """The faults, shuffled within their kind; each is set off with the harness's ``feed`` (to keep jobs
        coming while it waits for something to land on) and says when it fired."""
        scale, proxy = SCALES[self.args.scale], self.proxy
        cut = scale["cut_s"]

        def outage(seconds: float) -> Callable[[Callable[[], None]], Armed]:
            return lambda feed: (proxy.outage(seconds), Armed(seconds, lambda: True))[1]

        def mid_denoise(feed: Callable[[], None]) -> Armed:
            """Once a step is logged, so that a job is denoising when the network goes."""
            size, deadline = step_log.stat().st_size, time.monotonic() + scale["arm_s"]
            while step_log.stat().st_size == size and time.monotonic() < deadline:
                feed()
                time.sleep(0.05)
            denoising = step_log.stat().st_size > size
            proxy.outage(cut)
            return Armed(cut, lambda: denoising)

        def timed(match: Callable[[Request], bool], after: bool = False) -> Callable[[Callable[[], None]], Armed]:
            return lambda feed: Armed(cut, proxy.on(match, cut, after).is_set)

        def slow(attribute: str, value: Any) -> Callable[[Callable[[], None]], Armed]:
            def arm(feed: Callable[[], None]) -> Armed:
                before = proxy.fired[attribute]
                setattr(proxy, attribute, value)
                return Armed(scale["slow_s"], lambda: proxy.fired[attribute] > before,
                             lambda: setattr(proxy, attribute, 0))
            return arm

        def burst(feed: Callable[[], None]) -> Armed:
            before = Counter(proxy.injected)
            proxy.fail("s3", 6, 503)
            proxy.fail("sqs", 6, 400)
            return Armed(0.0, lambda: all(proxy.injected[k] - before[k] >= 6 for k in ("s3 503", "sqs 400")))

        steps: list[tuple[str, Callable[[Callable[[], None]], Armed]]] = []
        for _ in range(self.args.repeat):
            steps += [(f"outage {s} s", outage(s)) for s in scale["outages"]]
            steps += [("cut on a receive", timed(when("sqs", "ReceiveMessage"))),
                      ("cut mid-denoise", mid_denoise),
                      ("cut on an output upload", timed(when("s3", "PutObject", "/outputs/"))),
                      ("cut on an ack, answer lost", timed(when("sqs", "DeleteMessage"), after=True)),
                      ("cut on a notification", timed(when("sns", "Publish"))),
                      ("latency 200 ms", slow("latency", 0.2)), ("slow trickle", slow("trickle", 20_000)),
                      ("S3 SlowDown and SQS throttling", burst)]
        rng.shuffle(steps)
        return steps

    def run_plan(self, rng: random.Random, feed: Callable[[], None], step_log: Path) -> None:
        """Each fault after a healthy gap: set off, given ``arm_s`` to land (one that did not is dropped and
        counted as not fired), then the network is bad for its time, then healthy for a second."""
        scale = SCALES[self.args.scale]
        plan = self.plan(rng, step_log)
        self.planned = [name for name, _ in plan]
        for name, arm in plan:
            time.sleep(rng.uniform(*scale["gap_s"]))
            started = time.monotonic()
            fault = arm(feed)
            while not fault.fired() and time.monotonic() - started < scale["arm_s"]:
                feed()
                time.sleep(0.2)  # as seldom as the other waits: the emulator shares this process's cores
            if not fault.fired():
                self.proxy.disarm()
            fired, landed = fault.fired(), time.monotonic()
            print(f"  {name}{'' if fired else ': NEVER FIRED'} ({self.fleet_state()})", flush=True)
            while fired and time.monotonic() - landed < fault.bad_s:
                feed()
                time.sleep(0.2)
            fault.end()
            self.proxy.disarm()
            while time.monotonic() - landed < fired * fault.bad_s + 1 or self.proxy.is_down:
                feed()
                time.sleep(0.2)
            self.outages += fired
            self.done.append((name, round(time.monotonic() - started, 1), fired))

    def prove_consumers(self, submit: Callable[[], str], kubelet: Kubelet, step_log: Path) -> list[str]:
        """After the last fault: submit jobs (about two per worker at a time) until every live worker has run a
        denoising step of one of them, or ``PROOF_S`` passed. A worker whose receive chain wedged during the
        faults can still answer ``/readyz``; only a job it took after them shows that it consumes. Returns the
        jobs submitted."""
        from runtime.worker import steplog

        after: list[str] = []
        deadline = time.monotonic() + PROOF_S
        while time.monotonic() < deadline:
            kubelet.respawn()
            self.drain()
            taken = jobs_taken(steplog.read(step_log), set(after))
            if all(taken.get(pid) for pid in self.fleet.procs):
                break
            if len(set(after) - {n["id"] for n in self.notes}) < 2 * len(self.fleet.procs):
                after.append(submit())
            time.sleep(0.2)
        return after

    def fleet_state(self) -> str:
        return f"{len(self.fleet.procs)} workers, {len(self.notes)} notifications"

    def verify(self, jobs: list[Job], refs: dict[str, Any], kubelet: Kubelet, step_log: Path) -> dict[str, Any]:
        from runtime.worker import steplog

        records = steplog.read(step_log)
        recomputed = len(records) - len({(job, step) for _, job, _, step in records})  # steps done twice
        doubled = sorted(job for job, n in Counter(n["id"] for n in self.notes).items() if n > 1)
        found = outcome(self.s3, self.stack.settings, jobs, refs, self.notes, published_unanswered(self.proxy.lost))
        found["notifications_resent_after_lost_answer"] = found.pop("notifications_resent_after_sigkill")
        return {
            **found, "doubly_notified": doubled,
            "faults": len(self.done), "outages": self.outages, "fault_kinds": fault_kinds(self.planned, self.done),
            "steps_recomputed": recomputed, "steps_recomputed_per_outage": round(recomputed / max(1, self.outages), 3),
            "kubelet_restarts": kubelet.restarts,
        }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(__doc__, OPTIONS, argv)
    started = time.monotonic()

    from runtime.local.devsettings import new_webhook_secret
    from runtime.local.devstack import EMULATOR_CREDENTIALS, DevStack
    from runtime.worker import steplog
    from tests.rest import call

    secret = new_webhook_secret()  # every job asks for a webhook: none may be lost or doubled through the outages
    receiver = hooks.Receiver(secret).start()
    # A lease shorter than the longest outage, a retry budget longer; short polls so that receives are frequent.
    settings, step_log = prepare(args, {"heartbeat_s": 2.0, "lease_s": 20, "poll_wait_s": 2,
                                        "checkpoint_every": args.checkpoint_every, "store_retry_s": 120,
                                        **hooks.HARNESS_SETTINGS, "webhook_secret": secret})
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

        def submit() -> str:
            job = next(pending)
            job.request["id"] = job.id = job.id.replace("chaos", "faults")
            hooks.ask_webhooks(receiver, [job])
            status, body = call("POST", f"{stack.api_url}/v1/jobs", job.request)
            assert status == 202, (status, body)
            refs[job.id] = pool.submit(reference, job.id, job.request["pipeline"], job.inputs, job.request["model"],
                                       body["seed"])
            jobs.append(job)
            return job.id

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
        canaries = run.prove_consumers(submit, kubelet, step_log)  # after the faults: every worker consumes
        deadline = time.monotonic() + 300
        while not {j.id for j in jobs} <= {n["id"] for n in run.notes} and time.monotonic() < deadline:
            kubelet.respawn()
            run.drain()
            time.sleep(0.2)
        canaries_s = round(time.monotonic() - (started + faults_s), 1)
        kubelet.stop.set()
        kubelet.respawn()
        unready = not_ready(kubelet, fleet, 60)
        taken = jobs_taken(steplog.read(step_log), set(canaries))  # of the workers alive now: each took one?
        taken = {pid: taken.get(pid, 0) for pid in fleet.procs}
        idle = [pid for pid, n in taken.items() if not n]
        alive = len(fleet.procs)
        time.sleep(settings.lease_s + 2)  # a redelivery of a finished job would notify again now, if ever
        hooks.settle_webhooks(receiver, [j.id for j in jobs], 60)
        fleet.stop()
        run.drain()
        figures = run.verify(jobs, refs, kubelet, step_log) | hooks.webhook_figures(receiver, [j.id for j in jobs])
        figures |= {"wedged_workers": len(set(unready) | set(idle)), "not_ready_workers": len(unready),
                    "workers_idle_after_faults": len(idle), "canaries": len(canaries), "canaries_s": canaries_s,
                    "jobs_after_faults": {str(pid): n for pid, n in taken.items()},
                    "fault_log": run.done, "workers_at_end": alive}
    finally:
        receiver.stop()
        kubelet.stop.set()
        fleet.stop()
        proxy.stop()
        if pool is not None:
            pool.shutdown(cancel_futures=True)
        stack.stop()
    figures |= {"workers": args.workers, "scale": args.scale, "repeat": args.repeat, "size": args.size,
                "steps": args.steps, "faults_seconds": round(faults_s, 1),
                "seconds": round(time.monotonic() - started, 1)}
    ok = report(faults_checks(figures) | hooks.webhook_checks(figures))
    print(json.dumps({**figures, "ok": ok}))
    return 0 if ok else 1


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
