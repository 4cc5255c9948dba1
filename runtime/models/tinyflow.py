"""The tiny flow-matching models: Flux.1- and SD 3.5-shaped pipelines, their ControlNets, and T5's tokenizer.

They are shaped as the real ones where the code that runs them looks: Flux's 16-channel VAE without quant convs
(latents shifted and scaled by the VAE's ``shift_factor`` and ``scaling_factor``), packed 2x2 latent patches
(so sizes are multiples of 16), a CLIP text encoder for the pooled vector and a T5 encoder for the sequence
(512 tokens), guidance embedded in dev's transformer and absent from schnell's; Flux Fill's transformer takes
the latents, the masked image's latents and the 8x8-packed mask (384 channels, as FLUX.1-Fill-dev); SD 3.5
medium's two projected CLIP encoders of different widths plus T5, RMS-normed queries and keys, dual attention in
the first blocks (not in 3.5 large's) and enough blocks (10) for skip-layer guidance's default layers 7, 8 and 9.
Widths are 16-96, so each weighs 1-2 MB and runs in milliseconds on a CPU. The T5 tokenizer is a small Unigram
model made here with ``tokenizers``, with T5's ids for ``<pad>`` (0), ``</s>`` (1) and ``<unk>`` (2).

A fresh T5 has dropout on (transformers builds models in training mode): left so, the same seed would give other
pixels on every run. Every T5 here is put in eval mode; ``from_pretrained`` does the same for the saved ones.
"""

from __future__ import annotations

from typing import Any

from runtime.models.tinynets import _text_encoder

SEED = 100
T5_MAX_LENGTH = 512
#: Flux's and SD 3's VAE latent normalisation (their VAEs' ``shift_factor`` and ``scaling_factor``).
FLUX_VAE = {"shift_factor": 0.1159, "scaling_factor": 0.3611}
SD3_VAE = {"shift_factor": 0.0609, "scaling_factor": 1.5305}
#: FLUX.1-dev's scheduler (resolution-dependent shift); schnell's is a plain shift of 1.
FLUX_DEV_SCHEDULER = {"num_train_timesteps": 1000, "shift": 3.0, "use_dynamic_shifting": True, "base_shift": 0.5,
                      "max_shift": 1.15, "base_image_seq_len": 256, "max_image_seq_len": 4096}
FLUX_SCHNELL_SCHEDULER = {**FLUX_DEV_SCHEDULER, "shift": 1.0, "use_dynamic_shifting": False}
SD3_SCHEDULER = {"num_train_timesteps": 1000, "shift": 3.0}
LATENT_CHANNELS = 16
#: Flux's transformer: 2 heads of 16 (rotary axes 4 + 6 + 6 = 16), one double and two single blocks.
FLUX_HEADS, FLUX_HEAD_DIM, FLUX_ROPE = 2, 16, (4, 6, 6)
#: SD 3.5 medium's transformer: 10 blocks, the first five with dual attention (3.5 medium: 13 of 24).
SD3_LAYERS, SD3_DUAL_ATTENTION = 10, (0, 1, 2, 3, 4)
# Words the T5 tokenizer knows whole; any other word is spelt in letters (Unigram picks the likeliest split).
_T5_WORDS = ("the", "a", "of", "in", "and", "with", "photo", "fox", "cat", "dog", "red", "blue", "green", "tree")


def t5_tokenizer() -> Any:
    """A T5-style Unigram tokenizer made with ``tokenizers``: T5's special ids, '▁' word starts, letters, digits and
    a few whole words as pieces, ``</s>`` after the text, as T5's own ``tokenizer.json`` has it; nothing is
    downloaded. Wrapped by ``tokenizer_object``, which transformers 4 and 5 both take."""
    import string

    from tokenizers import Tokenizer, decoders, pre_tokenizers, processors
    from tokenizers.models import Unigram
    from transformers import T5TokenizerFast

    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    vocab += [(f"▁{word}", -3.0) for word in _T5_WORDS]
    symbols = string.ascii_letters + string.digits + ".,!?'-:;()"
    vocab += [(f"▁{char}", -6.0) for char in symbols] + [(char, -5.0) for char in symbols]
    tokenizer = Tokenizer(Unigram(vocab, unk_id=2, byte_fallback=False))
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")])
    tokenizer.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    tokenizer.post_processor = processors.TemplateProcessing(
        single=["$A", "</s>"], pair=["$A", "</s>", "$B", "</s>"], special_tokens=[("</s>", 1)])
    return T5TokenizerFast(tokenizer_object=tokenizer, eos_token="</s>", unk_token="<unk>", pad_token="<pad>",
                           extra_ids=0, model_max_length=T5_MAX_LENGTH)


