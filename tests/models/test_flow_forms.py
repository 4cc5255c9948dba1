"""Flux in the forms people deploy on 24 GB GPUs (docs/models.md "Flux and SD 3.5 on 24 GB GPUs"), each loaded
through the catalog and the store (``pipelines.loading.base_pipeline``) with no network, and run as a txt2img job.

The tiny forms (``runtime.models.tinyforms``) hold tiny-flux's own weights, so each is compared with the
directory: the same precision gives the same pixels; fp8, GGUF and int8 give close pixels (tolerances beside each,
from what the form keeps of each weight) and hold fewer bytes (parameters as stored, not time).
"""

from __future__ import annotations

import json
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from pipelines.flowload import held_bytes
from pipelines.loading import base_pipeline
from runtime.models import fluxlayout, tinyforms
from runtime.models.catalog import CATALOG_FILE, ModelError
from runtime.models.store import ModelStore, object_bytes
from runtime.worker import checkpoint
from tests.models.catalogs import write_catalog
from tests.pipelines.harness import Harness, interrupt_at, pixels, png

SIZE = {"width": 64, "height": 48}


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """HF_HUB_OFFLINE=1, and any connection at all refused: loading must not even try the Hub."""
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)

    def refuse(self: socket.socket, address: Any) -> None:
        raise OSError(f"no network in these tests: a connection to {address} was tried")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    yield


@pytest.fixture(scope="module")
def harness(tiny_models: Path) -> Harness:
    """One store for the module: each form loads once (the forms are read-only here)."""
    return Harness(ModelStore(tiny_models, "cpu"))


@pytest.fixture(scope="module")
def runs(harness: Harness) -> dict[str, tuple[np.ndarray, Any]]:
    """Each form's txt2img pixels and its loaded pipeline."""
    store = harness.store
    out = {}
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(socket.socket, "connect", lambda self, address: (_ for _ in ()).throw(OSError(address)))
        for model_id in ("tiny-flux", "tiny-sd3", *tinyforms.CATALOG):
            out[model_id] = (pixels(harness.run("txt2img", model=model_id, **SIZE)).astype(np.int16),
                             base_pipeline(store, model_id))
    return out


def test_the_transformer_only_file_gives_the_directory_pixels(runs: dict[str, Any]) -> None:
    """flux1-dev.safetensors' layout with the config directory's other components: the same weights, the same
    computation, so the same bytes (the converter splits fused matrices exactly; nothing is rounded)."""
    (single, pipe), (directory, reference) = runs["tiny-flux-single"], runs["tiny-flux"]
    assert np.array_equal(single, directory)
    a, b = pipe.transformer.state_dict(), reference.transformer.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_every_form_repeats_its_bytes(runs: dict[str, Any], harness: Harness) -> None:
    """A second job gives the same bytes, every module in eval mode: diffusers builds a single file's T5 in training
    mode, and optimum-quanto's layers are new modules, whose dropout would draw other pixels on every run."""
    for model_id, (first, pipe) in runs.items():
        modules = [m for c in pipe.components.values() if isinstance(c, torch.nn.Module) for m in c.modules()]
        assert not any(module.training for module in modules), model_id
        assert np.array_equal(pixels(harness.run("txt2img", model=model_id, **SIZE)), first), model_id


def test_a_resumed_job_on_each_quantized_form_is_byte_identical(harness: Harness) -> None:
    """A job stopped after a step and resumed from its checkpoint gives the bytes of an uninterrupted one, on the
    forms whose layers are widened as they run (fp8, GGUF) and with T5 in int8 or on the CPU."""
    for model_id in ("tiny-flux-fp8", "tiny-flux-q4k", "tiny-flux-t5int8", "tiny-flux-t5cpu", "tiny-sd3-single",
                     "tiny-sd3-q8"):
        job = {"model": model_id, "steps": 3, **SIZE}
        reference = png(harness.run("txt2img", **job))
        for stop in (1, 2):
            state = checkpoint.load(interrupt_at(harness, "txt2img", stop, **job), "f" * 64)
            assert png(harness.run("txt2img", resume_from=state, **job)) == reference, (model_id, stop)


