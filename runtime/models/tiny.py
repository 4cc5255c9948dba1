"""Tiny random-weight models in real diffusers format, for tests, the local stack and benchmarks.

They have the *shape* of Stable Diffusion 1.x and of SDXL (VAE scale factor 8, CLIP text encoders with 77
positions, SDXL's two encoders and size conditioning, ControlNets whose conditioning embedding downsamples by 8,
LoRA adapters in diffusers' and kohya's formats), and of Flux.1 (dev, schnell, Fill) and SD 3.5 (medium, large
turbo) with their ControlNets and LoRAs, so every code path a real checkpoint takes is exercised, but
they weigh a few MB and run in milliseconds on a CPU. Nothing is downloaded: the weights come from fixed seeds
and the tokenizer is generated here, so two builds are identical. The networks are in ``tinynets`` and the
adapters in ``tinylora`` (the IP-Adapters and their image encoder in ``tinyadapters``); the upscalers (ESRGAN and
Real-ESRGAN Compact, read by spandrel) in ``tinyupscalers``; the flow-matching models (Flux, SD 3) and their T5
tokenizer in ``tinyflow``, their LoRAs (diffusers', kohya's and XLabs' formats) in ``tinyflowlora``.
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

from runtime.models import tinyforms
from runtime.models.catalog import CATALOG_FILE

BASE_ID = "tiny-sd"
CONTROLNET_ID = "tiny-controlnet"
SDXL_ID = "tiny-sdxl"
SDXL_CONTROLNET_ID = "tiny-sdxl-controlnet"
#: Inpainting checkpoints (their UNets take the mask and the masked image too) and an SDXL refiner.
INPAINTING_ID = "tiny-sd-inpainting"
SDXL_INPAINTING_ID = "tiny-sdxl-inpainting"
REFINER_ID = "tiny-sdxl-refiner"
#: Flux.1 dev (guidance embedded), schnell (none) and Fill (inpainting); SD 3.5 medium and large turbo (no dual
#: attention) shapes.
FLUX_ID, FLUX_SCHNELL_ID, FLUX_FILL_ID = "tiny-flux", "tiny-flux-schnell", "tiny-flux-fill"
SD3_ID, SD3_TURBO_ID = "tiny-sd3", "tiny-sd3-turbo"
FLUX_CONTROLNET_ID, SD3_CONTROLNET_ID = "tiny-flux-controlnet", "tiny-sd3-controlnet"
LORA_DIR = "tiny-loras"  # not "loras": a rebuild replaces the directory, and an operator's own may be there
#: Upscalers of two architectures (ESRGAN x4, Real-ESRGAN Compact x2); a directory of their own, as the LoRAs.
UPSCALER_DIR = "tiny-upscalers"
UPSCALER_IDS = ("tiny-esrgan", "tiny-compact")
#: A build of another version is rebuilt; bump it whenever what is built changes.
VERSION = 15
_VERSION_FILE = ".tiny-version"
#: One LoRA per family in diffusers' format, and one in kohya's (SD WebUI's) format with other weights; Flux's
#: in XLabs' format too; SD 3's in diffusers' only.
LORA_IDS = {"sd1": ("tiny-lora-sd1", "tiny-lora-sd1-kohya"), "sdxl": ("tiny-lora-sdxl", "tiny-lora-sdxl-kohya"),
            "flux": ("tiny-lora-flux", "tiny-lora-flux-kohya", "tiny-lora-flux-xlabs"), "sd3": ("tiny-lora-sd3",)}
#: IP-Adapters of each family (``tinyadapters``), one file each, and the image encoder they share.
IP_ADAPTER_DIR = "tiny-ip-adapters"
IP_ADAPTER_IDS = {"sd1": "tiny-ip-adapter-sd1", "sdxl": "tiny-ip-adapter-sdxl"}
IMAGE_ENCODER_ID = "tiny-image-encoder"
#: Textual-inversion embeddings (``tinyembeddings``): SD 1.x in WebUI's and diffusers' formats, SDXL's pair.
EMBEDDING_DIR = "tiny-embeddings"
EMBEDDING_IDS = {"tiny-emb-sd1": "sd1", "tiny-emb-sd1-diffusers": "sd1", "tiny-emb-sdxl": "sdxl"}
#: The tiny models stand in for the checkpoints the AWS sample's and WebUI clients' own request files name, so
#: those files run unchanged on the dev stack (``docs/migrating.md``); a real catalog names real files.
ALIASES = {BASE_ID: ["v1-5-pruned-emaonly.safetensors", "v1-5-pruned-emaonly"],
           SDXL_ID: ["sd_xl_turbo_1.0.safetensors", "sd_xl_base_1.0.safetensors"],
           CONTROLNET_ID: ["control_v11p_sd15_canny"], SDXL_CONTROLNET_ID: ["controlnet-canny-sdxl-1.0"],
           FLUX_ID: ["flux1-dev.safetensors", "flux1-dev-fp8.safetensors"],
           FLUX_SCHNELL_ID: ["flux1-schnell.safetensors"], FLUX_FILL_ID: ["flux1-fill-dev.safetensors"],
           SD3_ID: ["sd3.5_medium.safetensors"], SD3_TURBO_ID: ["sd3.5_large_turbo.safetensors"],
           FLUX_CONTROLNET_ID: [], SD3_CONTROLNET_ID: []}
#: The flow-matching base models: (family, variant).
FLOW_MODELS = {FLUX_ID: ("flux", None), FLUX_SCHNELL_ID: ("flux", "schnell"), FLUX_FILL_ID: ("flux", "inpainting"),
               SD3_ID: ("sd3", None), SD3_TURBO_ID: ("sd3", "turbo")}
CATALOG: dict[str, dict[str, Any]] = {
    **{model_id: {"path": model_id, "kind": kind, "family": family, "aliases": ALIASES[model_id]}
       for model_id, kind, family in ((BASE_ID, "base", "sd1"), (CONTROLNET_ID, "controlnet", "sd1"),
                                      (SDXL_ID, "base", "sdxl"), (SDXL_CONTROLNET_ID, "controlnet", "sdxl"))},
    INPAINTING_ID: {"path": INPAINTING_ID, "kind": "base", "family": "sd1", "variant": "inpainting",
                    "aliases": ["sd-v1-5-inpainting.safetensors"]},
    SDXL_INPAINTING_ID: {"path": SDXL_INPAINTING_ID, "kind": "base", "family": "sdxl", "variant": "inpainting",
                         "aliases": ["sd_xl_base_1.0_inpainting_0.1.safetensors"]},
    REFINER_ID: {"path": REFINER_ID, "kind": "base", "family": "sdxl", "variant": "refiner",
                 "aliases": ["sd_xl_refiner_1.0.safetensors"]},
    **{model_id: {"path": model_id, "kind": "base", "family": family, **({"variant": variant} if variant else {}),
                  "aliases": ALIASES[model_id]} for model_id, (family, variant) in FLOW_MODELS.items()},
    FLUX_CONTROLNET_ID: {"path": FLUX_CONTROLNET_ID, "kind": "controlnet", "family": "flux", "aliases": []},
    SD3_CONTROLNET_ID: {"path": SD3_CONTROLNET_ID, "kind": "controlnet", "family": "sd3", "aliases": []},
    **{lora: {"path": f"{LORA_DIR}/{lora}.safetensors", "kind": "lora", "family": family}
       for family, ids in LORA_IDS.items() for lora in ids},
    **{upscaler: {"path": f"{UPSCALER_DIR}/{upscaler}.safetensors", "kind": "upscaler"} for upscaler in UPSCALER_IDS},
    IMAGE_ENCODER_ID: {"path": IMAGE_ENCODER_ID, "kind": "image_encoder"},
    **{adapter: {"path": f"{IP_ADAPTER_DIR}/{adapter}.safetensors", "kind": "ip_adapter", "family": family,
                 "image_encoder": IMAGE_ENCODER_ID} for family, adapter in IP_ADAPTER_IDS.items()},
    **{emb: {"path": f"{EMBEDDING_DIR}/{emb}.safetensors", "kind": "embedding", "family": family}
       for emb, family in EMBEDDING_IDS.items()},
    **tinyforms.CATALOG,  # tiny-flux as one file, fp8, GGUF, and with its T5 on the CPU or in int8
}

# A file each model must hold; with the catalog entry (written last) it means the model is whole.
_MARKERS = {**{name: "model_index.json" if entry["path"] == tinyforms.FLUX else ""
               for name, entry in tinyforms.CATALOG.items()},
            BASE_ID: "model_index.json", CONTROLNET_ID: "config.json", SDXL_ID: "model_index.json",
            SDXL_CONTROLNET_ID: "config.json", INPAINTING_ID: "model_index.json", REFINER_ID: "model_index.json",
            SDXL_INPAINTING_ID: "model_index.json", **dict.fromkeys(FLOW_MODELS, "model_index.json"),
            FLUX_CONTROLNET_ID: "config.json", SD3_CONTROLNET_ID: "config.json",
            **{lora: "" for ids in LORA_IDS.values() for lora in ids}, **{up: "" for up in UPSCALER_IDS},
            IMAGE_ENCODER_ID: "config.json", **dict.fromkeys(IP_ADAPTER_IDS.values(), ""),
            **dict.fromkeys(EMBEDDING_IDS, "")}
BOS, EOS = "<|startoftext|>", "<|endoftext|>"
# A few merges so the tokenizer really runs BPE (words it knows become one token), not only bytes.
MERGES = ("t h", "th e</w>", "o f</w>", "i n</w>", "f o", "fo x</w>", "r e", "re d</w>")


def build_tiny_models(models_dir: Path) -> None:
    """Build the tiny models (``CATALOG``) under ``models_dir`` and list them in its catalog.

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
            files = ("lora", "upscaler", "ip_adapter", "embedding")  # kinds of one file, in the directories below
            directories = (n for n in CATALOG if CATALOG[n]["kind"] not in files and n not in tinyforms.CATALOG)
            for name in (LORA_DIR, UPSCALER_DIR, IP_ADAPTER_DIR, EMBEDDING_DIR, tinyforms.FORMS_DIR, *directories):
                target = models_dir / name
                if target.exists():  # a leftover that _complete() did not accept
                    shutil.rmtree(target)
                os.replace(work / name, target)
            _write_catalog(models_dir)
            (models_dir / _VERSION_FILE).write_text(f"{VERSION}\n")
        finally:
            shutil.rmtree(work, ignore_errors=True)


