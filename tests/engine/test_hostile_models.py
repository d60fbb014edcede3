"""Bad model files mark only themselves unloadable: adding refuses them, listing names the reason, the rest works."""

import json
import urllib.request

import pytest
import torch
from hostile_files import deeply_nested, huge_claim, nan_offsets, nested_config, pickled_unet, safetensors_bytes
from safetensors.torch import save_file
from tests_support import fast_request, free_port

from studio.cli import main
from studio.engine.checkpoints import read_header
from studio.errors import ModelError


@pytest.mark.parametrize(("make", "reason"), [
    (deeply_nested, "nests too deeply"),
    (huge_claim, "claims 1,099,511,627,776 F32 values but 16 bytes"),
    (nan_offsets, "data_offsets that are not two byte positions"),
])
def test_lying_headers_are_refused_at_add(services, tmp_path, make, reason):
    path = make(tmp_path / "bad.safetensors")
    with pytest.raises(ModelError) as error:
        services.registry.add(str(path))
    assert error.value.field == "path" and reason in str(error.value) and "bad.safetensors" in str(error.value)
    assert "bad" not in services.registry.entries()


@pytest.mark.parametrize(("header", "data", "reason"), [
    ({"w": {"dtype": "F99", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 4, "unknown dtype"),
    ({"w": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}, b"\0" * 4, "not a list of sizes"),
    ({"w": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}, b"\0" * 8, "gaps"),
    ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
      "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, b"\0" * 12, "overlaps"),
    ({"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 9, "5 bytes follow the last tensor"),
    ({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, b"\0" * 8, "truncated"),
    ({"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, True]}}, b"\0" * 4, "two byte positions"),
    ({"w": [1, 2, 3]}, b"", "not described by dtype, shape and data_offsets"),
    ({"__metadata__": {"format": ["pt"]}}, b"", "__metadata__"),
])
def test_header_checks_name_what_lies(tmp_path, header, data, reason):
    path = tmp_path / "lie.safetensors"
    path.write_bytes(safetensors_bytes(header, data))
    with pytest.raises(ModelError, match=reason):
        read_header(path)


def test_a_real_file_passes_the_checks(tmp_path):
    path = tmp_path / "real.safetensors"
    save_file({"a": torch.zeros(3, 2), "b": torch.ones(5, dtype=torch.float16), "c": torch.zeros(0)}, str(path))
    assert set(read_header(path)) == {"a", "b", "c"}


def test_folders_are_checked_when_added(services, tiny_model_dir, tmp_path):
    pickled = pickled_unet(tiny_model_dir, tmp_path / "pickled")
    with pytest.raises(ModelError) as error:
        services.registry.add(str(pickled))
    assert error.value.field == "path" and "unet/diffusion_pytorch_model.bin is a pickle" in str(error.value)
    nested = nested_config(tiny_model_dir, tmp_path / "nested")
    with pytest.raises(ModelError, match="unet/config.json is damaged.*nests its JSON too deeply"):
        services.registry.add(str(nested))
    (tmp_path / "broken-index").mkdir()
    (tmp_path / "broken-index" / "model_index.json").write_text("[1, 2")
    with pytest.raises(ModelError, match="model_index.json is damaged"):
        services.registry.add(str(tmp_path / "broken-index"))


def bad_models_folder(services, tiny_model_dir, tmp_path):
    folder = services.registry.checkpoints_dir
    folder.mkdir(parents=True)
    deeply_nested(folder / "deep.safetensors")
    huge_claim(folder / "huge.safetensors")
    pickled_unet(tiny_model_dir, folder / "pickled")
    nested_config(tiny_model_dir, folder / "nested")
    return {"deep": "nests too deeply", "huge": "claims", "pickled": "pickle", "nested": "too deeply"}


def test_bad_files_in_the_models_folder_are_listed_with_their_reason(services, tiny_model_dir, tmp_path):
    expected = bad_models_folder(services, tiny_model_dir, tmp_path)
    rows = {row["name"]: row for row in (services.models.describe(e) for e in services.registry.entries().values())}
    for name, reason in expected.items():
        assert reason in rows[name]["error"], rows[name]
    assert "error" not in rows["tiny"]
    with pytest.raises(ModelError) as error:
        services.runner.run(fast_request(model="deep"))
    assert error.value.field == "model" and "'deep' cannot be loaded" in str(error.value)
    assert services.history.count() == 0
    # the others still load and run, and the failed attempt left nothing half-loaded in the cache
    assert services.runner.run(fast_request()).status == "done"
    assert services.models.loaded_names() == ["tiny"]


def test_the_cli_lists_bad_models_and_keeps_working(tmp_path, tiny_model_dir, capsys, monkeypatch, settings, services):
    bad_models_folder(services, tiny_model_dir, tmp_path)
    monkeypatch.setenv("STUDIO_DATA_DIR", str(settings.data_dir))
    monkeypatch.setenv("STUDIO_MODELS_DIR", str(settings.models_dir))
    monkeypatch.setenv("STUDIO_DEVICE", "cpu")
    assert main(["models", "list", "--json"]) == 0
    listed = {row["name"]: row for row in json.loads(capsys.readouterr().out)}
    assert "nests too deeply" in listed["deep"]["error"] and "error" not in listed["tiny"]
    assert main(["generate", "--prompt", "x", "--steps", "2", "--model", "deep"]) == 3
    err = capsys.readouterr().err
    assert err.startswith("error: model: model 'deep' cannot be loaded") and err.count("\n") == 1
    assert main(["generate", "--prompt", "x", "--steps", "2", "--width", "64", "--height", "64", "--model", "tiny"]) == 0
    deeply_nested(tmp_path / "another.safetensors")
    assert main(["models", "add", str(tmp_path / "another.safetensors")]) == 3
    assert "nests too deeply" in capsys.readouterr().err


def test_the_server_starts_with_bad_files_and_shows_them_unloadable(services, tiny_model_dir, tmp_path):
    from studio.ui.server import launch

    bad_models_folder(services, tiny_model_dir, tmp_path)
    (services.registry.controlnet_dir).mkdir(parents=True)
    deeply_nested(services.registry.controlnet_dir / "deep-openpose.safetensors")
    services.settings.port = free_port()
    demo, url = launch(services, block=False)
    try:
        with urllib.request.urlopen(f"{url.rstrip('/')}/config", timeout=30) as response:
            config = response.read().decode()
    finally:
        demo.close()
    for name in ("deep", "huge", "pickled", "nested", "deep-openpose"):
        assert f'"{name}"' in config
    assert config.count("cannot be loaded:") >= 5