def test_loras_run_on_the_forms(runs: dict[str, Any], tiny_models: Path) -> None:
    """A LoRA changes the pixels, exactly as on the directory for a file of the same precision, and a job without it
    afterwards gives the first bytes again (peft makes the LoRA's layers in the compute dtype on fp8 and GGUF layers,
    not in fp8). A store of its own: loading adapters changes the modules that the other tests compare."""
    harness, lora = Harness(ModelStore(tiny_models, "cpu")), [{"id": "tiny-lora-flux", "weight": 1.0}]
    with_lora = {}
    for model_id in ("tiny-flux", "tiny-flux-single", "tiny-flux-fp8", "tiny-flux-q8"):
        with_lora[model_id] = pixels(harness.run("txt2img", model=model_id, loras=lora, **SIZE)).astype(np.int16)
        first = runs[model_id][0]
        assert np.abs(with_lora[model_id] - first).mean() > 5, model_id
        assert np.array_equal(pixels(harness.run("txt2img", model=model_id, **SIZE)), first), model_id
    assert np.array_equal(with_lora["tiny-flux-single"], with_lora["tiny-flux"])
    for model_id in ("tiny-flux-fp8", "tiny-flux-q8"):  # as close as without the LoRA
        assert 0 < np.abs(with_lora[model_id] - with_lora["tiny-flux"]).mean() < 4, model_id


def test_the_sd35_medium_file_gives_the_directory_pixels(runs: dict[str, Any], tiny_models: Path) -> None:
    """sd3.5_medium.safetensors' layout (transformer and VAE, read by diffusers' own converters) with the text
    encoders from the config directory: the same bytes as the directory. The file is written by the inverse of
    diffusers' converter (``runtime.models.sd3layout``), checked here against it."""
    from diffusers.loaders.single_file_utils import convert_sd3_transformer_checkpoint_to_diffusers
    from safetensors.torch import load_file

    from runtime.models import sd3layout

    (single, pipe), (directory, reference) = runs["tiny-sd3-single"], runs["tiny-sd3"]
    assert np.array_equal(single, directory)
    for part in ("transformer", "vae", "text_encoder", "text_encoder_2", "text_encoder_3"):
        a, b = getattr(pipe, part).state_dict(), getattr(reference, part).state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), part
    state = load_file(tiny_models / "tiny-sd3" / "transformer" / "diffusion_pytorch_model.safetensors")
    back = convert_sd3_transformer_checkpoint_to_diffusers(sd3layout.to_original(state))
    assert back.keys() == state.keys() and all(torch.equal(back[k], state[k]) for k in state)


def test_fp8_keeps_the_transformer_in_fp8_and_computes_in_full_precision(runs: dict[str, Any],
                                                                         tiny_models: Path) -> None:
    (fp8, pipe), (directory, reference) = runs["tiny-flux-fp8"], runs["tiny-flux"]
    assert pipe.transformer.transformer_blocks[0].attn.to_q.weight.dtype == torch.float8_e4m3fn
    assert pipe.transformer.x_embedder.weight.dtype == torch.float8_e4m3fn
    # its matrices at 1 byte instead of float32's 4 (norms and embeddings stay float32): under half
    assert held_bytes(pipe.transformer) < 0.5 * held_bytes(reference.transformer)
    # e4m3 keeps 3 mantissa bits: each weight within 1/16 of itself; measured 0.9 of 255 on average, 10 at most
    difference = np.abs(fp8 - directory)
    assert difference.any() and difference.mean() < 4, difference.mean()
    # read straight into fp8 (pipelines.flowload._narrow), it is what diffusers' own way makes: the file widened to
    # float32, then layerwise casting enabled
    from diffusers import FluxTransformer2DModel
    from diffusers.models.model_loading_utils import load_state_dict

    file = tiny_models / tinyforms.FILES["tiny-flux-fp8"]
    widened = FluxTransformer2DModel.from_single_file(
        fluxlayout.to_diffusers(load_state_dict(str(file))), config=str(tiny_models / tinyforms.CONFIGS_ONLY),
        subfolder="transformer", local_files_only=True, torch_dtype=torch.float32)
    widened.enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn, compute_dtype=torch.float32)
    a, b = pipe.transformer.state_dict(), widened.state_dict()
    assert a.keys() == b.keys()
    assert all(a[k].dtype == b[k].dtype and torch.equal(a[k].float(), b[k].float()) for k in a)
    # the text encoders and VAE came from the same file (ComfyUI's all-in-one), unchanged
    for part in ("text_encoder", "text_encoder_2", "vae"):
        a, b = getattr(pipe, part).state_dict(), getattr(reference, part).state_dict()
        assert all(torch.equal(a[k], b[k]) for k in b), part


