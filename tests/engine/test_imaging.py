"""Pixel tests for studio.engine.imaging: masks land where painted, kept pixels stay exact."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from studio.engine import imaging
from studio.engine.imaging import (
    check_pixel_limit,
    composite_masked,
    crop_for_inpaint,
    extend_canvas,
    fill_masked_area,
    is_empty,
    latent_mask,
    load_mask,
    mask_crop_box,
    mask_from_editor,
    mask_preview,
    outpaint_presets,
    paste_back,
    prepare_mask,
    round_to_multiple,
    snap_size,
)

GREEN = (0, 255, 0)


# --- helpers -----------------------------------------------------------------------


def random_image(width: int, height: int, seed: int = 0) -> Image.Image:
    """Noise image: any shift, flip or resample of it shows up in the pixels."""
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), "RGB")


def gradient_image(width: int, height: int) -> Image.Image:
    """Smooth two-way gradient: its borders differ, so infills must not come out flat."""
    x = np.linspace(0, 255, width)[None, :]
    y = np.linspace(0, 255, height)[:, None]
    rgb = np.stack(np.broadcast_arrays(x + 0 * y, y + 0 * x, (x + y) / 2), axis=-1)
    return Image.fromarray(rgb.astype(np.uint8), "RGB")


def rect_mask(size, box) -> Image.Image:
    """Binary "L" mask of `size` painted (255) on box = (left, top, right, bottom)."""
    array = np.zeros((size[1], size[0]), np.uint8)
    left, top, right, bottom = box
    array[top:bottom, left:right] = 255
    return Image.fromarray(array, "L")


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.int32)


def fake_inpaint(image_crop: Image.Image, mask_crop: Image.Image) -> Image.Image:
    """A stand-in model: paints pure green exactly where its mask says repaint."""
    crop = np.asarray(image_crop).copy()
    crop[np.asarray(mask_crop) >= 128] = GREEN
    return Image.fromarray(crop, "RGB")


def green_bounds(image: Image.Image) -> tuple[int, int, int, int]:
    """Inclusive (left, top, right, bottom) of the pixels that are nearly pure green."""
    rgb = pixels(image)
    ys, xs = np.nonzero((rgb[..., 1] > 200) & (rgb[..., 0] < 60) & (rgb[..., 2] < 60))
    return xs.min(), ys.min(), xs.max(), ys.max()


def centroid(weights: np.ndarray) -> tuple[float, float]:
    ys, xs = np.indices(weights.shape)
    total = weights.sum()
    return float((xs * weights).sum() / total), float((ys * weights).sum() / total)


# --- sizes -------------------------------------------------------------------------


def test_round_to_multiple_rounds_down_and_never_below_the_multiple():
    assert round_to_multiple(517) == 512
    assert round_to_multiple(512) == 512
    assert round_to_multiple(5) == 8
    assert round_to_multiple(130, 64) == 128
    assert snap_size(200, 137) == (200, 136)
    assert snap_size(3, 1000, 64) == (64, 960)


# --- masks -------------------------------------------------------------------------


def test_mask_from_editor_unions_layer_alphas():
    background = random_image(40, 30)
    first = np.zeros((30, 40, 4), np.uint8)
    first[2:6, 3:9, 3] = 255  # a stroke
    second = np.zeros((30, 40, 4), np.uint8)
    second[20:25, 30:35, :3] = 200
    second[20:25, 30:35, 3] = 10  # the faint edge of a soft brush still counts
    mask = mask_from_editor(background, [Image.fromarray(first), Image.fromarray(second)])

    assert mask.mode == "L" and mask.size == (40, 30)
    expected = np.zeros((30, 40), np.uint8)
    expected[2:6, 3:9] = 255
    expected[20:25, 30:35] = 255
    np.testing.assert_array_equal(np.asarray(mask), expected)


def test_mask_from_editor_with_no_layers_is_empty():
    assert is_empty(mask_from_editor(random_image(16, 16), []))


def test_load_mask_reads_alpha_or_luminance_and_binarises_at_128():
    gray = np.zeros((10, 20), np.uint8)
    gray[:, 10] = 127
    gray[:, 11] = 128
    gray[:, 15:] = 255
    expected = np.zeros((10, 20), np.uint8)
    expected[:, 11] = 255
    expected[:, 15:] = 255

    as_l, notice = load_mask(Image.fromarray(gray, "L"), (20, 10))
    assert notice is None and as_l.mode == "L"
    np.testing.assert_array_equal(np.asarray(as_l), expected)

    as_rgb, _ = load_mask(Image.fromarray(gray, "L").convert("RGB"), (20, 10))
    np.testing.assert_array_equal(np.asarray(as_rgb), expected)

    # Strokes on a transparent sheet: the colour is black everywhere, the alpha is the mask.
    rgba = np.zeros((10, 20, 4), np.uint8)
    rgba[..., 3] = gray
    as_rgba, _ = load_mask(Image.fromarray(rgba, "RGBA"), (20, 10))
    np.testing.assert_array_equal(np.asarray(as_rgba), expected)

    # Opaque RGBA: alpha says nothing, so the luminance is the mask.
    opaque = np.dstack([gray, gray, gray, np.full_like(gray, 255)])
    as_opaque, _ = load_mask(Image.fromarray(opaque, "RGBA"), (20, 10))
    np.testing.assert_array_equal(np.asarray(as_opaque), expected)

    as_p, _ = load_mask(Image.fromarray(gray, "L").convert("P"), (20, 10))
    np.testing.assert_array_equal(np.asarray(as_p), expected)

    as_1, _ = load_mask(Image.fromarray(expected, "L").convert("1"), (20, 10))
    np.testing.assert_array_equal(np.asarray(as_1), expected)


def test_load_mask_of_another_size_is_resized_in_place_with_a_notice():
    small = rect_mask((50, 25), (5, 5, 15, 10))
    mask, notice = load_mask(small, (100, 50))
    assert mask.size == (100, 50)
    assert notice is not None and "50x25" in notice and "100x50" in notice
    assert mask.getbbox() == (10, 10, 30, 20)  # scaled, not moved or flipped
    assert set(np.unique(np.asarray(mask))) == {0, 255}


def test_empty_mask_is_refused_naming_the_mask():
    blank = Image.new("L", (32, 32), 0)
    assert is_empty(blank)
    assert not is_empty(rect_mask((32, 32), (1, 1, 2, 2)))
    with pytest.raises(ValueError, match=r"^mask: nothing is painted"):
        load_mask(blank, (32, 32))
    # Faint paint below the threshold is nothing painted too.
    with pytest.raises(ValueError, match=r"^mask:"):
        load_mask(Image.new("L", (32, 32), 100), (32, 32))


def test_prepare_mask_inverts_then_blurs_and_stays_zero_far_away():
    mask = rect_mask((120, 80), (30, 20, 60, 50))
    blurred = np.asarray(prepare_mask(mask, 4, invert=False))
    assert blurred[35, 45] == 255  # deep inside
    assert 0 < blurred[20, 45] < 255  # the edge is soft
    assert blurred[20 - 4, 45] > 0  # and spreads outward
    assert blurred[:, 75:].max() == 0  # far away stays exactly 0
    assert centroid(blurred.astype(float)) == pytest.approx((44.5, 34.5), abs=0.01)

    inverted = np.asarray(prepare_mask(mask, 4, invert=True))
    assert inverted[35, 45] == 0
    assert inverted[5, 100] == 255
    # Inverting before blurring puts the soft edge on the same boundary.
    np.testing.assert_allclose(inverted.astype(int) + blurred, 255, atol=1)

    np.testing.assert_array_equal(np.asarray(prepare_mask(mask, 0, False)), np.asarray(mask))
    with pytest.raises(ValueError, match=r"^mask_blur:"):
        prepare_mask(mask, -1, False)


def test_latent_mask_samples_the_8px_grid_like_diffusers():
    mask = rect_mask((64, 48), (10, 5, 30, 21))
    grid = np.asarray(latent_mask(mask))
    # diffusers reads the top-left pixel of each 8x8 cell: columns 16, 24 and rows
    # 8, 16 fall inside the painted rectangle (column 8 does not, though x=10..15 is painted).
    expected = np.zeros((48, 64), np.uint8)
    expected[8:24, 16:32] = 255
    np.testing.assert_array_equal(grid, expected)

    soft = Image.new("L", (16, 16), 127)
    assert is_empty(latent_mask(soft))
    assert np.asarray(latent_mask(Image.new("L", (16, 16), 128))).min() == 255


# --- whole-picture and only-masked inpainting ---------------------------------------


@pytest.mark.parametrize(
    "size, painted", [((200, 136), (20, 14, 70, 50)), ((520, 328), (300, 200, 410, 260))]
)
def test_whole_picture_composite_changes_only_the_painted_area(size, painted):
    image = random_image(*size)
    prepared = prepare_mask(rect_mask(size, painted), 4, invert=False)
    generated = Image.new("RGB", size, GREEN)
    result = composite_masked(image, generated, prepared)

    alpha = np.asarray(prepared)
    diff = np.abs(pixels(result) - pixels(image)).max(axis=-1)
    assert diff[alpha == 0].max() == 0
    assert (pixels(result)[alpha == 255] == GREEN).all()
    left, top, right, bottom = painted
    # Changes lie under the blurred mask, centred on the stroke: not flipped, not shifted.
    assert diff[alpha >= 64].min() > 0
    centre_x, centre_y = centroid(diff.astype(float))
    assert abs(centre_x - (left + right - 1) / 2) < 1.5
    assert abs(centre_y - (top + bottom - 1) / 2) < 1.5


@pytest.mark.parametrize(
    "size, painted, processing",
    [
        ((200, 136), (22, 14, 70, 40), (512, 512)),
        ((520, 328), (300, 180, 420, 236), (512, 384)),
        ((520, 328), (40, 60, 80, 200), (384, 512)),
    ],
)
def test_only_masked_crop_and_paste_back_land_where_painted(size, painted, processing):
    image = random_image(*size, seed=3)
    # Keep the original free of green so that green in the result means "repainted".
    image = Image.fromarray((np.asarray(image) // np.array([1, 2, 1], np.uint8)), "RGB")
    prepared = prepare_mask(rect_mask(size, painted), 4, invert=False)
    box = mask_crop_box(prepared, 16, size, processing)
    image_crop, mask_crop = crop_for_inpaint(image, prepared, box, processing)
    assert image_crop.size == processing and mask_crop.size == processing

    result = paste_back(image, fake_inpaint(image_crop, mask_crop), box, prepared)
    assert result.size == size

    alpha = np.asarray(prepared)
    diff = np.abs(pixels(result) - pixels(image)).max(axis=-1)
    assert diff[alpha == 0].max() == 0  # untouched outside the blurred mask

    left, top, right, bottom = painted
    inner = pixels(result)[top + 12 : bottom - 12, left + 12 : right - 12]
    assert np.abs(inner - GREEN).max() <= 3  # the middle of the stroke was repainted

    # The same fake model run on the whole picture, without crop and resize, is the
    # reference: the repainted region must have the same bounds within 1 px.
    reference = composite_masked(image, fake_inpaint(image, prepared), prepared)
    found = green_bounds(result)
    assert np.abs(np.subtract(found, green_bounds(reference))).max() <= 1
    # and it sits on the painted rectangle, symmetric inside its edges (no flip, no shift)
    insets = (found[0] - left, found[1] - top, right - 1 - found[2], bottom - 1 - found[3])
    assert max(insets) - min(insets) <= 1 and 0 <= min(insets) <= 4, insets


def test_only_masked_inverted_keeps_the_painted_area_exactly():
    size = (200, 136)
    image = random_image(*size, seed=5)
    painted = (120, 30, 170, 90)
    prepared = prepare_mask(rect_mask(size, painted), 3, invert=True)
    box = mask_crop_box(prepared, 8, size, (256, 256))
    image_crop, mask_crop = crop_for_inpaint(image, prepared, box, (256, 256))
    result = paste_back(image, fake_inpaint(image_crop, mask_crop), box, prepared)

    left, top, right, bottom = painted
    kept = np.s_[top + 10 : bottom - 10, left + 10 : right - 10]
    np.testing.assert_array_equal(pixels(result)[kept], pixels(image)[kept])
    # Everything well away from the painted rectangle was repainted.
    assert np.abs(pixels(result)[:15, :100] - GREEN).max() <= 3
    assert np.abs(pixels(result)[110:, :] - GREEN).max() <= 3


def test_crop_and_paste_back_with_an_unchanged_crop_give_the_image_back():
    size = (520, 328)
    image = gradient_image(*size)
    mask = prepare_mask(rect_mask(size, (300, 40, 380, 120)), 4, invert=False)
    box = mask_crop_box(mask, 16, size, (512, 512))
    left, top, right, bottom = box

    same_size, _ = crop_for_inpaint(image, mask, box, (right - left, bottom - top))
    np.testing.assert_array_equal(pixels(same_size), pixels(image.crop(box)))

    image_crop, _ = crop_for_inpaint(image, mask, box, (512, 512))
    result = paste_back(image, image_crop, box, Image.new("L", size, 255))
    # Up to the model size and back down loses almost nothing on a smooth image, and a
    # flipped or shifted crop would not line up with the gradient.
    inside = np.s_[top + 2 : bottom - 2, left + 2 : right - 2]
    assert np.abs(pixels(result)[inside] - pixels(image)[inside]).max() <= 2


def test_paste_back_leaves_pixels_outside_the_mask_exact_even_past_the_box():
    size = (136, 104)
    image = random_image(*size, seed=7)
    raw = rect_mask(size, (40, 30, 70, 60))
    blurred = prepare_mask(raw, 6, invert=False)
    box = mask_crop_box(raw, 0, size, (64, 64))  # box from the sharp mask: the halo pokes out
    crop = Image.new("RGB", (64, 64), GREEN)
    result = paste_back(image, crop, box, blurred)
    alpha = np.asarray(blurred)
    left, top, right, bottom = box
    outside_box = np.ones(alpha.shape, bool)
    outside_box[top:bottom, left:right] = False
    assert (alpha[outside_box] > 0).any()
    np.testing.assert_array_equal(pixels(result)[outside_box], pixels(image)[outside_box])
    np.testing.assert_array_equal(pixels(result)[alpha == 0], pixels(image)[alpha == 0])


def test_composite_masked_is_exact_at_0_and_255_and_does_not_drift():
    size = (64, 48)
    original = random_image(*size, seed=1)
    rng = np.random.default_rng(2)
    alpha = rng.integers(0, 256, (48, 64)).astype(np.uint8)
    alpha[:, :20] = 0
    alpha[:, -20:] = 255
    mask = Image.fromarray(alpha, "L")

    result = original
    for seed in range(10):
        result = composite_masked(result, random_image(*size, seed=100 + seed), mask)
    assert np.abs(pixels(result)[:, :20] - pixels(original)[:, :20]).max() == 0

    generated = random_image(*size, seed=9)
    once = pixels(composite_masked(original, generated, mask))
    np.testing.assert_array_equal(once[:, -20:], pixels(generated)[:, -20:])
    weight = alpha[..., None] / 255.0
    exact = pixels(original) * (1 - weight) + pixels(generated) * weight
    assert np.abs(once - exact).max() <= 0.5  # a rounded blend, not a truncated one

    with pytest.raises(ValueError, match=r"^generated: is 10x10"):
        composite_masked(original, random_image(10, 10), mask)
    with pytest.raises(ValueError, match=r"^mask: is 10x10"):
        composite_masked(original, generated, Image.new("L", (10, 10)))


# --- crop box ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "painted, processing",
    [
        ((100, 100, 140, 120), (512, 512)),  # wide stroke, square model
        ((100, 60, 120, 200), (512, 512)),  # tall stroke
        ((150, 100, 190, 130), (768, 512)),
        ((150, 100, 300, 130), (512, 768)),
        ((101, 77, 133, 91), (640, 448)),
    ],
)
def test_crop_box_holds_mask_plus_padding_at_the_processing_aspect(painted, processing):
    size = (520, 328)
    padding = 12
    box = mask_crop_box(rect_mask(size, painted), padding, size, processing)
    left, top, right, bottom = box
    p_left, p_top, p_right, p_bottom = painted
    assert 0 <= left and 0 <= top and right <= size[0] and bottom <= size[1]
    assert left <= p_left - padding and top <= p_top - padding
    assert right >= p_right + padding and bottom >= p_bottom + padding
    width, height = right - left, bottom - top
    proc_w, proc_h = processing
    assert abs(width - height * proc_w / proc_h) <= 1 or abs(height - width * proc_h / proc_w) <= 1


def test_crop_box_near_an_edge_shifts_inside_the_image():
    size = (200, 136)
    box = mask_crop_box(rect_mask(size, (0, 120, 30, 136)), 8, size, (512, 512))
    left, top, right, bottom = box
    assert (left, bottom) == (0, 136)
    assert right - left == bottom - top == 38
    assert right >= 38 and top <= 112


def test_crop_box_too_big_for_the_image_stops_at_its_edges():
    size = (200, 136)
    box = mask_crop_box(rect_mask(size, (10, 10, 190, 20)), 4, size, (512, 512))
    assert box == (6, 0, 194, 136)  # contains the mask; the aspect cannot be reached
    assert mask_crop_box(rect_mask(size, (10, 10, 30, 20)), 4, size) == (6, 6, 34, 24)


def test_crop_box_of_an_empty_mask_is_refused():
    with pytest.raises(ValueError, match=r"^mask: nothing is painted"):
        mask_crop_box(Image.new("L", (64, 64)), 8, (64, 64), (512, 512))
    with pytest.raises(ValueError, match=r"^padding:"):
        mask_crop_box(rect_mask((64, 64), (1, 1, 5, 5)), -1, (64, 64))
    with pytest.raises(ValueError, match=r"^mask: is 64x64 but the image is 32x32"):
        mask_crop_box(rect_mask((64, 64), (1, 1, 5, 5)), 0, (32, 32))


# --- masked content ------------------------------------------------------------------


def test_fill_takes_colours_from_the_surroundings_and_keeps_the_rest():
    array = np.zeros((96, 128, 3), np.uint8)
    array[:, :64] = (200, 30, 30)
    array[:, 64:] = (30, 30, 200)
    array[40:56, 20:44] = (255, 255, 255)  # something to paint away
    image = Image.fromarray(array, "RGB")
    mask = rect_mask((128, 96), (16, 36, 48, 60))

    filled = pixels(fill_masked_area(image, mask, "fill"))
    keep = np.asarray(mask) == 0
    np.testing.assert_array_equal(filled[keep], pixels(image)[keep])
    hole = filled[36:60, 16:48]
    # Red surroundings, white gone (the blue half, 16 px away, tints it a little).
    assert np.abs(hole - (200, 30, 30)).max() <= 25

    for method in ("original", "latent noise", "latent nothing"):
        np.testing.assert_array_equal(pixels(fill_masked_area(image, mask, method)), pixels(image))
    with pytest.raises(ValueError, match=r"^masked_content: 'blur'"):
        fill_masked_area(image, mask, "blur")


# --- preview -----------------------------------------------------------------------


def test_mask_preview_shows_the_mask_the_grid_edge_and_the_crop_box():
    size = (200, 136)
    image = Image.new("RGB", size, (40, 80, 120))
    mask = rect_mask(size, (60, 40, 100, 80))

    whole = pixels(mask_preview(image, mask, 4, False, "whole", 0, None))
    assert whole[60, 80, 0] > 120 and whole[60, 80, 2] < 120  # red tint in the middle
    np.testing.assert_array_equal(whole[:20, :], pixels(image)[:20, :])  # untouched far away
    # The UNet's edge: the grid cell rows 40 and 79 are drawn white.
    assert tuple(whole[40, 80]) == imaging.PREVIEW_LATENT_EDGE_RGB
    assert tuple(whole[79, 80]) == imaging.PREVIEW_LATENT_EDGE_RGB

    prepared = prepare_mask(mask, 4, False)
    left, top, right, bottom = mask_crop_box(prepared, 10, size, (512, 512))
    masked = pixels(mask_preview(image, mask, 4, False, "masked", 10, (512, 512)))
    assert tuple(masked[(top + bottom) // 2, left]) == imaging.PREVIEW_CROP_BOX_RGB
    assert tuple(masked[top, (left + right) // 2]) == imaging.PREVIEW_CROP_BOX_RGB
    assert tuple(masked[bottom - 1, right - 1]) == imaging.PREVIEW_CROP_BOX_RGB

    inverted = pixels(mask_preview(image, mask, 0, True, "whole", 0, None))
    assert inverted[5, 5, 0] > 120 and tuple(inverted[60, 80]) == (40, 80, 120)
    with pytest.raises(ValueError, match=r"^inpaint_area:"):
        mask_preview(image, mask, 4, False, "crop", 0, None)


# --- outpainting -------------------------------------------------------------------


@pytest.mark.parametrize("infill", ["edge", "blur", "noise", "telea"])
def test_extend_canvas_size_original_and_infill(infill):
    image = gradient_image(120, 80)
    canvas, mask = extend_canvas(image, 32, 0, 16, 48, infill, overlap=8, feather=4, seed=3)
    assert canvas.size == mask.size == (120 + 32, 80 + 16 + 48)
    assert canvas.mode == "RGB" and mask.mode == "L"

    original = pixels(canvas)[16 : 16 + 80, 32 : 32 + 120]
    np.testing.assert_array_equal(original, pixels(image))

    new = np.asarray(mask) == 255
    new_area = pixels(canvas)[new]
    assert new_area.std(axis=0).max() > 5, "the infill is flat"

    # After a model repaints the masked area, the image outside the band is untouched.
    result = composite_masked(canvas, random_image(*canvas.size, seed=11), mask)
    band_free = np.asarray(mask)[16 : 16 + 80, 32 : 32 + 120] == 0
    # Bands 8 px deep on the extended sides (left, top, bottom); none on the right.
    assert band_free[8:-8, 8:].all()
    assert not band_free[:, :8].any() and not band_free[:8].any() and not band_free[-8:].any()
    kept = pixels(result)[16 : 16 + 80, 32 : 32 + 120]
    np.testing.assert_array_equal(kept[band_free], pixels(image)[band_free])


def test_edge_infill_of_a_flat_image_stays_flat_and_noise_is_seeded():
    flat = Image.new("RGB", (48, 40), (10, 120, 200))
    canvas, _ = extend_canvas(flat, 16, 16, 8, 8, "edge", 0, 0, seed=0)
    assert (pixels(canvas) == (10, 120, 200)).all()

    image = gradient_image(48, 40)
    first, _ = extend_canvas(image, 16, 16, 0, 0, "noise", 0, 0, seed=42)
    again, _ = extend_canvas(image, 16, 16, 0, 0, "noise", 0, 0, seed=42)
    other, _ = extend_canvas(image, 16, 16, 0, 0, "noise", 0, 0, seed=43)
    np.testing.assert_array_equal(pixels(first), pixels(again))
    assert np.abs(pixels(first) - pixels(other)).max() > 0
    # Tinted by the borders being extended: the left and right columns' mean colour.
    border = np.concatenate([pixels(image)[:, 0], pixels(image)[:, -1]]).mean(axis=0)
    np.testing.assert_allclose(pixels(first)[:, :16].reshape(-1, 3).mean(axis=0), border, atol=8)


def test_outpaint_mask_bands_only_the_extended_sides_with_a_ramp():
    image = random_image(64, 48)
    _, mask = extend_canvas(image, 16, 0, 0, 0, "edge", overlap=12, feather=6, seed=0)
    array = np.asarray(mask).astype(int)
    assert (array[:, :16] == 255).all()
    inner = array[:, 16:]
    # Band 12 px deep on the left only: 255 for 6 px, a 6 px ramp, then 0.
    np.testing.assert_array_equal(inner[:, :6], 255)
    ramp = inner[0, 6:13]
    assert (np.diff(ramp) < 0).all() and ramp[-1] == 0 and ramp[-2] > 0
    assert np.abs(np.diff(inner[0])).max() <= 255 // 6 + 1  # no hard seam
    assert (inner[:, 12:] == 0).all()  # top, bottom and right were not extended

    _, sharp = extend_canvas(image, 0, 8, 0, 0, "edge", overlap=4, feather=0, seed=0)
    sharp = np.asarray(sharp)
    assert (sharp[:, 60:] == 255).all() and (sharp[:, :60] == 0).all()


@pytest.mark.parametrize(
    "sides, pattern",
    [
        ((12, 0, 0, 0), r"^left: 12 is not a multiple of 8"),
        ((0, 0, 0, 20), r"^bottom: 20 is not a multiple of 8"),
        ((0, 0, -8, 0), r"^top: -8 is negative"),
        ((0, 0, 0, 0), r"^extend: all four sides are 0; set at least one side"),
    ],
)
def test_bad_extensions_are_refused_naming_the_side(sides, pattern):
    with pytest.raises(ValueError, match=pattern):
        extend_canvas(random_image(32, 32), *sides, "edge", 0, 0, seed=0)


def test_pixel_limit_and_other_outpaint_fields_are_checked():
    limit = r"^canvas: 1024x1024 is 1,048,576 pixels, over the limit of 1,000,000; extend by less"
    with pytest.raises(ValueError, match=limit):
        check_pixel_limit(1024, 1024, 1_000_000)
    check_pixel_limit(1000, 1000, 1_000_000)
    with pytest.raises(ValueError, match=r"^canvas: 48x32"):
        extend_canvas(random_image(32, 32), 8, 8, 0, 0, "edge", 0, 0, seed=0, max_pixels=1000)
    with pytest.raises(ValueError, match=r"^infill: 'mirror'"):
        extend_canvas(random_image(32, 32), 8, 8, 0, 0, "mirror", 0, 0, seed=0)
    with pytest.raises(ValueError, match=r"^overlap:"):
        extend_canvas(random_image(32, 32), 8, 8, 0, 0, "edge", -1, 0, seed=0)


@pytest.mark.parametrize("size", [(512, 512), (520, 328), (328, 520), (200, 136)])
def test_outpaint_presets_give_even_multiples_of_8(size):
    targets = {"to 16:9 (landscape)": 16 / 9, "to 9:16 (portrait)": 9 / 16, "to square": 1.0}
    for name, preset in outpaint_presets.items():
        left, right, top, bottom = preset(size)
        assert all(side >= 0 and side % 8 == 0 for side in (left, right, top, bottom)), name
        assert left == right and top == bottom, name
        if name in targets:
            width, height = size[0] + left + right, size[1] + top + bottom
            # At least the target aspect, overshooting by under 16 px of rounding.
            if left:
                assert height * targets[name] <= width < height * targets[name] + 16, name
            elif top:
                assert width / targets[name] <= height < width / targets[name] + 16, name
    assert outpaint_presets["to square"]((512, 768)) == (128, 128, 0, 0)
    assert outpaint_presets["to 16:9 (landscape)"]((512, 512)) == (200, 200, 0, 0)
