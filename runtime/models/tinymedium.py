"""A medium random-weight model: SD 1.x-shaped with a UNet of a few hundred MiB, for the loading benchmarks only.

The tiny models weigh a few MB, so loading them measures diffusers' fixed costs (configs, imports, module
construction) and not the disk: a load "at the disk's speed" can only be told apart from a slow one on a model
whose bytes take a while to read. This one is built on demand by ``make bench`` into a temporary directory (never
by ``make test``: it takes a few seconds of CPU and a few hundred MB of disk); the tiny models' builds are left
untouched. Its text encoder, VAE and tokenizer are the tiny SD model's.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

MEDIUM_ID = "medium-sd"
#: Channel widths of the UNet: SD 1.5's layout (four levels, two layers each) at 0.4 of its width, 515 MiB in all.
#: Large enough that the bytes, not a load's fixed costs, decide its time: building the modules takes about 0.1 s
#: whatever their width, which is as long as a fast disk takes to read 290 MiB (this model at 0.3 of the width).
CHANNELS = (128, 256, 512, 512)


def build_medium_model(models_dir: Path, channels: tuple[int, ...] = CHANNELS) -> int:
    """Build ``MEDIUM_ID`` under ``models_dir`` (a diffusers directory) and list it in that directory's catalog,
    alone (a models directory of its own: the tiny models' catalog stays as built). Returns its bytes on disk."""
    import torch
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel

    from runtime.models import tinynets
    from runtime.models.catalog import CATALOG_FILE
    from runtime.models.tiny import _save_slow_tokenizer, _tokenizer

    models_dir.mkdir(parents=True, exist_ok=True)
    with torch.random.fork_rng(devices=[]):
        small = tinynets.sd_pipeline(_tokenizer())
        torch.manual_seed(7)
        unet = UNet2DConditionModel(
            sample_size=64, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=channels,
            down_block_types=("CrossAttnDownBlock2D",) * (len(channels) - 1) + ("DownBlock2D",),
            up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * (len(channels) - 1),
            cross_attention_dim=small.text_encoder.config.hidden_size, attention_head_dim=8,
            norm_num_groups=32)
    pipe = StableDiffusionPipeline(vae=small.vae, text_encoder=small.text_encoder, tokenizer=small.tokenizer,
                                   unet=unet, scheduler=small.scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    out = models_dir / MEDIUM_ID
    pipe.save_pretrained(out, safe_serialization=True)
    _save_slow_tokenizer(pipe.tokenizer, out / "tokenizer")
    for path in out.rglob("*"):  # some savers write 0600 files; a worker may run as another user
        path.chmod(0o755 if path.is_dir() else 0o644)
    catalog = {"models": {MEDIUM_ID: {"path": MEDIUM_ID, "kind": "base", "family": "sd1"}}}
    (models_dir / CATALOG_FILE).write_text(json.dumps(catalog, indent=2) + "\n")
    return sum(p.stat().st_size for p in out.rglob("*") if p.is_file())


def model_files(directory: Path) -> list[Path]:
    """Every file of a model directory, as a loader may read them (sorted: two runs read in the same order)."""
    return sorted(p for p in Path(directory).rglob("*") if p.is_file())


def evict(files: list[Path]) -> bool:
    """Drop ``files``' pages from the page cache, without root and for these files alone (``POSIX_FADV_DONTNEED``
    after ``fsync``: clean pages go), so that a read after it is a cold read from the disk. False where the call is
    missing (not Linux): the reads then stay warm, and the caller must say so."""
    if not hasattr(os, "posix_fadvise"):
        return False
    for path in files:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
    return True
