"""How fast a new node serves (issue 32, items 3 and 4), for `make bench`; alone:
`python -m tests.harness.bench_coldstart` (`--load`: the load against the read only).

Load against read: a tier-1 load of ``medium-sd`` (``runtime.models.tinymedium``, ~515 MiB, built here into a
temporary directory) through the worker's own code (``pipelines.loading.base_pipeline`` on a fresh ``ModelStore``)
against reading the same files' bytes to nowhere, each after the files were dropped from the page cache
(fsync + ``posix_fadvise(DONTNEED)``: no root needed, this directory's files only), in alternating rounds; the load
with the store's read-ahead (``runtime.models.prefetch``, "after") and without it ("before"). The same pair warm
(files in the page cache) is beside it, and a profile of one cold load says where the time goes beyond reading.

Time to first image: a worker process (``spotgen worker`` on the embedded stack, ``SPOTGEN_PRELOAD=medium-sd``,
an empty node cache) started with a job already queued, timed from the process's start to the log line of that
job's success (after its image is stored and announced), split by the worker's own log lines: set up (imports,
AWS reached, pipelines' setup), the fetch into the node cache (tier 0 -> 1), the load into memory (tier 1 -> 2),
the first job. Twice: from a local directory as EFS (cold page cache), and from S3 on the emulator. Each phase
against its floor in the same run: importing torch and diffusers alone in a fresh process; the bytes over the cold
read speed measured here; the same job run directly in this process, warm.
"""

from __future__ import annotations

import argparse
import calendar
import cProfile
import gc
import json
import os
import pstats
import re
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from runtime.models.tinymedium import MEDIUM_ID, build_medium_model, evict, model_files  # noqa: E402
from tests.harness.verdicts import goal  # noqa: E402

#: Goal (issue 32): a tier-1 load within 1.3x of reading the same bytes.
LOAD_GOAL = 1.3
JOB = {"prompt": "a red fox", "width": 64, "height": 64, "steps": 4}
#: Where a cold load's time goes: (the profile's file name ends with, function name) -> cumulative seconds.
PROFILE_PARTS = {"checkpoint views (header, mapping)": ("pipelines/mapped.py", "_mapped"),
                 "module construction (configs, layers on meta)": ("configuration_utils.py", "from_config"),
                 "weights into modules": ("torch/nn/modules/module.py", "load_state_dict"),
                 "waiting for the last bytes (populate)": ("pipelines/mapped.py", "_populate"),
                 "text encoder (transformers)": ("transformers/modeling_utils.py", "from_pretrained")}


def read_s(files: list[Path]) -> float:
    """Seconds to read every byte of ``files`` into one reused buffer (``cat`` to /dev/null, in Python)."""
    buffer = bytearray(1 << 20)
    began = time.perf_counter()
    for path in files:
        with open(path, "rb", buffering=0) as handle:
            while handle.readinto(buffer):
                pass
    return time.perf_counter() - began


def load_s(models: Path, prefetch: bool) -> float:
    """Seconds for a fresh store to load the medium model as a worker does (``base_pipeline``)."""
    from pipelines.loading import base_pipeline
    from runtime.models.store import ModelStore

    store = ModelStore(models, "cpu")
    store.prefetch.enabled = prefetch
    began = time.perf_counter()
    base_pipeline(store, MEDIUM_ID)
    seconds = time.perf_counter() - began
    del store
    gc.collect()
    return seconds


def profile_parts(models: Path) -> dict[str, float]:
    """One cold load (read-ahead on) under cProfile: seconds of each part of ``PROFILE_PARTS``, and the total."""
    files = model_files(models / MEDIUM_ID)
    evict(files)
    profiler = cProfile.Profile()
    profiler.enable()
    load_s(models, True)
    profiler.disable()
    stats: dict[Any, Any] = pstats.Stats(profiler).stats  # type: ignore[attr-defined]
    parts = {name: 0.0 for name in PROFILE_PARTS}
    total = 0.0
    for (filename, _, func), (_, _, _, cumulative, _) in stats.items():
        if func == "base_pipeline":  # the load alone, not the collection after it
            total = cumulative
        for name, (suffix, wanted) in PROFILE_PARTS.items():
            builtin = func.startswith("<") and f"'{wanted}'" in func
            if (func == wanted or builtin) and filename.endswith(suffix):
                parts[name] += cumulative
    return {**parts, "total": total}


