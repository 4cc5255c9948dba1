"""`make chaos`: interrupt workers at random while jobs run, then check that nothing was lost, doubled or changed.

Spot GPUs are taken away at any moment, so the guarantees (exactly one final state and notification per job,
outputs byte-identical to an uninterrupted run, little work redone) only mean something under many real
interruptions. The embedded stack runs N jobs (``tests.harness.jobmix``: txt2img (with ControlNet units, tiling,
prompt editing), img2img (with an IP-Adapter), ControlNet, inpainting and outpainting, hires fix and the SDXL
refiner (jobs of two passes), every sampler, a schedule each; every fourth of these on SDXL with a LoRA; every
sixth job on Flux.1 (dev, schnell, img2img, Fill, a ControlNet unit and a LoRA) or SD 3.5 (skip-layer guidance,
img2img)) on W worker processes while a driver sends
SIGTERM (spot notice, scale-in) and SIGKILL (node lost) to random *busy* workers and starts a replacement
each time. Then it checks:

* every job ended ``succeeded`` once: final status, exactly one notification, none with another state;
* every job's ``completed`` webhook reached a loopback receiver under one ``webhook-id``, signed
  (``tests.harness.webhook_receiver``: none lost, none doubled);
* no duplicates: ``outputs/{id}/`` holds exactly ``num_images`` PNGs;
* every PNG equals, byte for byte, a reference made in a separate process by the same pipeline code and
  PNG encoding, without interruption (same torch thread count: float reductions depend on it);
* no checkpoint left behind once every job has ended;
* steps recomputed, from the step log: per SIGTERM <= 1 (expected 0), per SIGKILL <= the checkpoint interval
  (periodic checkpoints are uploaded off the denoising loop: a kill during an upload also loses the steps run
  meanwhile, so small images, whose steps are faster than an upload, can exceed it).

Kills must have hit: each planned kind of signal must have interrupted a running job at least once
(``sigterm`` and ``sigkill``, the kills whose job went on in a later attempt; ``kills_hit_running_job`` in all),
or the run tested no interruption. The checks are ``tests.harness.verdicts.chaos_checks``.

The last line printed is a JSON object with every figure; the exit status is 1 if any check failed.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import random
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path
from typing import Any

from tests.harness.jobmix import THREADS, Job, _reference_init, input_images, make_jobs, reference
from tests.harness.verdicts import chaos_checks, report
from tests.harness.webhook_receiver import (
    HARNESS_SETTINGS,
    Receiver,
    ask_webhooks,
    settle_webhooks,
    webhook_checks,
    webhook_figures,
)

ROOT = Path(__file__).resolve().parents[2]
BUSY_S = 0.3  # a worker that finished a step this recently is in the middle of a job


def prepare(args: argparse.Namespace, overrides: dict[str, Any]) -> tuple[Any, Path]:
    """Tiny models, a clean log directory with an empty step log, and the workers' settings: the environment's
    plus ``overrides``. Returns the settings and the step log."""
    import torch

    from runtime.config import Settings
    from runtime.models.tiny import build_tiny_models

    torch.set_num_threads(THREADS)
    build_tiny_models(args.models)
    args.log_dir.mkdir(parents=True, exist_ok=True)
    for old in [*args.log_dir.glob("worker-*.log"), args.log_dir / "steps.log", args.log_dir / "reference.log"]:
        old.unlink(missing_ok=True)
    step_log = args.log_dir / "steps.log"
    step_log.touch()
    overrides = {"models_dir": str(args.models.resolve()), "step_log": str(step_log), **overrides}
    return Settings.model_validate({**Settings.from_env().model_dump(), **overrides}), step_log


def drain(sqs: Any, url: str, notes: list[dict[str, Any]]) -> int:
    """Move the notifications on the results queue into ``notes``; how many arrived."""
    got = 0
    while msgs := sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10).get("Messages", []):
        notes.extend(json.loads(m["Body"]) for m in msgs)
        sqs.delete_message_batch(QueueUrl=url, Entries=[
            {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(msgs)])
        got += len(msgs)
    return got


def outcome(s3: Any, settings: Any, jobs: list[Job], refs: dict[str, Future[list[bytes]]],
            notes: list[dict[str, Any]], killed_publishing: frozenset[str] = frozenset()) -> dict[str, Any]:
    """What every harness checks: final states and notifications, duplicates, outputs against the references,
    checkpoints left behind. ``killed_publishing``: jobs whose notification a SIGKILLed worker had published
    and not yet recorded; their redelivery sends it again (at least once, by design: what SNS accepted cannot be
    known after a crash), which is counted apart, not as a duplicate. ``make faults`` passes the jobs whose
    Publish reached SNS while the network lost its answer (the worker retries it), for the same reason."""
    from runtime.storage.jobstore import JobStore

    bucket = settings.output_bucket
    statuses = {j.id: JobStore(s3, settings).read_status(j.id) for j in jobs}
    per_job = Counter(n["id"] for n in notes)
    dup_outputs = mismatched = 0
    for job in jobs:
        listed = s3.list_objects_v2(Bucket=bucket, Prefix=f"outputs/{job.id}/").get("Contents", [])
        keys, want = {o["Key"] for o in listed}, refs[job.id].result()
        dup_outputs += max(0, len(keys) - len(want))
        for index, png in enumerate(want):
            key = f"outputs/{job.id}/{index}.png"
            mismatched += key not in keys or s3.get_object(Bucket=bucket, Key=key)["Body"].read() != png
    final = {job_id: d for job_id, d in statuses.items() if d is not None and d.state.final}
    repeated = sum(1 for job_id, c in per_job.items() if c == 2 and job_id in killed_publishing)
    dup_notes = sum(c - 1 for job_id, c in per_job.items() if c > 1) - repeated + sum(
        1 for n in notes if n["id"] not in final or n["state"] != final[n["id"]].state)
    return {
        "jobs": len(jobs),
        "succeeded": sum(1 for d in final.values() if d.state == "succeeded" and d.notified_at),
        "lost": sum(1 for j in jobs if j.id not in final or not per_job[j.id]),
        "duplicate_outputs": dup_outputs, "duplicate_notifications": dup_notes, "mismatched_outputs": mismatched,
        "notifications_resent_after_sigkill": repeated,
        "attempts_beyond_first": sum(max(0, d.attempts - 1) for d in final.values()),
        "leftover_checkpoints": s3.list_objects_v2(Bucket=bucket, Prefix="checkpoints/")["KeyCount"],
    }


class Fleet:
    """The worker processes (``spotgen worker``, as in a pod), each logging to ``worker-{n}.log``."""

    def __init__(self, env: dict[str, str], log_dir: Path) -> None:
        self.env, self.log_dir, self.count = env, log_dir, 0
        self.procs: dict[int, subprocess.Popen[bytes]] = {}
        self.exits: dict[int, int] = {}
        self.logs: dict[int, Path] = {}

    def spawn(self) -> int:
        from runtime.local.devstack import _die_with_parent

        with open(self.log_dir / f"worker-{self.count}.log", "ab") as log:
            proc = subprocess.Popen([sys.executable, "-m", "runtime.cli", "worker"], env=self.env, stdout=log,
                                    stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=_die_with_parent)
        self.logs[proc.pid] = self.log_dir / f"worker-{self.count}.log"
        self.count += 1
        self.procs[proc.pid] = proc
        return proc.pid

    def published_unrecorded(self, pids: list[int]) -> frozenset[str]:
        """Jobs whose notification these (SIGKILLed) workers had published when they died: their logs say so,
        and that delivery never stored ``notified_at``, so a redelivery rightly sends it again."""
        jobs: set[str] = set()
        for pid in pids:
            text = self.logs[pid].read_text(errors="replace")
            jobs.update(re.findall(r"job (\S+): notification published", text))
        return frozenset(jobs)

    def reap(self) -> list[int]:
        """Pids that exited since the last call."""
        gone = [pid for pid, proc in self.procs.items() if proc.poll() is not None]
        for pid in gone:
            self.exits[pid] = self.procs.pop(pid).returncode
        return gone

    def stop(self, timeout: float = 60) -> None:
        for proc in self.procs.values():
            proc.send_signal(signal.SIGTERM)
        for pid, proc in list(self.procs.items()):
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            self.exits[pid] = proc.returncode
        self.procs.clear()


def recomputed(records: list[tuple[int, str, int, int]], kills: list[tuple[int, str]]) -> dict[str, list[int]]:
    """Steps done twice per interruption that hit a job: the steps the killed attempt finished which the job's
    next attempt runs again. A killed pid's last attempt in the log is the one the signal hit; if the job has
    no later attempt, it finished in that attempt and was not interrupted."""
    # Keyed by process too: two deliveries may run under one attempt number (one killed before its first status
    # write recorded the attempt), and the steps of one are not the other's to answer for.
    attempts: dict[tuple[str, int, int], list[int]] = {}  # in order of first appearance, i.e. of time
    last_of_pid: dict[int, tuple[str, int, int]] = {}
    for pid, job, attempt, step in records:
        attempts.setdefault((job, attempt, pid), []).append(step)
        last_of_pid[pid] = (job, attempt, pid)
    order: dict[str, list[tuple[str, int, int]]] = {}
    for key in attempts:
        order.setdefault(key[0], []).append(key)
    out: dict[str, list[int]] = {"TERM": [], "KILL": []}
    for pid, sig in kills:
        key = last_of_pid.get(pid)
        chain = order.get(key[0], []) if key else []
        if key is None or chain.index(key) == len(chain) - 1:
            continue
        start = min(attempts[chain[chain.index(key) + 1]]) - 1  # steps the next attempt took from its checkpoint
        out[sig].append(sum(1 for step in attempts[key] if step > start))
    return out


OPTIONS: list[tuple[str, Any, str]] = [
    ("--jobs", 100, ""), ("--workers", 2, ""), ("--sigterm", 10, "SIGTERMs to send"), ("--sigkill", 10, "SIGKILLs"),
    ("--checkpoint-every", 10, "periodic checkpoints every N steps; 0 = off"), ("--seed", 1, ""),
    ("--size", 128, "image side in pixels"), ("--steps", 60, "denoising steps per job"),
    ("--models", ROOT / ".spotgen" / "models", "tiny models (built if missing)"),
    ("--log-dir", ROOT / ".spotgen" / "chaos", "worker logs and the step log"),
    ("--stall-s", 120.0, "give up after this many seconds without progress"),
]


class Chaos:
    """One run: the stack, the fleet, the jobs and what was observed."""

    def __init__(self, args: argparse.Namespace, stack: Any, fleet: Fleet, jobs: list[Job], step_log: Path) -> None:
        from runtime.storage import aws

        self.args, self.stack, self.fleet, self.jobs, self.step_log = args, stack, fleet, jobs, step_log
        self.s3, self.sqs = aws.client("s3", stack.settings), aws.client("sqs", stack.settings)
        self.notes: list[dict[str, Any]] = []
        self.kills: list[tuple[int, str]] = []  # (pid, "TERM" | "KILL") in the order sent
        self.unexpected: list[int] = []

    def drain(self) -> int:
        """Collect the notifications that arrived on the results queue."""
        return drain(self.sqs, self.stack.resources.results_queue_url, self.notes)

    def drive(self, rng: random.Random, started: float) -> None:
        """Until every job is notified: kill i is due once a random fraction of all steps is done, and goes
        to a worker that finished a step of an unfinished job within ``BUSY_S`` (the step log, tailed); a
        replacement starts at once, as a new spot node would."""
        args = self.args
        plan = rng.sample(["TERM"] * args.sigterm + ["KILL"] * args.sigkill, args.sigterm + args.sigkill)
        due = sorted(rng.uniform(0.03, 0.85) for _ in plan)
        totals, ids = {j.id: j.steps for j in self.jobs}, {j.id for j in self.jobs}
        todo = sum(totals.values())
        latest: dict[int, tuple[float, str, int]] = {}  # pid -> (when seen, job, step)
        done: dict[str, int] = {}
        offset, last_kill, last_news, last_poll = 0, 0.0, time.monotonic(), 0.0
        while not ids <= {n["id"] for n in self.notes} and time.monotonic() - last_news < args.stall_s:
            time.sleep(0.05)
            now = time.monotonic()
            with open(self.step_log, "rb") as f:
                f.seek(offset)
                chunk = f.read()
            chunk = chunk[: chunk.rfind(b"\n") + 1]  # whole lines only
            offset += len(chunk)
            for pid, job, _, step in (line.split() for line in chunk.decode().splitlines()):
                latest[int(pid)], done[job], last_news = (now, job, int(step)), max(done.get(job, 0), int(step)), now
            for pid in self.fleet.reap():
                if pid not in {p for p, _ in self.kills}:  # died by itself: a bug; keep the fleet at strength
                    self.unexpected.append(pid)
                    self.fleet.spawn()
            if now - last_poll > 0.5:
                last_poll = now
                last_news = now if self.drain() else last_news
            n = len(self.kills)
            if n == len(plan) or sum(done.values()) < due[n] * todo or now - last_kill < 0.5:
                continue
            hit = {p for p, _ in self.kills}
            busy = [pid for pid, (seen, job, step) in latest.items()
                    if pid in self.fleet.procs and pid not in hit and now - seen < BUSY_S and step < totals[job] - 1]
            if busy:
                pid, sig = rng.choice(sorted(busy)), plan[len(self.kills)]
                os.kill(pid, signal.SIGTERM if sig == "TERM" else signal.SIGKILL)
                self.kills.append((pid, sig))
                last_kill = now
                self.fleet.spawn()
                finished = len(ids & {n["id"] for n in self.notes})
                print(f"  {now - started:6.1f} s  SIG{sig} worker {pid} at step {latest[pid][2]} of {latest[pid][1]}; "
                      f"{finished}/{len(ids)} jobs done", flush=True)

    def verify(self, refs: dict[str, Future[list[bytes]]]) -> dict[str, Any]:
        """The figures: final states, notifications, outputs against the references, steps recomputed."""
        from runtime.worker import steplog

        redo = recomputed(steplog.read(self.step_log), self.kills)
        sent = Counter(sig for _, sig in self.kills)
        return {
            **outcome(self.s3, self.stack.settings, self.jobs, refs, self.notes,
                      self.fleet.published_unrecorded([pid for pid, sig in self.kills if sig == "KILL"])),
            "sigterm": len(redo["TERM"]), "sigterm_sent": sent["TERM"],
            "sigkill": len(redo["KILL"]), "sigkill_sent": sent["KILL"],
            "kills_hit_running_job": len(redo["TERM"]) + len(redo["KILL"]),
            "steps_recomputed_per_sigterm": round(sum(redo["TERM"]) / max(1, len(redo["TERM"])), 3),
            "max_steps_recomputed_sigterm": max(redo["TERM"], default=0),
            "steps_recomputed_per_sigkill": round(sum(redo["KILL"]) / max(1, len(redo["KILL"])), 3),
            "max_steps_recomputed_sigkill": max(redo["KILL"], default=0),
            "checkpoint_every": self.args.checkpoint_every, "unexpected_worker_exits": len(self.unexpected),
            "sigterm_unclean_exits": sum(1 for p, sig in self.kills if sig == "TERM" and self.fleet.exits.get(p) != 0),
        }


def parse_args(doc: str | None, options: list[tuple[str, Any, str]], argv: list[str] | None) -> argparse.Namespace:
    """A harness's command line: ``options`` are (flag, default, help), typed by their defaults."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    for flag, default, text in options:
        parser.add_argument(flag, type=type(default), default=default, help=text or None)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(__doc__, OPTIONS, argv)
    started = time.monotonic()

    from runtime.local.devsettings import new_webhook_secret
    from runtime.local.devstack import EMULATOR_CREDENTIALS, DevStack
    from tests.rest import call

    # Every job asks for a webhook: the receiver counts each event (no job's lost or doubled, under the kills).
    secret = new_webhook_secret()
    receiver = Receiver(secret).start()
    # Short leases so a SIGKILLed job is back within seconds; short polls so an idle worker stops quickly.
    settings, step_log = prepare(args, {"heartbeat_s": 1.0, "lease_s": 4, "poll_wait_s": 2,
                                        "checkpoint_every": args.checkpoint_every, "interrupt_deadline_s": 60,
                                        **HARNESS_SETTINGS, "webhook_secret": secret})
    stack = DevStack(settings, port=0, aws_port=0, workers=0, visibility_timeout_s=5).start()
    fleet = Fleet({**os.environ, "PYTHONPATH": str(ROOT), **stack.settings.to_env(), **EMULATOR_CREDENTIALS,
                   "OMP_NUM_THREADS": str(THREADS)}, args.log_dir)
    pool = None
    try:
        for _ in range(args.workers):
            fleet.spawn()
        bucket, images = stack.settings.input_bucket, input_images(args.size)
        jobs = make_jobs(args.jobs, args.size, args.steps, args.seed, bucket)
        ask_webhooks(receiver, jobs)
        chaos = Chaos(args, stack, fleet, jobs, step_log)
        for key, data in images.items():
            chaos.s3.put_object(Bucket=bucket, Key=key, Body=data, ContentType="image/png")
        pool = ProcessPoolExecutor(1, multiprocessing.get_context("spawn"), _reference_init,
                                   (str(args.models.resolve()), bucket, images, str(args.log_dir / "reference.log")))
        refs = {}
        for job in jobs:
            status, body = call("POST", f"{stack.api_url}/v1/jobs", job.request)
            assert status == 202, (status, body)
            refs[job.id] = pool.submit(reference, job.id, job.request["pipeline"], job.inputs, job.request["model"],
                                       body["seed"])
        print(f"{len(jobs)} jobs submitted to {args.workers} workers ({time.monotonic() - started:.1f} s)", flush=True)
        chaos.drive(random.Random(args.seed), started)
        chaos_s = time.monotonic() - started
        time.sleep(settings.lease_s + 2)  # a redelivery of a finished job would notify again now, if ever
        settle_webhooks(receiver, [j.id for j in jobs], 60)  # one a killed worker held comes back after its claim
        fleet.stop()
        chaos.drain()
        figures = chaos.verify(refs) | webhook_figures(receiver, [j.id for j in jobs])
    finally:
        receiver.stop()
        fleet.stop()
        if pool is not None:
            pool.shutdown(cancel_futures=True)
        stack.stop()
    figures |= {"workers": args.workers, "size": args.size, "steps": args.steps, "chaos_seconds": round(chaos_s, 1),
                "seconds": round(time.monotonic() - started, 1)}
    ok = report(chaos_checks(figures, args.sigterm, args.sigkill, args.checkpoint_every, args.steps)
                | webhook_checks(figures))
    print(json.dumps({**figures, "ok": ok}))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
