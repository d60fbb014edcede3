"""Hires. fix: a first pass, an upscale (latent, Lanczos or a model file), an img2img pass at the big size."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, PngImagePlugin
from tests_support import fast_request

from studio.engine.upscalers import build_compact_upscaler, save_upscaler
from studio.errors import InputError
from studio.requests import InpaintRequest, validate


def pixels(result) -> np.ndarray:
    return np.stack([np.array(image) for image in result.images])


@pytest.mark.parametrize("upscaler", ["Latent", "Latent (bicubic antialiased)", "Lanczos", "tiny4x"])
def test_hires_fix_paints_at_the_big_size_and_reruns_exactly(services, upscaler):
    save_upscaler(build_compact_upscaler(scale=4), services.settings.models_dir / "ESRGAN" / "tiny4x.pth")
    steps = []
    request = fast_request(batch_size=2, enable_hr=True, hr_upscaler=upscaler, hr_second_pass_steps=4)
    result = services.runner.run(request, on_progress=lambda p: steps.append((p.step, p.total_steps)))
    assert [image.size for image in result.images] == [(128, 128), (128, 128)]
    # 2 first-pass steps, then 0.7 x 4 = 2 second-pass steps, counted as one run
    assert (4, 4) in steps and (3, 4) in steps
    record = services.history.get(result.run_id)
    assert (record.width, record.height) == (64, 64) and record.params["enable_hr"] is True
    assert f"Hires upscale: 2, Hires steps: 4, Hires upscaler: {upscaler}" in result.infotexts[0]
    assert "Denoising strength: 0.7" in result.infotexts[0]
    again = services.runner.rerun(result.run_id)
    assert np.array_equal(pixels(again), pixels(result))


def test_the_second_pass_repaints_the_upscaled_first_pass(services):
    base = services.runner.run(fast_request())
    hires = services.runner.run(fast_request(enable_hr=True, hr_upscaler="Lanczos"))
    upscaled = np.array(base.images[0].resize((128, 128), Image.Resampling.LANCZOS), dtype=int)
    assert np.abs(np.array(hires.images[0], dtype=int) - upscaled).mean() > 2
    # no Hires. fix: the first pass alone, as before
    assert base.images[0].size == (64, 64)


def test_resize_to_wins_over_the_factor_and_keeps_the_aspect(services):
    request = validate(fast_request(width=64, height=128, enable_hr=True, hr_resize_x=96))
    assert request.hires_size() == (96, 192)
    result = services.runner.run(fast_request(enable_hr=True, hr_resize_x=96, hr_resize_y=80))
    assert result.images[0].size == (96, 80) and "Hires resize: 96x80" in result.infotexts[0]


def test_bad_hires_settings_name_their_field_and_record_nothing(services):
    runner = services.runner
    cases = [(fast_request(enable_hr=True, hr_upscaler="4x-UltraSharp"), "hr_upscaler", "pick one of: Lanczos"),
             (fast_request(enable_hr=True, hr_scale=9.0), "hr_scale", "out of range"),
             (fast_request(enable_hr=True, hr_denoise_strength=0.1, hr_second_pass_steps=2), "hr_denoise_strength",
              "no denoising step"),
             (InpaintRequest(prompt="x", image=Image.new("RGB", (64, 64)), mask=Image.new("L", (64, 64), 255),
                             steps=2, enable_hr=True), "enable_hr", "txt2img option")]
    for request, field, words in cases:
        with pytest.raises(InputError, match=words) as caught:
            runner.run(request)
        assert caught.value.field == field
    services.settings.max_pixels = 100 * 100
    with pytest.raises(InputError, match="Hires. fix to 128x128") as caught:
        runner.run(fast_request(enable_hr=True))
    assert caught.value.field == "hr_scale"
    assert services.history.search() == []


def test_an_a1111_png_with_hires_settings_restores_them(services, tmp_path):
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", "a castle\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 5, Size: 512x512, "
                                "Denoising strength: 0.45, Hires upscale: 1.5, Hires steps: 12, "
                                "Hires upscaler: Latent (bicubic)")
    png = tmp_path / "a1111.png"
    Image.new("RGB", (8, 8)).save(png, pnginfo=info)
    request = services.runner.request_from_png(Image.open(png))
    assert (request.enable_hr, request.hr_scale, request.hr_second_pass_steps) == (True, 1.5, 12)
    assert (request.hr_upscaler, request.hr_denoise_strength) == ("Latent (bicubic)", 0.45)
