"""Upscale (A1111's Extras) as a run: parent is the source's run, re-run repeats it, bad input names its field."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from tests_support import fast_request

from studio.engine.upscalers import build_compact_upscaler, save_upscaler
from studio.errors import InputError
from studio.requests import UpscaleRequest


def test_an_upscale_is_a_run_whose_parent_is_the_source(services):
    source = services.runner.run(fast_request())
    with Image.open(source.outputs[0].path) as png:
        picture = png.convert("RGB")
    result = services.queue.run(UpscaleRequest(image=picture, upscaler="Lanczos", scale=2))
    record = services.history.get(result.run_id)
    assert (record.mode, record.parent_id, record.width, record.height) == ("upscale", source.run_id, 128, 128)
    assert np.array_equal(np.array(result.images[0]), np.array(picture.resize((128, 128), Image.Resampling.LANCZOS)))
    assert result.infotexts[0] == f"Postprocess upscale by: 2, Postprocess upscaler: Lanczos, Source run: {source.run_id}"
    restored = services.runner.restore(result.run_id)
    assert (restored.upscaler, restored.scale, restored.image.size) == ("Lanczos", 2.0, (64, 64))
    again = services.runner.rerun(result.run_id)
    with Image.open(again.outputs[0].path) as first, Image.open(result.outputs[0].path) as second:
        assert np.array_equal(np.array(first), np.array(second))


def test_a_model_upscaler_from_the_esrgan_folder_runs(services):
    save_upscaler(build_compact_upscaler(scale=4), services.settings.models_dir / "ESRGAN" / "tiny4x.pth")
    result = services.runner.run(UpscaleRequest(image=Image.new("RGB", (40, 30), (200, 30, 30)), upscaler="tiny4x",
                                                scale=3))
    assert result.images[0].size == (120, 90)
    assert services.history.get(result.run_id).model_hash  # the file's hash, as for a checkpoint


def test_bad_upscales_name_their_field_and_record_nothing(services):
    picture = Image.new("RGB", (32, 32))
    for request, field, words in [
        (UpscaleRequest(image=picture, upscaler="Latent"), "upscaler", "not an image upscaler"),
        (UpscaleRequest(image=picture, upscaler="4x-UltraSharp"), "upscaler", "pick one of: Lanczos, Nearest"),
        (UpscaleRequest(image=picture, scale=20.0), "scale", "out of range"),
        (UpscaleRequest(image=None), "image", "upload an image"),
        (UpscaleRequest(image=Image.new("RGB", (4000, 30)), scale=8.0), "scale", "at most 16384"),
    ]:
        with pytest.raises(InputError, match=words) as caught:
            services.queue.run(request)
        assert caught.value.field == field
    assert services.history.search() == []
