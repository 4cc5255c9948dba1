"""`make bench-gpu`'s cold-start row (issue 32, item 6): how long a replacement GPU node takes from a worker
process's start to its first image, for SD 1.5, SDXL and Flux.1 dev at full size.

Per model (``--cold-start``, default ``sd15,sdxl,flux-dev``; any row of ``bench_gpu.MODELS`` or
``bench_gpu_flow.WORKLOADS``), one after the other, each in processes of its own so that each frees the GPU before
the next starts:

1. **Tier 0 and the floors**, in a fresh process (``floors_main``): it imports torch and diffusers' pipelines first
   (the set-up phase's floor: the time from its start until that import is done, seen by this process), then
   builds the model at full size with random weights on the GPU (``bench_gpu.build_full_size``, or the workload's
   ``build``) and saves it in diffusers format with an xxh3 manifest on local disk (NVMe on the GPU machine) as the
   only model of a tier-0 directory (the tiny stand-in copied from the tiny models with ``--tiny``); then the cold
   read speed of its files (dropped from the page cache first: ``bench_coldstart.read_s``), the floor of the fetch
   and of the load (the bytes over that speed); then the job run directly, model loaded, warm
   (``bench_coldstart.direct_job_s``), the first job's floor. The process exits: its GPU memory is free.
2. **The worker**: ``bench_coldstart.first_image_apart``, as ``make bench`` runs it on the CPU: an embedded stack
   with the job already queued, then a ``spotgen worker`` process with ``SPOTGEN_PRELOAD`` of that model and an
   empty node cache, timed from its start to the log line of the job's success, split by its log lines into set
   up / fetch (tier 0 -> node cache) / load / first job; its image is read back from S3 and checked.

The node cache is on the same disk as tier 0 where a second copy fits; Flux dev (about 34 GB in bfloat16 with its
T5) does not fit twice on the GPU machine's 64 GiB disk, so its node cache is then put on ``/dev/shm`` (the row's
``node_cache`` says which): its fetch is then bounded by the read of tier 0 alone.

``--tiny``: the same on the tiny stand-ins on the CPU (64 px, at most 4 steps): it checks the row, not speed.
"""

from __future__ import annotations

import gc
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.harness.bench_coldstart import FLOOR_IMPORTS, Served, first_image_apart, floor_total  # noqa: E402
from tests.harness.verdicts import finite  # noqa: E402

MODELS = ("sd15", "sdxl", "flux-dev")
PROMPT = "a red fox in the snow"
PHASES = ("set_up_s", "fetch_s", "load_s", "first_job_s")
#: How far the phases may add up beyond the total: the worker logs its durations to 10 ms and its times to 1 ms.
ROUNDING_S = 0.02
#: Room left on a disk beside a second copy of the model before the node cache goes to /dev/shm instead.
MARGIN_BYTES = 2 << 30


def unknown(model_ids: list[str]) -> list[str]:
    """The ids of ``model_ids`` that have no row: checked before a run, not minutes into one."""
    from tests.harness.bench_gpu import MODELS as SD  # (lazily: bench_gpu imports this module)
    from tests.harness.bench_gpu_flow import WORKLOADS

    return [model_id for model_id in model_ids if model_id not in SD and model_id not in WORKLOADS]


def served(model_id: str, tiny: bool, steps: int) -> Served:
    """What the row of ``model_id`` serves and its job: SD at its native size and ``steps``, a flow workload as
    ``bench_gpu_flow`` runs it; with ``tiny``, the tiny stand-in at 64 px and at most 4 steps, on the CPU."""
    from tests.harness.bench_gpu import MODELS as SD
    from tests.harness.bench_gpu_flow import WORKLOADS

    if model_id in WORKLOADS:
        w = WORKLOADS[model_id]
        family, variant, size, tiny_id, steps, inputs = w.family, w.variant, w.size, w.tiny, w.steps, w.inputs
    else:
        (family, size, tiny_id), variant, inputs = SD[model_id], None, {}
    if tiny:
        model_id, size, steps = tiny_id, 64, min(steps, 4)
    job = {"prompt": PROMPT, "width": size, "height": size, "steps": steps, **inputs}
    return Served(model_id, family, variant, job, "cpu" if tiny else "cuda", check_images=True)


