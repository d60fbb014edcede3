"""The power tools through the A1111 API, with the real webuiapi client: Hires. fix, styles, LoRAs, Extras."""

from __future__ import annotations

import numpy as np
import pytest
import webuiapi
from PIL import Image
from tests_support import fast_request

from studio.micro.lora_files import random_factors, save_lora
from studio.micro.tiny import tiny_pipeline


@pytest.fixture
def client(server, services):
    return webuiapi.WebUIApi(host="127.0.0.1", port=services.settings.port, sampler="Euler", steps=2)


def test_hires_fix_through_the_api_is_the_studio_run(client, services):
    result = client.txt2img(prompt="a red cube", seed=11, width=64, height=64, enable_hr=True, hr_scale=2,
                            hr_upscaler="Latent", hr_second_pass_steps=4, denoising_strength=0.6)
    assert result.image.size == (128, 128) and result.info["ignored"] == []
    assert "Hires upscale: 2, Hires steps: 4, Hires upscaler: Latent" in result.info["infotexts"][0]
    same = services.runner.run(fast_request(prompt="a red cube", seed=11, karras=True, enable_hr=True,
                                            hr_upscaler="Latent", hr_second_pass_steps=4, hr_denoise_strength=0.6))
    assert np.array_equal(np.array(result.image.convert("RGB")), np.array(same.images[0]))
    with pytest.raises(RuntimeError, match="hr_upscaler"):  # webuiapi raises on a 422 naming the field
        client.txt2img(prompt="x", width=64, height=64, enable_hr=True, hr_upscaler="R-ESRGAN 4x+")


def test_styles_and_loras_are_listed_and_used(client, server, services):
    services.runner.styles.save("Oil", "oil painting of {prompt}", "blurry")
    save_lora(services.settings.models_dir / "Lora" / "outline.safetensors", random_factors(tiny_pipeline(0), seed=3))
    assert client.get_prompt_styles() == [{"name": "Oil", "prompt": "oil painting of {prompt}",
                                           "negative_prompt": "blurry"}]
    assert [lora["name"] for lora in client.get_loras()] == ["micro-framed", "outline"]  # the embedded one too
    result = client.txt2img(prompt="a cube <lora:outline:0.5>", styles=["Oil"], seed=3, width=64, height=64)
    record = services.history.get(result.info["run_id"])
    assert record.prompt == "oil painting of a cube <lora:outline:0.5>" and record.negative_prompt == "blurry"
    assert record.loras[0]["name"] == "outline" and result.info["styles"] == ["Oil"]


def test_extra_single_image_upscales_as_a_run(client, services):
    picture = Image.new("RGB", (40, 24), (30, 160, 60))
    result = client.extra_single_image(picture, upscaler_1="Lanczos", upscaling_resize=2)
    assert result.image.size == (80, 48)
    assert services.history.search()[0].mode == "upscale"
