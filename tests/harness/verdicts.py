"""The harnesses' verdicts, as pure functions of their figures.

A check that cannot fail proves nothing. Each harness measures, then decides; the deciding is here, apart from
the stacks and processes, so that a test can hand each check the figures of a run where something went wrong
(a fault that never fired, kills that hit no running job, a NaN figure, a goal missed) and see it say so,
in milliseconds (tests/worker/test_faults.py, test_chaos.py, test_bench_gpu.py).

- ``faults_checks`` and ``chaos_checks``: what ``make faults`` and ``make chaos`` require for ``"ok": true``.
- ``goal`` and ``goals_missed``: a benchmark figure against its goal, ``"met": true`` or ``false`` beside it in
  the JSON. A goal missed is a finding about this machine, not a failure of the benchmark: it never changes
  the exit status.
- ``image_problems`` and ``gpu_problems``: what ``make bench-gpu`` requires for ``"ok": true``: every image
  decodes, has the size asked for and is not one flat colour (what NaN latents decode to), and every figure is
  there and finite.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Iterable
from typing import Any
from urllib.parse import parse_qs

# -- make faults ------------------------------------------------------------------------------------------------


def fault_kinds(planned: Iterable[str], done: Iterable[tuple[str, float, bool]]) -> dict[str, dict[str, int]]:
    """Per kind of fault, how many the plan held and how many fired (met a request, or found a job
    denoising): a timed cut that no request matched did nothing, and must not count as a fault survived."""
    kinds: dict[str, dict[str, int]] = {}
    for name in planned:
        kinds.setdefault(name, {"planned": 0, "fired": 0})["planned"] += 1
    for name, _, fired in done:
        kinds.setdefault(name, {"planned": 0, "fired": 0})["fired"] += int(fired)
    return kinds


def jobs_taken(records: Iterable[tuple[int, str, int, int]], jobs: set[str]) -> dict[int, int]:
    """Per worker pid, how many of ``jobs`` it ran a denoising step of (step log records ``(pid, job, attempt,
    step)``). With ``jobs`` submitted after the last fault, a pid that has one received a job after it: its
    receive chain works, which ``/readyz`` (the last receive reached SQS) does not show."""
    taken: dict[int, set[str]] = {}
    for pid, job, _, _ in records:
        if job in jobs:
            taken.setdefault(pid, set()).add(job)
    return {pid: len(ids) for pid, ids in taken.items()}


def published_unanswered(lost: Iterable[Any]) -> frozenset[str]:
    """The jobs whose notification reached SNS while its answer was lost (``FaultProxy.lost``: requests sent
    upstream whose answer was cut or reset by an outage). The worker cannot know that one was published and
    sends it again, as it must against AWS: at least once, never lost. So a second notification of such a job is
    counted apart, not as a duplicate; a repeat without this evidence still fails the run."""
    jobs = set()
    for request in lost:
        if (request.service, request.operation) != ("sns", "Publish"):
            continue
        body = request.body.decode(errors="replace")  # the query protocol's form, or JSON should SNS move to it
        try:
            message = json.loads(body)["Message"] if body.startswith("{") else parse_qs(body)["Message"][0]
            jobs.add(json.loads(message)["id"])
        except (ValueError, KeyError, TypeError, IndexError):
            continue
    return frozenset(jobs)


def faults_checks(f: dict[str, Any]) -> dict[str, bool]:
    """``make faults``'s checks on its figures: nothing lost, doubled or changed; every kind of fault planned
    fired at least once (a plan that never landed tested nothing); and no worker wedged: each worker alive at
    the end is ready and ran a job submitted after the last fault."""
    kinds = f["fault_kinds"]
    return {
        "every job succeeded once": f["succeeded"] == f["jobs"], "no job lost": f["lost"] == 0,
        "no duplicate outputs": f["duplicate_outputs"] == 0,
        "no duplicate notifications": f["duplicate_notifications"] == 0,
        "outputs identical to the reference": f["mismatched_outputs"] == 0,
        "every kind of fault planned fired": bool(kinds) and all(k["fired"] >= 1 for k in kinds.values()),
        "every worker ready at the end": f["not_ready_workers"] == 0,
        "every worker took a job after the last fault": f["workers_idle_after_faults"] == 0,
        "no worker wedged": f["wedged_workers"] == 0,
        "no checkpoint left behind": f["leftover_checkpoints"] == 0,
    }


# -- make chaos -------------------------------------------------------------------------------------------------


def chaos_checks(f: dict[str, Any], sigterm: int, sigkill: int, checkpoint_every: int, steps: int) -> dict[str, bool]:
    """``make chaos``'s checks on its figures, for a plan of ``sigterm`` and ``sigkill`` kills.

    ``f["sigterm"]`` and ``f["sigkill"]`` count the kills that hit a running job (its attempt on the killed
    worker was followed by another). Not every kill can: the target finished a step of an unfinished job
    within ``BUSY_S``, and may finish the job before the signal lands. So each planned kind must hit at least
    once; a run where none did tested no interruption, whatever else it shows.

    A hard kill loses the steps since the last *stored* checkpoint; checkpoints are uploaded off the denoising
    loop, so a kill while checkpoint k is still on its way finds k - every: at most two intervals."""
    bound = 2 * checkpoint_every if checkpoint_every else steps
    return {
        "every job succeeded": f["succeeded"] == f["jobs"], "no job lost": f["lost"] == 0,
        "no duplicate outputs": f["duplicate_outputs"] == 0,
        "no duplicate notifications": f["duplicate_notifications"] == 0,
        "outputs identical to the reference": f["mismatched_outputs"] == 0,
        "all kills sent": (f["sigterm_sent"], f["sigkill_sent"]) == (sigterm, sigkill),
        "every planned kind of kill hit a running job": (sigterm == 0 or f["sigterm"] >= 1)
        and (sigkill == 0 or f["sigkill"] >= 1),
        "<= 1 step recomputed per SIGTERM": f["max_steps_recomputed_sigterm"] <= 1,
        f"<= {bound} steps recomputed per SIGKILL": f["max_steps_recomputed_sigkill"] <= bound,
        "no worker died unasked": f["unexpected_worker_exits"] == 0,
        "SIGTERMed workers exit 0": f["sigterm_unclean_exits"] == 0,
        "no checkpoint left behind": f["leftover_checkpoints"] == 0,
    }


def report(checks: dict[str, bool]) -> bool:
    """Print each check as ``ok`` or ``FAIL``; whether all passed."""
    for name, ok in checks.items():
        print(f"{'ok  ' if ok else 'FAIL'} {name}")
    return all(checks.values())


# -- benchmark goals ----------------------------------------------------------------------------------------------


def finite(value: Any) -> bool:
    """A real number, not NaN or infinity: a figure a reader can use (None, a bool or a string is not one)."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def goal(value: Any, op: str, target: float, tolerance: float = 0.0) -> dict[str, Any]:
    """A figure against its goal, for the JSON: ``{"value", "goal", "met"}``. ``op`` is ``>=``, ``<=``, ``<``,
    ``==`` or ``~`` (within ``tolerance`` of ``target``). A figure that is missing or not finite meets no goal."""
    tests = {">=": lambda v: v >= target, "<=": lambda v: v <= target, "<": lambda v: v < target,
             "==": lambda v: v == target, "~": lambda v: abs(v - target) <= tolerance}
    text = f"{target:g} ± {tolerance:g}" if op == "~" else f"{op} {target:g}"
    return {"value": value, "goal": text, "met": finite(value) and bool(tests[op](value))}


