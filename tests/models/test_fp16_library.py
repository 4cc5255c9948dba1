"""A model laid out as docs/deploy.md downloads it loads in the worker (issue 34, item 10).

The page fetches SD 1.5's fp16 weights only (``*.fp16.safetensors``, diffusers' variant naming) and no safety
checker, then renames the weights to the plain names, since the loader asks for no variant. Here the tiny model is
saved the way the Hub holds the fp16 variant, the page's own rename line runs over it, and the model_index still
names the safety checker whose folder is missing, as on the Hub: the worker's loader must load it as it is.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import torch
from diffusers import StableDiffusionPipeline

from pipelines.loading import base_pipeline
from runtime.models.store import ModelStore
from tests.harness.infra_docs import DEPLOY_DOC


def test_the_pages_fp16_download_loads_without_a_variant(tiny_models: Path, tmp_path: Path) -> None:
    (rename,) = [line for line in DEPLOY_DOC.read_text().splitlines()
                 if line.startswith("for f in library/") and ".fp16.safetensors" in line]
    model_dir = Path(rename.split()[3]).parent.parent  # library/<model>/*/*.fp16.safetensors
    pipe = StableDiffusionPipeline.from_pretrained(tiny_models / "tiny-sd", use_safetensors=True,
                                                   safety_checker=None, requires_safety_checker=False)
    pipe.to(torch.float16).save_pretrained(tmp_path / model_dir, variant="fp16", safe_serialization=True)
    index = tmp_path / model_dir / "model_index.json"
    index.write_text(json.dumps({**json.loads(index.read_text()),
                                 "safety_checker": ["stable_diffusion", "StableDiffusionSafetyChecker"]}))
    subprocess.run(["bash", "-euc", rename], cwd=tmp_path, check=True, timeout=30)
    assert not list((tmp_path / model_dir).rglob("*.fp16.safetensors"))
    (tmp_path / model_dir.parent / "catalog.json").write_text(
        json.dumps({"models": {"sd15": {"path": model_dir.name, "family": "sd1"}}}))

    loaded = base_pipeline(ModelStore(tmp_path / model_dir.parent), "sd15")
    assert loaded.safety_checker is None
    unet = dict(loaded.unet.named_parameters())
    name = next(iter(unet))
    assert torch.equal(unet[name].to(torch.float16), dict(pipe.unet.named_parameters())[name])