def place(row: str, serve: Served, tier0: Path, tiny_models: Path | None, built: Path) -> None:
    """Tier 0 with ``serve``'s model alone: copied from the tiny models (built there first if they are not), or
    built at full size on the GPU."""
    from runtime.models.manifests import write_manifest
    from runtime.models.store import ModelStore
    from tests.harness.bench_gpu_flow import WORKLOADS

    tier0.mkdir(parents=True, exist_ok=True)
    target = tier0 / serve.model_id
    if tiny_models is not None:
        from runtime.models.tiny import build_tiny_models

        build_tiny_models(tiny_models)  # nothing to do where they are built; else here, where torch is imported
        shutil.copytree(tiny_models / serve.model_id, target)
        entry = json.loads((tiny_models / "catalog.json").read_text())["models"][serve.model_id]
    elif row in WORKLOADS:
        workload = WORKLOADS[row]
        pipe = workload.build(serve.device)
        pipe.save_pretrained(target, safe_serialization=True)
        del pipe
        entry = {"path": row, "family": workload.family, "dtype": workload.dtype, **workload.form,
                 **({"variant": workload.variant} if workload.variant else {})}
    else:
        from tests.harness.bench_gpu import build_full_size  # (lazily: bench_gpu imports this module)

        if not (built / row).is_dir():  # SD 1.5 and SDXL are built together, once a run
            build_full_size(built, serve.device)
        os.replace(built / row, target)
        entry = json.loads((built / "catalog.json").read_text())["models"][row]
    if serve.device.startswith("cuda"):  # the built model is saved: the direct job loads its own from the files
        import torch

        gc.collect()
        torch.cuda.empty_cache()
    entry = {**entry, "path": serve.model_id, "manifest": f"manifests/{serve.model_id}.json"}
    (tier0 / "catalog.json").write_text(json.dumps({"models": {serve.model_id: entry}}, indent=2))
    write_manifest(ModelStore(tier0), serve.model_id)


def floors_main() -> None:
    """The floors process (``floors``), after its import of ``FLOOR_IMPORTS``: tier 0, the cold read of its model,
    the job run directly; one JSON line."""
    from runtime.models.tinymedium import evict, model_files
    from tests.harness.bench_coldstart import direct_job_s, read_s

    spec = json.loads(sys.argv[1])
    serve, tier0 = Served(**spec["served"]), Path(spec["tier0"])
    place(spec["row"], serve, tier0, Path(spec["tiny_models"]) if spec["tiny_models"] else None, Path(spec["built"]))
    files = model_files(tier0 / serve.model_id)
    cold = evict(files)
    read = read_s(files)
    print(json.dumps({"model_bytes": sum(p.stat().st_size for p in files), "files": len(files), "read_s": read,
                      "page_cache_dropped": cold, "first_job_s": direct_job_s(tier0, serve)}), flush=True)


def floors(row: str, serve: Served, tier0: Path, tiny_models: Path | None, built: Path, log: Path) -> dict[str, Any]:
    """The floors process: its import's time (from its start to the import done) and what it prints."""
    spec = {"row": row, "served": asdict(serve), "tier0": str(tier0), "built": str(built),
            "tiny_models": str(tiny_models) if tiny_models else None}
    code = (f"{FLOOR_IMPORTS}\nprint('imported', flush=True)\n"
            "from tests.harness.bench_gpu_coldstart import floors_main\nfloors_main()")
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as err:
        began = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-c", code, json.dumps(spec)], cwd=ROOT, stdout=subprocess.PIPE,
                                stderr=err, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
        assert proc.stdout is not None
        first = proc.stdout.readline()
        imported = time.perf_counter() - began
        rest, _ = proc.communicate(timeout=600)
    if first != "imported\n" or proc.returncode != 0:
        raise RuntimeError(f"the floors process failed (exit {proc.returncode}):\n"
                           f"{log.read_text(errors='replace')[-3000:]}")
    return {"import_s": imported, **json.loads(rest.strip().splitlines()[-1])}


def node_cache(where: Path, model_bytes: int) -> tuple[Path, str]:
    """An empty node cache directory: beside tier 0 on its disk where a second copy fits, else on /dev/shm."""
    if shutil.disk_usage(where).free > model_bytes + MARGIN_BYTES:
        return where / "node", "local disk"
    shm = Path("/dev/shm")
    if shm.is_dir() and shutil.disk_usage(shm).free > model_bytes + MARGIN_BYTES:
        return Path(tempfile.mkdtemp(prefix="spotgen-node-", dir=shm)), "/dev/shm: no room on the disk for a copy"
    raise RuntimeError(f"no room for a node cache of {model_bytes / 2**30:.1f} GiB on the disk or /dev/shm")


