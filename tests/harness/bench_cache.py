"""Model cache figures for `make bench` (issue: model cache from EFS). Run alone: `python -m tests.harness.bench_cache`;
the node-cache copy only: `python -m tests.harness.bench_cache --copy [--rounds N]`; the S3 fetch only: `--s3`.

How EFS is simulated: it is not throttled. "Tier 0" is a plain local directory on the same disk; before every
timed cold read its files are fsync'ed and dropped from the page cache with posix_fadvise(DONTNEED) (that
works for clean pages without root), so a cold read reads the disk. A local disk is much faster per stream
than EFS, so these figures show the cache's own costs (a hash of every byte, fsync, a marker) more than what
its parallel readers win on EFS; on EFS the cold read is slower and every ratio to it smaller.

The models are the tiny ones with a larger UNet (``medium-sd``, ~300 MiB on disk) and a ControlNet made from
it, so that loading has real weight to read.

The figures with a goal carry its verdict (``"goals"``: value, goal, ``"met"``): the memory ratio (1.0, within
0.05: the three jobs share one UNet, VAE and text encoder, where a copy would add a third or more) and the
preload (one copy of each model read from tier 0), and (issue 32) a cold fetch with an xxh3_128 manifest
within 1.15x of ``cp -r`` + ``sync`` of the copy's files, measured in the same run; the same fetch with a
sha256 manifest (the kind written before) and without a manifest are beside it, to show what the hash costs and
what the copy alone does.

The S3 row: a cold fetch from the AWS emulator (moto's server on loopback) into the node cache against the same
bytes downloaded file by file with boto3's ``download_file`` (what ``aws s3 cp --recursive`` does with its
defaults, less its parallel files), in the same run. The emulator serves from one Python process, so the ratio
shows the fetch's own costs (the hash, fsync, the marker) and its parallelism, not S3's throughput.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.harness.verdicts import goal  # noqa: E402

MEDIUM, MEDIUM_CN = "medium-sd", "medium-controlnet"
_COPIED = re.compile(r"model (\S+): copied (\d+) bytes to the node cache")


def drop_page_cache(directory: Path) -> None:
    os.sync()
    for path in directory.rglob("*"):
        if path.is_file():
            fd = os.open(path, os.O_RDONLY)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            os.close(fd)


def build_medium_models(models: Path) -> None:
    """``medium-sd``: tiny-sd with a UNet of SD's layout at a few hundred MiB; ``medium-controlnet`` from it."""
    import torch
    from diffusers import ControlNetModel, UNet2DConditionModel

    from runtime.models.tiny import build_tiny_models

    build_tiny_models(models)
    if (models / MEDIUM).is_dir():
        return
    shutil.copytree(models / "tiny-sd", models / MEDIUM)
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(192, 384, 384),
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32, attention_head_dim=8, norm_num_groups=32)
    shutil.rmtree(models / MEDIUM / "unet")
    unet.save_pretrained(models / MEDIUM / "unet", safe_serialization=True)
    ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(16, 32, 96, 256)).save_pretrained(
        models / MEDIUM_CN, safe_serialization=True)
    catalog = json.loads((models / "catalog.json").read_text())
    catalog["models"].update({MEDIUM: {"path": MEDIUM, "kind": "base", "family": "sd1"},
                              MEDIUM_CN: {"path": MEDIUM_CN, "kind": "controlnet", "family": "sd1"}})
    (models / "catalog.json").write_text(json.dumps(catalog))


