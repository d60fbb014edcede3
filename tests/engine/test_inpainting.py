"""Inpaint and outpaint through the real runner on tiny models: geometry, exact untouched pixels, history."""

import numpy as np
import pytest
from PIL import Image, ImageDraw
from tests_support import fast_request

from studio.errors import InputError
from studio.requests import InpaintRequest, OutpaintRequest


def photo(size=(200, 136), seed=0):
    """A textured test picture (a smooth gradient with noise), so any change shows up."""
    rng = np.random.default_rng(seed)
    w, h = size
    x, y = np.meshgrid(np.linspace(0, 1, w), np.linspace(0, 1, h))
    base = np.stack([x * 200 + 30, y * 180 + 40, (1 - x) * 120 + 60], axis=-1)
    return Image.fromarray(np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8), "RGB")


def ellipse_mask(size, box):
    mask = Image.new("L", size, 0)
    ImageDraw.Draw(mask).ellipse(box, fill=255)
    return mask


def inpaint(**overrides):
    image = overrides.pop("image", photo())
    values = dict(prompt="a blue square", steps=3, seed=21, sampler="Euler", image=image,
                  mask=ellipse_mask((200, 136), (120, 30, 170, 90)), denoise_strength=1.0)
    values.update(overrides)
    return InpaintRequest(**values)


def changed(a, b):
    return np.any(np.array(a, dtype=int) != np.array(b, dtype=int), axis=-1)


def outside(mask_image, blur=0):
    from studio.engine.imaging import prepare_mask

    return np.array(prepare_mask(mask_image, blur, False)) == 0