def _complete(models_dir: Path) -> bool:
    try:
        listed = json.loads((models_dir / CATALOG_FILE).read_text()).get("models", {})
        if (models_dir / _VERSION_FILE).read_text().strip() != str(VERSION):
            return False
    except (OSError, ValueError, AttributeError):
        return False
    return all(listed.get(name) == CATALOG[name] and (models_dir / CATALOG[name]["path"] / marker).is_file()
               for name, marker in _MARKERS.items())


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
    from safetensors.torch import save_file

    from runtime.models import tinyadapters, tinyembeddings, tinyflow, tinyflowlora, tinylora, tinynets, tinyupscalers

    with torch.random.fork_rng(devices=[]):  # deterministic without disturbing the caller's RNG
        sd = tinynets.sd_pipeline(_tokenizer())
        sdxl = tinynets.sdxl_pipeline(_tokenizer(), _tokenizer(pad_token="!"))  # SDXL's second tokenizer pads with "!"
        nets = {BASE_ID: sd, CONTROLNET_ID: tinynets.controlnet(sd.unet, seed=3), SDXL_ID: sdxl,
                SDXL_CONTROLNET_ID: tinynets.controlnet(sdxl.unet, seed=14),
                INPAINTING_ID: tinynets.sd_pipeline(_tokenizer(), inpainting=True),
                SDXL_INPAINTING_ID: tinynets.sdxl_pipeline(_tokenizer(), _tokenizer(pad_token="!"), inpainting=True),
                REFINER_ID: tinynets.sdxl_refiner(_tokenizer(pad_token="!"))}
        (out / LORA_DIR).mkdir()
        for seed, (family, pipe) in enumerate((("sd1", sd), ("sdxl", sdxl))):
            plain, kohya = LORA_IDS[family][:2]
            save_file(tinylora.lora_weights(pipe, seed=20 + seed), out / LORA_DIR / f"{plain}.safetensors")
            save_file(tinylora.kohya_format(tinylora.lora_weights(pipe, seed=30 + seed), family == "sdxl"),
                      out / LORA_DIR / f"{kohya}.safetensors")
        (out / IP_ADAPTER_DIR).mkdir()
        for seed, (family, pipe) in enumerate((("sd1", sd), ("sdxl", sdxl))):
            save_file(tinyadapters.ip_adapter_weights(pipe.unet, seed=40 + seed),
                      out / IP_ADAPTER_DIR / f"{IP_ADAPTER_IDS[family]}.safetensors")
        nets[IMAGE_ENCODER_ID] = tinyadapters.image_encoder(seed=42)
        nets.update(_flow_models(out / LORA_DIR, tinyflow, tinyflowlora))
        (out / EMBEDDING_DIR).mkdir()
        for seed, emb in enumerate(EMBEDDING_IDS):
            save_file(tinyembeddings.embedding_weights(emb, seed=50 + seed), out / EMBEDDING_DIR / f"{emb}.safetensors")
    (out / UPSCALER_DIR).mkdir()
    upscalers = tinyupscalers.state_dicts()
    assert tuple(upscalers) == UPSCALER_IDS
    for upscaler, weights in upscalers.items():
        save_file(weights, out / UPSCALER_DIR / f"{upscaler}.safetensors")
    for name, net in nets.items():
        net.save_pretrained(out / name, safe_serialization=True)
    for name in (BASE_ID, SDXL_ID, INPAINTING_ID, SDXL_INPAINTING_ID, REFINER_ID, *FLOW_MODELS):
        for sub in ("tokenizer", "tokenizer_2"):  # T5's (Flux's tokenizer_2) is saved whole in its tokenizer.json
            tokenizer = getattr(nets[name], sub, None)
            if (out / name / sub).is_dir() and type(tokenizer).__name__.startswith("CLIP"):
                _save_slow_tokenizer(tokenizer, out / name / sub)
    for name in FLOW_MODELS:
        _name_t5_tokenizer_fast(out / name)
    tinyforms.write_forms(out)
    for path in out.rglob("*"):  # some savers write 0600 files; a worker may run as another user
        path.chmod(0o755 if path.is_dir() else 0o644)


