"""Pixel geometry of inpainting and outpainting: masks, crops, composites, canvases.

Pure functions on PIL images and numpy arrays (no torch, no diffusers), with the
meanings AUTOMATIC1111's web UI gives its inpaint and outpaint options, so that an
artist's settings mean here what they mean there. Masks are PIL "L" images where
255 = repaint and 0 = keep. Mistakes a user can make raise ValueError with a message
that names the field and says what to change.

The order a generation follows (A1111's order):

    mask = load_mask(painted, image.size)            # binary, sized like the image
    prepared = prepare_mask(mask, blur_px, invert)   # invert, then blur
    image = fill_masked_area(image, prepared, masked_content)
    whole picture:  run on (image, prepared), then composite_masked(image, out, prepared)
    only masked:    box = mask_crop_box(prepared, padding, image.size, processing_size)
                    run on crop_for_inpaint(image, prepared, box, processing_size)
                    paste_back(image, out, box, prepared)
"""

from __future__ import annotations

import math
from collections.abc import Callable

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageOps

from studio.requests import INPAINT_AREAS, MASKED_CONTENT, OUTPAINT_INFILLS

Size = tuple[int, int]
Box = tuple[int, int, int, int]  # (left, top, right, bottom), right/bottom exclusive
Sides = tuple[int, int, int, int]  # outpaint extensions (left, right, top, bottom)
Pads = tuple[tuple[int, int], tuple[int, int], tuple[int, int]]  # np.pad widths, HWC

# A latent pixel covers 8x8 image pixels in every SD VAE (SD1.x, SD2.x, SDXL).
LATENT_SCALE = 8
# Masks are binarised where diffusers' mask processor does: value >= 0.5 is "repaint".
MASK_THRESHOLD = 128


# Mask preview colours: translucent red for the mask (A1111's look), a white line for
# the edge the UNet actually sees, a gold frame for the "only masked" crop.
PREVIEW_MASK_RGB = (255, 0, 0)
PREVIEW_MASK_OPACITY = 0.5
PREVIEW_LATENT_EDGE_RGB = (255, 255, 255)
PREVIEW_CROP_BOX_RGB = (255, 200, 0)
PREVIEW_CROP_BOX_WIDTH = 2

# Outpaint "noise" infill: spread of the noise around the border colour (0-255 scale).
NOISE_INFILL_STD = 48.0
# Outpaint "telea" infill: neighbourhood OpenCV considers for each filled pixel.
TELEA_RADIUS = 3

EMPTY_MASK_MESSAGE = "mask: nothing is painted; paint over the area to repaint"


# --- sizes -------------------------------------------------------------------------


