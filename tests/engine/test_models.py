"""ModelManager: loading offline from folders and single files, safety refusals, the LRU cache."""

import dataclasses
import pickle

import numpy as np
import pytest
import torch

from studio.engine import models as models_module
from studio.engine.checkpoints import export_single_file, inspect_checkpoint
from studio.engine.devices import Placement, available_ram_bytes
from studio.engine.models import ModelManager
from studio.errors import ModelError, NotFound
from studio.micro.tiny import save_tiny_model


def manager(settings, **changes):
    return ModelManager(settings.model_copy(update=changes), Placement(torch.device("cpu"), torch.float32))


def pixels(pipe, seed=3):
    out = pipe(prompt="a blue square", num_inference_steps=2, width=64, height=64, output_type="np",
               generator=torch.Generator("cpu").manual_seed(seed))
    return out.images[0]


def test_loads_a_diffusers_folder_offline(settings, tiny_model_dir):
    models = manager(settings)
    models.registry.add(str(tiny_model_dir), name="tiny")
    loaded = models.load("tiny")
    assert loaded.family == "sd1" and loaded.native_size == 64 and not loaded.inpaint_unet
    assert loaded.pipe.unet.dtype == torch.float32
    assert len(loaded.model_hash) == 64
    image = pixels(loaded.pipe)
    assert image.shape == (64, 64, 3) and np.isfinite(image).all()


def test_single_file_round_trip_gives_the_same_pixels(settings, tiny_model_dir, tmp_path):
    models = manager(settings)
    models.registry.add(str(tiny_model_dir), name="folder")
    folder_pipe = models.load("folder").pipe
    checkpoint = export_single_file(folder_pipe, tmp_path / "tiny.safetensors", dtype=torch.float32)
    info = inspect_checkpoint(checkpoint)
    assert (info.family, info.inpaint, info.kind) == ("sd1", False, "model")
    models.registry.add(str(checkpoint), name="single", config_dir=str(tiny_model_dir))
    single = models.load("single")
    assert single.entry.source == "single_file"
    for key, value in folder_pipe.unet.state_dict().items():
        assert torch.equal(value, single.pipe.unet.state_dict()[key]), key
    for key, value in folder_pipe.vae.state_dict().items():
        assert torch.equal(value, single.pipe.vae.state_dict()[key]), key
    np.testing.assert_array_equal(pixels(folder_pipe), pixels(single.pipe))


def test_inpaint_checkpoints_are_detected_from_the_unet(settings, tiny_inpaint_dir, tmp_path):
    models = manager(settings)
    models.registry.add(str(tiny_inpaint_dir), name="inpaint")
    loaded = models.load("inpaint")
    assert loaded.inpaint_unet
    path = export_single_file(loaded.pipe, tmp_path / "inpaint.safetensors")
    assert inspect_checkpoint(path).config_name == "sd1-inpaint"


def test_pickle_checkpoints_are_refused_without_unpickling(settings, tmp_path):
    class Boom:
        def __reduce__(self):
            return (exec, ("raise SystemExit('unpickled!')",))

    evil = tmp_path / "evil.ckpt"
    evil.write_bytes(pickle.dumps({"state_dict": Boom()}))
    with pytest.raises(ModelError) as error:
        manager(settings).registry.add(str(evil))
    assert "pickle" in str(error.value) and error.value.field == "path"


@pytest.mark.parametrize("content", [b"", b"\x10\x00\x00\x00\x00\x00\x00\x00{not json", b"x" * 64])
def test_corrupt_safetensors_is_a_clear_error(settings, tmp_path, content):
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(content)
    with pytest.raises(ModelError) as error:
        manager(settings).registry.add(str(broken))
    assert "not a valid .safetensors file" in str(error.value)


def test_truncated_safetensors_is_caught(settings, tiny_model_dir, tmp_path):
    models = manager(settings)
    models.registry.add(str(tiny_model_dir), name="folder")
    path = export_single_file(models.load("folder").pipe, tmp_path / "cut.safetensors")
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ModelError, match="truncated"):
        models.registry.add(str(path))


def test_missing_and_unknown_models(settings, tiny_model_dir, tmp_path):
    models = manager(settings)
    with pytest.raises(ModelError, match="does not exist"):
        models.registry.add(str(tmp_path / "nope.safetensors"))
    with pytest.raises(NotFound) as error:
        models.registry.resolve("never-added")
    assert error.value.field == "model"
    copy = save_tiny_model(tmp_path / "vanishing")
    models.registry.add(str(copy), name="vanishing")
    import shutil

    shutil.rmtree(copy)
    with pytest.raises(ModelError, match="missing"):
        models.registry.resolve("vanishing")