def goals_missed(figures: Any, path: str = "") -> list[str]:
    """Every goal not met in a benchmark's figures (each ``"goals"`` map, at any depth), as ``path.figure:
    value (goal ...)``, for the summary beside the figures."""
    missed: list[str] = []
    if isinstance(figures, dict):
        for name, verdict in (figures.get("goals") or {}).items():
            if not verdict["met"]:
                missed.append(f"{path}{name}: {verdict['value']} (goal {verdict['goal']})")
        for key, value in figures.items():
            if key != "goals":
                missed += goals_missed(value, f"{path}{key}.")
    return missed


def goals_count(figures: Any) -> int:
    """How many goals the figures hold, met or not."""
    if not isinstance(figures, dict):
        return 0
    return len(figures.get("goals") or {}) + sum(goals_count(v) for k, v in figures.items() if k != "goals")


# -- make bench-gpu ------------------------------------------------------------------------------------------------


def image_problems(image: Any, size: int) -> list[str]:
    """What is wrong with one generated image (PNG bytes, a PIL image or an array): it does not decode, is not
    ``size`` x ``size``, holds NaN or infinity, or is one flat colour (NaN latents decode to black; a broken
    VAE to grey). A speed figure over such images measures nothing worth having."""
    import numpy as np
    from PIL import Image

    if isinstance(image, bytes | bytearray):
        try:
            image = Image.open(io.BytesIO(image))
            image.load()
        except Exception as exc:  # noqa: BLE001 - whatever the decoder raises, the image is not one
            return [f"does not decode: {exc}"]
    pixels = np.asarray(image, dtype=np.float64)
    found = []
    width, height = image.size if isinstance(image, Image.Image) else (pixels.shape[1], pixels.shape[0])
    if (width, height) != (size, size):
        found.append(f"{width}x{height}, not {size}x{size}")
    if not np.isfinite(pixels).all():
        found.append("NaN or infinite pixels")
    elif pixels.size == 0 or (pixels == pixels.reshape(-1, *pixels.shape[2:])[0]).all():  # every pixel the first
        found.append("one flat colour")
    return found


def gpu_problems(found: dict[str, Any], models: list[str], settings: list[str]) -> list[str]:
    """What makes a ``make bench-gpu`` run worthless: images that are not (``found["image_problems"]``), and
    figures missing or not finite for a model or setting asked for. Empty when the run's figures can be read."""
    problems = list(found.get("image_problems") or [])
    if not found.get("images_checked"):
        problems.append("no image was checked")
    positive = ("images_per_s", "first_job_s", "ratio_to_plain")
    for model_id in models:
        row = found.get("models", {}).get(model_id)
        if row is None:
            problems.append(f"{model_id}: no figures")
            continue
        if not (finite(row.get("plain_images_per_s")) and row["plain_images_per_s"] > 0):
            problems.append(f"{model_id}: plain_images_per_s is {row.get('plain_images_per_s')}")
        for setting in settings:
            got = row.get(setting) or {}
            problems += [f"{model_id} {setting}: {name} is {got.get(name)}" for name in positive
                         if not (finite(got.get(name)) and got[name] > 0)]
            share = got.get("device_idle_share")
            if not (finite(share) and 0 <= share <= 1):
                problems.append(f"{model_id} {setting}: device_idle_share is {share}")
        if "compile" in settings:
            problems += [f"{model_id}: {name} is {row.get(name)}" for name in ("compile_warmup_s",
                                                                                "second_pod_first_job_s")
                         if not finite(row.get(name))]
    return problems
