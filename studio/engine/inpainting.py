"""The inpaint and outpaint modes of the shared generation loop.

Both run diffusers' inpaint pipeline (which handles 4-channel UNets by re-imposing the known
latents every step, and 9-channel inpainting UNets by conditioning on the masked image) on a
processing image and mask prepared by `imaging`, then composite the result over the original
with the soft mask as alpha: pixels outside the mask come back exactly, so repeated edits
never degrade the untouched image through the VAE round trip.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from studio.engine import imaging
from studio.engine.devices import cpu_generator
from studio.engine.generate import CallPlan, Mode, register_mode
from studio.errors import InputError


@dataclass
class EditPlan:
    """What one inpaint/outpaint request runs on, computed once for all its batches."""

    original: Image.Image  # the picture the result is composited over (outpaint: the infilled canvas)
    soft_mask: Image.Image  # the alpha of that composite, original size
    box: tuple[int, int, int, int] | None  # "only masked" crop, else None
    image: Image.Image  # what the pipeline starts from, at the processing size
    mask: Image.Image  # the pipeline's mask, at the processing size


def _user_errors(function, *args, **kwargs):
    """imaging raises ValueError('field: ...') for user mistakes; the studio calls those InputError."""
    try:
        return function(*args, **kwargs)
    except ValueError as error:
        raise InputError(str(error)) from error


def _encode(pipe, image: Image.Image) -> torch.Tensor:
    """Deterministic VAE latents (the distribution's mean), scaled like the UNet expects."""
    vae = pipe.vae
    pixels = pipe.image_processor.preprocess(image).to(vae.device, vae.dtype)
    with torch.no_grad():
        latents = vae.encode(pixels).latent_dist.mode()
    return latents * vae.config.scaling_factor


def _latent_mask(mask: Image.Image, latents: torch.Tensor) -> torch.Tensor:
    small = imaging.latent_mask(mask).resize(latents.shape[-1:-3:-1], Image.NEAREST)
    return torch.from_numpy(np.array(small) >= imaging.MASK_THRESHOLD).to(latents.device, latents.dtype)[None, None]


def pipeline_inputs(pipe, plan: EditPlan, masked_content: str, strength: float, seed: int) -> dict:
    """The image/mask kwargs of diffusers' inpaint pipeline, with A1111's latent masked-content options."""
    kwargs = {"image": plan.image, "mask_image": plan.mask, "strength": strength,
              "width": plan.image.width, "height": plan.image.height}
    if masked_content in ("latent noise", "latent nothing"):
        latents = _encode(pipe, plan.image)
        inside = _latent_mask(plan.mask, latents)
        if masked_content == "latent noise":
            noise = torch.randn(latents.shape, generator=cpu_generator(seed)).to(latents.device, latents.dtype)
            latents = latents * (1 - inside) + noise * inside
        else:
            latents = latents * (1 - inside)
        # diffusers takes 4-channel tensors passed as `image` as ready latents; it then needs the
        # masked-image latents given too (9-channel UNets condition on them; others ignore them)
        kwargs["image"] = latents
        binary = plan.mask.point(lambda v: 255 if v >= imaging.MASK_THRESHOLD else 0)
        kwargs["masked_image_latents"] = _encode(pipe, Image.composite(
            Image.new("RGB", plan.image.size, (127, 127, 127)), plan.image, binary))
    return kwargs


def composite_over_original(plan: EditPlan, images: list[Image.Image]) -> list[Image.Image]:
    """Each output put back at the original's size, over the original, with the soft mask as alpha."""
    if plan.box is not None:
        return [imaging.paste_back(plan.original, out, plan.box, plan.soft_mask) for out in images]
    return [imaging.composite_masked(plan.original, out if out.size == plan.original.size
                                     else out.resize(plan.original.size, Image.LANCZOS), plan.soft_mask)
            for out in images]


class Inpaint(Mode):
    name = "inpaint"

    def pipeline_mode(self, request) -> str:
        return "inpaint"

    def resolve(self, request, env):
        """Concrete processing size and the mask that will really be used (binary, image-sized)."""
        image = request.image.convert("RGB")
        mask, notice = _user_errors(imaging.load_mask, request.mask, image.size)
        if notice:
            env.notices.append(notice)
        width, height = request.width, request.height
        if width is None or height is None:
            if request.inpaint_area == "whole":
                width, height = imaging.snap_size(*image.size)
            else:
                width = height = env.native_size
        return dataclasses.replace(request, image=image, mask=mask, width=width, height=height)

    def edit_plan(self, request) -> EditPlan:
        original = request.image
        soft = _user_errors(imaging.prepare_mask, request.mask, request.mask_blur, request.invert_mask)
        if imaging.is_empty(soft):
            raise InputError("nothing is left to repaint after inverting; paint a smaller mask", field="mask")
        start = _user_errors(imaging.fill_masked_area, original, soft, request.masked_content)
        size = (request.width, request.height)
        if request.inpaint_area == "masked":
            box = _user_errors(imaging.mask_crop_box, soft, request.padding, original.size, size)
            image, mask = imaging.crop_for_inpaint(start, soft, box, size)
            return EditPlan(original, soft, box, image, mask)
        image = start if start.size == size else start.resize(size, Image.LANCZOS)
        mask = soft if soft.size == size else soft.resize(size, Image.BILINEAR)
        return EditPlan(original, soft, None, image, mask)

    def plan(self, request, pipe) -> CallPlan:
        edit = self.edit_plan(request)
        return CallPlan(pipeline_inputs(pipe, edit, request.masked_content, request.denoise_strength, request.seed),
                        edit)

    def finish(self, images, request, plan: CallPlan):
        return composite_over_original(plan.state, images)

    def infotext_pairs(self, request) -> dict:
        pairs = {"Denoising strength": request.denoise_strength, "Mask blur": request.mask_blur,
                 "Masked content": request.masked_content,  # our words are A1111's
                 "Inpaint area": "Only masked" if request.inpaint_area == "masked" else "Whole picture"}
        if request.inpaint_area == "masked":
            pairs["Only masked padding, pixels"] = request.padding
        if request.invert_mask:
            pairs["Mask mode"] = "Inpaint not masked"
        return pairs


class Outpaint(Mode):
    name = "outpaint"

    def pipeline_mode(self, request) -> str:
        return "inpaint"

    def resolve(self, request, env):
        image = request.image.convert("RGB")
        canvas = (image.width + request.left + request.right, image.height + request.top + request.bottom)
        width, height = request.width, request.height
        if width is None or height is None:
            width, height = imaging.snap_size(*canvas)
        return dataclasses.replace(request, image=image, width=width, height=height)

    def edit_plan(self, request) -> EditPlan:
        canvas, mask = _user_errors(imaging.extend_canvas, request.image, request.left, request.right, request.top,
                                    request.bottom, request.infill, request.overlap, request.feather, request.seed)
        size = (request.width, request.height)
        image = canvas if canvas.size == size else canvas.resize(size, Image.LANCZOS)
        small_mask = mask if mask.size == size else mask.resize(size, Image.BILINEAR)
        return EditPlan(canvas, mask, None, image, small_mask)

    def plan(self, request, pipe) -> CallPlan:
        edit = self.edit_plan(request)
        return CallPlan(pipeline_inputs(pipe, edit, "original", request.denoise_strength, request.seed), edit)

    def finish(self, images, request, plan: CallPlan):
        return composite_over_original(plan.state, images)

    def infotext_pairs(self, request) -> dict:
        sides = ", ".join(f"{side} {getattr(request, side)}" for side in ("left", "right", "top", "bottom")
                          if getattr(request, side))
        return {"Denoising strength": request.denoise_strength, "Outpaint": sides, "Infill": request.infill,
                "Overlap": request.overlap, "Feather": request.feather}


register_mode(Inpaint())
register_mode(Outpaint())