def t5_encoder(tokenizer: Any, d_model: int, seed: int) -> Any:
    """A two-layer T5 v1.1 encoder (gated GELU, as Flux's and SD 3's T5-XXL), in eval mode (see the docstring)."""
    import torch
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(seed)
    config = T5Config(vocab_size=len(tokenizer), d_model=d_model, d_kv=8, d_ff=64, num_layers=2,
                      num_heads=4, relative_attention_num_buckets=8, feed_forward_proj="gated-gelu",
                      pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                      decoder_start_token_id=tokenizer.pad_token_id, tie_word_embeddings=False)
    return T5EncoderModel(config).eval()


def flux_pipeline(clip_tokenizer: Any, variant: str | None = None) -> Any:
    """A Flux.1-shaped pipeline: dev (``variant=None``: guidance embedded), ``schnell`` (no guidance embedding,
    a shift of 1) or ``inpainting`` (Fill: a FluxFillPipeline whose transformer takes 384 channels)."""
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxFillPipeline, FluxPipeline, FluxTransformer2DModel

    seed = SEED + {None: 0, "schnell": 10, "inpainting": 20}[variant]
    packed = 4 * LATENT_CHANNELS  # a 2x2 patch of latents is one token
    # Fill's tokens also carry the masked image's packed latents and the packed 8x8 pixel mask (4 * 64 values).
    in_channels = packed + (packed + 4 * 64 if variant == "inpainting" else 0)
    torch.manual_seed(seed)
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=in_channels, out_channels=packed, num_layers=1, num_single_layers=2,
        attention_head_dim=FLUX_HEAD_DIM, num_attention_heads=FLUX_HEADS, joint_attention_dim=32,
        pooled_projection_dim=32, guidance_embeds=variant != "schnell", axes_dims_rope=FLUX_ROPE)
    torch.manual_seed(seed + 1)
    vae = _vae(**FLUX_VAE)
    torch.manual_seed(seed + 2)
    text_encoder = _text_encoder(clip_tokenizer)
    tokenizer_2 = t5_tokenizer()
    text_encoder_2 = t5_encoder(tokenizer_2, d_model=32, seed=seed + 3)
    scheduler = FlowMatchEulerDiscreteScheduler(
        **(FLUX_SCHNELL_SCHEDULER if variant == "schnell" else FLUX_DEV_SCHEDULER))
    parts = {"scheduler": scheduler, "vae": vae, "text_encoder": text_encoder, "tokenizer": clip_tokenizer,
             "text_encoder_2": text_encoder_2, "tokenizer_2": tokenizer_2, "transformer": transformer}
    if variant == "inpainting":
        return FluxFillPipeline(**parts)
    return FluxPipeline(**parts, image_encoder=None, feature_extractor=None)


