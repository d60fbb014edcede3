"""Hires. fix: the first pass's images (or latents) upscaled, then repainted by an img2img pass at the big size.

As in A1111: the first pass runs at width x height; a latent upscaler interpolates its latents, any
other upscaler (Lanczos, a model from models/ESRGAN) works on the decoded pixels; the second pass
uses the same model, prompt and seeds with `hr_denoise_strength` x `hires steps` denoising steps.
"""

from __future__ import annotations

import torch
from PIL import Image

from studio.engine.devices import cpu_generator
from studio.engine.upscalers import UpscalerRegistry, upscale_image, upscale_latents


def decode(pipe, latents: torch.Tensor) -> list[Image.Image]:
    """What the pipeline's own output_type="pil" does with its final latents."""
    with torch.no_grad():
        pixels = pipe.vae.decode(latents / pipe.vae.config.scaling_factor, return_dict=False)[0]
    return pipe.image_processor.postprocess(pixels, output_type="pil", do_denormalize=[True] * len(pixels))


def second_pass_input(pipe, latents: torch.Tensor, request, upscalers: UpscalerRegistry, device) -> object:
    """The img2img pass's `image`: upscaled latents, or the decoded images upscaled to the hires size."""
    width, height = request.hires_size()
    if upscalers.is_latent(request.hr_upscaler):
        factor = pipe.vae_scale_factor
        return upscale_latents(latents, request.hr_upscaler, (height // factor, width // factor))
    images = decode(pipe, latents)
    scale = max(width / request.width, height / request.height)
    result = []
    for image in images:
        big = upscale_image(image, request.hr_upscaler, scale, upscalers, device=device)
        result.append(big if big.size == (width, height) else big.resize((width, height), Image.Resampling.LANCZOS))
    return result


def run_second_pass(hires_pipe, image, request, prompt: str, seeds: list[int], step_end) -> list[Image.Image]:
    """The img2img pass at the hires size, its noise from the same seeds as the first pass (as A1111)."""
    width, height = request.hires_size()
    count = len(seeds)
    result = hires_pipe(
        prompt=[prompt] * count,  # one prompt per image: the pass takes the whole batch at once
        negative_prompt=[request.negative_prompt] * count if request.negative_prompt else None,
        image=image,
        strength=request.hr_denoise_strength,
        num_inference_steps=request.hires_steps(),
        guidance_scale=request.cfg_scale,
        num_images_per_prompt=1,
        generator=[cpu_generator(seed) for seed in seeds],
        callback_on_step_end=step_end,
        callback_on_step_end_tensor_inputs=["latents"],
        output_type="pil",
        **({} if isinstance(image, torch.Tensor) else {"width": width, "height": height}),
    )
    return list(result.images)
