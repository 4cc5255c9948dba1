"""The harnesses' job mix and its references (``make chaos``, ``make faults``).

Both harnesses run the same mix: txt2img (in turn with two ControlNet units, seamless tiling and WebUI's prompt
editing), img2img (in turn with an IP-Adapter), ControlNet, inpainting (a mask, or outpainting) and a job of two
passes (hires fix on SD 1.x; the refiner on SDXL), every sampler with each of its schedules, every fourth of these
on SDXL with a LoRA; every sixth job on the flow-matching families (``FLOW_KINDS``: Flux.1 dev with distilled
guidance and schnell, Flux img2img, Fill inpainting, Flux with a ControlNet unit and a LoRA, SD 3.5 with skip-layer
guidance and img2img); every eighth a ComfyUI graph of two samplers (``comfy_job``); every tenth job making two
images. Both compare every PNG a worker stored, byte for byte, with a reference that the same pipeline code and PNG
encoding made without interruption in a separate process (``reference``, in a pool started with
``_reference_init``).
"""

from __future__ import annotations

import io
import json
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: The kinds of job, in turn: "passes" is txt2img with hires fix (SD 1.x) or with the refiner (SDXL).
KINDS = ("txt2img", "img2img", "controlnet", "inpaint", "passes")
REFINER = "tiny-sdxl-refiner"
#: Every fourth job runs on SDXL with a LoRA (and the SDXL ControlNet), the others on SD 1.x.
MODELS = {"tiny-sd": ("tiny-controlnet", []), "tiny-sdxl": ("tiny-sdxl-controlnet", [{"id": "tiny-lora-sdxl",
                                                                                      "weight": 0.7}])}
IP_ADAPTERS = {"tiny-sd": "tiny-ip-adapter-sd1", "tiny-sdxl": "tiny-ip-adapter-sdxl"}
#: The last prompt is edited mid-run and alternates every step (WebUI's prompt scheduling).
PROMPTS = ("a red fox in the snow", "a lighthouse at dusk", "the fox of the forest", "a bowl of red fruit",
           "a [red fox:snow cat:0.5] in the [forest|city]")
#: Every ``FLOW_EVERY``-th job is on Flux.1 or SD 3.5: ``FLOW_KINDS`` in turn (``flow_job``). Those families run
#: flow-matching samplers of their own, sizes in multiples of 16, and no prompt editing.
FLOW_EVERY = 6
FLOW_KINDS = ("flux-dev", "flux-schnell", "flux-img2img", "flux-fill", "flux-controlnet-lora", "sd3-slg",
              "sd3-img2img")
#: Every ``COMFY_EVERY``-th job, from the third, is a ComfyUI graph (``comfy_job``: ComfyUI's hires-fix workflow,
#: two samplers); even-numbered, so never one the flow jobs (odd-numbered) would have been.
COMFY_EVERY = 8
#: Flux LoRAs in the three formats people share (diffusers, kohya, XLabs): two of them in turn.
FLUX_LORAS = ("tiny-lora-flux", "tiny-lora-flux-kohya", "tiny-lora-flux-xlabs")
#: Flux schnell is timestep-distilled: it runs a few steps, whatever the mix's step count.
SCHNELL_STEPS = 8
#: torch threads of every process that computes images: float results differ between thread counts.
THREADS = 1


@dataclass
class Job:
    id: str
    request: dict[str, Any]  # the body of POST /v1/jobs
    inputs: dict[str, Any]  # normalized exactly as the submit Lambda does (what the worker runs)
    steps: int  # denoising steps it runs (img2img runs steps x strength)