def test_hub_ids_are_refused_offline(settings):
    with pytest.raises(ModelError, match="offline"):
        manager(settings).registry.add("runwayml/stable-diffusion-v1-5")


def plenty_of_memory(monkeypatch, free=64 * 2**30):
    """The count limit is what these tests check, not the RAM of whichever machine runs them."""
    monkeypatch.setattr(models_module, "free_memory_bytes", lambda device: free)


def test_lru_cache_keeps_recent_models_and_evicts_the_oldest(settings, tiny_model_dir, tmp_path, monkeypatch):
    plenty_of_memory(monkeypatch)
    models = manager(settings, model_cache_size=2)
    second = save_tiny_model(tmp_path / "second", seed=5)
    third = save_tiny_model(tmp_path / "third", seed=6)
    for name, path in (("a", tiny_model_dir), ("b", second), ("c", third)):
        models.registry.add(str(path), name=name)
    models.load("a")
    models.load("b")
    models.load("a")  # switching back costs no reload
    assert models.load_count == 2 and models.loaded_names() == ["b", "a"]
    models.load("c")  # evicts b, the least recently used
    assert models.loaded_names() == ["a", "c"] and models.load_count == 3
    assert models.unload() == ["a", "c"] and models.loaded_names() == []


def test_low_memory_evicts_loaded_models_before_loading_another(settings, tiny_model_dir, tmp_path, monkeypatch):
    plenty_of_memory(monkeypatch)
    models = manager(settings, model_cache_size=4)
    second = save_tiny_model(tmp_path / "second", seed=5)
    models.registry.add(str(tiny_model_dir), name="a")
    models.registry.add(str(second), name="b")
    models.load("a")
    plenty_of_memory(monkeypatch, free=1)  # less than the next model needs
    models.load("b")
    assert models.loaded_names() == ["b"] and models.load_count == 2


def test_available_ram_counts_the_page_cache(tmp_path):
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       25000000 kB\nMemFree:          500000 kB\nMemAvailable:   20000000 kB\n")
    assert available_ram_bytes(str(meminfo)) == 20000000 * 1024
    assert available_ram_bytes(str(tmp_path / "absent")) > 0


def test_derived_pipelines_share_weights_and_dtype(settings, tiny_model_dir):
    models = ModelManager(settings, Placement(torch.device("cpu"), torch.bfloat16))
    models.registry.add(str(tiny_model_dir), name="tiny")
    base = models.load("tiny").pipe
    img2img = models.pipeline("img2img", "tiny")
    assert img2img is not base and type(img2img).__name__ == "StableDiffusionImg2ImgPipeline"
    assert img2img.unet is base.unet and img2img.vae is base.vae
    assert img2img.unet.dtype == torch.bfloat16
    assert models.pipeline("img2img", "tiny") is img2img
    assert models.pipeline("txt2img", "tiny") is base


def test_hashes_are_cached_by_stamp_and_follow_changes(settings, tmp_path):
    models = manager(settings)
    folder = save_tiny_model(tmp_path / "hashed", seed=2)
    entry = models.registry.add(str(folder), name="hashed")
    first = models.registry.model_hash(entry)
    assert models.registry.model_hash(entry) == first
    assert first in models.registry.hashes.path.read_text()
    weights = next(folder.rglob("unet/*.safetensors"))
    weights.write_bytes(weights.read_bytes())  # same bytes, new mtime: re-hashed, same value
    assert models.registry.model_hash(entry) == first
    other = save_tiny_model(tmp_path / "other", seed=3)
    assert models.registry.model_hash(dataclasses.replace(entry, location=str(other))) != first


def test_placeholder_is_generated_when_nothing_else_exists(settings, monkeypatch, tmp_path):
    import studio.engine.registry as module

    monkeypatch.setattr(module, "EMBEDDED_MODELS_DIR", tmp_path / "no-assets")
    models = manager(settings, default_model=None)
    assert models.registry.default_name() == module.PLACEHOLDER_MODEL
    entry = models.registry.resolve(None)
    assert entry.source == "placeholder" and "untrained" in entry.label
