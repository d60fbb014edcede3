"""The component configs of the embedded model: fresh, seeded SD-format modules built in code.

The embedded model has Stable Diffusion's shape at a small scale: an AutoencoderKL with
SD's 8x spatial factor (128 px images -> 16x16x4 latents), a CLIP text encoder over the
real CLIP vocabulary (49408 tokens, 77 positions), a cross-attention UNet, ControlNets
made from that UNet, and SD1.5's noise schedule. Every builder seeds torch itself, so the
same `Architecture` always gives the same initial weights.

Sizes are chosen against two budgets (see `python -m studio.micro.architecture`):
the exported model (vae + text encoder + unet + tokenizer) under 50 MB in fp16 and each
ControlNet under ~8 MB; and a 20-step, CFG (batch 2) 128 px image in under 1 s on a
2-core CPU. The text encoder's token embedding (49408 x hidden) dominates its size, so
hidden is 128. The ControlNet copies the UNet's down and mid blocks, which is why the
UNet's deepest level stays at 128 channels rather than 192 (that ControlNet would be 10.7 MB).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

IMAGE_SIZE = 128
LATENT_SIZE = 16  # IMAGE_SIZE / 8, SD's VAE factor
LATENT_CHANNELS = 4
CLIP_VOCAB_SIZE = 49408
CLIP_MAX_LENGTH = 77
CLIP_BOS_ID = 49406  # <|startoftext|>
CLIP_EOS_ID = 49407  # <|endoftext|>, also SD1.x's pad token
SD15_SCALING_FACTOR = 0.18215  # placeholder until the VAE phase measures ours
INITIAL_LATENT_LOGVAR = -6.0

MODEL_BUDGET_MB = 50.0
CONTROLNET_BUDGET_MB = 8.0


@dataclass(frozen=True)
class Architecture:
    """The few numbers that size the embedded model; `tiny()` is for tests."""

    vae_channels: tuple[int, ...] = (32, 64, 128, 128)
    vae_layers_per_block: int = 1
    # GroupNorm groups: SD's VAE has 4-16 channels per group, its UNet 10-40. With one
    # channel per group (GroupNorm(32) on 32 channels) a flat-colour image normalises to
    # zero and the decoder cannot say which colour it was, so keep SD's ratios.
    vae_norm_groups: int = 8
    text_hidden: int = 128
    text_layers: int = 4
    text_heads: int = 4
    unet_channels: tuple[int, ...] = (64, 128, 128)
    unet_layers_per_block: int = 1
    unet_head_dim: int = 32
    unet_norm_groups: int = 8
    seed: int = 0

    @classmethod
    def tiny(cls) -> "Architecture":
        """A few-thousand-parameter stand-in with the same shapes at the interfaces."""
        return cls(
            vae_channels=(8, 8, 16, 16),
            vae_norm_groups=4,
            text_hidden=32,
            text_layers=1,
            text_heads=2,
            unet_channels=(16, 32, 32),
            unet_head_dim=8,
            unet_norm_groups=8,
        )

    @classmethod
    def named(cls, name: str) -> "Architecture":
        presets = {"default": cls, "tiny": cls.tiny}
        if name not in presets:
            raise ValueError(f"architecture {name!r} is not one of {sorted(presets)}")
        return presets[name]()


DEFAULT = Architecture()


def build_vae(arch: Architecture = DEFAULT):
    """AutoencoderKL with 3 downsamplings: 128x128x3 images <-> 16x16x4 latents."""
    from diffusers import AutoencoderKL

    torch.manual_seed(arch.seed)
    levels = len(arch.vae_channels)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=LATENT_CHANNELS,
        down_block_types=("DownEncoderBlock2D",) * levels,
        up_block_types=("UpDecoderBlock2D",) * levels,
        block_out_channels=arch.vae_channels,
        layers_per_block=arch.vae_layers_per_block,
        norm_num_groups=arch.vae_norm_groups,
        sample_size=IMAGE_SIZE,
        scaling_factor=SD15_SCALING_FACTOR,
    )
    # Start with a near-deterministic posterior (std ~0.05, not 1): the tiny KL weight lets
    # training shrink it anyway, and unit noise on the latents stalls the first steps.
    with torch.no_grad():
        vae.quant_conv.bias[LATENT_CHANNELS:] = INITIAL_LATENT_LOGVAR  # quant_conv makes (mean, logvar)
    return vae


def build_text_encoder(arch: Architecture = DEFAULT):
    """CLIPTextModel over the full CLIP vocabulary, with SD1.x's special token ids."""
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(arch.seed + 1)
    config = CLIPTextConfig(
        vocab_size=CLIP_VOCAB_SIZE,
        max_position_embeddings=CLIP_MAX_LENGTH,
        hidden_size=arch.text_hidden,
        intermediate_size=4 * arch.text_hidden,
        num_hidden_layers=arch.text_layers,
        num_attention_heads=arch.text_heads,
        projection_dim=arch.text_hidden,
        hidden_act="quick_gelu",
        pad_token_id=CLIP_EOS_ID,
        bos_token_id=CLIP_BOS_ID,
        eos_token_id=CLIP_EOS_ID,
    )
    return CLIPTextModel(config)


