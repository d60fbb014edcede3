"""Upscalers: listing by folder, safe loading (weights-only pickles, checked safetensors), sizes, tiling, latents."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from studio.engine.upscalers import (
    BUILTINS,
    LATENT_UPSCALERS,
    MODEL_FOLDERS,
    UpscalerRegistry,
    _axis_weights,
    _tile_starts,
    build_compact_upscaler,
    load_upscaler_file,
    save_upscaler,
    upscale_image,
    upscale_latents,
)
from studio.errors import InputError, ModelError, NotFound


def noise(width: int, height: int, mode: str = "RGB", seed: int = 0) -> Image.Image:
    channels = len(mode)
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, channels), dtype=np.uint8)
    return Image.fromarray(pixels, mode)


def add_net(models_dir, folder: str, filename: str, scale: int = 4, **options):
    return save_upscaler(build_compact_upscaler(scale=scale, **options), models_dir / folder / filename)


def as_array(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


# -- listing -------------------------------------------------------------------------------------------------


def test_names_lists_built_ins_first_then_the_models_of_each_folder(tmp_path):
    for folder in MODEL_FOLDERS:
        add_net(tmp_path, folder, f"{folder.lower()}-x2.safetensors", scale=2)
    (tmp_path / "ESRGAN" / "notes.txt").write_text("not a model")
    (tmp_path / "ESRGAN" / "old.ckpt").write_bytes(b"ignored: not an upscaler suffix")
    (tmp_path / "Stable-diffusion").mkdir()
    (tmp_path / "Stable-diffusion" / "sd.safetensors").write_bytes(b"a checkpoint, not an upscaler")
    embedded = add_net(tmp_path / "assets", ".", "micro-x4.safetensors")
    registry = UpscalerRegistry(tmp_path, extra={"micro-x4": embedded})

    names = registry.names()
    assert names[:len(BUILTINS)] == list(BUILTINS)
    assert names[:2] == ["Lanczos", "Nearest"]
    assert names[len(BUILTINS):] == ["micro-x4", *(f"{folder.lower()}-x2" for folder in MODEL_FOLDERS)]
    assert [registry.is_latent(name) for name in names].count(True) == len(LATENT_UPSCALERS) == 6
    assert registry.kind("Lanczos") == "pixel" and registry.kind("Latent (bicubic)") == "latent"
    assert registry.kind("dat-x2") == "model"


def test_a_name_taken_twice_gets_its_folder_and_file(tmp_path):
    add_net(tmp_path, "ESRGAN", "4x-sharp.pth")
    add_net(tmp_path, "ESRGAN", "4x-sharp.safetensors")
    add_net(tmp_path, "DAT", "4x-sharp.safetensors")
    add_net(tmp_path, "upscale_models", "Lanczos.pth")
    files = UpscalerRegistry(tmp_path).model_files()
    assert files["4x-sharp"].name == "4x-sharp.safetensors"  # the safer copy keeps the plain name
    assert files["4x-sharp"].parent.name == "ESRGAN"
    assert set(files) == {"4x-sharp", "4x-sharp (ESRGAN/4x-sharp.pth)", "4x-sharp (DAT/4x-sharp.safetensors)",
                          "Lanczos (upscale_models/Lanczos.pth)"}


def test_describe_gives_kind_size_scale_and_problems(tmp_path):
    good = add_net(tmp_path, "RealESRGAN", "fast-x2.pth", scale=2)
    (tmp_path / "ESRGAN").mkdir()
    (tmp_path / "ESRGAN" / "broken.safetensors").write_bytes(b"\x10" * 40)
    rows = {row["name"]: row for row in UpscalerRegistry(tmp_path).describe()}
    assert rows["Lanczos"]["kind"] == "pixel" and rows["Latent"]["kind"] == "latent"
    assert rows["fast-x2"] == {"name": "fast-x2", "kind": "model", "path": str(good),
                               "size_bytes": good.stat().st_size, "scale": 2,
                               "architecture": "RealESRGAN Compact", "problem": None}
    assert "broken.safetensors" in rows["broken"]["problem"] and rows["broken"]["scale"] is None
    quick = {row["name"]: row for row in UpscalerRegistry(tmp_path).describe(probe=False)}
    assert quick["fast-x2"]["scale"] is None and quick["fast-x2"]["size_bytes"] == good.stat().st_size


def test_an_unknown_name_is_refused_naming_the_field_and_the_known_names(tmp_path):
    add_net(tmp_path, "ESRGAN", "4x-mine.safetensors")
    registry = UpscalerRegistry(tmp_path)
    for call in (lambda: registry.load("4x-UltraSharp"),
                 lambda: upscale_image(noise(8, 8), "4x-UltraSharp", 2, registry)):
        with pytest.raises(NotFound) as caught:
            call()
        assert caught.value.field == "upscaler"
        assert "'4x-UltraSharp'" in caught.value.message
        assert "Lanczos" in caught.value.message and "4x-mine" in caught.value.message
        assert "Error" not in caught.value.message


# -- loading -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_both_file_kinds_load_and_upscale_to_the_asked_size(tmp_path, suffix):
    add_net(tmp_path, "ESRGAN", f"x4{suffix}")
    registry = UpscalerRegistry(tmp_path)
    model = registry.load("x4")
    assert (model.architecture.name, model.scale, model.purpose) == ("RealESRGAN Compact", 4, "SR")
    assert upscale_image(noise(13, 9), "x4", 4, registry).size == (52, 36)
    assert upscale_image(noise(13, 9), "x4", 3, registry).size == (39, 27)  # 4x, then Lanczos down
    assert upscale_image(noise(13, 9), "x4", 1.5, registry).size == (20, 14)  # round(19.5), round(13.5)


def test_a_2x_net_asked_for_4x_runs_twice(tmp_path):
    add_net(tmp_path, "upscale_models", "x2.safetensors", scale=2)
    registry = UpscalerRegistry(tmp_path)
    image = noise(11, 7)
    result = upscale_image(image, "x2", 4, registry)
    assert result.size == (44, 28)
    model = registry.load("x2")
    pixels = torch.from_numpy(np.array(image)).permute(2, 0, 1)[None].float() / 255
    twice = model(model(pixels))[0].permute(1, 2, 0).mul(255).round().clamp(0, 255).to(torch.uint8).numpy()
    assert np.abs(as_array(result) - twice.astype(np.int16)).max() <= 1
    assert upscale_image(image, "x2", 3, registry).size == (33, 21)  # 4x by two passes, then Lanczos to 3x


def test_the_cache_keeps_a_net_until_its_file_changes(tmp_path):
    path = add_net(tmp_path, "ESRGAN", "x4.safetensors")
    registry = UpscalerRegistry(tmp_path)
    first = registry.load("x4")
    assert registry.load("x4") is first
    save_upscaler(build_compact_upscaler(scale=2, num_feat=8), path)
    assert registry.load("x4").scale == 2


class RunsCode:
    """What a hostile .pth carries: unpickling calls `action(*args)`."""

    def __init__(self, action, *args):
        self.action, self.args = action, args

    def __reduce__(self):
        return self.action, self.args


@pytest.mark.parametrize("payload", ["open", "os.system"])
def test_a_pickle_that_runs_code_is_refused_and_nothing_runs(tmp_path, payload):
    marker = tmp_path / "pwned"
    evil = RunsCode(open, str(marker), "w") if payload == "open" else RunsCode(os.system, f"touch '{marker}'")
    state = build_compact_upscaler(scale=2)
    state["body.0.weight"] = evil
    path = tmp_path / "ESRGAN" / "4x-evil.pth"
    path.parent.mkdir()
    torch.save(state, path)
    # and the old non-zip pickle format too, which a weights-only load must also police
    legacy = tmp_path / "ESRGAN" / "4x-evil-legacy.pth"
    legacy.write_bytes(pickle.dumps({"body.0.weight": evil}, protocol=2))
    registry = UpscalerRegistry(tmp_path)
    for name, file in (("4x-evil", path), ("4x-evil-legacy", legacy)):
        with pytest.raises(ModelError) as caught:
            registry.load(name)
        assert file.name in caught.value.message and "run code" in caught.value.message
        assert caught.value.field == "upscaler" and "Unpickling" not in caught.value.message
    rows = {row["name"]: row for row in registry.describe()}
    assert "run code" in rows["4x-evil"]["problem"]
    assert not marker.exists()


@pytest.mark.parametrize(("filename", "content", "words"), [
    ("garbage.pth", os.urandom(512), "not a readable .pth"),
    ("zipish.pth", b"PK\x03\x04" + os.urandom(512), "not a readable .pth"),
    ("empty.pth", b"", "not a readable .pth"),
    ("garbage.safetensors", os.urandom(512), "not a valid .safetensors"),
    ("empty.safetensors", b"", "not a valid .safetensors"),
])
def test_garbage_bytes_are_refused_cleanly(tmp_path, filename, content, words):
    path = tmp_path / filename
    path.write_bytes(content)
    with pytest.raises(ModelError) as caught:
        load_upscaler_file(path)
    assert filename in caught.value.message and words in caught.value.message


@pytest.mark.parametrize(("state", "words"), [
    ({"encoder.weight": torch.randn(8, 3, 3, 3), "decoder.bias": torch.randn(8)},
     "not an upscaler architecture spandrel knows"),
    ({"body.0.weight": torch.randn(8, 3, 3, 3), "body.1.weight": torch.randn(8)},  # Compact keys, half a net
     "not an upscaler architecture spandrel knows"),
    ({"step": torch.tensor(3)}, "not an upscaler architecture spandrel knows"),
    (build_compact_upscaler(scale=1), "model for restoration (1x"),
])
@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_state_dicts_that_are_no_upscaler_are_refused(tmp_path, state, words, suffix):
    path = save_upscaler(state, tmp_path / f"odd{suffix}")
    with pytest.raises(ModelError) as caught:
        load_upscaler_file(path)
    assert path.name in caught.value.message and words in caught.value.message


def test_a_pth_without_tensors_is_refused(tmp_path):
    path = tmp_path / "numbers.pth"
    torch.save({"epoch": 12, "lr": 0.1}, path)
    with pytest.raises(ModelError, match="numbers.pth holds no weights"):
        load_upscaler_file(path)
    torch.save([1, 2, 3], path)
    with pytest.raises(ModelError, match="numbers.pth holds no table of weights"):
        load_upscaler_file(path)


def test_wrapped_state_dicts_are_unwrapped(tmp_path):
    path = tmp_path / "ESRGAN" / "wrapped.pth"
    path.parent.mkdir()
    torch.save({"params_ema": {f"module.{k}": v for k, v in build_compact_upscaler(scale=2).items()},
                "iter": 5000}, path)
    assert UpscalerRegistry(tmp_path).load("wrapped").scale == 2


# -- running -------------------------------------------------------------------------------------------------


def test_lanczos_and_nearest_are_pil_exactly(tmp_path):
    registry = UpscalerRegistry(tmp_path)
    image = noise(37, 23)
    for name, resample in (("Lanczos", Image.Resampling.LANCZOS), ("Nearest", Image.Resampling.NEAREST)):
        for scale in (2, 1.5, 0.5):
            expected = image.resize((round(37 * scale), round(23 * scale)), resample)
            assert upscale_image(image, name, scale, registry).tobytes() == expected.tobytes()


def test_bad_scales_and_latent_names_are_refused_for_images(tmp_path):
    registry = UpscalerRegistry(tmp_path)
    for scale in (0, -2, float("nan"), float("inf")):
        with pytest.raises(InputError) as caught:
            upscale_image(noise(8, 8), "Lanczos", scale, registry)
        assert caught.value.field == "scale"
    with pytest.raises(InputError, match="Hires. fix") as caught:
        upscale_image(noise(8, 8), "Latent", 2, registry)
    assert caught.value.field == "upscaler"


def test_tiled_equals_untiled_and_runs_are_deterministic(tmp_path):
    # receptive field: 6 stacked 3x3 convs = 6 pixels each way, less than a quarter of the 32-pixel overlap
    add_net(tmp_path, "ESRGAN", "x2.safetensors", scale=2, num_conv=4)
    registry = UpscalerRegistry(tmp_path)
    image = noise(300, 200, seed=3)
    assert len(_tile_starts(300, 128, 32)) == 3 and len(_tile_starts(200, 128, 32)) == 2
    tiled = upscale_image(image, "x2", 2, registry, tile=128, overlap=32)
    whole = upscale_image(image, "x2", 2, registry, tile=0)
    assert tiled.size == whole.size == (600, 400)
    difference = np.abs(as_array(tiled) - as_array(whole))
    assert difference.max() <= 2 and difference.mean() < 0.5  # in 1/255 steps
    assert upscale_image(image, "x2", 2, registry, tile=128, overlap=32).tobytes() == tiled.tobytes()
    # the check can see a seam: tiles that merely abut (256 = 2 x 128, no overlap) differ along it
    square = noise(256, 256, seed=4)
    abutting = upscale_image(square, "x2", 2, registry, tile=128, overlap=0)
    assert np.abs(as_array(abutting) - as_array(upscale_image(square, "x2", 2, registry, tile=0))).max() > 2


@pytest.mark.parametrize(("length", "tile", "overlap", "scale"), [
    (129, 128, 32, 1), (200, 128, 32, 2), (257, 128, 64, 4), (1000, 96, 48, 2), (300, 64, 0, 3), (50, 64, 16, 2),
])
def test_tile_weights_sum_to_one_and_stay_off_tile_borders(length, tile, overlap, scale):
    starts = _tile_starts(length, tile, overlap)
    span = min(tile, length)
    assert starts[0] == 0 and starts[-1] + span == length
    total = torch.zeros(length * scale)
    for start, weight in zip(starts, _axis_weights(starts, span, length, scale)):
        total[start * scale:(start + span) * scale] += weight
    assert torch.allclose(total, torch.ones_like(total), atol=1e-6)
    for i, (start, weight) in enumerate(zip(starts, _axis_weights(starts, span, length, scale))):
        margin = (overlap // 4 - 1) * scale  # a tile mixes in only pixels this far from its own inner borders
        if i > 0 and margin > 0:
            assert weight[:margin].max() == 0
        if i < len(starts) - 1 and margin > 0:
            assert weight[-margin:].max() == 0


def test_alpha_survives_a_model_upscale(tmp_path):
    add_net(tmp_path, "ESRGAN", "x2.safetensors", scale=2)
    image = noise(10, 6, mode="RGBA")
    result = upscale_image(image, "x2", 2, UpscalerRegistry(tmp_path))
    assert result.mode == "RGBA" and result.size == (20, 12)
    assert result.getchannel("A").tobytes() == image.getchannel("A").resize((20, 12), Image.LANCZOS).tobytes()


# -- latents -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(LATENT_UPSCALERS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_latent_upscalers_interpolate_to_the_asked_size(name, dtype):
    latents = torch.randn(2, 4, 8, 12, generator=torch.Generator().manual_seed(0)).to(dtype)
    result = upscale_latents(latents, name, (16, 24))
    assert result.shape == (2, 4, 16, 24) and result.dtype == dtype
    mode, antialias = LATENT_UPSCALERS[name]
    options = {"antialias": antialias} if mode in ("bilinear", "bicubic") else {}
    expected = F.interpolate(latents.float(), size=(16, 24), mode=mode, **options).to(dtype)
    assert torch.equal(result, expected)


def test_latent_upscale_refuses_other_names_and_shapes():
    latents = torch.zeros(1, 4, 8, 8)
    with pytest.raises(InputError) as caught:
        upscale_latents(latents, "Lanczos", (16, 16))
    assert caught.value.field == "upscaler" and "Latent (nearest-exact)" in caught.value.message
    with pytest.raises(InputError):
        upscale_latents(torch.zeros(4, 8, 8), "Latent", (16, 16))
    with pytest.raises(InputError):
        upscale_latents(latents, "Latent", (0, 16))