def copy_figures(rounds: int = 3) -> dict[str, Any]:
    """A tier-1 cold fetch of a ~300 MiB model against a plain `cp -r` (which copies inside the kernel with
    copy_file_range on one file system, as it cannot from NFS), and against `cp -r` + `sync` (the cache
    fsyncs its copy before committing it): with an xxh3_128 manifest (what `spotgen models manifest` writes),
    a sha256 one, and none.

    The goal's `sync` is `sync` given the copy's files and directories (and the directory holding it): an fsync
    of each, what the cache makes durable. A bare `sync` (``cp_sync_all``, shown beside it) also writes every
    other process's dirty pages on every file system, so on a machine with other work writing it measured up
    to 1.4x the fsyncs and flattered the cache; on a quiet one the two were alike (the fsyncs 0.92-0.98x)."""
    from runtime.models.copying import manifest_of, sha256_manifest
    from runtime.models.nodecache import NodeCache

    sizes = {"unet/diffusion_pytorch_model.safetensors": 224 << 20, "text_encoder/model.safetensors": 48 << 20,
             "vae/diffusion_pytorch_model.safetensors": 32 << 20, "model_index.json": 600, "unet/config.json": 1800,
             "vae/config.json": 800, "text_encoder/config.json": 700, "scheduler/scheduler_config.json": 500,
             "tokenizer/vocab.json": 1 << 20, "tokenizer/merges.txt": 512 << 10, "tokenizer/tokenizer_config.json": 900}
    times: dict[str, list[float]] = {"cp": [], "cp_sync": [], "cp_sync_all": [], "cold": [], "cold_sha256": [],
                                     "cold_no_manifest": []}
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "efs" / "sd-like"
        for rel, size in sizes.items():
            (source / rel).parent.mkdir(parents=True, exist_ok=True)
            with open(source / rel, "wb") as f:
                for start in range(0, size, 16 << 20):
                    f.write(os.urandom(min(16 << 20, size - start)))
        manifests = {"cold": manifest_of(source), "cold_sha256": sha256_manifest(source)}
        manifest = manifests["cold"]
        for n in range(rounds):  # alternating, so that drift on a shared machine hits every variant alike
            for name in times:
                drop_page_cache(source)
                target = Path(tmp) / f"{name}-{n}"
                began = time.perf_counter()
                if name.startswith("cp"):
                    subprocess.run(["cp", "-r", str(source), str(target)], check=True)
                    if name == "cp_sync":  # fsync what the copy wrote, as the cache does (sync(1) given files)
                        subprocess.run(["sync", "--", *map(str, sorted(target.rglob("*"))), str(target),
                                        str(target.parent)], check=True)
                    elif name == "cp_sync_all":
                        os.sync()
                    times[name].append(time.perf_counter() - began)
                else:
                    result = NodeCache(target, 1 << 30).fetch("sd", source, manifests.get(name))
                    assert result.copied
                    times[name].append(result.seconds)
                if not (name == "cold" and n == rounds - 1):
                    shutil.rmtree(target)
        node = NodeCache(Path(tmp) / f"cold-{rounds - 1}", 1 << 30)  # the last cold copy: now hits
        hits = [node.fetch("sd", source, manifest).seconds for _ in range(20)]
        verified = node.fetch("sd", source, manifest, verify=True).seconds
    med = {name: statistics.median(values) for name, values in times.items()}
    total = sum(sizes.values())
    return {"source_mib": total / 2**20, "files": len(sizes), "readers": 8, "rounds": rounds,
            "cp_s": med["cp"], "cp_sync_s": med["cp_sync"], "cp_sync_all_s": med["cp_sync_all"],
            "cold_fetch_s": med["cold"],
            "cold_fetch_sha256_s": med["cold_sha256"], "cold_fetch_no_manifest_s": med["cold_no_manifest"],
            "cold_mib_per_s": total / 2**20 / med["cold"], "hit_s": statistics.median(hits), "hit_verify_s": verified,
            "cold_over_cp": med["cold"] / med["cp"], "cold_over_cp_sync": med["cold"] / med["cp_sync"],
            "cold_over_cp_sync_all": med["cold"] / med["cp_sync_all"],
            "cold_sha256_over_cp_sync": med["cold_sha256"] / med["cp_sync"],
            "no_manifest_over_cp_sync": med["cold_no_manifest"] / med["cp_sync"],
            "hit_over_cold": statistics.median(hits) / med["cold"],
            "goals": {"cold_over_cp_sync": goal(med["cold"] / med["cp_sync"], "<=", 1.15)}}


