"""The tiny Flux in the forms people deploy on 24 GB GPUs, made from ``tiny-flux``'s own weights so that each form
can be compared with the directory (docs/models.md "Flux and SD 3.5 on 24 GB GPUs").

- ``flux1-dev-tiny.safetensors``: the transformer alone, in black-forest-labs' original layout, as
  ``flux1-dev.safetensors`` is; ``flux-config/`` holds the other components (text encoders, VAE, tokenizers,
  scheduler) and the transformer's config, as an operator's config directory for such a file does.
- ``flux1-dev-tiny-fp8.safetensors``: ComfyUI's all-in-one layout (``model.diffusion_model.*`` with
  ``text_encoders.clip_l.*``, ``text_encoders.t5xxl.*`` and the VAE under ``first_stage_model.*``), the
  transformer's matrices in float8_e4m3fn and its vectors in bfloat16; ``flux-configs/`` holds configs only. The
  text encoders and VAE stay float32 here, so the transformer's fp8 is the only difference from the directory.
- ``flux1-dev-tiny-Q8_0.gguf`` and ``-Q4_0.gguf``: city96's GGUF layout (the original layout, matrices quantized in
  blocks of 32 along their rows, vectors float32), written with the ``gguf`` package. The tiny widths (32 to 256)
  are multiples of 32, so every matrix quantizes. ``-Q4_K.gguf``: the matrices 256 wide (the time and guidance
  embedders' first layers) in Q4_K (``runtime.models.ggufk``: ``gguf`` has no K-quant quantizer), the others in
  Q4_0, a mix as city96's K-quant files have.
- ``sd3.5-medium-tiny.safetensors``: tiny-sd3 as ``sd3.5_medium.safetensors`` is, the transformer
  (``model.diffusion_model.*``, Stability AI's layout) with the VAE; ``sd3-config/`` holds the text encoders (which
  Stability AI ship apart) and the configs.
- ``sd3.5-medium-tiny-Q8_0.gguf``: tiny-sd3's transformer as city96's SD 3.5 GGUF files (bare original keys), with
  ``sd3-gguf-config/`` (every other component's weights). The tiny SD 3.5's attention is 16 wide, so only its 32-
  and 96-wide matrices (the context embedder, the MLPs' second layers...) quantize; the rest stay float32.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from runtime.models import fluxlayout, sd3layout

FORMS_DIR = "tiny-forms"
FLUX, SD3 = "tiny-flux", "tiny-sd3"
SD3_GGUF_CONFIG = f"{FORMS_DIR}/sd3-gguf-config"
CONFIG, CONFIGS_ONLY, SD3_CONFIG = f"{FORMS_DIR}/flux-config", f"{FORMS_DIR}/flux-configs", f"{FORMS_DIR}/sd3-config"
FILES = {"tiny-flux-single": f"{FORMS_DIR}/flux1-dev-tiny.safetensors",
         "tiny-flux-fp8": f"{FORMS_DIR}/flux1-dev-tiny-fp8.safetensors",
         "tiny-flux-q8": f"{FORMS_DIR}/flux1-dev-tiny-Q8_0.gguf",
         "tiny-flux-q4": f"{FORMS_DIR}/flux1-dev-tiny-Q4_0.gguf",
         "tiny-flux-q4k": f"{FORMS_DIR}/flux1-dev-tiny-Q4_K.gguf",
         "tiny-sd3-single": f"{FORMS_DIR}/sd3.5-medium-tiny.safetensors",
         "tiny-sd3-q8": f"{FORMS_DIR}/sd3.5-medium-tiny-Q8_0.gguf"}
#: The catalog entries: the files above, and tiny-flux's directory with its T5 on the CPU or in int8.
CATALOG: dict[str, dict[str, Any]] = {
    "tiny-flux-single": {"path": FILES["tiny-flux-single"], "config": CONFIG, "aliases": []},
    "tiny-flux-fp8": {"path": FILES["tiny-flux-fp8"], "config": CONFIGS_ONLY, "storage_dtype": "float8_e4m3fn",
                      "aliases": []},
    "tiny-flux-q8": {"path": FILES["tiny-flux-q8"], "config": CONFIG, "aliases": []},
    "tiny-flux-q4": {"path": FILES["tiny-flux-q4"], "config": CONFIG, "aliases": []},
    "tiny-flux-q4k": {"path": FILES["tiny-flux-q4k"], "config": CONFIG, "aliases": []},
    "tiny-flux-t5cpu": {"path": FLUX, "t5": "cpu", "aliases": []},
    "tiny-flux-t5int8": {"path": FLUX, "t5": "int8", "aliases": []},
    "tiny-sd3-single": {"path": FILES["tiny-sd3-single"], "config": SD3_CONFIG, "family": "sd3", "aliases": []},
    "tiny-sd3-q8": {"path": FILES["tiny-sd3-q8"], "config": SD3_GGUF_CONFIG, "family": "sd3", "aliases": []},
}
CATALOG = {model_id: {"kind": "base", "family": "flux", **entry} for model_id, entry in CATALOG.items()}
_VAE_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def write_forms(out: Path) -> None:
    """Write the forms under ``out / FORMS_DIR`` from the saved ``out / FLUX`` directory."""
    import torch
    from safetensors.torch import load_file, save_file

    flux = out / FLUX
    (out / FORMS_DIR).mkdir()
    original = fluxlayout.to_original(load_file(flux / "transformer" / "diffusion_pytorch_model.safetensors"))
    shutil.copytree(flux, out / CONFIG, ignore=lambda d, names: [n for n in names if n.endswith(".safetensors")
                                                                  and Path(d).name == "transformer"])
    shutil.copytree(flux, out / CONFIGS_ONLY, ignore=shutil.ignore_patterns("*.safetensors"))
    save_file(original, out / FILES["tiny-flux-single"])
    fp8 = {fluxlayout.PREFIX + key: value.to(torch.float8_e4m3fn if value.ndim == 2 else torch.bfloat16)
           for key, value in original.items()}
    fp8 |= {f"text_encoders.clip_l.transformer.{k if k.startswith('text_model.') else 'text_model.' + k}": v
            for k, v in load_file(flux / "text_encoder" / "model.safetensors").items()}
    fp8 |= {f"text_encoders.t5xxl.transformer.{k}": v
            for k, v in load_file(flux / "text_encoder_2" / "model.safetensors").items()}
    fp8 |= _ldm_vae(flux / "vae")
    save_file({k: v.contiguous() for k, v in fp8.items()}, out / FILES["tiny-flux-fp8"])
    for model_id, kind in (("tiny-flux-q8", "Q8_0"), ("tiny-flux-q4", "Q4_0"), ("tiny-flux-q4k", "Q4_K")):
        _write_gguf(original, out / FILES[model_id], kind)
    sd3 = out / SD3
    shutil.copytree(sd3, out / SD3_CONFIG, ignore=lambda d, names: [n for n in names if n.endswith(".safetensors")
                                                                     and Path(d).name in ("transformer", "vae")])
    medium = sd3layout.to_original(load_file(sd3 / "transformer" / "diffusion_pytorch_model.safetensors"))
    save_file({**medium, **_ldm_vae(sd3 / "vae")}, out / FILES["tiny-sd3-single"])
    shutil.copytree(sd3, out / SD3_GGUF_CONFIG, ignore=lambda d, names: [
        n for n in names if n.endswith(".safetensors") and Path(d).name == "transformer"])
    _write_gguf({k.removeprefix(sd3layout.PREFIX): v for k, v in medium.items()}, out / FILES["tiny-sd3-q8"], "Q8_0",
                arch="sd3")


def _write_gguf(state: dict[str, Any], path: Path, kind: str, arch: str = "flux") -> None:
    """As city96's files: matrices quantized (``kind``; for Q4_K, those not 256 wide in Q4_0), vectors float32."""
    import gguf
    import numpy as np

    from runtime.models.ggufk import BLOCK, quantize_q4_k

    qtype = getattr(gguf.GGMLQuantizationType, kind)
    writer = gguf.GGUFWriter(str(path), arch=arch)
    for name, tensor in state.items():
        data = tensor.float().numpy()
        if data.ndim == 2 and kind == "Q4_K" and data.shape[-1] % BLOCK == 0:
            writer.add_tensor(name, quantize_q4_k(data), raw_dtype=qtype)
        elif data.ndim == 2 and data.shape[-1] % 32 == 0:  # Q8_0's and Q4_0's blocks
            plain = qtype if kind != "Q4_K" else gguf.GGMLQuantizationType.Q4_0
            writer.add_tensor(name, gguf.quants.quantize(data, plain), raw_dtype=plain)
        else:
            writer.add_tensor(name, data.astype(np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def _ldm_vae(directory: Path) -> dict[str, Any]:
    """The VAE under ``first_stage_model.`` in the original (LDM) layout: the inverse of diffusers'
    ``convert_ldm_vae_checkpoint``, as ``tests/models/test_single_file_checkpoints.py`` writes SD's."""
    import json

    from safetensors.torch import load_file

    ups = len(json.loads((directory / "config.json").read_text())["up_block_types"])
    out = {}
    for key, tensor in load_file(directory / "diffusion_pytorch_model.safetensors").items():
        name = vae_original_key(key, ups)
        out[f"first_stage_model.{name}"] = tensor[:, :, None, None] if ".mid.attn_1." in name and tensor.ndim == 2 \
            else tensor  # the original VAE's attention is 1x1 convolutions
    return out


def vae_original_key(key: str, ups: int) -> str:
    """The original (LDM) layout's name of a diffusers AutoencoderKL key, for a VAE of ``ups`` up blocks: the
    inverse of diffusers' ``convert_ldm_vae_checkpoint`` (the tiny single files are written with it)."""
    p = key.split(".")
    if p[0] in ("quant_conv", "post_quant_conv") or p[1] in ("conv_in", "conv_out"):
        return key
    side, q = p[0], p[1:]
    if q[0] == "conv_norm_out":
        return f"{side}.norm_out.{q[1]}"
    if q[0] in ("down_blocks", "up_blocks"):
        down = q[0] == "down_blocks"
        block = f"down.{q[1]}" if down else f"up.{ups - 1 - int(q[1])}"
        if q[2] in ("downsamplers", "upsamplers"):
            return f"{side}.{block}.{'downsample' if down else 'upsample'}.conv.{q[-1]}"
        return f"{side}.{block}.block.{q[3]}." + ".".join(q[4:]).replace("conv_shortcut", "nin_shortcut")
    if q[:2] == ["mid_block", "resnets"]:
        return f"{side}.mid.block_{int(q[2]) + 1}." + ".".join(q[3:]).replace("conv_shortcut", "nin_shortcut")
    if q[:2] == ["mid_block", "attentions"]:
        return f"{side}.mid.attn_1.{_VAE_ATTENTION['.'.join(q[3:-1])]}.{q[-1]}"
    raise KeyError(key)