def sd3_pipeline(tokenizer: Any, tokenizer_2: Any, large: bool = False) -> Any:
    """An SD 3.5 medium-shaped pipeline: CLIP-L (32 wide) and CLIP-G (48 wide), both projected, whose hidden
    states are concatenated and zero-padded to T5's width (96) before T5's tokens follow; their two pooled
    projections (32 + 48) condition the transformer with the timestep. ``large``: SD 3.5 large's (and large
    turbo's) shape instead, without dual attention."""
    seed = SEED + (40 if large else 30)
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline

    torch.manual_seed(seed)
    transformer = SD3Transformer2DModel(
        sample_size=32, patch_size=2, in_channels=LATENT_CHANNELS, out_channels=LATENT_CHANNELS,
        num_layers=SD3_LAYERS, attention_head_dim=8, num_attention_heads=2, joint_attention_dim=96,
        caption_projection_dim=16, pooled_projection_dim=32 + 48, pos_embed_max_size=64,
        dual_attention_layers=() if large else SD3_DUAL_ATTENTION, qk_norm="rms_norm")
    torch.manual_seed(seed + 1)
    vae = _vae(**SD3_VAE)
    torch.manual_seed(seed + 2)
    text_encoder = _text_encoder(tokenizer, projection_dim=32)
    torch.manual_seed(seed + 3)
    text_encoder_2 = _text_encoder(tokenizer_2, hidden_size=48, projection_dim=48)
    tokenizer_3 = t5_tokenizer()
    text_encoder_3 = t5_encoder(tokenizer_3, d_model=96, seed=seed + 4)
    return StableDiffusion3Pipeline(
        transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(**SD3_SCHEDULER), vae=vae,
        text_encoder=text_encoder, tokenizer=tokenizer, text_encoder_2=text_encoder_2, tokenizer_2=tokenizer_2,
        text_encoder_3=text_encoder_3, tokenizer_3=tokenizer_3)


def flux_controlnet(transformer: Any, seed: int) -> Any:
    """A Flux ControlNet (one double and one single block) started from ``transformer``'s weights, whose
    zero-initialised projections (the control image's embedder and each block's output) get small random weights
    so that the control image visibly matters (``tinynets`` says why)."""
    from diffusers import FluxControlNetModel

    model = _from_transformer(FluxControlNetModel, transformer, seed, num_layers=1, num_single_layers=1)
    model.x_embedder.load_state_dict(transformer.x_embedder.state_dict())
    model.single_transformer_blocks.load_state_dict(transformer.single_transformer_blocks[:1].state_dict())
    _unzero([*model.controlnet_blocks, *model.controlnet_single_blocks, model.controlnet_x_embedder])
    return model


def sd3_controlnet(transformer: Any, seed: int) -> Any:
    """An SD 3 ControlNet (two blocks) started from ``transformer``'s weights, non-zero as ``flux_controlnet``."""
    from diffusers import SD3ControlNetModel

    model = _from_transformer(SD3ControlNetModel, transformer, seed, num_layers=2, extra_conditioning_channels=0)
    _unzero([*model.controlnet_blocks, model.pos_embed_input.proj])
    return model


def _from_transformer(cls: Any, transformer: Any, seed: int, **config: Any) -> Any:
    """diffusers' ``from_transformer`` without its side effects: SD 3's writes into the transformer's config and
    Flux's saves the transformer's ``out_channels``, which its ControlNet does not take, in the ControlNet's."""
    import inspect

    import torch

    torch.manual_seed(seed)
    accepted = inspect.signature(cls.__init__).parameters
    model = cls(**{**{k: v for k, v in transformer.config.items() if k in accepted}, **config})
    for part in ("pos_embed", "time_text_embed", "context_embedder"):
        getattr(model, part).load_state_dict(getattr(transformer, part).state_dict())
    blocks = len(model.transformer_blocks)
    model.transformer_blocks.load_state_dict(transformer.transformer_blocks[:blocks].state_dict())
    return model


def _unzero(layers: list[Any]) -> None:
    """Weights small enough that the output still follows the conditioning scale (0.3 of it is not all of it)."""
    import torch

    with torch.no_grad():
        for layer in layers:
            layer.weight.normal_(0.0, 0.1)
            layer.bias.normal_(0.0, 0.03)


def _vae(**config: Any) -> Any:
    """Flux's and SD 3's VAE in small: 16 latent channels, no quant convs, four blocks (a scale factor of 8)."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        sample_size=64, in_channels=3, out_channels=3, latent_channels=LATENT_CHANNELS, layers_per_block=1,
        block_out_channels=(8, 8, 16, 16), norm_num_groups=4, use_quant_conv=False, use_post_quant_conv=False,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4, **config)