def input_images(size: int) -> dict[str, bytes]:
    """A photo and its edge map, of another size than the outputs so that resizing runs too."""
    from PIL import Image, ImageDraw, ImageFilter

    photo = Image.new("RGB", (size * 5 // 4, size), (30, 60, 90))
    draw = ImageDraw.Draw(photo)
    draw.ellipse((size // 4, size // 5, size, size * 4 // 5), fill=(220, 90, 30))
    draw.rectangle((0, size * 3 // 4, size * 5 // 4, size), fill=(240, 240, 250))
    edges = photo.convert("L").filter(ImageFilter.FIND_EDGES).convert("RGB")
    mask = Image.new("L", photo.size)
    ImageDraw.Draw(mask).ellipse((size // 3, size // 4, size, size * 3 // 4), fill=255)
    out = {"chaos/photo.png": io.BytesIO(), "chaos/edges.png": io.BytesIO(), "chaos/mask.png": io.BytesIO()}
    photo.save(out["chaos/photo.png"], format="PNG")
    edges.save(out["chaos/edges.png"], format="PNG")
    mask.save(out["chaos/mask.png"], format="PNG")
    return {key: buf.getvalue() for key, buf in out.items()}


def make_jobs(n: int, size: int, steps: int, seed: int, bucket: str) -> list[Job]:
    """Every ``FLOW_EVERY``-th job is a flow job (``flow_job``); the others (``sd_job``) count apart, so that their
    kinds cycle mod 5 and samplers mod 13 as before and every pair occurs within 65 of them."""
    from runtime.contract import validate_inputs

    rng = random.Random(seed)
    jobs, sd = [], 0
    for i in range(n):
        common = {"prompt": PROMPTS[i % len(PROMPTS)], "width": size, "height": size, "steps": steps,
                  "seed": rng.randrange(2**32), "num_images": 2 if i % 10 == 9 else 1}
        if i % COMFY_EVERY == 2:
            pipeline, model, raw, runs = comfy_job(i // COMFY_EVERY, common)
        elif i % FLOW_EVERY == FLOW_EVERY - 1:
            pipeline, model, raw, runs = flow_job(i // FLOW_EVERY, common, bucket)
        else:
            pipeline, model, raw, runs = sd_job(sd, common, bucket)
            sd += 1
        inputs = validate_inputs(pipeline, raw, input_bucket=bucket).model_dump(mode="json")  # type: ignore[union-attr]
        jobs.append(Job(f"chaos-{i:04d}", {"id": f"chaos-{i:04d}", "pipeline": pipeline,
                        "model": model, "inputs": raw}, json.loads(json.dumps(inputs)), runs))
    return jobs


def sd_job(k: int, common: dict[str, Any], bucket: str) -> tuple[str, str, dict[str, Any], int]:
    """SD 1.x and SDXL job ``k``: its pipeline, model, raw inputs and the denoising steps it runs. Kinds cycle mod
    5 and samplers mod 13; each sampler cycles through the schedules it takes; every 4th job is SDXL with a LoRA;
    inpainting jobs take turns at a mask, outpainting (``extend``) and the other fill modes."""
    from runtime.contract import SAMPLER_SCHEDULES, SCHEDULERS
    from runtime.contract.edits import FILL_MODES
    from runtime.contract.inputs import LATENT_UPSCALERS, LCM_MAX_STEPS

    kind, strength, steps = KINDS[k % len(KINDS)], 0.8, common["steps"]
    pipeline = "txt2img" if kind == "passes" else kind
    model = "tiny-sdxl" if k % 4 == 3 else "tiny-sd"
    controlnet, loras = MODELS[model]
    sampler = SCHEDULERS[k % len(SCHEDULERS)]
    schedules = SAMPLER_SCHEDULES[sampler]
    scaled = kind in ("img2img", "inpaint")
    limit = int(LCM_MAX_STEPS * (strength if scaled else 1)) if sampler == "lcm" else steps
    n_steps = min(steps, limit)  # LCM runs at most the steps it was distilled on
    raw: dict[str, Any] = {**common, "steps": n_steps, "scheduler": sampler,
                           "schedule": schedules[(k // len(SCHEDULERS)) % len(schedules)], "loras": loras}
    runs = int(n_steps * strength) if scaled else n_steps
    turn = k // len(KINDS)
    if kind == "img2img":
        raw |= {"image": f"s3://{bucket}/chaos/photo.png", "strength": strength}
        if turn % 2:  # an IP-Adapter, its image the edge map
            raw |= {"ip_adapters": [{"id": IP_ADAPTERS[model], "image": f"s3://{bucket}/chaos/edges.png",
                                     "scale": 0.7}]}
    if kind == "txt2img" and turn % 2:  # two ControlNet units: a ready map, and Canny edges of the photo
        raw |= {"controlnets": [{"id": controlnet, "image": f"s3://{bucket}/chaos/edges.png"},
                                {"id": controlnet, "image": f"s3://{bucket}/chaos/photo.png", "scale": 0.6,
                                 "preprocessor": "canny", "start": 0.2, "end": 0.8}]}
    if kind == "txt2img" and turn % 3 == 2:
        raw |= {"tiling": True}
    if kind == "controlnet":
        raw |= {"control_image": f"s3://{bucket}/chaos/edges.png", "controlnet": controlnet}
    if kind == "inpaint":
        raw |= {"image": f"s3://{bucket}/chaos/photo.png", "strength": strength,
                "fill": FILL_MODES[turn % len(FILL_MODES)], "only_masked": turn % 3 == 1}
        raw |= {"extend": {"right": 16}} if turn % 2 else {"mask": f"s3://{bucket}/chaos/mask.png"}
    if kind == "passes" and model == "tiny-sdxl":
        raw |= {"refiner": REFINER, "switch_at": 0.5}  # the base runs int(steps x 0.5), the refiner the rest
    elif kind == "passes":
        upscaler = LATENT_UPSCALERS[(k // len(KINDS)) % len(LATENT_UPSCALERS)]
        raw |= {"hires": {"scale": 1.5, "upscaler": upscaler, "denoising_strength": 0.6}}
        runs += int(n_steps * 0.6)
    return pipeline, model, raw, runs


def flow_job(turn: int, common: dict[str, Any], bucket: str) -> tuple[str, str, dict[str, Any], int]:
    """Flux.1 or SD 3.5 job ``turn`` (``FLOW_KINDS`` in turn): its pipeline, model, raw inputs and the denoising
    steps it runs. The (sampler, schedule) pairs its family takes for the job's task cycle (the multistep solvers
    run plain txt2img only there); prompts are plain (the mix's last one edits itself, which these families
    refuse)."""
    from runtime.contract.families import family_rules

    kind, again, steps = FLOW_KINDS[turn % len(FLOW_KINDS)], turn // len(FLOW_KINDS), common["steps"]
    photo, edges, mask = (f"s3://{bucket}/chaos/{name}.png" for name in ("photo", "edges", "mask"))
    # the flow pipelines start at step int(steps - steps x strength), not at steps - int(steps x strength) as SD's
    scaled, runs = {"image": photo, "strength": 0.8}, steps - int(steps - steps * 0.8)
    pipeline, model, extra = "txt2img", "tiny-flux", {}
    if kind == "flux-dev":
        extra, runs = {"guidance": 2.5 + again % 3}, steps
    elif kind == "flux-schnell":
        model, runs = "tiny-flux-schnell", min(steps, SCHNELL_STEPS)
        extra = {"steps": runs}
    elif kind == "flux-img2img":
        pipeline, extra = "img2img", scaled | {"guidance": 3.5, "shift": 2.0}
    elif kind == "flux-fill":  # a mask, or outpainting; Fill takes the fills of the image, not SD's latent fills
        pipeline, model = "inpaint", "tiny-flux-fill"
        extra = scaled | ({"fill": "original", "mask": mask} if again % 2 == 0 else
                          {"fill": "fill", "extend": {"right": 16}})
    elif kind == "flux-controlnet-lora":
        runs = steps
        extra = {"controlnets": [{"id": "tiny-flux-controlnet", "image": edges, "scale": 0.8}],
                 "loras": [{"id": FLUX_LORAS[again % len(FLUX_LORAS)], "weight": 0.7},  # two formats at once
                           {"id": FLUX_LORAS[(again + 1) % len(FLUX_LORAS)], "weight": 0.4}]}
    elif kind == "sd3-slg":
        model, runs = "tiny-sd3", steps
        extra = {"skip_layer_guidance": {"layers": [7, 8, 9], "start": 0.0, "stop": 0.5}}
    else:
        pipeline, model, extra = "img2img", "tiny-sd3", scaled | {"guidance_scale": 5.0}
    rules = family_rules("sd3" if model.startswith("tiny-sd3") else "flux")
    plain = pipeline == "txt2img" and "controlnets" not in extra  # others refuse the txt2img-only samplers
    pairs = [(sampler, schedule) for sampler, schedules in (rules.samplers or {}).items() for schedule in schedules
             if plain or sampler not in rules.txt2img_samplers]
    sampler, schedule = pairs[turn % len(pairs)]
    raw = {**common, "prompt": PROMPTS[turn % (len(PROMPTS) - 1)], "scheduler": sampler, "schedule": schedule}
    return pipeline, model, raw | extra, runs


def comfy_job(turn: int, common: dict[str, Any]) -> tuple[str, str, dict[str, Any], int]:
    """Graph job ``turn``: ComfyUI's hires-fix workflow as ComfyUI exports it (tests/comfy/workflows), on tiny-sd at
    the mix's size and steps: a sampler from noise, the latent upscaled 1.5x, a second at denoise 0.5 (``steps``
    steps of a schedule of twice as many, ComfyUI's denoise), each image saved. The graph's seeds are its own."""
    graph = json.loads((Path(__file__).parents[1] / "comfy/workflows/hires_two_samplers.json").read_text())
    graph["16"]["inputs"]["ckpt_name"] = "tiny-sd"
    graph["6"]["inputs"]["text"] = PROMPTS[turn % (len(PROMPTS) - 1)]
    graph["5"]["inputs"].update(width=common["width"], height=common["height"], batch_size=common["num_images"])
    graph["3"]["inputs"].update(seed=common["seed"], steps=common["steps"], sampler_name="euler_ancestral")
    graph["11"]["inputs"].update(seed=common["seed"] + 1, steps=common["steps"], sampler_name="dpmpp_2m",
                                 scheduler="karras" if turn % 2 else "normal")
    return "comfyui", "tiny-sd", {"graph": graph}, 2 * common["steps"]


_REF: dict[str, Any] = {}


def _reference_init(models_dir: str, bucket: str, images: dict[str, bytes], log: str) -> None:
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND)  # library chatter goes to reference.log
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    import torch

    from runtime.models.store import ModelStore
    from runtime.plugins import Registry

    torch.set_num_threads(THREADS)
    _REF.update(store=ModelStore(Path(models_dir), "cpu"), registry=Registry.default(), bucket=bucket,
                images={f"s3://{bucket}/{key}": data for key, data in images.items()}, pipelines={})


def reference(job_id: str, pipeline: str, inputs: dict[str, Any], model: str, seed: int) -> list[bytes]:
    """The job's PNGs as an uninterrupted worker makes them (runs in the reference process): the worker's
    pipeline class, RunContext and ``encode_png`` with the parameters ``JobRunner.store_outputs`` writes.
    ``seed``: the job's, as the API answered it (a graph's inputs hold none; the API chose it)."""
    from runtime.plugins import RunContext, SetupContext
    from runtime.worker.images import decode_image, encode_png

    store, pipelines = _REF["store"], _REF["pipelines"]
    if pipeline not in pipelines:
        pipelines[pipeline] = _REF["registry"].get(pipeline)()
        pipelines[pipeline].setup(SetupContext(device="cpu", models=store))
    runner = pipelines[pipeline]
    parsed = type(runner).Inputs.model_validate(inputs, context={"input_bucket": _REF["bucket"]})
    ctx = RunContext(job_id=job_id, model=model, seed=seed, device="cpu", models=store,
                     report=lambda step, total, state: None,
                     fetch_image=lambda uri: decode_image(_REF["images"][uri]))
    params = {"pipeline": pipeline, "model": model, "seed": seed, **inputs}
    return [encode_png(image, {**params, "index": i}) for i, image in enumerate(runner.run(parsed, ctx))]
