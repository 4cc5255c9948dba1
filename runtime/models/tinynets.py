"""The networks of the tiny models: SD 1.x- and SDXL-shaped, a few MB each, with weights where every input matters.

A freshly initialised ControlNet has zero convolutions that are exactly zero, so its control image and scale change
nothing, and a pipeline that ignored them would pass every test. Here those convolutions get small random weights
instead, as a trained ControlNet has, so each input of each pipeline visibly moves the pixels.
"""

from __future__ import annotations

from typing import Any

SEED = 0
# SD 1.5's and SDXL's own scheduler settings, so every other scheduler is derived from them as it would be for real.
_SCHEDULER = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear", "num_train_timesteps": 1000,
              "steps_offset": 1}


def sd_pipeline(tokenizer: Any, inpainting: bool = False) -> Any:
    """An SD 1.x-shaped pipeline: VAE scale factor 8, one CLIP text encoder with 77 positions. ``inpainting``: an
    inpainting checkpoint's UNet, which takes 9 channels (the latents, the mask, the masked image's latents)."""
    import torch
    from diffusers import PNDMScheduler, StableDiffusionInpaintPipeline, StableDiffusionPipeline, UNet2DConditionModel

    torch.manual_seed(SEED + 20 if inpainting else SEED)
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=9 if inpainting else 4, out_channels=4, layers_per_block=1,
        block_out_channels=(16, 32),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32, attention_head_dim=8, norm_num_groups=8,
    )
    torch.manual_seed(SEED + 1)
    vae = _vae()
    torch.manual_seed(SEED + 2)
    text_encoder = _text_encoder(tokenizer)
    scheduler = PNDMScheduler(**_SCHEDULER, set_alpha_to_one=False, skip_prk_steps=True)
    cls = StableDiffusionInpaintPipeline if inpainting else StableDiffusionPipeline
    return cls(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )


def sdxl_pipeline(tokenizer: Any, tokenizer_2: Any, inpainting: bool = False) -> Any:
    """An SDXL-shaped pipeline: two text encoders whose hidden states are concatenated (cross-attention width
    32 + 48), the second one's pooled projection plus the six size-conditioning numbers as the UNet's extra
    embedding (``addition_embed_type="text_time"``), and SDXL's Euler scheduler. The encoders differ in width as
    SDXL's do (768 and 1280): diffusers' single-file loader tells them apart by it. ``inpainting``: an SDXL inpainting
    checkpoint's UNet, which takes 9 channels."""
    import torch
    from diffusers import (
        EulerDiscreteScheduler,
        StableDiffusionXLInpaintPipeline,
        StableDiffusionXLPipeline,
        UNet2DConditionModel,
    )

    time_dim, pooled_dim = 8, 32
    torch.manual_seed(SEED + 40 if inpainting else SEED + 10)
    unet = UNet2DConditionModel(
        sample_size=16, in_channels=9 if inpainting else 4, out_channels=4, layers_per_block=1,
        block_out_channels=(16, 32),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=80, attention_head_dim=(2, 4), norm_num_groups=8, use_linear_projection=True,
        transformer_layers_per_block=(1, 2), addition_embed_type="text_time", addition_time_embed_dim=time_dim,
        projection_class_embeddings_input_dim=6 * time_dim + pooled_dim,
    )
    torch.manual_seed(SEED + 11)
    vae = _vae(scaling_factor=0.13025, force_upcast=True)
    torch.manual_seed(SEED + 12)
    text_encoder = _text_encoder(tokenizer)
    torch.manual_seed(SEED + 13)
    text_encoder_2 = _text_encoder(tokenizer_2, hidden_size=48, projection_dim=pooled_dim)
    scheduler = EulerDiscreteScheduler(**_SCHEDULER, timestep_spacing="leading", interpolation_type="linear")
    cls = StableDiffusionXLInpaintPipeline if inpainting else StableDiffusionXLPipeline
    return cls(
        vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2, tokenizer=tokenizer,
        tokenizer_2=tokenizer_2, unet=unet, scheduler=scheduler, force_zeros_for_empty_prompt=True,
        add_watermarker=False,
    )


def sdxl_refiner(tokenizer_2: Any) -> Any:
    """An SDXL refiner-shaped pipeline: the second text encoder only (cross-attention width 48), and aesthetic-score
    conditioning instead of the target size (five numbers with the original size and crop), as SDXL's refiner."""
    import torch
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLImg2ImgPipeline, UNet2DConditionModel

    time_dim, pooled_dim = 8, 32
    torch.manual_seed(SEED + 30)
    unet = UNet2DConditionModel(
        sample_size=16, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(16, 32),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=48, attention_head_dim=(2, 4), norm_num_groups=8, use_linear_projection=True,
        addition_embed_type="text_time", addition_time_embed_dim=time_dim,
        projection_class_embeddings_input_dim=5 * time_dim + pooled_dim,
    )
    torch.manual_seed(SEED + 31)
    vae = _vae(scaling_factor=0.13025, force_upcast=True)
    torch.manual_seed(SEED + 32)
    text_encoder_2 = _text_encoder(tokenizer_2, hidden_size=48, projection_dim=pooled_dim)
    scheduler = EulerDiscreteScheduler(**_SCHEDULER, timestep_spacing="leading", interpolation_type="linear")
    return StableDiffusionXLImg2ImgPipeline(
        vae=vae, text_encoder=None, text_encoder_2=text_encoder_2, tokenizer=None, tokenizer_2=tokenizer_2, unet=unet,
        scheduler=scheduler, requires_aesthetics_score=True, force_zeros_for_empty_prompt=False,
        add_watermarker=False,
    )


def controlnet(unet: Any, seed: int) -> Any:
    """A ControlNet made from ``unet`` whose zero convolutions are not zero (see the module docstring)."""
    import torch
    from diffusers import ControlNetModel

    torch.manual_seed(seed)
    model = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(4, 8, 16, 16))
    zero_convs = [*model.controlnet_down_blocks, model.controlnet_mid_block,
                  model.controlnet_cond_embedding.conv_out]
    with torch.no_grad():
        for conv in zero_convs:
            conv.weight.normal_(0.0, 0.3)
            conv.bias.normal_(0.0, 0.1)
    return model


def _vae(**config: Any) -> Any:
    from diffusers import AutoencoderKL

    return AutoencoderKL(  # four blocks: a scale factor of 8, as in real SD
        sample_size=64, in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1,
        block_out_channels=(8, 8, 16, 16), norm_num_groups=4,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4, **config,
    )


def _text_encoder(tokenizer: Any, hidden_size: int = 32, projection_dim: int | None = None) -> Any:
    """A two-layer CLIP text encoder; with ``projection_dim`` the projected kind SDXL's second encoder is."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=2 * hidden_size, num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=77, projection_dim=projection_dim or 32, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    return CLIPTextModelWithProjection(config) if projection_dim else CLIPTextModel(config)