def load_figures(models: Path, rounds: int = 3) -> dict[str, Any]:
    """Time to a loaded ``medium-sd`` pipeline: cold (tier 0 -> tier 1 copy with its manifest, then load),
    tier-1 hit (a new process's store on a node that has the copy; the copy dropped from the page cache, as
    after a while on a busy node) and tier-2 hit (the same store asked again)."""
    from pipelines.common import base_pipeline
    from runtime.models.manifests import write_manifest
    from runtime.models.nodecache import NodeCache
    from runtime.models.store import ModelStore

    catalog = json.loads((models / "catalog.json").read_text())
    catalog["models"][MEDIUM]["manifest"] = f"manifests/{MEDIUM}.json"
    (models / "catalog.json").write_text(json.dumps(catalog))
    write_manifest(ModelStore(models), MEDIUM)
    times: dict[str, list[float]] = {"cold": [], "tier1": [], "tier2": []}
    with tempfile.TemporaryDirectory() as tmp:
        for n in range(rounds):
            node = Path(tmp) / f"node-{n}"
            drop_page_cache(models / MEDIUM)
            store = ModelStore(models, "cpu", NodeCache(node, 1 << 32))
            began = time.perf_counter()
            base_pipeline(store, MEDIUM)
            times["cold"].append(time.perf_counter() - began)
            drop_page_cache(node)
            store = ModelStore(models, "cpu", NodeCache(node, 1 << 32))
            began = time.perf_counter()
            base_pipeline(store, MEDIUM)
            times["tier1"].append(time.perf_counter() - began)
            began = time.perf_counter()
            base_pipeline(store, MEDIUM)
            times["tier2"].append(time.perf_counter() - began)
            assert store.loads == 1 and store.hits == 1
        size = ModelStore(models).size(MEDIUM)
    med = {name: statistics.median(values) for name, values in times.items()}
    return {"model_mib": size / 2**20, "rounds": rounds, "cold_s": med["cold"], "tier1_s": med["tier1"],
            "tier2_s": med["tier2"], "tier1_over_cold": med["tier1"] / med["cold"],
            "tier2_over_cold": med["tier2"] / med["cold"]}


_MEMORY_PROBE = """
import ctypes, gc, json, sys
from pathlib import Path
import psutil
from PIL import Image
from pipelines.common import controlnet_model
from pipelines.controlnet import ControlNet
from pipelines.img2img import Img2Img
from pipelines.txt2img import Txt2Img
from runtime.models.store import ModelStore, object_bytes
from runtime.plugins import RunContext, SetupContext

models, base_id, controlnet_id = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
libc = ctypes.CDLL("libc.so.6")
store = ModelStore(models, "cpu")
image = Image.new("RGB", (64, 64), (120, 60, 30))

def rss():
    gc.collect()
    libc.malloc_trim(0)
    return psutil.Process().memory_info().rss

def run(cls, **inputs):
    pipe = cls()
    pipe.setup(SetupContext(device="cpu", models=store))
    ctx = RunContext(job_id="bench", model=base_id, seed=1, device="cpu", models=store,
                     report=lambda *a: None, fetch_image=lambda ref: image)
    parsed = cls.Inputs.model_validate({"prompt": "a fox", "width": 64, "height": 64, "steps": 2, **inputs},
                                       context={"input_bucket": "in"})
    pipe.run(parsed, ctx)

base = rss()
run(Txt2Img)
txt2img = rss()
# safetensors are memory-mapped: the ControlNet's pages count in RSS only once a job touches them, so its
# weights are counted by their size
controlnet_bytes = object_bytes(controlnet_model(store, controlnet_id))
run(Img2Img, image="s3://in/x.png", strength=0.6)
run(ControlNet, control_image="s3://in/x.png", controlnet=controlnet_id)
together = rss()
print(json.dumps({"rss_base": base, "rss_txt2img": txt2img, "controlnet_bytes": controlnet_bytes,
                  "rss_all_three": together, "loads": store.loads}))
"""


