"""Cheap latent -> RGB previews for live progress while sampling."""

from __future__ import annotations

import torch
from PIL import Image

# Linear projections of the 4 SD latent channels onto RGB, fitted by the community (the SD
# VAE is close to linear at the pixel-colour level); good enough to watch a run take shape.
SD_LATENT_RGB = ((0.3512, 0.2297, 0.3227), (0.3250, 0.4974, 0.2350),
                 (-0.2829, 0.1762, 0.2721), (-0.2120, -0.2616, -0.7177))
SDXL_LATENT_RGB = ((0.3651, 0.4232, 0.4341), (-0.2533, -0.0042, 0.1068),
                   (0.1076, 0.1111, -0.0362), (-0.3165, -0.2492, -0.2188))
SDXL_LATENT_BIAS = (0.1084, -0.0175, -0.0011)
# Below this many VAE parameters, decoding for real is as cheap as the projection.
SMALL_VAE_PARAMS = 5_000_000


def linear_preview(latents: torch.Tensor, family: str) -> Image.Image:
    """Project the first latent of a batch to RGB with the family's fixed factors."""
    factors = torch.tensor(SDXL_LATENT_RGB if family == "sdxl" else SD_LATENT_RGB)
    bias = torch.tensor(SDXL_LATENT_BIAS if family == "sdxl" else (0.0, 0.0, 0.0))
    first = latents[0].detach().float().cpu()
    rgb = torch.einsum("chw,cr->hwr", first, factors) + bias
    pixels = ((rgb + 1) / 2).clamp(0, 1).mul(255).byte().numpy()
    return Image.fromarray(pixels, "RGB")


class Previewer:
    """Turns step latents into a small image; decodes with the real VAE when that is cheap."""

    def __init__(self, pipe, family: str):
        self.pipe = pipe
        self.family = family
        self.decode = sum(p.numel() for p in pipe.vae.parameters()) < SMALL_VAE_PARAMS

    @torch.no_grad()
    def __call__(self, latents: torch.Tensor) -> Image.Image:
        if not self.decode:
            return linear_preview(latents, self.family)
        vae = self.pipe.vae
        first = latents[:1].to(vae.device, vae.dtype) / vae.config.scaling_factor
        image = vae.decode(first).sample[0].float().cpu()
        pixels = ((image + 1) / 2).clamp(0, 1).mul(255).byte().permute(1, 2, 0).numpy()
        return Image.fromarray(pixels, "RGB")