def test_gguf_q8_and_q4_hold_their_blocks_and_stay_close(runs: dict[str, Any]) -> None:
    from diffusers.quantizers.gguf.utils import GGUFParameter

    directory, reference = runs["tiny-flux"]
    full = held_bytes(reference.transformer)
    (q8, q8_pipe), (q4, q4_pipe) = runs["tiny-flux-q8"], runs["tiny-flux-q4"]
    for pipe, kind in ((q8_pipe, "Q8_0"), (q4_pipe, "Q4_0")):
        weight = pipe.transformer.single_transformer_blocks[0].proj_out.weight
        assert isinstance(weight, GGUFParameter) and weight.quant_type.name == kind
    # 32 weights per block: Q8_0 in 34 bytes (8.5 bits), Q4_0 in 18 (4.5 bits), against float32's 32 bits
    assert held_bytes(q4_pipe.transformer) < held_bytes(q8_pipe.transformer) < 0.3 * full
    # Q8_0 rounds each weight to 1/127 of its block's largest (measured 0.12 of 255 on average), Q4_0 to 1/7 (2.6)
    d8, d4 = np.abs(q8 - directory).mean(), np.abs(q4 - directory).mean()
    assert 0 < d8 < 1 and d8 < d4 < 8, (d8, d4)


def test_an_sd35_gguf_loads_through_diffusers_converter(runs: dict[str, Any]) -> None:
    """city96's SD 3.5 files: the original layout, converted by diffusers' own converter, quantized tensors too."""
    (q8, pipe), (directory, reference) = runs["tiny-sd3-q8"], runs["tiny-sd3"]
    assert pipe.transformer.context_embedder.weight.quant_type.name == "Q8_0"
    assert held_bytes(pipe.transformer) < held_bytes(reference.transformer)  # only some matrices are 32 wide
    difference = np.abs(q8 - directory)
    assert difference.any() and difference.mean() < 1, difference.mean()  # Q8_0 (measured 0.05 of 255)


def test_sd35_in_fp8_with_t5_in_int8(runs: dict[str, Any], models: Path) -> None:
    """The options together on SD 3.5's single file: the transformer read straight into fp8 through diffusers'
    converter, T5 in int8; close to the directory, with fewer bytes in both."""
    catalog = _forms(models)
    store = write_catalog(models, {**catalog, "sd3-small": {**catalog["tiny-sd3-single"],
                                                            "storage_dtype": "float8_e4m3fn", "t5": "int8"}})
    small = pixels(Harness(store).run("txt2img", model="sd3-small", **SIZE)).astype(np.int16)
    pipe, (directory, reference) = base_pipeline(store, "sd3-small"), runs["tiny-sd3"]
    assert pipe.transformer.transformer_blocks[0].attn.to_q.weight.dtype == torch.float8_e4m3fn
    # its matrices at 1 byte instead of 4; its 64x64 table of positions (a third of this tiny transformer, 0.45 GB of
    # SD 3.5 medium's 5 GB) stays float32 (diffusers' layerwise casting skips pos_embed)
    assert held_bytes(pipe.transformer) < 0.75 * held_bytes(reference.transformer)
    assert held_bytes(pipe.text_encoder_3) < 0.5 * held_bytes(reference.text_encoder_3)
    difference = np.abs(small - directory)  # fp8's 3 mantissa bits, as Flux's
    assert difference.any() and difference.mean() < 4, difference.mean()


