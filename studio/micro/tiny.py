"""Tiny randomly initialised SD-format models built in code: for tests, and the untrained placeholder.

Same classes and shapes logic as Stable Diffusion 1.x (8x VAE, CLIP text encoder with the real
BPE tokenizer, cross-attention UNet), only a handful of channels, so a 64x64 image takes
milliseconds on a CPU.
"""

from __future__ import annotations

import json
from pathlib import Path

from studio.settings import ASSETS_DIR

TOKENIZER_DIR = ASSETS_DIR / "tokenizer"
SD_SCHEDULER = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
                    skip_prk_steps=True, steps_offset=1, set_alpha_to_one=False)


def tiny_unet(seed: int = 0, in_channels: int = 4, cross_attention_dim: int = 32):
    import torch
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    return UNet2DConditionModel(
        sample_size=8, in_channels=in_channels, out_channels=4, layers_per_block=2,
        block_out_channels=(32, 64), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=cross_attention_dim,
        attention_head_dim=8, norm_num_groups=32,
    )


def tiny_vae(seed: int = 0):
    import torch
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, sample_size=64, layers_per_block=1,
        block_out_channels=(8, 16, 16, 16), norm_num_groups=8,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
    )


def tiny_text_encoder(seed: int = 0, hidden_size: int = 32):
    import torch
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    config = CLIPTextConfig(
        vocab_size=49408, hidden_size=hidden_size, intermediate_size=37, num_attention_heads=4,
        num_hidden_layers=2, max_position_embeddings=77, bos_token_id=49406, eos_token_id=49407,
        pad_token_id=49407, layer_norm_eps=1e-5,
    )
    return CLIPTextModel(config)


def tokenizer():
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(str(TOKENIZER_DIR), local_files_only=True)


def tiny_pipeline(seed: int = 0, inpaint: bool = False):
    """A StableDiffusionPipeline of tiny random components (64x64 native)."""
    from diffusers import PNDMScheduler, StableDiffusionPipeline

    return StableDiffusionPipeline(
        vae=tiny_vae(seed), text_encoder=tiny_text_encoder(seed), tokenizer=tokenizer(),
        unet=tiny_unet(seed, in_channels=9 if inpaint else 4), scheduler=PNDMScheduler(**SD_SCHEDULER),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )


def save_tiny_model(dest: Path, seed: int = 0, inpaint: bool = False, description: str = "") -> Path:
    """Write a tiny random model as a diffusers folder (what `from_pretrained` reads)."""
    dest = Path(dest)
    pipe = tiny_pipeline(seed, inpaint)
    pipe.save_pretrained(str(dest), safe_serialization=True)
    if description:
        (dest / "model_card.json").write_text(json.dumps({"description": description, "example_prompts": []}))
    return dest


def save_tiny_controlnet(dest: Path, seed: int = 0) -> Path:
    """A tiny random ControlNet matching tiny_unet, as a diffusers folder.

    Real ControlNets start with zero output convolutions (no effect until trained); these are
    randomised so that tests can see a control map change the picture.
    """
    import torch
    from diffusers import ControlNetModel

    net = ControlNetModel.from_unet(tiny_unet(seed), conditioning_channels=3)
    torch.manual_seed(seed + 100)
    with torch.no_grad():
        for block in [*net.controlnet_down_blocks, net.controlnet_mid_block]:
            torch.nn.init.normal_(block.weight, std=0.5)
    net.save_pretrained(str(dest), safe_serialization=True)
    return Path(dest)