def memory_figures(models: Path) -> dict[str, Any]:
    """Resident memory, in a fresh process, of txt2img + img2img + ControlNet jobs on one base model, against
    a txt2img job plus the ControlNet weights (goal: close to 1.0: the three share one UNet, VAE and text
    encoder): RSS growth from before the first load, against the growth after the txt2img job plus the
    ControlNet's tensor bytes."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", _MEMORY_PROBE, str(models), MEDIUM, MEDIUM_CN], env=env,
                         capture_output=True, text=True, check=True, timeout=600)
    data = json.loads(out.stdout.strip().splitlines()[-1])
    assert data["loads"] == 2, data  # one base pipeline and one ControlNet, whatever the jobs
    grown_alone = data["rss_txt2img"] - data["rss_base"] + data["controlnet_bytes"]
    grown_all = data["rss_all_three"] - data["rss_base"]
    return {**data, "ratio": grown_all / grown_alone, "mib_alone": grown_alone / 2**20,
            "mib_all_three": grown_all / 2**20, "goals": {"ratio": goal(grown_all / grown_alone, "~", 1.0, 0.05)}}


def preload_figures(models: Path, workers: int = 4, timeout: float = 300) -> dict[str, Any]:
    """``workers`` real ``spotgen worker`` processes start at once on one node (one node cache directory)
    with the same preload list; bytes read from tier 0 are the bytes their logs say were copied (loads
    then read tier 1). Goal: one copy of each model. The workers check their queue before they preload, so an
    emulator with an empty queue serves them (``DevStack`` without workers); they are stopped once all have
    preloaded: only start-up is measured."""
    from runtime.config import Settings
    from runtime.local.devstack import EMULATOR_CREDENTIALS, DevStack
    from runtime.models.store import ModelStore

    preload = [MEDIUM, MEDIUM_CN]
    saved = dict(os.environ)  # the stack exports its settings to this process, as to a Lambda's
    with tempfile.TemporaryDirectory() as tmp, DevStack(Settings(models_dir=models), port=0, aws_port=0,
                                                        workers=0) as stack:
        env = {**os.environ, **stack.settings.to_env(), **EMULATOR_CREDENTIALS, "PYTHONPATH": str(ROOT),
               "OMP_NUM_THREADS": "1", "SPOTGEN_NODE_CACHE_DIR": f"{tmp}/node", "SPOTGEN_PRELOAD": ",".join(preload),
               "SPOTGEN_METRICS_PORT": "0", "SPOTGEN_LOG_FORMAT": "text"}
        drop_page_cache(models)
        logs = [Path(tmp) / f"worker-{n}.log" for n in range(workers)]
        began = time.perf_counter()
        procs = [subprocess.Popen([sys.executable, "-m", "runtime.cli", "worker"], env=env, stdout=log.open("wb"),
                                  stderr=subprocess.STDOUT, start_new_session=True) for log in logs]
        try:
            while not all(f"preloaded model {preload[-1]}" in log.read_text(errors="replace") for log in logs):
                if time.perf_counter() - began > timeout or any(p.poll() is not None for p in procs):
                    raise RuntimeError("workers did not preload: " + " | ".join(
                        log.read_text(errors="replace")[-2000:] for log in logs))
                time.sleep(0.2)
            ready_s = time.perf_counter() - began
        finally:
            for p in procs:
                with contextlib.suppress(ProcessLookupError):  # one that failed has exited already
                    os.killpg(p.pid, signal.SIGKILL)
                p.wait()
        copies = [(m, int(n)) for log in logs for m, n in _COPIED.findall(log.read_text(errors="replace"))]
    os.environ.clear()
    os.environ.update(saved)
    tier0 = ModelStore(models)
    model_bytes = sum(tier0.size(m) for m in preload)
    read = sum(n for _, n in copies)
    return {"workers": workers, "models": preload, "model_bytes": model_bytes, "tier0_bytes_read": read,
            "copies": read / model_bytes, "copy_events": len(copies), "all_preloaded_s": ready_s,
            "goals": {"copy_events": goal(len(copies), "==", len(preload))}}  # each model copied once


def s3_figures(rounds: int = 3) -> dict[str, Any]:
    """A tier-1 cold fetch of a ~130 MiB model from the emulator (xxh3_128 manifest) vs ``download_file`` per file."""
    import boto3
    from moto.server import ThreadedMotoServer

    from runtime.models.copying import manifest_of
    from runtime.models.nodecache import NodeCache
    from runtime.models.s3source import S3Tree

    sizes = {"unet/diffusion_pytorch_model.safetensors": 96 << 20, "text_encoder/model.safetensors": 24 << 20,
             "vae/diffusion_pytorch_model.safetensors": 8 << 20, "model_index.json": 600, "unet/config.json": 1800}
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    times: dict[str, list[float]] = {"download_file": [], "s3_cold": []}
    try:
        host, port = server.get_host_and_port()
        s3 = boto3.session.Session().client("s3", region_name="us-east-1", endpoint_url=f"http://{host}:{port}",
                                            aws_access_key_id="bench", aws_secret_access_key="bench")  # noqa: S106
        s3.create_bucket(Bucket="bench-models")
        with tempfile.TemporaryDirectory() as tmp:
            source = Path(tmp) / "source"
            for rel, size in sizes.items():
                (source / rel).parent.mkdir(parents=True, exist_ok=True)
                (source / rel).write_bytes(os.urandom(size))
                s3.upload_file(str(source / rel), "bench-models", f"models/sd/{rel}")
            manifest = manifest_of(source)
            for n in range(rounds):  # alternating, as the copy figures
                target = Path(tmp) / f"plain-{n}"
                began = time.perf_counter()
                for rel in sizes:
                    (target / rel).parent.mkdir(parents=True, exist_ok=True)
                    s3.download_file("bench-models", f"models/sd/{rel}", str(target / rel))
                times["download_file"].append(time.perf_counter() - began)
                result = NodeCache(Path(tmp) / f"node-{n}", 1 << 30).fetch(
                    "sd", S3Tree("s3://bench-models/models/sd", s3), manifest)
                assert result.copied
                times["s3_cold"].append(result.seconds)
                shutil.rmtree(target)
                shutil.rmtree(Path(tmp) / f"node-{n}")
    finally:
        server.stop()
    med = {name: statistics.median(values) for name, values in times.items()}
    return {"source_mib": sum(sizes.values()) / 2**20, "files": len(sizes), "rounds": rounds,
            "download_file_s": med["download_file"], "s3_cold_fetch_s": med["s3_cold"],
            "s3_cold_over_download_file": med["s3_cold"] / med["download_file"]}


def s3_report(c: dict[str, Any]) -> str:
    return (f"node cache from S3 (the emulator on loopback), {c['source_mib']:.0f} MiB in {c['files']} files, median "
            f"of {c['rounds']}: cold fetch {c['s3_cold_fetch_s'] * 1000:.0f} ms (ranged GETs, xxh3_128 as they "
            f"arrive, fsync) vs download_file per file {c['download_file_s'] * 1000:.0f} ms: "
            f"{c['s3_cold_over_download_file']:.2f}x")


def figures() -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        models = Path(tmp) / "models"
        build_medium_models(models)
        return {"copy": copy_figures(), "s3": s3_figures(), "load": load_figures(models),
                "memory": memory_figures(models), "preload": preload_figures(models)}


def copy_report(c: dict[str, Any]) -> str:
    return (f"node cache, {c['source_mib']:.0f} MiB model in {c['files']} files (local disk as EFS, median of "
            f"{c['rounds']}): cold fetch {c['cold_fetch_s'] * 1000:.0f} ms (xxh3_128 + fsync; sha256 manifest "
            f"{c['cold_fetch_sha256_s'] * 1000:.0f} ms = {c['cold_sha256_over_cp_sync']:.2f}x, no manifest "
            f"{c['cold_fetch_no_manifest_s'] * 1000:.0f} ms = {c['no_manifest_over_cp_sync']:.2f}x) vs cp -r "
            f"{c['cp_s'] * 1000:.0f} ms ({c['cold_over_cp']:.2f}x), cp -r + sync {c['cp_sync_s'] * 1000:.0f} ms "
            f"({c['cold_over_cp_sync']:.2f}x, goal <= 1.15; cp -r + sync of every file system "
            f"{c['cp_sync_all_s'] * 1000:.0f} ms, {c['cold_over_cp_sync_all']:.2f}x); hit {c['hit_s'] * 1000:.2f} ms")


def report(cache: dict[str, Any]) -> list[str]:
    c, ld, m, p = cache["copy"], cache["load"], cache["memory"], cache["preload"]
    return [
        copy_report(c),
        *([s3_report(cache["s3"])] if "s3" in cache else []),
        f"model load, {ld['model_mib']:.0f} MiB: cold (tier 0 copy + load) {ld['cold_s'] * 1000:.0f} ms; tier-1 hit "
        f"{ld['tier1_s'] * 1000:.0f} ms ({ld['tier1_over_cold']:.3f} of cold); tier-2 hit "
        f"{ld['tier2_s'] * 1e6:.0f} us ({ld['tier2_over_cold']:.6f} of cold)",
        f"resident memory, txt2img + img2img + ControlNet jobs on one base model: {m['mib_all_three']:.0f} MiB vs "
        f"txt2img + ControlNet weights {m['mib_alone']:.0f} MiB: ratio {m['ratio']:.3f} (goal ~1.0)",
        f"{p['workers']} workers starting at once with the same preload: tier 0 read "
        f"{p['tier0_bytes_read'] / 2**20:.0f} MiB = {p['copies']:.2f} copies of the preload models "
        f"({p['copy_events']} copies for {len(p['models'])} models; goal: one each), all ready in "
        f"{p['all_preloaded_s']:.1f} s",
    ]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--copy", action="store_true", help="the node-cache copy figures only (about 10 s)")
    parser.add_argument("--s3", action="store_true", help="the node cache's fetch from S3 only (the emulator)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of the copy figures (median; default 3)")
    args = parser.parse_args()
    if args.s3:
        fetched = s3_figures(args.rounds)
        print(s3_report(fetched))
        print(json.dumps({"bench": "model_cache_s3", **fetched}, sort_keys=True))
    elif args.copy:
        copied = copy_figures(args.rounds)
        print(copy_report(copied))
        print(json.dumps({"bench": "model_cache_copy", **copied}, sort_keys=True))
    else:
        results = figures()
        print("\n".join(report(results)))
        print(json.dumps({"bench": "model_cache", **results}, sort_keys=True))