def load_figures(models: Path, rounds: int = 5) -> dict[str, Any]:
    """The tier-1 load against the read of its files, cold and warm, before and after the read-ahead."""
    files = model_files(models / MEDIUM_ID)
    size = sum(p.stat().st_size for p in files)
    load_s(models, True)  # imports and first-use costs of the classes, paid once per process, not per load
    cold = evict(files)
    times: dict[str, list[float]] = {"read": [], "load": [], "load_before": [],
                                     "warm_read": [], "warm_load": [], "warm_load_before": []}
    for _ in range(rounds):  # alternating, so that drift on a shared machine hits each alike
        for name in ("read", "load", "load_before"):
            evict(files)
            times[name].append(read_s(files) if name == "read" else load_s(models, name == "load"))
        read_s(files)
        for name in ("warm_read", "warm_load", "warm_load_before"):
            times[name].append(read_s(files) if name == "warm_read" else load_s(models, name == "warm_load"))
    med = {name: statistics.median(values) for name, values in times.items()}
    # Each round's load against the read just before it: this disk's speed drifts by up to 4x within a run (a
    # shared host), and a ratio of two medians would compare rounds of different speeds.
    def over_read(name: str) -> list[float]:
        return [value / read for value, read in zip(times[name], times["read"], strict=True)]

    ratios = over_read("load")
    ratio = statistics.median(ratios)
    return {"model_mib": size / 2**20, "files": len(files), "rounds": rounds, "page_cache_dropped": cold,
            **{f"{name}_s": value for name, value in med.items()},
            "read_mib_per_s": size / 2**20 / med["read"],
            "load_over_read": ratio, "load_over_read_rounds": [min(ratios), max(ratios)],
            "load_over_read_before": statistics.median(over_read("load_before")),
            "warm_load_over_read": med["warm_load"] / med["warm_read"],
            "warm_load_over_read_before": med["warm_load_before"] / med["warm_read"],
            "profile_s": profile_parts(models),
            "goals": {"load_over_read": goal(ratio, "<=", LOAD_GOAL)}}


#: What the set-up phase's floor imports: torch and diffusers' pipelines alone.
FLOOR_IMPORTS = "import torch, diffusers; from diffusers import StableDiffusionPipeline"