@pytest.mark.parametrize("area", ["whole", "masked"])
@pytest.mark.parametrize("size", [(200, 136), (203, 141), (96, 160)])
def test_pixels_outside_the_blurred_mask_are_exactly_the_input(services, area, size):
    image = photo(size)
    mask = ellipse_mask(size, (size[0] // 2, size[1] // 4, size[0] - 8, size[1] - 10))
    result = services.runner.run(inpaint(image=image, mask=mask, inpaint_area=area, mask_blur=4, padding=8))
    out = result.images[0]
    assert out.size == size
    diff = changed(out, image)
    assert not diff[outside(mask, 4)].any()
    assert diff[np.array(mask) == 255].mean() > 0.5  # the masked area really was repainted
    assert result.request.width % 8 == 0 and result.request.height % 8 == 0


def test_only_masked_works_at_the_processing_resolution(services):
    result = services.runner.run(inpaint(inpaint_area="masked", padding=4))
    assert (result.request.width, result.request.height) == (64, 64)  # the tiny model's native size
    record = services.history.get(result.run_id)
    assert record.params["inpaint_area"] == "masked" and "Only masked" in result.infotexts[0]


def test_inverted_mask_keeps_the_painted_area(services):
    image = photo()
    mask = ellipse_mask(image.size, (10, 10, 100, 100))
    result = services.runner.run(inpaint(image=image, mask=mask, invert_mask=True, mask_blur=0))
    assert not changed(result.images[0], image)[np.array(mask) == 255].any()
    assert "Mask mode: Inpaint not masked" in result.infotexts[0]


@pytest.mark.parametrize("content", ["original", "fill", "latent noise", "latent nothing"])
def test_every_masked_content_option_runs_and_keeps_the_outside(services, content):
    image = photo()
    result = services.runner.run(inpaint(image=image, masked_content=content, denoise_strength=0.6))
    assert not changed(result.images[0], image)[outside(result.request.mask, 4)].any()


def test_nine_channel_inpainting_models_run(services, tiny_inpaint_dir):
    services.registry.add(str(tiny_inpaint_dir), name="tiny-inpaint")
    image = photo()
    for content in ("original", "latent noise"):
        result = services.runner.run(inpaint(model="tiny-inpaint", image=image, masked_content=content))
        assert services.models.load("tiny-inpaint").inpaint_unet
        assert not changed(result.images[0], image)[outside(result.request.mask, 4)].any()


def test_inpaint_history_restores_image_and_mask_and_reruns_identically(services):
    first = services.runner.run(inpaint(batch_size=2, sampler="Euler a", masked_content="latent noise"))
    restored = services.runner.restore(first.run_id)
    assert np.array_equal(np.array(restored.image), np.array(first.request.image))
    assert np.array_equal(np.array(restored.mask), np.array(first.request.mask))
    assert (restored.masked_content, restored.mask_blur, restored.seed) == ("latent noise", 4, 21)
    again = services.runner.rerun(first.run_id)
    for a, b in zip(first.images, again.images):
        assert np.array_equal(np.array(a), np.array(b))


def test_an_edit_of_an_output_points_to_its_parent(services):
    base = services.runner.run(fast_request(width=96, height=64))
    edit = services.runner.run(inpaint(image=Image.open(base.outputs[0].path), mask=ellipse_mask((96, 64), (10, 10, 50, 50))))
    again = services.runner.run(inpaint(image=edit.images[0], mask=ellipse_mask((96, 64), (40, 10, 90, 60))))
    assert services.history.get(edit.run_id).parent_id == base.run_id
    ancestors, _ = services.history.lineage(again.run_id)
    assert [r.id for r in ancestors] == [base.run_id, edit.run_id, again.run_id]


def test_repeated_inpainting_never_degrades_untouched_pixels(services):
    image = photo()
    mask = ellipse_mask(image.size, (140, 40, 180, 80))
    current = image
    for _ in range(3):
        current = services.runner.run(inpaint(image=current, mask=mask, mask_blur=2)).images[0]
    assert not changed(current, image)[outside(mask, 2)].any()


def test_mask_of_another_size_is_resized_with_a_notice(services):
    image = photo()
    small = ellipse_mask((100, 68), (60, 15, 85, 45))
    result = services.runner.run(inpaint(image=image, mask=small))
    assert any("resized" in notice for notice in result.notices)
    assert result.request.mask.size == image.size


def test_bad_inpaint_input_is_refused_before_anything_is_recorded(services):
    image = photo()
    with pytest.raises(InputError, match="nothing is painted"):
        services.runner.run(inpaint(mask=Image.new("L", image.size, 0)))
    with pytest.raises(InputError) as error:
        services.runner.run(inpaint(image=None))
    assert error.value.field == "image"
    with pytest.raises(InputError, match="not an image"):
        services.runner.run(inpaint(mask="mask.png"))
    with pytest.raises(InputError) as error:
        services.runner.run(inpaint(masked_content="sky"))
    assert error.value.field == "masked_content"
    assert services.history.count() == 0


def outpaint(**overrides):
    values = dict(prompt="a wide landscape", steps=3, seed=5, sampler="Euler", image=photo((96, 64)), left=32,
                  right=16, top=8, bottom=0, overlap=8, feather=8)
    values.update(overrides)
    return OutpaintRequest(**values)


@pytest.mark.parametrize("infill", ["edge", "blur", "noise", "telea"])
def test_outpaint_extends_and_keeps_the_original_outside_the_overlap(services, infill):
    request = outpaint(infill=infill)
    result = services.runner.run(request)
    out = result.images[0]
    assert out.size == (96 + 32 + 16, 64 + 8)
    inner = out.crop((32 + 8, 8 + 8, 32 + 96 - 8, 8 + 64))  # left/right/top were extended, bottom was not
    assert np.array_equal(np.array(inner), np.array(request.image.crop((8, 8, 96 - 8, 64))))
    new_area = np.array(out)[:, :32]
    assert new_area.std() > 2  # not a flat fill


def test_outpaint_again_builds_a_lineage(services):
    first = services.runner.run(outpaint(left=16, right=0, top=0, bottom=0))
    second = services.runner.run(outpaint(image=first.images[0], left=0, right=16, top=0, bottom=0))
    assert second.images[0].size == (96 + 32, 64)
    assert services.history.get(second.run_id).parent_id == first.run_id
    rerun = services.runner.rerun(second.run_id)
    assert np.array_equal(np.array(rerun.images[0]), np.array(second.images[0]))


def test_bad_outpaint_input(services):
    with pytest.raises(InputError, match="all four sides are 0"):
        services.runner.run(outpaint(left=0, right=0, top=0, bottom=0))
    with pytest.raises(InputError) as error:
        services.runner.run(outpaint(left=12))
    assert error.value.field == "left" and "multiple of 8" in str(error.value)
    services.settings.max_pixels = 128 * 128
    with pytest.raises(InputError, match="over the limit"):
        services.runner.run(outpaint(left=512, right=512))
    assert services.history.count() == 0
