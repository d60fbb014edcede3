"""A1111 `parameters` text: read what A1111 writes, write what A1111 reads."""

from PIL import Image

from studio.history.files import encode_png
from studio.infotext import format_infotext, parse_infotext, read_parameters

A1111_SAMPLE = """masterpiece, a castle on a hill, (dramatic lighting:1.2)
sunset, clouds
Negative prompt: blurry, lowres, text
Steps: 28, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 6.5, Seed: 3141592653, Size: 512x768, Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, VAE hash: 735e4c3a44, VAE: vae-ft-mse-840000-ema-pruned.safetensors, Denoising strength: 0.45, Clip skip: 2, Lora hashes: "add_detail: 7c6bad76eb54, style: abc", Version: v1.10.1"""


def test_parses_an_a1111_sample():
    parsed = parse_infotext(A1111_SAMPLE)
    assert parsed["prompt"] == "masterpiece, a castle on a hill, (dramatic lighting:1.2)\nsunset, clouds"
    assert parsed["negative_prompt"] == "blurry, lowres, text"
    assert parsed["steps"] == 28 and parsed["sampler"] == "DPM++ 2M" and parsed["karras"] is True
    assert parsed["cfg_scale"] == 6.5 and parsed["seed"] == 3141592653
    assert (parsed["width"], parsed["height"]) == (512, 768)
    assert parsed["model"] == "v1-5-pruned-emaonly" and parsed["model_hash"] == "6ce0161689"
    assert parsed["vae"] == "vae-ft-mse-840000-ema-pruned.safetensors"
    assert parsed["denoise_strength"] == 0.45
    assert parsed["extra"]["Lora hashes"] == "add_detail: 7c6bad76eb54, style: abc"
    assert parsed["extra"]["Clip skip"] == "2"


def test_old_style_sampler_name_carries_karras():
    parsed = parse_infotext("a dog\nSteps: 20, Sampler: DPM++ 2M Karras, CFG scale: 7, Seed: 1, Size: 512x512")
    assert parsed["sampler"] == "DPM++ 2M" and parsed["karras"] is True
    parsed = parse_infotext("a dog\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1, Size: 512x512")
    assert parsed["sampler"] == "Euler a" and parsed["karras"] is False
    assert parsed["negative_prompt"] == ""


def test_format_then_parse_round_trips_awkward_values():
    text = format_infotext("a, b: c", "no \"quotes\"", {"Steps": 5, "Sampler": "Euler", "CFG scale": 7,
                                                       "Seed": 9, "Size": "64x64", "Model": "my, model: v2"})
    parsed = parse_infotext(text)
    assert parsed["prompt"] == "a, b: c"
    assert parsed["negative_prompt"] == 'no "quotes"'
    assert parsed["model"] == "my, model: v2"
    assert parsed["seed"] == 9


def test_png_text_chunks_survive_encoding():
    data = encode_png(Image.new("RGB", (4, 4)), parameters=A1111_SAMPLE, request_json={"mode": "txt2img"})
    import io

    text, studio = read_parameters(Image.open(io.BytesIO(data)))
    assert text == A1111_SAMPLE
    assert studio == {"mode": "txt2img"}
