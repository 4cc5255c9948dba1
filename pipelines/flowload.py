"""Flux and SD 3.5 base models in the forms people deploy on 24 GB GPUs (docs/models.md "Flux and SD 3.5 on 24 GB
GPUs"): a diffusers directory; one file, transformer only (``flux1-dev.safetensors``, a GGUF) or with the other
components (ComfyUI's ``flux1-dev-fp8.safetensors``, ``sd3.5_medium.safetensors``), with the catalog's local config
directory, which then holds what the file lacks; the transformer's weights kept in fp8 (``storage_dtype``); the T5
encoder on the CPU or in 8 bits (``t5``). Nothing is ever downloaded.

A transformer-only file is loaded as a model (``from_single_file`` of the transformer class, with the config's
``transformer`` folder) and the pipeline from the config directory with it; a file that also holds the VAE or text
encoders goes through the pipeline's ``from_single_file``, which takes what it holds from it and the rest from the
config. Flux's original layout is converted by ``runtime.models.fluxlayout`` (diffusers' converter assumes
FLUX.1's width); SD 3.5's by diffusers. A file that cannot be read as the model's transformer is refused with a
``ModelError`` naming the model and the file.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, DiffusionPipeline

from pipelines import components
from pipelines.dtypes import torch_dtype
from runtime.models.catalog import CatalogEntry, ModelError
from runtime.models.store import ModelSource, ModelStore, stored_tensors

#: Key prefixes of the components an all-in-one file holds besides the transformer (ComfyUI's and SAI's files).
_OTHER_COMPONENTS = ("first_stage_model.", "vae.", "text_encoders.")
Convert = Callable[[dict[str, Any]], dict[str, Any]]


def load(family: Any, store: ModelStore, model_id: str, transformer_class: type,
         convert: Convert) -> DiffusionPipeline:
    """``family``'s base model ``model_id`` on the store's device, in the catalog entry's form. ``convert`` turns
    an original-layout file's state dict (any other keys it holds left out) into diffusers' transformer layout."""
    source, entry = store.source(model_id, "base"), store.entry(model_id, "base")
    cls = family.variant_classes.get(entry.variant or "") or family.base_class
    dtype = torch_dtype(store.device, entry.dtype)
    parts: dict[str, Any] = {}
    if entry.vae is not None:  # the catalog's own VAE instead of the model's
        parts["vae"] = components.model(AutoencoderKL, store.source(entry.vae, "vae").path, dtype)
    try:
        pipe = _pipeline(cls, transformer_class, source, entry, dtype, parts, convert)
    except ModelError:
        raise
    except Exception as exc:  # a damaged or foreign file: anything diffusers, safetensors or gguf raise reading it
        what = f"file {source.path.name}" if source.single_file else f"directory {source.path.name}"
        raise ModelError("invalid_model_file", f"model {model_id!r}: {what} could not be loaded as a "
                         f"{family.name} {transformer_class.__name__}: {type(exc).__name__}: {exc}") from exc
    return serve(pipe, entry, store.device)


def serve(pipe: DiffusionPipeline, entry: CatalogEntry, device: str) -> DiffusionPipeline:
    """A loaded pipeline in the entry's form on ``device``: the transformer's ``storage_dtype``, T5's place (``make
    bench-gpu`` applies it to the full-size models it builds, as the loader does to the files it reads)."""
    compute = torch_dtype(device, entry.dtype)
    if entry.storage_dtype is not None and not any(map(_cast_layerwise, pipe.transformer.modules())):
        # Linear and convolution weights stored in fp8, each layer widened to ``dtype`` for its forward; norms and
        # embeddings stay in ``dtype`` (diffusers' skip patterns).
        pipe.transformer.enable_layerwise_casting(storage_dtype=getattr(torch, entry.storage_dtype),
                                                  compute_dtype=compute)
    for module in pipe.transformer.modules():
        if _cast_layerwise(module):  # peft then makes a LoRA's layers in it, not in fp8 (as for GGUF's layers)
            module.compute_dtype = compute
    return place(pipe, device, entry.t5)


def _pipeline(cls: type[DiffusionPipeline], transformer_class: type, source: ModelSource, entry: CatalogEntry,
              dtype: torch.dtype, parts: dict[str, Any], convert: Convert | None) -> DiffusionPipeline:
    if not source.single_file:
        parts = {**components.smallest_first(source.path, cls, dtype, parts), **parts}
        return cls.from_pretrained(source.path, dtype=dtype, use_safetensors=True, **parts)
    config = str(source.config)
    options: dict[str, Any] = {"config": config, "subfolder": "transformer", "local_files_only": True,
                               "torch_dtype": dtype}
    if entry.gguf:
        from diffusers import GGUFQuantizationConfig

        options["quantization_config"] = GGUFQuantizationConfig(compute_dtype=dtype)
    from diffusers.models.model_loading_utils import load_state_dict

    state = convert(load_state_dict(str(source.path)))
    if entry.storage_dtype is not None:
        transformer = _narrow(transformer_class, state, config, getattr(torch, entry.storage_dtype), dtype)
    else:
        transformer = transformer_class.from_single_file(state, **options)
    if entry.gguf or not _holds_other_components(source.path):
        return cls.from_pretrained(config, transformer=transformer, dtype=dtype, use_safetensors=True,
                                   local_files_only=True, **parts)
    parts = {**_config_components(source.config, dtype), **parts}
    pipe = cls.from_single_file(str(source.path), config=config, local_files_only=True, torch_dtype=dtype,
                                transformer=transformer, **parts)
    for module in pipe.components.values():
        if getattr(module, "_tied_weights_keys", None):  # diffusers' T5 from one file: its input embedding unset
            module.tie_weights()
        if isinstance(module, torch.nn.Module):  # and in training mode: T5's dropout would draw other pixels per run
            module.eval()
    return pipe


def _narrow(transformer_class: type, state: dict[str, Any], config: str, storage: torch.dtype,
            compute: torch.dtype) -> Any:
    """The transformer with the weights layerwise casting stores in ``storage`` taken from the file straight into
    it (an fp8 file's own tensors, never widened), the rest in ``compute``: what loading in ``compute`` and then
    enabling layerwise casting gives, without ever holding the whole transformer in ``compute`` (23.8 GB of host
    memory for FLUX.1 dev in bf16)."""
    from accelerate import init_empty_weights

    with init_empty_weights():  # parameters on the meta device; buffers real
        model = transformer_class.from_config(transformer_class.load_config(config, subfolder="transformer",
                                                                            local_files_only=True))
    model.enable_layerwise_casting(storage_dtype=storage, compute_dtype=compute)
    stored = {name for name, module in model.named_modules() if _cast_layerwise(module)}
    model.load_state_dict({key: value.to(storage if key.rpartition(".")[0] in stored else compute)
                           for key, value in state.items()}, strict=True, assign=True)
    for name, buffer in model.named_buffers():
        if name not in state and buffer.is_floating_point():  # built, not read: as from_single_file casts them
            buffer.data = buffer.data.to(compute)
    return model.eval()


def _cast_layerwise(module: Any) -> bool:
    hooks = getattr(module, "_diffusers_hook", None)
    return hooks is not None and hooks.get_hook("layerwise_casting") is not None


def _config_components(config: Path, dtype: torch.dtype) -> dict[str, Any]:
    """The components whose weights the config directory holds (those the file lacks, as SD 3.5's text encoders,
    which Stability AI ship apart), loaded from it: diffusers' ``from_single_file`` looks there for
    ``diffusion_pytorch_model`` files only, not for transformers' ``model.safetensors``."""
    import json

    return {name: components.load(config / name, value[0], value[1], dtype)
            for name, value in json.loads((config / "model_index.json").read_text()).items()
            if isinstance(value, list) and value[0] and any((config / name).glob("*.safetensors"))}


def _holds_other_components(path: Path) -> bool:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        return any(key.startswith(_OTHER_COMPONENTS) for key in handle.keys())  # noqa: SIM118 (not a dict)


def t5_name(pipe: DiffusionPipeline) -> str:
    """The pipeline's T5 encoder component (Flux's ``text_encoder_2``, SD 3's ``text_encoder_3``)."""
    return next(name for name, module in pipe.components.items() if type(module).__name__.startswith("T5"))


def place(pipe: DiffusionPipeline, device: str, t5: str | None) -> DiffusionPipeline:
    """Every component on ``device``, but T5 as the catalog's ``t5`` says: quantized to int8 before it moves (so
    the full-precision weights never reach the GPU), or left on the CPU with hooks that move its input there and its
    output back to ``device``, so diffusers' own prompt encoding runs unchanged."""
    name = t5_name(pipe) if t5 is not None else None
    if t5 == "int8":  # optimum-quanto, imported only here (docs/models.md says why not torchao)
        from optimum.quanto import freeze, qint8, quantize

        quantize(getattr(pipe, name), weights=qint8)
        freeze(getattr(pipe, name))
        getattr(pipe, name).eval()  # its new layers are built in training mode
    for component, module in pipe.components.items():
        if isinstance(module, torch.nn.Module) and not (t5 == "cpu" and component == name):
            module.to(device)
    if t5 == "cpu":
        encoder = getattr(pipe, name).to("cpu")
        encoder.register_forward_pre_hook(_to_cpu, with_kwargs=True)
        encoder.register_forward_hook(_back_to(torch.device(device)), with_kwargs=True)
    return pipe


def _moved(value: Any, device: torch.device | str) -> Any:
    return value.to(device) if isinstance(value, torch.Tensor) else value


def _to_cpu(module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[tuple[Any, ...], dict[str, Any]]:
    return tuple(_moved(a, "cpu") for a in args), {k: _moved(v, "cpu") for k, v in kwargs.items()}


def _back_to(device: torch.device) -> Callable[..., Any]:
    def hook(module: Any, args: Any, kwargs: Any, output: Any) -> Any:
        if isinstance(output, tuple):
            return tuple(_moved(value, device) for value in output)
        for key, value in output.items():  # transformers' ModelOutput: an ordered dict with attributes
            output[key] = _moved(value, device)
        return output
    return hook


def held_bytes(module: torch.nn.Module, device: str | None = None) -> int:
    """Bytes of ``module``'s parameters and buffers as stored (fp8, GGUF blocks, quanto's int8 tensors and their
    scales), on ``device`` only when given: what it holds in memory, not what it computes in."""
    return sum(part.numel() * part.element_size() for tensor in (*module.parameters(), *module.buffers())
               if device is None or tensor.device.type == torch.device(device).type
               for part in stored_tensors(tensor))