def row(model_id: str, tiny_models: Path | None, work: Path, steps: int) -> dict[str, Any]:
    """One model's row; ``tiny_models``: the tiny stand-in on the CPU. Figures, or ``error`` saying what failed."""
    serve = served(model_id, tiny_models is not None, steps)
    base = work / model_id
    out: dict[str, Any] = {"model": serve.model_id, "family": serve.family, "size": serve.job["width"],
                           "steps": serve.job["steps"]}
    node = None
    try:
        logs = work / "logs"
        f = floors(model_id, serve, base / "tier0", tiny_models, work / "built", logs / f"floors-{model_id}.log")
        node, out["node_cache"] = node_cache(base, f["model_bytes"])
        got = first_image_apart(base / "tier0", node, logs, f"cold-{model_id}", served=serve)
    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
        detail = getattr(exc, "stderr", None) or str(exc)
        return {**out, "error": f"{type(exc).__name__}: {detail[-3000:]}"}
    finally:  # the models are tens of GB on the GPU machine: gone before the next row; the logs stay
        shutil.rmtree(base, ignore_errors=True)
        if node is not None:
            shutil.rmtree(node, ignore_errors=True)
    read_mib_per_s = f["model_bytes"] / 2**20 / f["read_s"]
    floor = {"set_up_s": f["import_s"], "fetch_s": f["read_s"], "load_s": f["read_s"], "first_job_s": f["first_job_s"]}
    out.update(got, model_bytes=f["model_bytes"], model_gib=round(f["model_bytes"] / 2**30, 3), files=f["files"],
               page_cache_dropped=f["page_cache_dropped"], cold_read_mib_per_s=read_mib_per_s, floors=floor,
               floor_total_s=floor_total(floor),
               over_floor={p: got[p] / floor[p] for p in PHASES if finite(got.get(p)) and floor[p] > 0})
    return out


def figures(model_ids: list[str], tiny_models: Path | None, work: Path, steps: int) -> dict[str, Any]:
    """Every row asked for, one at a time (one worker process at a time, each gone before the next starts)."""
    try:
        return {model_id: row(model_id, tiny_models, work, steps) for model_id in model_ids}
    finally:
        shutil.rmtree(work / "built", ignore_errors=True)  # an SD model built for a row not asked for


def problems(rows: dict[str, Any], asked: list[str]) -> list[str]:
    """What makes the cold-start rows worthless: a row missing or failed, its image not one, a phase, total or floor
    missing or not finite, phases that add up to more than the total, or a fetch of other bytes than the model's
    (a node cache that was not empty)."""
    found: list[str] = []
    for name in asked:
        got = rows.get(name)
        if got is None or got.get("error"):
            found.append(f"cold start {name}: " + (got["error"].splitlines()[0] if got else "no figures"))
            continue
        found += list(got.get("image_problems") or [])
        if not got.get("images_checked"):
            found.append(f"cold start {name}: no image checked")
        found += [f"cold start {name}: {key} is {got.get(key)}" for key in (*PHASES, "total_s")
                  if not (finite(got.get(key)) and got[key] >= 0)]
        floor = got.get("floors") or {}
        found += [f"cold start {name}: floor {key} is {floor.get(key)}" for key in PHASES
                  if not (finite(floor.get(key)) and floor[key] > 0)]
        if all(finite(got.get(key)) for key in (*PHASES, "total_s")):
            # the fetch starts during the set-up (``fetch_ahead``): only its part after it adds to the total
            phases = sum(got[key] for key in PHASES) - got.get("fetch_during_set_up_s", 0.0)
            if phases > got["total_s"] + ROUNDING_S:
                found.append(f"cold start {name}: the phases add up to {phases:.3f} s, more than the total "
                             f"{got['total_s']:.3f} s")
        if not got.get("model_bytes") or got.get("fetched_bytes") != got["model_bytes"]:
            found.append(f"cold start {name}: fetched {got.get('fetched_bytes')} bytes of a model of "
                         f"{got.get('model_bytes')}")
    return found


def report(rows: dict[str, Any]) -> list[str]:
    if not rows:
        return []
    lines = ["  cold start: a fresh worker (empty node cache, the model in SPOTGEN_PRELOAD, one job queued) from its "
             "start to its first image, against each phase's floor:"]
    for name, got in rows.items():
        if got.get("error"):
            lines.append(f"    {name}: FAILED {got['error'].splitlines()[0]}")
            continue
        f = got["floors"]
        lines.append(f"    {name} ({got['model']}, {got['model_gib']:.2f} GiB, {got['size']} px, {got['steps']} steps, "
                     f"node cache on {got['node_cache']}): {got['total_s']:.1f} s (floor {got['floor_total_s']:.1f} s)"
                     f" = set up {got['set_up_s']:.1f} s (imports {f['set_up_s']:.1f} s) + fetch {got['fetch_s']:.1f}"
                     f" s ({got.get('fetch_during_set_up_s', 0.0):.1f} s of it during the set-up)"
                     f" + load {got['load_s']:.1f} s (read {f['fetch_s']:.1f} s each, "
                     f"{got['cold_read_mib_per_s']:.0f} MiB/s) + first job {got['first_job_s']:.1f} s "
                     f"(warm {f['first_job_s']:.1f} s)")
    return lines
