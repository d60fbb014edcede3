"""The headless CLI: same runner, JSON output, one-line errors naming the field, exit codes."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from studio.cli import main


@pytest.fixture
def cli(tmp_path, tiny_model_dir, capsys, monkeypatch):
    data = tmp_path / "data"
    monkeypatch.setenv("STUDIO_DATA_DIR", str(data))
    monkeypatch.setenv("STUDIO_MODELS_DIR", str(tmp_path / "models"))
    monkeypatch.setenv("STUDIO_DEVICE", "cpu")
    assert main(["models", "add", str(tiny_model_dir), "--name", "tiny"]) == 0
    capsys.readouterr()

    def call(*args):
        code = main(list(args))
        out, err = capsys.readouterr()
        return code, out, err

    call.data = data
    return call


def test_generate_prints_run_seed_and_outputs(cli):
    code, out, err = cli("generate", "--prompt", "a red circle", "--seed", "11", "--steps", "2", "--width", "64",
                         "--height", "72", "--batch-size", "2", "--model", "tiny", "--sampler", "Euler a", "--json")
    assert code == 0, err
    data = json.loads(out)
    assert data["seed"] == 11 and data["seeds"] == [11, 12] and data["status"] == "done"
    assert len(data["outputs"]) == 2
    for path in data["outputs"]:
        image = Image.open(path)
        assert image.size == (64, 72) and "Seed: 1" in image.text["parameters"]
    assert Path(path).is_relative_to(cli.data)


def test_history_list_show_rerun_star_delete(cli):
    _, out, _ = cli("generate", "--prompt", "blue square", "--seed", "3", "--steps", "2", "--model", "tiny", "--json")
    run_id = json.loads(out)["run_id"]
    cli("generate", "--prompt", "green triangle", "--steps", "2", "--model", "tiny", "--json")
    code, out, _ = cli("history", "list", "--search", "square", "--json")
    assert code == 0 and [r["run_id"] for r in json.loads(out)] == [run_id]
    code, out, _ = cli("history", "show", str(run_id), "--json")
    shown = json.loads(out)
    assert shown["prompt"] == "blue square" and shown["seeds"] == [3] and shown["scheduler"]["class"]
    code, out, _ = cli("history", "rerun", str(run_id), "--json")
    rerun = json.loads(out)
    assert code == 0 and rerun["seed"] == 3 and rerun["run_id"] != run_id
    assert Image.open(rerun["outputs"][0]).tobytes() == Image.open(shown["outputs"][0]).tobytes()
    assert cli("history", "star", str(run_id))[0] == 0
    _, out, _ = cli("history", "list", "--starred", "--json")
    assert [r["run_id"] for r in json.loads(out)] == [run_id]
    assert cli("history", "delete", str(run_id))[0] == 0
    code, _, err = cli("history", "show", str(run_id))
    assert code == 4 and err.strip() == f"error: run: run {run_id} does not exist"


def test_history_import_reads_png_parameters(cli, tmp_path):
    _, out, _ = cli("generate", "--prompt", "a figure", "--seed", "8", "--steps", "2", "--model", "tiny", "--json")
    code, out, _ = cli("history", "import", json.loads(out)["outputs"][0], "--json")
    assert code == 0 and json.loads(out)["seed"] == 8 and json.loads(out)["prompt"] == "a figure"
    (tmp_path / "not.png").write_text("hello")
    code, _, err = cli("history", "import", str(tmp_path / "not.png"))
    assert code == 2 and err.startswith("error: png: cannot read")


@pytest.mark.parametrize(
    ("args", "code", "field"),
    [
        (["--width", "0"], 2, "width"),
        (["--width", "100"], 2, "width"),
        (["--steps", "0"], 2, "steps"),
        (["--steps", "10000"], 2, "steps"),
        (["--sampler", "Euler z"], 2, "sampler"),
        (["--model", "missing"], 4, "model"),
    ],
)
def test_errors_are_one_line_naming_the_field(cli, args, code, field):
    exit_code, out, err = cli("generate", "--prompt", "x", "--steps", "2", *args)
    assert exit_code == code
    assert err.count("\n") == 1 and err.startswith(f"error: {field}: ")
    assert out == ""


def test_models_list_and_bad_add(cli, tmp_path):
    code, out, _ = cli("models", "list", "--json")
    names = [m["name"] for m in json.loads(out)]
    assert code == 0 and "tiny" in names
    (tmp_path / "evil.ckpt").write_bytes(b"pickle")
    code, _, err = cli("models", "add", str(tmp_path / "evil.ckpt"))
    assert code == 3 and "pickle" in err and err.startswith("error: path: ")


def test_export_then_add_a_single_file(cli, tmp_path, tiny_model_dir):
    code, out, err = cli("models", "export", "tiny", str(tmp_path / "tiny.safetensors"), "--json")
    assert code == 0, err
    code, out, err = cli("models", "add", json.loads(out)["path"], "--name", "tiny-file", "--config",
                         str(tiny_model_dir), "--json")
    assert code == 0 and json.loads(out)["family"] == "sd1"
    code, out, err = cli("generate", "--prompt", "x", "--steps", "2", "--model", "tiny-file", "--json")
    assert code == 0, err


def test_real_process_entry_point(tmp_path, tiny_model_dir):
    env = dict(os.environ, STUDIO_DATA_DIR=str(tmp_path / "data"), STUDIO_DEVICE="cpu")
    run = lambda *args: subprocess.run([sys.executable, "-m", "studio", *args], capture_output=True, text=True,
                                       env=env, timeout=300)
    assert run("models", "add", str(tiny_model_dir), "--name", "tiny").returncode == 0
    done = run("generate", "--prompt", "a dot", "--steps", "2", "--model", "tiny", "--seed", "5", "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1])["seed"] == 5
    bad = run("generate", "--prompt", "a dot", "--width", "100")
    assert bad.returncode == 2 and bad.stderr.strip().splitlines()[-1].startswith("error: width:")


def _picture(path, size=(96, 64)):
    import numpy as np

    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(path)
    return path


def test_inpaint_and_outpaint_commands(cli, tmp_path):
    import numpy as np

    image = _picture(tmp_path / "in.png")
    mask = Image.new("L", (96, 64), 0)
    mask.paste(255, (10, 10, 40, 40))
    mask.save(tmp_path / "mask.png")
    code, out, err = cli("inpaint", "--image", str(image), "--mask", str(tmp_path / "mask.png"), "--prompt", "a dot",
                         "--steps", "2", "--model", "tiny", "--seed", "4", "--masked-content", "latent-noise",
                         "--mask-blur", "0", "--json")
    assert code == 0, err
    data = json.loads(out)
    result = np.array(Image.open(data["outputs"][0]).convert("RGB"))
    original = np.array(Image.open(image))
    assert result.shape == original.shape
    assert np.array_equal(result[45:], original[45:])  # far below the mask: untouched
    code, out, err = cli("outpaint", "--image", data["outputs"][0], "--left", "16", "--bottom", "8", "--prompt",
                         "more", "--steps", "2", "--model", "tiny", "--json")
    assert code == 0, err
    extended = json.loads(out)
    assert Image.open(extended["outputs"][0]).size == (96 + 16, 64 + 8)
    code, out, _ = cli("history", "show", str(extended["run_id"]), "--json")
    assert json.loads(out)["parent_id"] == data["run_id"]


def test_inpaint_bad_inputs(cli, tmp_path):
    image = _picture(tmp_path / "in.png")
    Image.new("L", (96, 64), 0).save(tmp_path / "empty.png")
    (tmp_path / "notes.txt").write_text("not an image")
    common = ("--prompt", "x", "--steps", "2", "--model", "tiny")
    code, _, err = cli("inpaint", "--image", str(image), "--mask", str(tmp_path / "empty.png"), *common)
    assert code == 2 and err.startswith("error: mask: nothing is painted")
    code, _, err = cli("inpaint", "--image", str(tmp_path / "notes.txt"), "--mask", str(tmp_path / "empty.png"), *common)
    assert code == 2 and err.startswith("error: image: cannot read")
    code, _, err = cli("outpaint", "--image", str(image), *common)
    assert code == 2 and err.startswith("error: extend: all four sides are 0")
    code, _, err = cli("outpaint", "--image", str(image), "--left", "12", *common)
    assert code == 2 and err.startswith("error: left: 12 is not a multiple of 8")


def test_control_command_with_two_units(cli, tmp_path, tiny_model_dir):
    from studio.engine.openpose import pose_to_openpose_json, preset_pose
    from studio.micro.tiny import save_tiny_controlnet

    controlnets = tmp_path / "models" / "ControlNet"
    save_tiny_controlnet(controlnets / "tiny-openpose", seed=1)
    save_tiny_controlnet(controlnets / "tiny-depth", seed=2)
    (tmp_path / "pose.json").write_text(json.dumps(pose_to_openpose_json([preset_pose("waving", 64, 64)], 64, 64)))
    Image.new("RGB", (64, 64), (30, 30, 30)).save(tmp_path / "depth.png")
    code, out, err = cli("control", "--unit", f"type=pose,pose-json={tmp_path / 'pose.json'},weight=0.8",
                         "--unit", f"type=depth,image={tmp_path / 'depth.png'},preprocess=false,guess=true,end=0.5",
                         "--prompt", "a figure", "--steps", "2", "--model", "tiny", "--width", "64", "--height", "64",
                         "--json")
    assert code == 0, err
    run = json.loads(out)
    code, out, _ = cli("history", "show", str(run["run_id"]), "--json")
    units = json.loads(out)["params"]["units"]
    assert [u["type"] for u in units] == ["pose", "depth"] and units[1]["guess_mode"] is True
    assert units[0]["weight"] == 0.8 and units[1]["end"] == 0.5


@pytest.mark.parametrize(("unit", "field"), [
    ("type=normal,preset=standing", "units[0].type"),
    ("type=pose,preset=standing,weight=5", "units[0].weight"),
    ("type=pose,preset=flying", "units[0].preset"),
    ("type=pose,colour=red", "units[0]"),
    ("type=pose,preset=standing,hands=maybe", "units[0].hands"),
])
def test_control_bad_units(cli, unit, field):
    code, _, err = cli("control", "--unit", unit, "--prompt", "x", "--steps", "2", "--model", "tiny")
    assert code == 2 and err.startswith(f"error: {field}")


def test_a_bad_setting_is_named_with_its_variable(cli, monkeypatch):
    monkeypatch.setenv("STUDIO_PORT", "abc")
    code, out, err = cli("history", "list")
    assert code == 2 and err.startswith("error: port: ") and "STUDIO_PORT" in err and err.count("\n") == 1


def test_generate_with_a_style_and_hires_fix(cli):
    (cli.data / "styles.csv").write_text("name,prompt,negative_prompt\nOil,oil painting of {prompt},blurry\n")
    code, out, err = cli("generate", "--prompt", "a red circle", "--seed", "4", "--steps", "2", "--width", "64",
                         "--height", "64", "--model", "tiny", "--style", "Oil", "--hires", "--hr-scale", "1.5",
                         "--hr-upscaler", "Lanczos", "--json")
    assert code == 0, err
    [path] = json.loads(out)["outputs"]
    image = Image.open(path)
    assert image.size == (96, 96)
    assert image.text["parameters"].startswith("oil painting of a red circle\nNegative prompt: blurry")
    assert "Hires upscale: 1.5" in image.text["parameters"]
    code, _, err = cli("generate", "--prompt", "x", "--steps", "2", "--model", "tiny", "--style", "Nope")
    assert code == 2 and err.startswith("error: styles:") and "Nope" in err