def build_unet(arch: Architecture = DEFAULT):
    """Cross-attention UNet on 16x16x4 latents, conditioned on the text encoder's states."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(arch.seed + 2)
    levels = len(arch.unet_channels)
    # diffusers' UNet2DConditionModel calls the number of heads `attention_head_dim` (a
    # historical misnomer it keeps for SD checkpoints), so pass channels // head width.
    heads = tuple(max(1, c // arch.unet_head_dim) for c in arch.unet_channels)
    return UNet2DConditionModel(
        sample_size=LATENT_SIZE,
        in_channels=LATENT_CHANNELS,
        out_channels=LATENT_CHANNELS,
        down_block_types=("CrossAttnDownBlock2D",) * levels,
        up_block_types=("CrossAttnUpBlock2D",) * levels,
        block_out_channels=arch.unet_channels,
        layers_per_block=arch.unet_layers_per_block,
        norm_num_groups=arch.unet_norm_groups,
        cross_attention_dim=arch.text_hidden,
        attention_head_dim=heads,
    )


def build_controlnet(unet, seed: int = 0):
    """ControlNet initialised from the UNet's encoder; its hint is a 3-channel 128 px image."""
    from diffusers import ControlNetModel

    torch.manual_seed(seed + 3)  # the conditioning embedding is fresh; the rest is copied
    return ControlNetModel.from_unet(unet, conditioning_channels=3)


def noise_scheduler_config() -> dict:
    """SD1.5's scheduler_config.json: PNDM over the 1000-step scaled_linear schedule."""
    return {
        "_class_name": "PNDMScheduler",
        "beta_start": 0.00085,
        "beta_end": 0.012,
        "beta_schedule": "scaled_linear",
        "num_train_timesteps": 1000,
        "prediction_type": "epsilon",
        "set_alpha_to_one": False,
        "skip_prk_steps": True,
        "steps_offset": 1,
        "clip_sample": False,
        "trained_betas": None,
        "timestep_spacing": "leading",
    }


def parameter_count(module) -> int:
    return sum(p.numel() for p in module.parameters())


def fp16_megabytes(module) -> float:
    """What the module's weights take as fp16 safetensors (headers aside)."""
    return parameter_count(module) * 2 / 1e6


def size_report(arch: Architecture = DEFAULT) -> dict:
    """Parameter counts and fp16 sizes of every component, and the budgets they meet."""
    vae, text_encoder, unet = build_vae(arch), build_text_encoder(arch), build_unet(arch)
    controlnet = build_controlnet(unet, arch.seed)
    parts = {"vae": vae, "text_encoder": text_encoder, "unet": unet, "controlnet": controlnet}
    report = {
        name: {"parameters": parameter_count(m), "fp16_mb": round(fp16_megabytes(m), 2)} for name, m in parts.items()
    }
    model_mb = sum(report[n]["fp16_mb"] for n in ("vae", "text_encoder", "unet"))
    report["model_fp16_mb_without_tokenizer"] = round(model_mb, 2)
    report["model_budget_mb"] = MODEL_BUDGET_MB
    report["controlnet_budget_mb"] = CONTROLNET_BUDGET_MB
    return report


def inference_seconds(arch: Architecture = DEFAULT, steps: int = 20, repeats: int = 2) -> float:
    """Wall time of one guided 128 px image on this machine: text, `steps` batch-2 UNet calls, decode."""
    vae, text_encoder, unet = build_vae(arch).eval(), build_text_encoder(arch).eval(), build_unet(arch).eval()
    ids = torch.full((2, CLIP_MAX_LENGTH), CLIP_EOS_ID)
    ids[:, 0] = CLIP_BOS_ID
    best = float("inf")
    with torch.inference_mode():
        for _ in range(repeats):
            start = time.perf_counter()
            states = text_encoder(ids).last_hidden_state
            latents = torch.randn(1, LATENT_CHANNELS, LATENT_SIZE, LATENT_SIZE)
            for t in torch.linspace(999, 0, steps).long():
                eps = unet(torch.cat([latents] * 2), t, states).sample
                latents = latents - 0.01 * eps.mean(0, keepdim=True)
            vae.decode(latents / vae.config.scaling_factor)
            best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    import json

    report = size_report()
    report["cpu_seconds_per_image_20_steps_cfg"] = round(inference_seconds(), 3)
    report["torch_threads"] = torch.get_num_threads()
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