def import_floor_s() -> float:
    """Seconds for a fresh Python to import torch and diffusers' pipelines alone (the floor of the set-up phase)."""
    began = time.perf_counter()
    subprocess.run([sys.executable, "-c", FLOOR_IMPORTS], check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    return time.perf_counter() - began


def _lines(model_id: str) -> dict[str, re.Pattern[str]]:
    """The worker's log lines that end each start-up phase, for a preload of ``model_id``."""
    model = re.escape(model_id)
    return {"set_up": re.compile(r"worker set up ([\d.]+) s after its process started"),
            "fetch": re.compile(rf"model {model}: copied (\d+) bytes to the node cache in ([\d.]+) s"),
            "preloaded": re.compile(rf"preloaded model {model} in ([\d.]+) s"),
            "received": re.compile(r"Task \S+\[(\w+)\] received"),
            "job": re.compile(r"job (\w+) succeeded: pipeline ([\d.]+) s")}


def worker_phases(log: Path, job_id: str, model_id: str = MEDIUM_ID) -> dict[str, float]:
    """The start-up phases from the worker's JSON log lines (their times and the durations they state)."""
    lines = _lines(model_id)
    found: dict[str, tuple[float, re.Match[str]]] = {}
    for line in log.read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        stamp = record["time"]
        at = calendar.timegm(time.strptime(stamp[:19], "%Y-%m-%dT%H:%M:%S")) + int(stamp[20:23]) / 1000
        for name, pattern in lines.items():
            match = pattern.search(record.get("message", ""))
            if match and name not in found and (name not in ("job", "received") or match[1] == job_id):
                found[name] = (at, match)
    set_up_at = found["set_up"][0]
    started = set_up_at - float(found["set_up"][1][1])
    fetch = float(found["fetch"][1][2]) if "fetch" in found else 0.0
    # The fetch starts before the set-up ends (``runtime.worker.preload.fetch_ahead``): only its part after the
    # set-up is on the way to the first image, and the preload's own time includes waiting for that part.
    fetch_after = min(fetch, max(0.0, found["fetch"][0] - set_up_at)) if "fetch" in found else 0.0
    preloaded = float(found["preloaded"][1][1])
    return {"set_up_s": float(found["set_up"][1][1]), "fetch_s": fetch, "fetch_during_set_up_s": fetch - fetch_after,
            "load_s": preloaded - fetch_after,
            "fetched_bytes": int(found["fetch"][1][1]) if "fetch" in found else 0,
            "between_s": found["preloaded"][0] - preloaded - found["set_up"][0],
            "first_job_s": found["job"][0] - found["preloaded"][0], "job_pipeline_s": float(found["job"][1][2]),
            "job_received_after_s": found["received"][0] - found["preloaded"][0] if "received" in found else -1.0,
            "total_s": found["job"][0] - started}


@dataclass(frozen=True)
class Served:
    """What a first-image run serves: this module's medium model on the CPU (the default), or a row of
    ``bench_gpu_coldstart`` (a full-size model on the GPU, a tiny one with ``--tiny``); ``check_images``: the job's
    outputs are read back from S3 and checked (``verdicts.image_problems``)."""

    model_id: str = MEDIUM_ID
    family: str = "sd1"
    variant: str | None = None
    job: dict[str, Any] = field(default_factory=lambda: dict(JOB))
    device: str = "cpu"
    check_images: bool = False


def first_image(tier0: Path, node: Path, log_dir: Path, name: str, s3: bool = False,
                served: Served | None = None) -> dict[str, Any]:
    """One worker process from its start to its first image, with an empty node cache; ``s3``: the models
    directory holds the catalog and manifest only, the model itself is put on the emulator's S3 first."""
    from runtime.config import Settings
    from runtime.local.devstack import DevStack
    from runtime.storage import aws
    from tests.rest import call, wait_for

    served = served or Served()
    model_id = served.model_id
    settings = Settings.from_env().model_copy(update={
        "models_dir": tier0, "node_cache_dir": node, "preload": [model_id], "log_format": "json",
        "models": [model_id], "model_families": {model_id: served.family}, "device": served.device,
        "model_variants": {model_id: served.variant} if served.variant else {}})
    with DevStack(settings, port=0, aws_port=0, workers=0, log_dir=log_dir) as stack:
        if s3:
            client = aws.client("s3", stack.settings)
            client.create_bucket(Bucket="spotgen-models")
            for path in model_files(tier0 / model_id):
                client.upload_file(str(path), "spotgen-models", f"models/{path.relative_to(tier0).as_posix()}")
        status, body = call("POST", f"{stack.api_url}/v1/jobs", {"pipeline": "txt2img", "model": model_id,
                                                                  "inputs": {**served.job, "seed": 1}})
        assert status == 202, body
        evict(model_files(tier0))
        stack._procs.append(stack._spawn_worker(name))  # noqa: SLF001 - a worker started now, timed from its start
        doc = wait_for(stack.api_url, body["id"], timeout=600, poll_s=0.5)
        assert doc["state"] == "succeeded", doc.get("error")
        out: dict[str, Any] = worker_phases(log_dir / f"worker-{name}.log", body["id"], model_id)
        if served.check_images:  # after the clock stopped: the image as a client would download it
            from tests.harness.verdicts import image_problems

            s3_client, size = aws.client("s3", stack.settings), served.job["width"]
            pngs = [s3_client.get_object(Bucket=stack.settings.output_bucket, Key=link["key"])["Body"].read()
                    for link in doc["outputs"]]
            out["images_checked"] = len(pngs)
            out["image_problems"] = [f"{model_id} first image: {p}" for png in pngs for p in image_problems(png, size)]
    return out


def first_image_apart(tier0: Path, node: Path, log_dir: Path, name: str, s3: bool = False,
                      served: Served | None = None) -> dict[str, Any]:
    """``first_image`` with a stack of its own in a process of its own: that process, its worker and whatever
    they held (the GPU's memory, moto's state) have ended when this returns."""
    argv = [sys.executable, "-m", "tests.harness.bench_coldstart", "--first-image", str(tier0), str(node),
            str(log_dir), name, *(["--s3"] if s3 else []),
            *(["--served", json.dumps(asdict(served))] if served else [])]
    done = subprocess.run(argv, check=True, capture_output=True, text=True, cwd=ROOT)
    return json.loads(done.stdout.strip().splitlines()[-1])


def direct_job_s(models: Path, served: Served | None = None) -> float:
    """The first job's floor: the same job through the worker's pipeline in this process, model loaded, warm (the
    fastest of the runs after the first). The store is dropped on return, so a GPU's memory can be freed."""
    from pipelines.txt2img import Txt2Img
    from runtime.contract import Txt2ImgInputs
    from runtime.models.store import ModelStore
    from runtime.plugins import RunContext

    served = served or Served()
    store, pipeline = ModelStore(models, served.device), Txt2Img()
    inputs = Txt2ImgInputs(**served.job)
    times = []
    for seed in range(3):
        began = time.perf_counter()
        pipeline.run(inputs, RunContext(job_id="direct", model=served.model_id, seed=seed, device=served.device,
                                        models=store, report=lambda step, total, state: None,
                                        fetch_image=lambda ref: None))
        times.append(time.perf_counter() - began)
    return min(times[1:])


def first_image_figures(models: Path, tmp: Path) -> dict[str, Any]:
    """Time to first image from a local directory (as EFS) and from S3 (the emulator), against the floors."""
    from runtime.models.manifests import write_manifest
    from runtime.models.store import ModelStore

    catalog_path = models / "catalog.json"
    catalog = json.loads(catalog_path.read_text())
    catalog["models"][MEDIUM_ID]["manifest"] = f"manifests/{MEDIUM_ID}.json"
    catalog_path.write_text(json.dumps(catalog))
    write_manifest(ModelStore(models), MEDIUM_ID)
    files = model_files(models / MEDIUM_ID)
    size = sum(p.stat().st_size for p in files)
    evict(files)
    read = read_s(files)
    floors = {"set_up_s": import_floor_s(), "fetch_s": read, "load_s": read,  # the bytes over the read speed
              "first_job_s": direct_job_s(models)}
    out: dict[str, Any] = {"model_mib": size / 2**20, "cold_read_mib_per_s": size / 2**20 / read,
                           "floors": floors}
    out["local_dir"] = first_image_apart(models, tmp / "node-efs", tmp / "logs", "cold-efs")
    s3_models = tmp / "s3-models"
    (s3_models / "manifests").mkdir(parents=True)
    (s3_models / "manifests" / f"{MEDIUM_ID}.json").write_bytes((models / "manifests" / f"{MEDIUM_ID}.json")
                                                                  .read_bytes())
    s3_catalog = {**catalog, "s3_root": "s3://spotgen-models/models"}
    (s3_models / "catalog.json").write_text(json.dumps(s3_catalog))
    (s3_models / MEDIUM_ID).symlink_to(models / MEDIUM_ID)  # uploaded from here; the worker reads S3
    out["s3"] = first_image_apart(s3_models, tmp / "node-s3", tmp / "logs", "cold-s3", s3=True)
    for source in ("local_dir", "s3"):
        f = out[source]
        f["over_floor"] = {phase: f[phase] / floor for phase, floor in floors.items() if floor > 0}
        f["floor_total_s"] = floor_total(floors)
    return out


def figures(rounds: int = 5, keep: Path | None = None) -> dict[str, Any]:
    """Every figure; ``keep``: the directory to work in (models, node caches, worker logs), left for a look."""
    with tempfile.TemporaryDirectory() as tmp:
        work = keep or Path(tmp)
        models = work / "models"
        build_medium_model(models)
        load = load_figures(models, rounds)
        return {"load": load, "first_image": first_image_figures(models, work)}


def floor_total(floors: dict[str, float]) -> float:
    """The floor of a worker's time to its first image, from its phases' floors: the fetch starts during the
    set-up (``runtime.worker.preload.fetch_ahead``), so the larger of the two, then the load and the first job."""
    return max(floors["set_up_s"], floors["fetch_s"]) + floors["load_s"] + floors["first_job_s"]


def rows(figs: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """(figure, value, floor or goal, ratio) rows for the table of ``benchmark.py``."""
    ld = figs["load"]
    cold = "page cache dropped" if ld["page_cache_dropped"] else "WARM: the page cache could not be dropped"
    out = [(f"tier-1 load, {ld['model_mib']:.0f} MiB, cold ({cold})",
            f"{ld['load_s'] * 1000:.0f} ms", f"read {ld['read_s'] * 1000:.0f} ms (goal <= {LOAD_GOAL}x)",
            f"{ld['load_over_read']:.2f}x (rounds {ld['load_over_read_rounds'][0]:.2f}-"
            f"{ld['load_over_read_rounds'][1]:.2f}; before: {ld['load_over_read_before']:.2f}x)"),
           ("tier-1 load, warm", f"{ld['warm_load_s'] * 1000:.0f} ms", f"read {ld['warm_read_s'] * 1000:.0f} ms",
            f"{ld['warm_load_over_read']:.2f}x (before: {ld['warm_load_over_read_before']:.2f}x)")]
    fi = figs.get("first_image")
    if fi:
        floors = fi["floors"]
        for source in ("local_dir", "s3"):
            f = fi[source]
            what = "local dir as EFS" if source == "local_dir" else "S3 (emulator)"
            out.append((f"first image from {what}: total", f"{f['total_s']:.2f} s",
                        f"{f['floor_total_s']:.2f} s", f"{f['total_s'] / f['floor_total_s']:.2f}x"))
            overlap = f"fetch tier 0 -> 1 ({f.get('fetch_during_set_up_s', 0.0):.2f} s of it during set up)"
            for phase, label in (("set_up_s", "set up (imports...)"), ("fetch_s", overlap),
                                 ("load_s", "load tier 1 -> 2"), ("first_job_s", "first job")):
                out.append((f"  {label}", f"{f[phase]:.2f} s", f"{floors[phase]:.2f} s",
                            f"{f['over_floor'].get(phase, float('nan')):.2f}x"))
    return out


def print_table(title: str, columns: tuple[str, ...], table_rows: list[tuple[str, ...]]) -> None:
    """A table on stdout (rich; plain text when stdout is not a terminal), wide enough not to wrap figures."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    for column in columns:
        table.add_column(column, overflow="fold")
    for row in table_rows:
        table.add_row(*row)
    Console(width=max(120, Console().width)).print(table)


def goal_rows(figures: Any, path: str = "") -> list[tuple[str, str, str, str]]:
    """Every goal of a benchmark's figures (each ``"goals"`` map, at any depth): (figure, value, goal, met)."""
    found: list[tuple[str, str, str, str]] = []
    if isinstance(figures, dict):
        for name, verdict in (figures.get("goals") or {}).items():
            value = verdict["value"]
            shown = f"{value:.3f}" if isinstance(value, float) else str(value)
            found.append((f"{path}{name}", shown, verdict["goal"], "yes" if verdict["met"] else "NO"))
        for key, value in figures.items():
            if key != "goals":
                found += goal_rows(value, f"{path}{key}.")
    return found


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--load", action="store_true", help="the load against the read only (about a minute)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--keep", type=Path, help="work in this (new) directory and leave it: the worker logs")
    parser.add_argument("--first-image", nargs=4, metavar=("TIER0", "NODE", "LOGS", "NAME"),
                        help="(used by the benchmark) one worker's start to its first image, as JSON")
    parser.add_argument("--s3", action="store_true", help="with --first-image: the model on the emulator's S3")
    parser.add_argument("--served", help="with --first-image: what it serves (Served's fields as JSON)")
    args = parser.parse_args()
    if args.first_image:
        tier0, node, logs, name = args.first_image
        served = Served(**json.loads(args.served)) if args.served else None
        print(json.dumps(first_image(Path(tier0), Path(node), Path(logs), name, args.s3, served)))
        sys.exit(0)
    if args.load:
        with tempfile.TemporaryDirectory() as tmp:
            build_medium_model(Path(tmp))
            results: dict[str, Any] = {"load": load_figures(Path(tmp), args.rounds)}
    else:
        results = figures(args.rounds, args.keep)
    print_table("How fast a new node serves", ("figure", "value", "floor / against", "ratio"), rows(results))
    print(json.dumps({"bench": "coldstart", **results}, sort_keys=True))