def test_gguf_k_quants_load(runs: dict[str, Any]) -> None:
    """Q4_K blocks (written by ``runtime.models.ggufk``, read back by ``gguf``'s own dequantizer here and by
    diffusers' in the job) where a matrix is 256 wide, Q4_0 elsewhere."""
    import gguf
    from gguf import quants

    from runtime.models.ggufk import quantize_q4_k

    (q4k, pipe), (directory, _) = runs["tiny-flux-q4k"], runs["tiny-flux"]
    embedder = pipe.transformer.time_text_embed.timestep_embedder.linear_1.weight
    assert embedder.quant_type.name == "Q4_K"
    assert pipe.transformer.single_transformer_blocks[0].proj_out.weight.quant_type.name == "Q4_0"
    # 4-bit steps of a sub-block's range: as close as Q4_0 (measured 2.6 of 255 on average)
    difference = np.abs(q4k - directory)
    assert difference.any() and difference.mean() < 8, difference.mean()
    rows = np.random.default_rng(0).normal(size=(4, 512)).astype(np.float32)
    back = quants.dequantize(quantize_q4_k(rows), gguf.GGMLQuantizationType.Q4_K)
    # within half a step of the sub-block's 15 steps (its range is under 8 standard deviations here), and unbiased
    assert np.abs(back - rows).max() < 8 / 15 / 2 + 0.02 and abs((back - rows).mean()) < 0.02


def test_t5_in_int8_holds_fewer_bytes_and_stays_close(runs: dict[str, Any]) -> None:
    (int8, pipe), (directory, reference) = runs["tiny-flux-t5int8"], runs["tiny-flux"]
    # its linear layers' weights at 1 byte plus a scale per row, instead of 4 (the token embedding stays float32)
    assert held_bytes(pipe.text_encoder_2) < 0.5 * held_bytes(reference.text_encoder_2)
    assert held_bytes(pipe.transformer) == held_bytes(reference.transformer)
    assert object_bytes(pipe.text_encoder_2) == held_bytes(pipe.text_encoder_2)  # what the store's budget counts
    # per-row int8 weights (1/127 of the row's largest); T5 only conditions: measured 0.02 of 255 on average
    difference = np.abs(int8 - directory)
    assert difference.any() and difference.mean() < 1, difference.mean()


def test_t5_on_the_cpu_gives_the_same_pixels(runs: dict[str, Any]) -> None:
    (cpu, pipe), (directory, _) = runs["tiny-flux-t5cpu"], runs["tiny-flux"]
    assert np.array_equal(cpu, directory)  # the same computation, on the same (CPU) device here
    assert pipe.text_encoder_2._forward_hooks and pipe.text_encoder_2._forward_pre_hooks


def test_t5_on_the_cpu_stays_there_and_hands_its_output_to_the_device(tiny_models: Path) -> None:
    """With another device (meta: shapes without data), the other components go there, T5 stays on the CPU, and
    its output arrives on the device, as diffusers' prompt encoding expects."""
    from diffusers import FluxPipeline

    from pipelines.flowload import place

    pipe = place(FluxPipeline.from_pretrained(tiny_models / "tiny-flux", local_files_only=True), "meta", "cpu")
    assert pipe.transformer.device.type == pipe.vae.device.type == pipe.text_encoder.device.type == "meta"
    assert pipe.text_encoder_2.device.type == "cpu"
    assert pipe._execution_device.type == "meta"
    ids = pipe.tokenizer_2("a red fox", return_tensors="pt").input_ids
    # (the ids stay on the CPU here: meta tensors have no data to move; the GPU check moves them from cuda)
    assert pipe.text_encoder_2(ids, output_hidden_states=False)[0].device.type == "meta"


