"""`make bench-gpu`: images per second on a GPU, plain diffusers against the spotgen worker end to end.

Models: SD 1.5 and SDXL at full size with random weights (the real architectures at their native 512 and
1024 px run at the speed of real weights), built on the device in float16 and saved in diffusers format; the
catalog gives them ``dtype: float16``. For each model, in one run:

1. **Plain diffusers**: ``from_pretrained(torch_dtype=float16)`` on the device, SDPA attention (diffusers'
   default), the Euler sampler the worker defaults to; images/s over a loop after one warm-up image.
2. **spotgen end to end**, one worker per setting (default, channels-last, ``SPOTGEN_COMPILE``): a backlog of
   jobs through the embedded stack's API, SNS, SQS, worker and S3; images/s from the first submit to the last
   notification, and the device's idle share of that time from the worker's spans (no model phase running).
3. **Compile warm-up**: the first job of the compiling worker against the first job of the default one; then
   a second worker with the same node-local cache directory (a second pod of the node) and its first job.

Then the Flux.1 (schnell, dev, dev in fp8) and SD 3.5 medium workloads of ``tests.harness.bench_gpu_flow`` (its
``WORKLOADS`` table): peak GPU memory and images/s of the worker's txt2img path against plain diffusers, in this
process.

Then the cold-start rows of ``tests.harness.bench_gpu_coldstart`` (``--cold-start``, SD 1.5, SDXL and Flux.1 dev by
default): a fresh worker's start to its first image, split into set up, fetch, load and first job, each against its
floor; ``--models none --cold-start flux-dev`` runs one alone (a device call of its own).

``--tiny`` runs the same on the tiny models and this CPU (float32): it checks that the script runs and prints
its JSON, and says nothing about speed. The last line printed is one JSON object with every figure.

``"ok"`` says the figures can be read: every image made (plain diffusers' and each worker's, fetched from S3)
decodes, has the size asked for and is not one flat colour (float16 overflow gives NaN latents, which decode
to black, and a fast pipeline that makes black images measures nothing), and every figure asked for is there
and finite (``tests.harness.verdicts.gpu_problems``); otherwise ``problems`` says what was wrong and the exit
status is 1. The goals (``ratio_to_plain`` >= 1.3, ``device_idle_share`` < 2%) have their verdicts beside
them (``"goals"``: value, goal, ``"met"``); a goal missed is a finding, not a failure.

    python -m tests.harness.bench_gpu [--tiny] [--images N] [--steps N] [--models sd15,sdxl,flux-dev,...|none]
        [--cold-start sd15,sdxl,flux-dev|none] [--log-dir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.harness import bench_gpu_coldstart, bench_gpu_flow  # noqa: E402
from tests.harness.bench_requests import MODEL_PHASES  # noqa: E402
from tests.harness.verdicts import goal, gpu_problems, image_problems  # noqa: E402
from tests.rest import call, wait_for  # noqa: E402

#: Settings compared end to end: the worker's environment for each.
SETTINGS: dict[str, dict[str, str]] = {"default": {}, "channels_last": {"SPOTGEN_CHANNELS_LAST": "true"},
                                       "compile": {"SPOTGEN_COMPILE": "default"}}
#: The workers' long poll, short: see ``Bench.run``.
POLL_WAIT_S = 2
#: model id -> (family, native size, tiny model that stands in for it with --tiny)
MODELS = {"sd15": ("sd1", 512, "tiny-sd"), "sdxl": ("sdxl", 1024, "tiny-sdxl")}


def build_full_size(root: Path, device: str) -> None:
    """SD 1.5 and SDXL with random weights, in float16, in diffusers format, and a catalog naming them."""
    import torch
    from diffusers import (
        AutoencoderKL,
        EulerDiscreteScheduler,
        StableDiffusionPipeline,
        StableDiffusionXLPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from runtime.models.tiny import _tokenizer  # a local CLIP BPE tokenizer: the vocabulary size costs nothing
    from runtime.models.tinynets import _SCHEDULER

    def text(tokenizer: Any, hidden: int, layers: int, heads: int, projection: int | None = None) -> Any:
        config = CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=4 * hidden,
                                num_hidden_layers=layers, num_attention_heads=heads, max_position_embeddings=77,
                                hidden_act="quick_gelu" if projection is None else "gelu",
                                projection_dim=projection or hidden)
        return (CLIPTextModelWithProjection if projection else CLIPTextModel)(config)

    def vae(size: int, scale: float) -> Any:
        return AutoencoderKL(block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
                             up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=2, latent_channels=4,
                             sample_size=size, scaling_factor=scale)

    scheduler = EulerDiscreteScheduler(**_SCHEDULER)
    with torch.device(device):
        torch.manual_seed(0)
        tok = _tokenizer()
        sd = StableDiffusionPipeline(
            unet=UNet2DConditionModel(sample_size=64, layers_per_block=2, block_out_channels=(320, 640, 1280, 1280),
                                      down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                                      up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
                                      cross_attention_dim=768, attention_head_dim=8),
            vae=vae(512, 0.18215), text_encoder=text(tok, 768, 12, 12), tokenizer=tok, scheduler=scheduler,
            safety_checker=None, feature_extractor=None, requires_safety_checker=False)
        tok2 = _tokenizer(pad_token="!")
        sdxl = StableDiffusionXLPipeline(
            unet=UNet2DConditionModel(sample_size=128, layers_per_block=2, block_out_channels=(320, 640, 1280),
                                      down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                                      up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
                                      transformer_layers_per_block=(1, 2, 10), attention_head_dim=(5, 10, 20),
                                      cross_attention_dim=2048, use_linear_projection=True,
                                      addition_embed_type="text_time", addition_time_embed_dim=256,
                                      projection_class_embeddings_input_dim=2816),
            vae=vae(1024, 0.13025), text_encoder=text(tok, 768, 12, 12), tokenizer=tok,
            text_encoder_2=text(tok2, 1280, 32, 20, projection=1280), tokenizer_2=tok2, scheduler=scheduler)
    catalog = {}
    for model_id, pipe in (("sd15", sd), ("sdxl", sdxl)):
        pipe.to(torch.float16).save_pretrained(root / model_id, safe_serialization=True)
        catalog[model_id] = {"path": model_id, "family": MODELS[model_id][0], "dtype": "float16"}
    (root / "catalog.json").write_text(json.dumps({"models": catalog}, indent=2))


def plain_images_per_s(models: Path, model_id: str, device: str, size: int, steps: int, images: int,
                       problems: list[str] | None = None) -> float:
    """Plain diffusers: the pipeline loaded the usual way, one image per call, after a warm-up image. What is
    wrong with the images goes to ``problems``, checked after the timed loop."""
    import torch
    from diffusers import DiffusionPipeline, EulerDiscreteScheduler

    dtype = torch.float16 if device.startswith("cuda") else torch.float32
    pipe = DiffusionPipeline.from_pretrained(models / model_id, torch_dtype=dtype).to(device)
    pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)

    def one(seed: int) -> Any:
        return pipe("a red fox in the snow", height=size, width=size, num_inference_steps=steps,
                    generator=torch.Generator(device).manual_seed(seed)).images[0]

    made = [one(0)]
    sync(device)
    started = time.perf_counter()
    made += [one(seed) for seed in range(1, images + 1)]
    sync(device)
    seconds = time.perf_counter() - started
    if problems is not None:
        problems += [f"plain {model_id}, image {n}: {p}" for n, image in enumerate(made)
                     for p in image_problems(image, size)]
    return images / seconds


def sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def idle_share(spans: list[Any], traces: list[str]) -> float:
    """The part of the backlog's time (first model phase to last) in which no model phase ran."""
    phases = sorted((s.start_ns, s.end_ns) for s in spans if s.trace_id in traces and s.name in MODEL_PHASES)
    if not phases:
        return float("nan")
    busy, reach = 0, phases[0][0]
    for start, end in phases:
        start = max(start, reach)
        if end > start:
            busy, reach = busy + end - start, end
    return 1 - busy / (reach - phases[0][0])