def round_to_multiple(value: int, multiple: int = 8) -> int:
    """Round value down to a multiple of `multiple`, never below `multiple`."""
    if multiple <= 0:
        raise ValueError(f"multiple: {multiple} must be 1 or more")
    return max(multiple, int(value) // multiple * multiple)


def snap_size(width: int, height: int, multiple: int = 8) -> Size:
    """Round a (width, height) down to multiples of `multiple`, each at least `multiple`."""
    return round_to_multiple(width, multiple), round_to_multiple(height, multiple)


def check_pixel_limit(width: int, height: int, max_pixels: int) -> None:
    """Raise ValueError if a width x height canvas holds more than max_pixels pixels."""
    pixels = width * height
    if pixels > max_pixels:
        raise ValueError(
            f"canvas: {width}x{height} is {pixels:,} pixels, over the limit of "
            f"{max_pixels:,}; extend by less, shrink the image first, or raise the "
            f"max_pixels setting"
        )


def _check_size(field: str, image: Image.Image, size: Size, against: str = "the image") -> None:
    """Raise ValueError naming `field` when `image` is not `size`."""
    if tuple(image.size) != tuple(size):
        raise ValueError(
            f"{field}: is {image.width}x{image.height} but {against} is "
            f"{size[0]}x{size[1]}; give both the same size"
        )


def _check_not_negative(field: str, value: int) -> None:
    """Raise ValueError naming `field` when value < 0."""
    if value < 0:
        raise ValueError(f"{field}: {value} is negative; use 0 or more")


# --- masks -------------------------------------------------------------------------


def _binarise(gray: np.ndarray) -> np.ndarray:
    """0/255 uint8 array: 255 where gray >= MASK_THRESHOLD."""
    return np.where(gray >= MASK_THRESHOLD, 255, 0).astype(np.uint8)


def _as_image(value: Image.Image | np.ndarray) -> Image.Image:
    """Accept a PIL image or the numpy array Gradio hands over with type='numpy'."""
    if isinstance(value, np.ndarray):
        return Image.fromarray(value)
    return value


def _paint_of_layer(layer: Image.Image) -> np.ndarray:
    """A brush layer's painted pixels: its alpha, or its luminance if it has no alpha."""
    if layer.mode in ("RGBA", "LA", "PA") or "transparency" in layer.info:
        return np.asarray(layer.convert("RGBA").getchannel("A"))
    return np.asarray(layer.convert("L"))


def mask_from_editor(background: Image.Image, layers: list[Image.Image]) -> Image.Image:
    """The mask painted in a Gradio ImageEditor: any brush stroke on any layer, binarised."""
    if background is None:
        raise ValueError("image: no image is loaded; upload an image to inpaint")
    background = _as_image(background)
    union = np.zeros((background.height, background.width), np.uint8)
    for layer in layers or []:
        if layer is None:
            continue
        layer = _as_image(layer)
        if layer.size != background.size:
            # Same stretch load_mask applies; NEAREST keeps a soft brush edge from
            # turning into a wider one.
            layer = layer.resize(background.size, Image.Resampling.NEAREST)
        np.maximum(union, _paint_of_layer(layer), out=union)
    # Any touch of the brush counts: a soft brush edge at alpha 10 was still painted.
    return Image.fromarray(np.where(union > 0, 255, 0).astype(np.uint8), "L")


def is_empty(mask: Image.Image) -> bool:
    """True when no pixel of the mask is painted (all zero)."""
    return mask.convert("L").getbbox() is None


def load_mask(mask: Image.Image, size: Size) -> tuple[Image.Image, str | None]:
    """Turn an uploaded mask into a binary "L" mask of `size`, with a notice if resized."""
    mask = _as_image(mask)
    if mask.mode == "P":
        # Palette images may carry transparency; RGBA makes it a real alpha channel.
        mask = mask.convert("RGBA")
    if mask.mode in ("RGBA", "LA") and mask.getchannel("A").getextrema()[0] < 255:
        # A mask saved as strokes on a transparent sheet: the strokes are the alpha.
        gray = np.asarray(mask.getchannel("A"))
    else:
        gray = np.asarray(mask.convert("L"))
    binary = Image.fromarray(_binarise(gray), "L")

    notice = None
    if binary.size != tuple(size):
        # A1111 stretches a mask of another size onto the image; do the same, but say so.
        notice = (
            f"mask: was {binary.width}x{binary.height}, resized to the image's "
            f"{size[0]}x{size[1]}"
        )
        binary = binary.resize(tuple(size), Image.Resampling.NEAREST)

    if is_empty(binary):
        raise ValueError(EMPTY_MASK_MESSAGE)
    return binary, notice


def prepare_mask(mask: Image.Image, blur_px: int, invert: bool) -> Image.Image:
    """Invert (A1111 "inpaint not masked"), then Gaussian-blur by blur_px: the composite mask."""
    _check_not_negative("mask_blur", blur_px)
    mask = mask.convert("L")
    if invert:
        # Invert before blurring so the soft edge sits on the same boundary either way.
        mask = ImageOps.invert(mask)
    if blur_px == 0:
        return mask.copy()
    # A1111's kernel: sigma = blur_px, width 2*round(2.5*sigma)+1, applied per axis.
    # Far from the mask the zeros stay exactly zero, which keeps composites lossless.
    kernel = 2 * int(2.5 * blur_px + 0.5) + 1
    array = np.asarray(mask)
    array = cv2.GaussianBlur(array, (kernel, 1), blur_px)
    array = cv2.GaussianBlur(array, (1, kernel), blur_px)
    return Image.fromarray(array, "L")


def latent_mask(mask: Image.Image, scale: int = LATENT_SCALE) -> Image.Image:
    """The mask as the UNet sees it on the latent grid, scaled back up for display."""
    gray = np.asarray(mask.convert("L"))
    height, width = gray.shape
    out_h, out_w = max(1, height // scale), max(1, width // scale)
    # diffusers binarises at full resolution (>= 0.5), then F.interpolate(mode="nearest")
    # takes the pixel at floor(i * in/out) with a float32 ratio; replicate that exactly.
    rows = _nearest_indices(height, out_h)
    cols = _nearest_indices(width, out_w)
    grid = _binarise(gray)[np.ix_(rows, cols)]
    return Image.fromarray(grid, "L").resize((width, height), Image.Resampling.NEAREST)


def _nearest_indices(in_size: int, out_size: int) -> np.ndarray:
    """Source indices torch's nearest interpolation reads for each output index."""
    ratio = np.float32(in_size) / np.float32(out_size)
    indices = np.floor(np.arange(out_size, dtype=np.float32) * ratio).astype(np.int64)
    return np.minimum(indices, in_size - 1)


# --- only-masked crop --------------------------------------------------------------


def mask_crop_box(
    mask: Image.Image, padding: int, image_size: Size, processing_size: Size | None = None
) -> Box:
    """A1111 "only masked" area: the mask's bounding box plus padding, at the processing aspect."""
    _check_size("mask", mask, image_size)
    _check_not_negative("padding", padding)
    bbox = mask.convert("L").getbbox()
    if bbox is None:
        raise ValueError(EMPTY_MASK_MESSAGE)
    width, height = image_size
    left, top, right, bottom = bbox
    left, top = max(left - padding, 0), max(top - padding, 0)
    right, bottom = min(right + padding, width), min(bottom + padding, height)
    if processing_size is None:
        return left, top, right, bottom

    proc_w, proc_h = processing_size
    box_w, box_h = right - left, bottom - top
    # Grow the short side so the crop is not distorted when resized to the model size.
    # If the image is too small for that, stop at its edge (A1111 does the same); the
    # crop is then stretched a little, never cut short of the mask.
    if box_w * proc_h > box_h * proc_w:
        want_h = min(round(box_w * proc_h / proc_w), height)
        top, bottom = _grow_span(top, bottom, want_h, height)
    else:
        want_w = min(round(box_h * proc_w / proc_h), width)
        left, right = _grow_span(left, right, want_w, width)
    return left, top, right, bottom


def _grow_span(start: int, end: int, length: int, limit: int) -> tuple[int, int]:
    """Grow [start, end) evenly to `length`, shifted to stay inside [0, limit)."""
    start -= (length - (end - start)) // 2
    end = start + length
    if end > limit:
        start, end = start - (end - limit), limit
    if start < 0:
        start, end = 0, end - start
    return start, end


def crop_for_inpaint(
    image: Image.Image, mask: Image.Image, box: Box, processing_size: Size
) -> tuple[Image.Image, Image.Image]:
    """Cut the box out of image and mask and resize both to the processing size."""
    _check_size("mask", mask, image.size)
    _check_box(box, image.size)
    size = tuple(processing_size)
    image_crop = image.convert("RGB").crop(box).resize(size, Image.Resampling.LANCZOS)
    # Bilinear, not LANCZOS: LANCZOS rings, and a ringing mask repaints a halo.
    mask_crop = mask.convert("L").crop(box).resize(size, Image.Resampling.BILINEAR)
    return image_crop, mask_crop


def paste_back(
    original: Image.Image, generated_crop: Image.Image, box: Box, blurred_mask: Image.Image
) -> Image.Image:
    """Put a generated crop back at its box and composite it over the original."""
    _check_box(box, original.size)
    left, top, right, bottom = box
    layer = original.convert("RGB")
    resized = generated_crop.convert("RGB").resize(
        (right - left, bottom - top), Image.Resampling.LANCZOS
    )
    layer.paste(resized, (left, top))
    # Outside the box the layer is the original itself, so a blur halo that reaches past
    # the box changes nothing there.
    return composite_masked(original, layer, blurred_mask)


def _check_box(box: Box, size: Size) -> None:
    """Raise ValueError unless box is a non-empty rectangle inside an image of `size`."""
    left, top, right, bottom = box
    if not (0 <= left < right <= size[0] and 0 <= top < bottom <= size[1]):
        raise ValueError(
            f"box: {tuple(box)} is not a rectangle inside the {size[0]}x{size[1]} image; "
            f"compute it with mask_crop_box"
        )


# --- compositing and fill ----------------------------------------------------------


def composite_masked(
    original: Image.Image, generated: Image.Image, blurred_mask: Image.Image
) -> Image.Image:
    """Generated where the mask is 255, original where it is 0 (exactly), blended between."""
    _check_size("generated", generated, original.size, against="the original")
    _check_size("mask", blurred_mask, original.size, against="the original")
    kept = np.asarray(original.convert("RGB"), np.int32)
    new = np.asarray(generated.convert("RGB"), np.int32)
    alpha = np.asarray(blurred_mask.convert("L"), np.int32)[..., None]
    # Integer blend with rounding: alpha 0 gives (o*255 + 127)//255 == o exactly, so
    # repeated inpainting never drifts the pixels it was told to keep.
    blended = (kept * (255 - alpha) + new * alpha + 127) // 255
    return Image.fromarray(blended.astype(np.uint8), "RGB")


def fill_masked_area(image: Image.Image, mask: Image.Image, method: str) -> Image.Image:
    """A1111 "masked content": prefill the masked pixels before they are encoded."""
    if method not in MASKED_CONTENT:
        raise ValueError(
            f"masked_content: {method!r} is not one of {', '.join(MASKED_CONTENT)}; "
            f"pick one of those"
        )
    _check_size("mask", mask, image.size)
    if method != "fill":
        # "latent noise" and "latent nothing" replace the latents, not the pixels.
        return image.convert("RGB")
    mask = mask.convert("L")
    if mask.getextrema()[0] == 255:
        # Everything is masked: there is no surrounding colour to fill from.
        return image.convert("RGB")
    filled = np.asarray(_blur_fill(image.convert("RGB"), mask))
    keep = np.asarray(mask)[..., None] == 0
    return Image.fromarray(np.where(keep, np.asarray(image.convert("RGB")), filled), "RGB")


def _blur_fill(image: Image.Image, mask: Image.Image) -> Image.Image:
    """A1111's masking.fill: layer ever sharper blurs of the kept pixels over the hole."""
    # Premultiplied alpha ("RGBa") makes a blur average only kept colours: the hole's
    # zero alpha carries no weight, so it fills with its surroundings, not with black.
    kept = Image.new("RGBa", image.size)
    kept.paste(image.convert("RGBA").convert("RGBa"), mask=ImageOps.invert(mask))
    filled = Image.new("RGBA", image.size)
    for radius, repeats in ((256, 1), (64, 1), (16, 2), (4, 4), (2, 2), (0, 1)):
        blurred = kept.filter(ImageFilter.GaussianBlur(radius)).convert("RGBA")
        for _ in range(repeats):
            filled.alpha_composite(blurred)
    return filled.convert("RGB")


# --- preview -----------------------------------------------------------------------


def mask_preview(
    image: Image.Image,
    mask: Image.Image,
    blur_px: int,
    invert: bool,
    area: str,
    padding: int,
    processing_size: Size | None,
) -> Image.Image:
    """The image with the mask drawn as it will be applied: blurred, grid edge, crop box."""
    if area not in INPAINT_AREAS:
        raise ValueError(f"inpaint_area: {area!r} is not one of {', '.join(INPAINT_AREAS)}")
    _check_size("mask", mask, image.size)
    prepared = prepare_mask(mask, blur_px, invert)
    if is_empty(prepared):
        # Nothing to show; generating will say "nothing is painted".
        return image.convert("RGB")
    base = np.asarray(image.convert("RGB"), np.float32)

    alpha = np.asarray(prepared, np.float32)[..., None] / 255.0 * PREVIEW_MASK_OPACITY
    shown = base * (1.0 - alpha) + np.array(PREVIEW_MASK_RGB, np.float32) * alpha

    box = None
    if area == "masked":
        box = mask_crop_box(prepared, padding, image.size, processing_size)
        grid = _latent_mask_in_box(prepared, box, processing_size)
    else:
        grid = _latent_mask_whole(prepared, processing_size)
    shown[_inner_edge(np.asarray(grid) > 0)] = PREVIEW_LATENT_EDGE_RGB

    preview = Image.fromarray(np.rint(shown).astype(np.uint8), "RGB")
    if box is not None:
        left, top, right, bottom = box
        ImageDraw.Draw(preview).rectangle(
            (left, top, right - 1, bottom - 1),
            outline=PREVIEW_CROP_BOX_RGB,
            width=PREVIEW_CROP_BOX_WIDTH,
        )
    return preview


def _latent_mask_whole(prepared: Image.Image, processing_size: Size | None) -> Image.Image:
    """Latent-grid mask of a whole-picture run, in image coordinates."""
    size = tuple(processing_size) if processing_size else prepared.size
    resized = prepared.resize(size, Image.Resampling.BILINEAR)
    return latent_mask(resized).resize(prepared.size, Image.Resampling.NEAREST)


def _latent_mask_in_box(
    prepared: Image.Image, box: Box, processing_size: Size | None
) -> Image.Image:
    """Latent-grid mask of an only-masked run, mapped from the crop back into the image."""
    left, top, right, bottom = box
    box_size = (right - left, bottom - top)
    crop = prepared.crop(box)
    if processing_size:
        crop = crop.resize(tuple(processing_size), Image.Resampling.BILINEAR)
    grid = latent_mask(crop).resize(box_size, Image.Resampling.NEAREST)
    full = Image.new("L", prepared.size, 0)
    full.paste(grid, (left, top))
    return full


def _inner_edge(region: np.ndarray) -> np.ndarray:
    """Pixels of a boolean region that touch a pixel outside it (4-neighbourhood)."""
    padded = np.pad(region, 1, mode="edge")
    interior = (
        padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    )
    return region & ~interior


# --- outpainting -------------------------------------------------------------------


def _check_extensions(left: int, right: int, top: int, bottom: int) -> None:
    """Raise ValueError naming the side when an extension is negative or not a multiple of 8."""
    sides = {"left": left, "right": right, "top": top, "bottom": bottom}
    for side, value in sides.items():
        if value < 0:
            raise ValueError(f"{side}: {value} is negative; use 0 or a positive multiple of 8")
        if value % 8:
            nearest = [n for n in (value // 8 * 8, value // 8 * 8 + 8) if n > 0]
            raise ValueError(
                f"{side}: {value} is not a multiple of 8; use "
                + " or ".join(str(n) for n in nearest)
            )
    if not any(sides.values()):
        raise ValueError(
            "extend: all four sides are 0; set at least one side (left, right, top, "
            "bottom) to extend"
        )


def extend_canvas(
    image: Image.Image,
    left: int,
    right: int,
    top: int,
    bottom: int,
    infill: str,
    overlap: int,
    feather: int,
    seed: int,
    *,
    max_pixels: int | None = None,
) -> tuple[Image.Image, Image.Image]:
    """Outpaint canvas: the image on a larger canvas, the new area infilled, and its mask."""
    _check_extensions(left, right, top, bottom)
    if infill not in OUTPAINT_INFILLS:
        raise ValueError(
            f"infill: {infill!r} is not one of {', '.join(OUTPAINT_INFILLS)}; pick one of those"
        )
    _check_not_negative("overlap", overlap)
    _check_not_negative("feather", feather)
    if infill == "noise":
        _check_not_negative("seed", seed)
    width, height = image.size
    canvas_w, canvas_h = width + left + right, height + top + bottom
    if max_pixels is not None:
        check_pixel_limit(canvas_w, canvas_h, max_pixels)

    rgb = np.asarray(image.convert("RGB"))
    pads = ((top, bottom), (left, right), (0, 0))
    is_new = np.ones((canvas_h, canvas_w), bool)
    is_new[top : top + height, left : left + width] = False

    if infill == "edge":
        canvas = np.pad(rgb, pads, mode="edge")
    elif infill == "blur":
        canvas = _blur_infill(rgb, pads, is_new)
    elif infill == "noise":
        canvas = _noise_infill(rgb, pads, (left, right, top, bottom), seed)
    else:
        canvas = cv2.inpaint(
            np.pad(rgb, pads), is_new.astype(np.uint8) * 255, TELEA_RADIUS, cv2.INPAINT_TELEA
        )
    # Every infill writes only the new area: the original pixels come through untouched.
    canvas[~is_new] = rgb.reshape(-1, 3)

    sides = (left, right, top, bottom)
    mask = _outpaint_mask((canvas_w, canvas_h), sides, image.size, overlap, feather)
    return Image.fromarray(canvas, "RGB"), mask


def _blur_infill(rgb: np.ndarray, pads: Pads, is_new: np.ndarray) -> np.ndarray:
    """Edge colours near the image fading into a heavy blur of them further out."""
    edge = np.pad(rgb, pads, mode="edge")
    widest = max(max(pads[0]), max(pads[1]))
    radius = max(8, widest // 2)
    blurred = np.asarray(Image.fromarray(edge).filter(ImageFilter.GaussianBlur(radius)))
    # Distance from the original image: right beside it the edge colour continues the
    # picture; one blur radius out only the averaged colour remains.
    distance = cv2.distanceTransform((is_new * 255).astype(np.uint8), cv2.DIST_L2, 3)
    weight = np.clip(distance / radius, 0.0, 1.0)[..., None]
    mixed = edge * (1.0 - weight) + blurred * weight
    return np.rint(mixed).astype(np.uint8)


def _noise_infill(rgb: np.ndarray, pads: Pads, sides: Sides, seed: int) -> np.ndarray:
    """Seeded noise around the mean colour of the borders being extended."""
    left, right, top, bottom = sides
    borders = [
        rgb[:, 0] if left else None,
        rgb[:, -1] if right else None,
        rgb[0] if top else None,
        rgb[-1] if bottom else None,
    ]
    tint = np.concatenate([b for b in borders if b is not None]).mean(axis=0)
    height = rgb.shape[0] + pads[0][0] + pads[0][1]
    width = rgb.shape[1] + pads[1][0] + pads[1][1]
    # The noise depends on the seed and the canvas size only, so a re-run repeats it.
    noise = np.random.default_rng(seed).normal(0.0, NOISE_INFILL_STD, (height, width, 3))
    return np.clip(np.rint(tint + noise), 0, 255).astype(np.uint8)


def _outpaint_mask(
    canvas_size: Size, sides: Sides, image_size: Size, overlap: int, feather: int
) -> Image.Image:
    """255 on the new area, ramping to 0 across `overlap` px into the image on extended sides."""
    left, right, top, bottom = sides
    width, height = image_size
    canvas_w, canvas_h = canvas_size
    mask = np.full((canvas_h, canvas_w), 255.0, np.float32)
    inside = np.zeros((height, width), np.float32)

    # Depth of each image pixel from each extended side (0 = the row or column that
    # touches the new area). The band reaches `overlap` px deep; its last `feather` px
    # ramp down to 0 at the band's inner edge, so the repaint fades in without a seam.
    band = min(overlap, max(width, height))
    ramp = min(feather, band)
    cols = np.arange(width, dtype=np.float32)[None, :]
    rows = np.arange(height, dtype=np.float32)[:, None]
    depths = []
    if left:
        depths.append(np.broadcast_to(cols, (height, width)))
    if right:
        depths.append(np.broadcast_to(width - 1 - cols, (height, width)))
    if top:
        depths.append(np.broadcast_to(rows, (height, width)))
    if bottom:
        depths.append(np.broadcast_to(height - 1 - rows, (height, width)))
    for depth in depths:
        if ramp:
            value = np.clip((band - depth) / ramp, 0.0, 1.0) * 255.0
        else:
            value = np.where(depth < band, 255.0, 0.0)
        np.maximum(inside, value, out=inside)

    mask[top : top + height, left : left + width] = inside
    return Image.fromarray(np.rint(mask).astype(np.uint8), "L")


# --- outpaint presets --------------------------------------------------------------


def _split_even(total: float) -> int:
    """Half of `total` extra pixels, rounded up to a multiple of 8 (one side's share)."""
    return math.ceil(max(total, 0) / 2 / 8) * 8


def _to_aspect(ratio_w: int, ratio_h: int) -> Callable[[Size], Sides]:
    """Preset that extends the short way until the canvas is at least ratio_w:ratio_h."""

    def extend(image_size: Size) -> Sides:
        width, height = image_size
        if width * ratio_h < height * ratio_w:
            side = _split_even(height * ratio_w / ratio_h - width)
            return side, side, 0, 0
        side = _split_even(width * ratio_h / ratio_w - height)
        return 0, 0, side, side

    return extend


# name -> image_size -> (left, right, top, bottom); an image already at a preset's
# aspect gets (0, 0, 0, 0), which extend_canvas reports as nothing to extend.
outpaint_presets: dict[str, Callable[[Size], Sides]] = {
    "+128 all sides": lambda size: (128, 128, 128, 128),
    "+256 left and right": lambda size: (256, 256, 0, 0),
    "+256 top and bottom": lambda size: (0, 0, 256, 256),
    "to 16:9 (landscape)": _to_aspect(16, 9),
    "to 9:16 (portrait)": _to_aspect(9, 16),
    "to square": _to_aspect(1, 1),
}
