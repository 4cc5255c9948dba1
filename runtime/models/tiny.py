"""Tiny random-weight models in real diffusers format, for tests, the local stack and benchmarks.

They have the *shape* of Stable Diffusion 1.x (VAE scale factor 8, CLIP text encoder with 77 positions,
a ControlNet whose conditioning embedding downsamples by 8), so every code path a real checkpoint takes
is exercised, but they weigh a few MB and run in milliseconds on a CPU. Nothing is downloaded: the
weights come from a fixed seed and the tokenizer is generated here, so two builds are identical.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from runtime.models.catalog import CATALOG_FILE

BASE_ID = "tiny-sd"
CONTROLNET_ID = "tiny-controlnet"
CATALOG: dict[str, dict[str, str]] = {
    BASE_ID: {"path": BASE_ID, "kind": "base", "family": "sd1"},
    CONTROLNET_ID: {"path": CONTROLNET_ID, "kind": "controlnet", "family": "sd1"},
}
# A file each model directory must hold; with the catalog entry (written last) it means the model is whole.
_MARKERS = {BASE_ID: "model_index.json", CONTROLNET_ID: "config.json"}
SEED = 0
BOS, EOS = "<|startoftext|>", "<|endoftext|>"
# A few merges so the tokenizer really runs BPE (words it knows become one token), not only bytes.
MERGES = ("t h", "th e</w>", "o f</w>", "i n</w>", "f o", "fo x</w>", "r e", "re d</w>")


def build_tiny_models(models_dir: Path) -> None:
    """Build ``tiny-sd`` and ``tiny-controlnet`` under ``models_dir`` and list them in its catalog.

    Idempotent and safe against a crash or a second process doing the same: models are built in a
    temporary directory and renamed into place, and the catalog, written last, is what marks them done.
    """
    models_dir = Path(models_dir)
    models_dir.mkdir(parents=True, exist_ok=True)
    if _complete(models_dir):
        return
    with _locked(models_dir):
        if _complete(models_dir):  # another process finished while we waited for the lock
            return
        work = Path(tempfile.mkdtemp(prefix=".tiny-build-", dir=models_dir))
        try:
            _save_models(work)
            for name in CATALOG:
                target = models_dir / name
                if target.exists():  # a leftover that _complete() did not accept
                    shutil.rmtree(target)
                os.replace(work / name, target)
            _write_catalog(models_dir)
        finally:
            shutil.rmtree(work, ignore_errors=True)


def _complete(models_dir: Path) -> bool:
    try:
        listed = json.loads((models_dir / CATALOG_FILE).read_text()).get("models", {})
    except (OSError, ValueError, AttributeError):
        return False
    return all(name in listed and (models_dir / name / marker).is_file() for name, marker in _MARKERS.items())


@contextmanager
def _locked(models_dir: Path) -> Iterator[None]:
    with open(models_dir / ".tiny.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _write_catalog(models_dir: Path) -> None:
    """Add the tiny entries to the catalog, keeping any other models it already lists."""
    path = models_dir / CATALOG_FILE
    try:
        catalog: dict[str, Any] = json.loads(path.read_text())
        if not isinstance(catalog.get("models"), dict):
            raise ValueError
    except (OSError, ValueError, AttributeError):
        catalog = {"models": {}}
    catalog["models"].update(CATALOG)
    tmp = path.with_name(f".{CATALOG_FILE}.tmp")
    tmp.write_text(json.dumps(catalog, indent=2) + "\n")
    os.replace(tmp, path)


def _save_models(out: Path) -> None:
    import torch  # the worker's dependencies, imported only when models are really built

    with torch.random.fork_rng(devices=[]):  # deterministic without disturbing the caller's RNG
        pipe, controlnet = _make_models()
    pipe.save_pretrained(out / BASE_ID, safe_serialization=True)
    controlnet.save_pretrained(out / CONTROLNET_ID, safe_serialization=True)
    # tokenizer.json is all transformers 5 needs; transformers 4's CLIPTokenizer reads these two files.
    vocab = dict(sorted(pipe.tokenizer.get_vocab().items(), key=lambda item: item[1]))
    (out / BASE_ID / "tokenizer" / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False),
                                                           encoding="utf-8")
    (out / BASE_ID / "tokenizer" / "merges.txt").write_text("#version: 0.2\n" + "\n".join(MERGES) + "\n")
    for path in out.rglob("*"):  # some savers write 0600 files; a worker may run as another user
        path.chmod(0o755 if path.is_dir() else 0o644)


def _make_models() -> tuple[Any, Any]:
    import torch
    from diffusers import AutoencoderKL, ControlNetModel, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    tokenizer = _tokenizer()
    torch.manual_seed(SEED)
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(16, 32),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32, attention_head_dim=8, norm_num_groups=8,
    )
    torch.manual_seed(SEED + 1)
    vae = AutoencoderKL(  # four blocks: a scale factor of 8, as in real SD
        sample_size=64, in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1,
        block_out_channels=(8, 8, 16, 16), norm_num_groups=4,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
    )
    torch.manual_seed(SEED + 2)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=77, projection_dim=32, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    ))
    # SD 1.5's own scheduler settings, so make_scheduler derives every other scheduler as it would for real.
    scheduler = PNDMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
        set_alpha_to_one=False, skip_prk_steps=True, steps_offset=1,
    )
    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    torch.manual_seed(SEED + 3)
    controlnet = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(4, 8, 16, 16))
    return pipe, controlnet


def _tokenizer() -> Any:
    """A CLIP BPE tokenizer over the 256 byte-level symbols (and their end-of-word forms) plus a few merges."""
    from transformers import CLIPTokenizer

    symbols = list(_bytes_to_unicode().values())
    tokens = symbols + [s + "</w>" for s in symbols] + ["".join(m.split()) for m in MERGES] + [BOS, EOS]
    vocab = {token: index for index, token in enumerate(dict.fromkeys(tokens))}
    return CLIPTokenizer(vocab=vocab, merges=[tuple(m.split()) for m in MERGES], model_max_length=77)


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible map from bytes to printable characters (the byte-level alphabet)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(
        range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, chars), strict=True))