class Bench:
    """One embedded stack; workers are started one at a time, each with its settings."""

    def __init__(self, models: Path, device: str, log_dir: Path) -> None:
        from runtime.config import Settings
        from runtime.local.devstack import DevStack
        from runtime.local.spanreceiver import SpanReceiver
        from runtime.storage import aws

        self.device, self.log_dir, self.node = device, log_dir, log_dir / "node-cache"
        self.receiver = SpanReceiver().start()
        settings = Settings.from_env().model_copy(update={"models_dir": models})
        self.stack = DevStack(settings, port=0, aws_port=0, workers=0, log_dir=log_dir).start()
        self.results = (aws.client("sqs", self.stack.settings), self.stack.resources.results_queue_url)
        self.s3 = aws.client("s3", self.stack.settings)
        self.problems: list[str] = []  # what is wrong with the images the workers made
        self.checked = 0  # images checked, the workers' and plain diffusers'

    def close(self) -> None:
        self.stack.stop()
        self.receiver.stop()

    def worker(self, name: str, model_id: str, env: dict[str, str]) -> subprocess.Popen[bytes]:
        from runtime.local.devstack import EMULATOR_CREDENTIALS

        full = {**os.environ, "PYTHONPATH": str(ROOT), **self.stack.settings.to_env(), **EMULATOR_CREDENTIALS,
                "SPOTGEN_DEVICE": self.device, "SPOTGEN_PRELOAD": model_id, "SPOTGEN_METRICS_PORT": "0",
                "SPOTGEN_POLL_WAIT_S": str(POLL_WAIT_S), "SPOTGEN_NODE_CACHE_DIR": str(self.node),
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": self.receiver.endpoint, "OTEL_BSP_SCHEDULE_DELAY": "100", **env}
        with open(self.log_dir / f"worker-{name}.log", "ab") as out:
            return subprocess.Popen([sys.executable, "-m", "runtime.cli", "worker"], env=full, stdout=out,
                                    stderr=subprocess.STDOUT, start_new_session=True)

    def jobs(self, model_id: str, size: int, steps: int, seeds: range) -> tuple[float, list[str]]:
        """Submit at once; seconds from the first submit to the last notification, and the jobs' trace ids."""
        from tests.harness.benchmark import notifications_until

        started, ids = time.time(), []
        for seed in seeds:
            status, body = call("POST", f"{self.stack.api_url}/v1/jobs", {"pipeline": "txt2img", "model": model_id,
                                "inputs": {"prompt": "a red fox in the snow", "width": size, "height": size,
                                           "steps": steps, "seed": seed}})
            assert status == 202, body
            ids.append(body["id"])
        ended = notifications_until(self.results, set(ids), 3600)
        docs = [wait_for(self.stack.api_url, job_id, timeout=60) for job_id in ids]
        assert all(d["state"] == "succeeded" for d in docs), [d.get("error") for d in docs]
        for doc in docs:  # after the clock stopped: what the worker stored, as a client would download it
            if not doc["outputs"]:
                self.problems.append(f"job {doc['id']}: no output")
            for link in doc["outputs"]:
                png = self.s3.get_object(Bucket=self.stack.settings.output_bucket, Key=link["key"])["Body"].read()
                self.problems += [f"{model_id}, {link['key']}: {p}" for p in image_problems(png, size)]
                self.checked += 1
        return ended - started, [d["trace_id"] for d in docs]

    def run(self, name: str, model_id: str, env: dict[str, str], size: int, steps: int, images: int,
            backlog: bool = True) -> dict[str, float]:
        proc = self.worker(name, model_id, env)
        log = self.log_dir / f"worker-{name}.log"
        while proc.poll() is None and " ready." not in log.read_text(errors="replace"):  # after its preload
            time.sleep(0.2)
        if proc.poll() is not None:
            raise SystemExit(f"worker {name} could not start:\n{log.read_text(errors='replace')[-3000:]}")
        try:
            first, _ = self.jobs(model_id, size, steps, range(1))  # the model is loaded: what is left is compiling
            out = {"first_job_s": round(first, 3)}
            if backlog:
                seconds, traces = self.jobs(model_id, size, steps, range(1, images + 1))
                spans = self.receiver.wait(lambda got: sum(s.name == "spotgen.decode" and s.trace_id in traces
                                                           for s in got) >= images, 30)
                out.update(images_per_s=round(images / seconds, 4),
                           device_idle_share=round(idle_share(spans, traces), 4))
            return out
        finally:
            proc.terminate()
            proc.wait(120)
            # A long poll the stopped worker left open would still take a message (as SQS does), which would then
            # wait for its visibility timeout: the next worker's jobs go in once it has ended.
            time.sleep(POLL_WAIT_S + 1)


def figures(tiny: bool, images: int, steps: int, model_ids: list[str], log_dir: Path,
            settings: list[str] | None = None, cold_start: list[str] | None = None) -> dict[str, Any]:
    import torch

    from runtime.models.tiny import build_tiny_models

    settings = settings or list(SETTINGS)
    if "compile" in settings and "default" not in settings:
        settings.insert(0, "default")  # the compile warm-up is against the default setting's first job
    if not tiny and not torch.cuda.is_available():
        print("no CUDA device here: the tiny models on the CPU instead (no GPU figure)", file=sys.stderr)
        tiny = True
    device = "cpu" if tiny else "cuda"
    models = log_dir / "models"
    sd_ids = [model_id for model_id in model_ids if model_id not in bench_gpu_flow.WORKLOADS]
    if tiny:
        build_tiny_models(models)
    elif sd_ids:
        build_full_size(models, device)
    out: dict[str, Any] = {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu", "tiny": tiny,
                           "images": images, "steps": steps, "settings": settings, "models": {}}
    plain_problems: list[str] = []
    bench = Bench(models, device, log_dir)
    try:
        for model_id in sd_ids:
            family, size, tiny_id = MODELS[model_id]
            served, size = (tiny_id, 64) if tiny else (model_id, size)
            row: dict[str, Any] = {"model": served, "family": family, "size": size,
                                   "plain_images_per_s": round(plain_images_per_s(models, served, device, size, steps,
                                                                                  images, plain_problems), 4)}
            for setting in settings:
                row[setting] = got = bench.run(f"{model_id}-{setting}", served, SETTINGS[setting], size, steps, images)
                got["ratio_to_plain"] = round(got["images_per_s"] / row["plain_images_per_s"], 3)
                got["goals"] = {"ratio_to_plain": goal(got["ratio_to_plain"], ">=", 1.3),
                                "device_idle_share": goal(got["device_idle_share"], "<", 0.02)}
            if "compile" in settings:  # a second pod of the node: the compiled code is in the node's cache
                second = bench.run(f"{model_id}-second-pod", served, SETTINGS["compile"], size, steps, images, False)
                row["compile_warmup_s"] = round(row["compile"]["first_job_s"] - row["default"]["first_job_s"], 3)
                row["second_pod_first_job_s"] = second["first_job_s"]
            out["models"][model_id] = row
    finally:
        bench.close()
    out["image_problems"] = plain_problems + bench.problems
    out["images_checked"] = bench.checked + len(sd_ids) * (images + 1)  # plain's: each model's, warm-up too
    # Flux.1 and SD 3.5 (bench_gpu_flow): both sides in this process, each row's model built and freed in turn
    out["flow"] = {name: bench_gpu_flow.run(name, models if tiny else None, log_dir / "flow", images, device)
                   for name in model_ids if name in bench_gpu_flow.WORKLOADS}
    out["images_checked"] += sum(row["images_checked"] for row in out["flow"].values())
    # Process start to first image (bench_gpu_coldstart): each model in processes of their own, one at a time
    out["coldstart"] = bench_gpu_coldstart.figures(cold_start or [], models if tiny else None, log_dir / "coldstart",
                                                   steps)
    out["images_checked"] += sum(row.get("images_checked", 0) for row in out["coldstart"].values())
    return out


def report(found: dict[str, Any]) -> list[str]:
    note = " (tiny models: checks the script, not speed)" if found["tiny"] else ""
    lines = [f"GPU benchmark on {found['device']}{note}, {found['images']} images of {found['steps']} steps each:"]
    for model_id, row in found["models"].items():
        lines.append(f"  {model_id} ({row['model']}, {row['size']} px): plain diffusers "
                     f"{row['plain_images_per_s']:.3f} img/s")
        for setting in (name for name in SETTINGS if name in row):
            got = row[setting]
            lines.append(f"    spotgen {setting:<14} {got['images_per_s']:.3f} img/s = {got['ratio_to_plain']:.2f}x "
                         f"plain (goal >= 1.3), device idle {got['device_idle_share'] * 100:.1f}% (goal < 2%), "
                         f"first job {got['first_job_s']:.1f} s")
        if "compile_warmup_s" in row:
            lines.append(f"    compile warm-up {row['compile_warmup_s']:.1f} s; a second pod's first job "
                         f"{row['second_pod_first_job_s']:.1f} s")
    if found["flow"]:
        lines.append("  Flux.1 and SD 3.5, spotgen's txt2img path in this process against plain diffusers on the same "
                     "modules:")
    return lines + bench_gpu_flow.report(found["flow"]) + bench_gpu_coldstart.report(found["coldstart"])


def run_problems(found: dict[str, Any], asked: list[str], cold_start: list[str]) -> list[str]:
    """What makes the run's figures worthless (``"ok"`` is that this is empty): every part's checks."""
    problems = gpu_problems(found, [m for m in asked if m not in bench_gpu_flow.WORKLOADS], found["settings"])
    problems += bench_gpu_flow.problems(found["flow"], [m for m in asked if m in bench_gpu_flow.WORKLOADS],
                                        not found["tiny"])
    return problems + bench_gpu_coldstart.problems(found["coldstart"], cold_start)


def listed(option: str) -> list[str]:
    """A comma-separated option's names; "none" (or nothing) is none."""
    return [name for name in option.split(",") if name and name != "none"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="the tiny models on the CPU (checks the script only)")
    parser.add_argument("--images", type=int, default=10)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--models", default=",".join(["sd15", "sdxl", *bench_gpu_flow.WORKLOADS]),
                        help=f"of sd15, sdxl, {', '.join(bench_gpu_flow.WORKLOADS)}; none: the cold-start rows alone")
    parser.add_argument("--cold-start", default=",".join(bench_gpu_coldstart.MODELS),
                        help="the cold-start rows, of the models above; none: skip them")
    parser.add_argument("--settings", default=",".join(SETTINGS), help=f"of {', '.join(SETTINGS)}")
    parser.add_argument("--log-dir", type=Path, default=None)
    args = parser.parse_args()
    if bench_gpu_coldstart.unknown(listed(args.cold_start)):
        parser.error(f"--cold-start: no such model {', '.join(bench_gpu_coldstart.unknown(listed(args.cold_start)))}")
    with tempfile.TemporaryDirectory() as tmp:
        log_dir = args.log_dir or Path(tmp)
        log_dir.mkdir(parents=True, exist_ok=True)
        found = figures(args.tiny, args.images, args.steps, listed(args.models), log_dir, args.settings.split(","),
                        listed(args.cold_start))
    print("\n".join(report(found)))
    problems = run_problems(found, listed(args.models), listed(args.cold_start))
    for problem in problems:
        print(f"FAIL {problem}")
    print(json.dumps({"bench": "gpu", "ok": not problems, "problems": problems, **found}, sort_keys=True))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
