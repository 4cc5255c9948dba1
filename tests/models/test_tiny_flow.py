"""The tiny Flux.1 and SD 3.5 models: shaped as the real ones, loaded offline from their saved files, run by
diffusers' own pipelines, repeatable, and with a ControlNet and LoRAs (in each format people share) that change
the pixels."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, get_args

import numpy as np
import pytest
import torch
from PIL import Image

from runtime.config import Settings, Variant
from runtime.models import tiny, tinyflow
from runtime.models.catalog import Catalog, CatalogEntry, ModelError

SIZE = 32  # a multiple of 16, as Flux and SD 3 need
PROMPT = "a photo of a red fox"


def load(models: Path, model_id: str) -> Any:
    from diffusers import DiffusionPipeline

    return DiffusionPipeline.from_pretrained(models / model_id, use_safetensors=True, local_files_only=True)


def run(pipe: Any, seed: int = 1, **inputs: Any) -> np.ndarray:
    inputs = {"prompt": PROMPT, "height": SIZE, "width": SIZE, "num_inference_steps": 2, **inputs}
    # diffusers' SD 3 ControlNet pipeline samples the control image's latents from torch's global generator, not
    # from the one it is given (Flux's uses the given one): seeded here too, or it would not repeat
    torch.manual_seed(seed)
    image = pipe(**inputs, generator=torch.Generator().manual_seed(seed)).images[0]
    assert image.size == (inputs["width"], inputs["height"])
    return np.asarray(image, dtype=np.int16)


def moved(a: np.ndarray, b: np.ndarray) -> float:
    """How far two images are apart: the mean absolute difference, in levels of 255."""
    return float(np.abs(a - b).mean())


def inpaint_inputs() -> dict[str, Any]:
    mask = Image.new("L", (SIZE, SIZE), 0)
    mask.paste(255, (8, 8, 24, 24))
    return {"image": Image.new("RGB", (SIZE, SIZE), (200, 60, 40)), "mask_image": mask}


@pytest.fixture(scope="module")
def pipes(tiny_models: Path) -> dict[str, Any]:
    return {model_id: load(tiny_models, model_id) for model_id in tiny.FLOW_MODELS}


def test_the_catalog_lists_them_with_their_families_variants_and_file_names(tiny_models: Path) -> None:
    catalog = Catalog.load(tiny_models)
    assert {m: (catalog.models[m].family, catalog.models[m].variant) for m in tiny.FLOW_MODELS} == tiny.FLOW_MODELS
    assert catalog.names().models["flux1-dev-fp8.safetensors"] == "tiny-flux"
    assert catalog.names().models["sd3.5_large_turbo.safetensors"] == "tiny-sd3-turbo"
    assert {m: catalog.models[m].family for m in ("tiny-flux-controlnet", "tiny-sd3-controlnet", "tiny-lora-flux",
                                                  "tiny-lora-flux-kohya", "tiny-lora-flux-xlabs", "tiny-lora-sd3")} == {
        "tiny-flux-controlnet": "flux", "tiny-sd3-controlnet": "sd3", "tiny-lora-flux": "flux",
        "tiny-lora-flux-kohya": "flux", "tiny-lora-flux-xlabs": "flux", "tiny-lora-sd3": "sd3"}
    settings = Settings()
    assert {m: settings.model_families[m] for m in tiny.FLOW_MODELS} == {m: f for m, (f, _) in tiny.FLOW_MODELS.items()}
    assert {m: settings.model_variants.get(m) for m in tiny.FLOW_MODELS} == {m: v for m, (_, v) in
                                                                             tiny.FLOW_MODELS.items()}
    assert {*tiny.FLOW_MODELS} <= {*settings.models} and {"tiny-flux-controlnet", "tiny-sd3-controlnet"} <= {
        *settings.controlnets} and {*tiny.LORA_IDS["flux"], *tiny.LORA_IDS["sd3"]} <= {*settings.loras}


def test_they_are_shaped_as_flux_and_sd35(pipes: dict[str, Any]) -> None:
    dev, schnell, fill = pipes["tiny-flux"], pipes["tiny-flux-schnell"], pipes["tiny-flux-fill"]
    assert dev.transformer.config.guidance_embeds and hasattr(dev.transformer.time_text_embed, "guidance_embedder")
    assert not schnell.transformer.config.guidance_embeds
    assert not hasattr(schnell.transformer.time_text_embed, "guidance_embedder")
    assert dev.scheduler.config.use_dynamic_shifting and dev.scheduler.config.max_shift == 1.15
    assert not schnell.scheduler.config.use_dynamic_shifting and schnell.scheduler.config.shift == 1.0
    # Fill: packed latents (4 x 16) + packed masked-image latents (4 x 16) + the packed 8x8 pixel mask (4 x 64)
    assert (fill.transformer.config.in_channels, fill.transformer.config.out_channels) == (384, 64)
    assert type(fill).__name__ == "FluxFillPipeline"
    sd3 = pipes["tiny-sd3"]
    assert sd3.text_encoder.config.hidden_size != sd3.text_encoder_2.config.hidden_size  # CLIP-L and CLIP-G
    assert sd3.transformer.config.qk_norm == "rms_norm" and sd3.transformer.config.dual_attention_layers
    assert not pipes["tiny-sd3-turbo"].transformer.config.dual_attention_layers  # SD 3.5 large's shape
    assert sd3.transformer.config.num_layers >= 10  # skip-layer guidance's default layers are 7, 8 and 9
    assert sd3.scheduler.config.shift == 3.0
    for pipe in pipes.values():
        assert pipe.vae_scale_factor == 8 and pipe.vae.config.latent_channels == 16
        assert pipe.vae.config.shift_factor and not pipe.vae.config.use_quant_conv
        t5 = pipe.tokenizer_3 if hasattr(pipe, "tokenizer_3") else pipe.tokenizer_2
        assert type(t5).__name__.startswith("T5") and t5.model_max_length == 512
        assert (t5.pad_token_id, t5.eos_token_id, t5.unk_token_id) == (0, 1, 2)  # T5's own ids
        assert t5("the fox").input_ids[-1] == 1


def test_t5s_tokenizer_loads_offline_from_its_directory(tiny_models: Path) -> None:
    from transformers import T5TokenizerFast

    for model_id, sub in (("tiny-flux", "tokenizer_2"), ("tiny-sd3", "tokenizer_3")):
        index = json.loads((tiny_models / model_id / "model_index.json").read_text())
        assert index[sub] == ["transformers", "T5TokenizerFast"]  # as FLUX.1's and SD 3.5's own repositories
        tokenizer = T5TokenizerFast.from_pretrained(tiny_models / model_id / sub, local_files_only=True)
        assert tokenizer("a red fox").input_ids == tinyflow.t5_tokenizer()("a red fox").input_ids


@pytest.mark.parametrize("model_id", list(tiny.FLOW_MODELS))
def test_each_runs_in_its_pipeline_and_repeats_byte_for_byte(pipes: dict[str, Any], model_id: str) -> None:
    inputs = inpaint_inputs() if model_id == "tiny-flux-fill" else {}
    first = run(pipes[model_id], **inputs)
    assert first.std() > 1  # an image, not a flat field
    assert run(pipes[model_id], **inputs).tobytes() == first.tobytes()
    assert moved(run(pipes[model_id], seed=2, **inputs), first) > 2


def test_freshly_built_t5s_are_in_eval_mode_so_a_seed_repeats() -> None:
    """A fresh T5 has dropout on; the built pipelines (not only the saved ones, which load in eval mode) repeat."""
    flux = tinyflow.flux_pipeline(tiny._tokenizer())
    sd3 = tinyflow.sd3_pipeline(tiny._tokenizer(), tiny._tokenizer(pad_token="!"))
    assert not flux.text_encoder_2.training and not sd3.text_encoder_3.training
    for pipe in (flux, sd3):
        assert run(pipe).tobytes() == run(pipe).tobytes()


@pytest.mark.parametrize(("model_id", "controlnet_id", "controlnet_cls", "pipeline"), [
    ("tiny-flux", "tiny-flux-controlnet", "FluxControlNetModel", "FluxControlNetPipeline"),
    ("tiny-sd3", "tiny-sd3-controlnet", "SD3ControlNetModel", "StableDiffusion3ControlNetPipeline")])
def test_the_control_image_and_its_scale_change_the_pixels(pipes: dict[str, Any], tiny_models: Path, model_id: str,
                                                          controlnet_id: str, controlnet_cls: str,
                                                          pipeline: str) -> None:
    import diffusers

    controlnet = getattr(diffusers, controlnet_cls).from_pretrained(tiny_models / controlnet_id, use_safetensors=True,
                                                                    local_files_only=True)
    components = {k: v for k, v in pipes[model_id].components.items()
                  if k not in ("image_encoder", "feature_extractor")}
    pipe = getattr(diffusers, pipeline)(**components, controlnet=controlnet)
    edges = Image.new("RGB", (SIZE, SIZE), (0, 0, 0))
    edges.paste((255, 255, 255), (4, 12, 28, 20))
    first = run(pipe, control_image=edges)
    assert run(pipe, control_image=edges).tobytes() == first.tobytes()
    assert moved(run(pipe, control_image=Image.new("RGB", (SIZE, SIZE), (0, 0, 255))), first) > 2
    assert moved(run(pipe, control_image=edges, controlnet_conditioning_scale=0.3), first) > 2


@pytest.mark.parametrize(("model_id", "lora_id", "marker"), [
    ("tiny-flux", "tiny-lora-flux", "transformer.transformer_blocks.0.attn.to_q.lora_A.weight"),
    ("tiny-flux", "tiny-lora-flux-kohya", "lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight"),
    ("tiny-flux", "tiny-lora-flux-xlabs", "double_blocks.0.processor.qkv_lora1.down.weight"),
    ("tiny-sd3", "tiny-lora-sd3", "transformer.transformer_blocks.9.attn.to_q.lora_A.weight")])
def test_each_lora_format_loads_and_changes_the_pixels(tiny_models: Path, model_id: str, lora_id: str,
                                                       marker: str) -> None:
    from safetensors import safe_open

    path = tiny_models / tiny.CATALOG[lora_id]["path"]
    with safe_open(path, "pt") as weights:
        assert marker in weights.keys()  # noqa: SIM118 (a safetensors file is not a mapping)
    pipe = load(tiny_models, model_id)  # its own: a loaded adapter stays
    before = run(pipe)
    pipe.load_lora_weights(path, adapter_name="tiny")
    assert pipe.get_list_adapters() == {"transformer": ["tiny"]}
    assert moved(run(pipe), before) > 2
    pipe.set_adapters(["tiny"], adapter_weights=[0.0])
    assert run(pipe).tobytes() == before.tobytes()


def test_the_loras_differ_from_each_other(tiny_models: Path) -> None:
    from safetensors.torch import load_file

    files = [load_file(tiny_models / tiny.CATALOG[lora]["path"]) for lora in ("tiny-lora-flux", "tiny-lora-sd3")]
    weights = [next(iter(sorted(f.items())))[1] for f in files]
    assert not torch.equal(weights[0].flatten()[:8], weights[1].flatten()[:8])


def test_two_builds_are_identical(tiny_models: Path, tmp_path: Path) -> None:
    tiny.build_tiny_models(tmp_path / "again")
    names = [p.relative_to(tiny_models) for p in sorted(tiny_models.rglob("*")) if p.is_file() and p.name[0] != "."]
    assert names == [p.relative_to(tmp_path / "again") for p in sorted((tmp_path / "again").rglob("*"))
                     if p.is_file() and p.name[0] != "."]
    assert [n for n in names if (tiny_models / n).read_bytes() != (tmp_path / "again" / n).read_bytes()] == []


@pytest.mark.parametrize(("family", "variant", "why"), [
    ("sd3", "schnell", "family sd3 has no 'schnell' variant: 'schnell' is FLUX.1 schnell: set family to flux"),
    ("sdxl", "schnell", "family sdxl has no 'schnell' variant: 'schnell' is FLUX.1 schnell: set family to flux"),
    ("flux", "turbo", "family flux has no 'turbo' variant: 'turbo' is SD 3.5 large turbo: set family to sd3"),
    ("sdxl", "turbo", "family sdxl has no 'turbo' variant: 'turbo' is SD 3.5 large turbo: set family to sd3 (an SDXL "
                      "Turbo checkpoint is a plain sdxl model, without a variant)"),
    ("sd3", "inpainting", "family sd3 has no 'inpainting' variant: there is no SD 3 inpainting checkpoint"),
    ("flux", "refiner", "family flux has no 'refiner' variant: a refiner is an SDXL model: set family to sdxl")])
def test_a_variant_of_another_family_is_refused_naming_the_entry(tmp_path: Path, family: str, variant: str,
                                                                  why: str) -> None:
    (tmp_path / "catalog.json").write_text(json.dumps({"models": {"m": {"path": "m", "family": family,
                                                                        "variant": variant}}}))
    with pytest.raises(ModelError) as caught:
        Catalog.load(tmp_path)
    assert caught.value.code == "catalog_invalid" and f"models.m: {why}" in str(caught.value)


@pytest.mark.parametrize(("family", "variant"), [("flux", "schnell"), ("flux", "inpainting"), ("sd3", "turbo"),
                                                 ("sdxl", "refiner"), ("sd2", "inpainting"), ("sd3", None)])
def test_each_variant_is_accepted_in_its_families(family: str, variant: str | None) -> None:
    assert CatalogEntry(path="m", family=family, variant=variant).variant == variant


def test_the_settings_variants_are_the_catalogs_and_read_from_the_environment() -> None:
    variants, none = get_args(CatalogEntry.model_fields["variant"].annotation)  # Literal[...] | None
    assert set(get_args(Variant)) == set(get_args(variants)) and none is type(None)
    settings = Settings.from_env({"SPOTGEN_MODEL_VARIANTS": "a=schnell, b=turbo"})
    assert settings.model_variants == {"a": "schnell", "b": "turbo"}
    assert Settings.from_env({"SPOTGEN_MODEL_VARIANTS": ""}).model_variants == {}
    assert Settings.from_env(settings.to_env()).model_variants == settings.model_variants
    for wrong in ("a=fast", "schnell"):
        with pytest.raises(SystemExit, match="SPOTGEN_MODEL_VARIANTS"):
            Settings.from_env({"SPOTGEN_MODEL_VARIANTS": wrong})