def _flow_models(lora_dir: Path, tinyflow: Any, tinyflowlora: Any) -> dict[str, Any]:
    """The Flux and SD 3 models (``tinyflow``), and their LoRAs written to ``lora_dir``, each from its own seed."""
    from safetensors.torch import save_file

    nets = {model_id: tinyflow.flux_pipeline(_tokenizer(), variant)
            for model_id, (family, variant) in FLOW_MODELS.items() if family == "flux"}
    nets[SD3_ID] = tinyflow.sd3_pipeline(_tokenizer(), _tokenizer(pad_token="!"))
    nets[SD3_TURBO_ID] = tinyflow.sd3_pipeline(_tokenizer(), _tokenizer(pad_token="!"), large=True)
    nets[FLUX_CONTROLNET_ID] = tinyflow.flux_controlnet(nets[FLUX_ID].transformer, seed=tinyflow.SEED + 60)
    nets[SD3_CONTROLNET_ID] = tinyflow.sd3_controlnet(nets[SD3_ID].transformer, seed=tinyflow.SEED + 61)
    flux, sd3 = nets[FLUX_ID].transformer, nets[SD3_ID].transformer
    writers = (tinyflowlora.diffusers_lora, tinyflowlora.kohya_lora, tinyflowlora.xlabs_lora)
    for seed, (lora, writer) in enumerate(zip(LORA_IDS["flux"], writers, strict=True)):
        save_file(writer(flux, seed=tinyflow.SEED + 70 + seed), lora_dir / f"{lora}.safetensors")
    save_file(tinyflowlora.diffusers_lora(sd3, seed=tinyflow.SEED + 75), lora_dir / f"{LORA_IDS['sd3'][0]}.safetensors")
    return nets