def test_the_converter_matches_diffusers_at_flux1_width() -> None:
    """diffusers' own converter only reads FLUX.1's width (3072), so the two are compared there: a FLUX.1-shaped
    state dict (one block of each kind; one column per matrix, since both only split rows) goes to the original
    layout and back through each, which must agree with each other and with where it started."""
    from accelerate import init_empty_weights
    from diffusers import FluxTransformer2DModel
    from diffusers.loaders.single_file_utils import convert_flux_transformer_checkpoint_to_diffusers

    with init_empty_weights():
        model = FluxTransformer2DModel(num_layers=1, num_single_layers=1, guidance_embeds=True)
    generator = torch.Generator().manual_seed(0)
    state = {key: torch.randn(value.shape[0], *([1] if value.ndim > 1 else []), generator=generator)
             for key, value in model.state_dict().items()}
    original = {fluxlayout.PREFIX + key: value for key, value in fluxlayout.to_original(state).items()}
    ours, theirs = fluxlayout.to_diffusers(original), convert_flux_transformer_checkpoint_to_diffusers(dict(original))
    assert ours.keys() == theirs.keys() == state.keys()
    assert all(torch.equal(ours[k], theirs[k]) and torch.equal(ours[k], state[k]) for k in state)


def _forms(models: Path) -> dict[str, Any]:
    return json.loads((models / CATALOG_FILE).read_text())["models"]


def test_a_bad_file_is_refused_naming_the_model(models: Path) -> None:
    catalog = _forms(models)
    gguf = models / tinyforms.FILES["tiny-flux-q8"]
    (models / "bad.gguf").write_bytes(gguf.read_bytes()[: gguf.stat().st_size // 2])  # truncated
    shutil.copy(models / "tiny-sd" / "vae" / "diffusion_pytorch_model.safetensors", models / "vae.safetensors")
    store = write_catalog(models, {**catalog,
                                   "cut": {**catalog["tiny-flux-q8"], "path": "bad.gguf"},
                                   "foreign": {**catalog["tiny-flux-single"], "path": "vae.safetensors"}})
    for model_id, words in (("cut", "bad.gguf"), ("foreign", "vae.safetensors")):
        with pytest.raises(ModelError) as caught:
            base_pipeline(store, model_id)
        assert caught.value.code == "invalid_model_file", caught.value
        assert f"model {model_id!r}" in str(caught.value) and words in str(caught.value)
    assert "double_blocks.0.img_attn.qkv.weight" in str(_refusal(store, "foreign"))


def _refusal(store: ModelStore, model_id: str) -> ModelError:
    with pytest.raises(ModelError) as caught:
        base_pipeline(store, model_id)
    return caught.value


def test_the_catalog_keeps_the_forms_to_flux_and_sd3(models: Path) -> None:
    catalog = _forms(models)
    for entry, words in (({"path": "tiny-sd", "storage_dtype": "float8_e4m3fn"}, "'storage_dtype' is for Flux"),
                         ({"path": "tiny-sdxl", "family": "sdxl", "t5": "cpu"}, "'t5' is for Flux"),
                         ({"path": "l.gguf", "kind": "lora", "family": "flux"}, "a '.gguf' file is"),
                         ({**catalog["tiny-flux-q8"], "storage_dtype": "float8_e4m3fn"}, "its own quantization")):
        with pytest.raises(ModelError, match=words):
            write_catalog(models, {"x": entry}).catalog  # noqa: B018
    # the config directory of a file may hold the other components' weights, never the transformer's
    shutil.copy(models / "tiny-flux" / "transformer" / "diffusion_pytorch_model.safetensors",
                models / tinyforms.CONFIG / "transformer")
    with pytest.raises(ModelError, match="no transformer weights") as caught:
        write_catalog(models, catalog).source("tiny-flux-single")
    assert caught.value.code == "invalid_model_config"