def _name_t5_tokenizer_fast(directory: Path) -> None:
    """Name T5's tokenizer T5TokenizerFast, as FLUX.1's and SD 3.5's own repositories do: transformers 5 calls
    the class T5Tokenizer (both names load tokenizer.json), but transformers 4's T5Tokenizer is the sentencepiece
    one, which needs a ``spiece.model`` that is not here."""
    index = json.loads((directory / "model_index.json").read_text())
    for sub in [key for key, value in index.items() if isinstance(value, list) and value[1] == "T5Tokenizer"]:
        index[sub] = ["transformers", "T5TokenizerFast"]
        config_path = directory / sub / "tokenizer_config.json"
        config_path.write_text(json.dumps({**json.loads(config_path.read_text()),
                                           "tokenizer_class": "T5TokenizerFast"}, indent=2) + "\n")
    (directory / "model_index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")


def _save_slow_tokenizer(tokenizer: Any, directory: Path) -> None:
    """tokenizer.json is all transformers 5 needs; transformers 4's CLIPTokenizer reads these two files."""
    vocab = dict(sorted(tokenizer.get_vocab().items(), key=lambda item: item[1]))
    (directory / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (directory / "merges.txt").write_text("#version: 0.2\n" + "\n".join(MERGES) + "\n")


def _tokenizer(**options: Any) -> Any:
    """A CLIP BPE tokenizer over the 256 byte-level symbols (and their end-of-word forms) plus a few merges."""
    from transformers import CLIPTokenizer

    symbols = list(_bytes_to_unicode().values())
    tokens = symbols + [s + "</w>" for s in symbols] + ["".join(m.split()) for m in MERGES] + [BOS, EOS]
    vocab = {token: index for index, token in enumerate(dict.fromkeys(tokens))}
    return CLIPTokenizer(vocab=vocab, merges=[tuple(m.split()) for m in MERGES], model_max_length=77, **options)


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
