"""A damaged history database or a truncated file: said with its path and a remedy, checked and salvaged."""

import json
import sqlite3

import numpy as np
import pytest
from PIL import Image
from tests_support import fast_request

from studio.cli import main
from studio.errors import HistoryError
from studio.requests import InpaintRequest


@pytest.fixture
def cli_env(settings, monkeypatch, capsys):
    monkeypatch.setenv("STUDIO_DATA_DIR", str(settings.data_dir))
    monkeypatch.setenv("STUDIO_MODELS_DIR", str(settings.models_dir))
    monkeypatch.setenv("STUDIO_DEVICE", "cpu")

    def call(*args):
        code = main(list(args))
        out, err = capsys.readouterr()
        return code, out, err

    return call


def some_runs(services, count=40):
    """Runs with long prompts, so the database spans many pages (damage then hits rows, not just a header)."""
    text = "a long prompt " * 20  # under CLIP's 77 tokens, so the tokenizer stays quiet
    return [services.runner.run(fast_request(prompt=f"run {i} {text}", negative_prompt=text, seed=i)).run_id
            for i in range(count)]


def damage_pages(path, start_fraction=0.5, length=8192):
    data = bytearray(path.read_bytes())
    start = int(len(data) * start_fraction)
    data[start:start + length] = b"\x5a" * length
    path.write_bytes(bytes(data))


def close_and_checkpoint(services):
    """Stop the studio and fold its WAL into the main file, as a clean shutdown leaves it."""
    services.close()
    with sqlite3.connect(services.settings.database_path) as connection:
        connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")


def test_a_file_that_is_no_database_is_named_with_a_remedy(settings, cli_env):
    settings.data_dir.mkdir(parents=True)
    settings.database_path.write_bytes(b"this is not a database " * 200)
    before = settings.database_path.read_bytes()
    code, out, err = cli_env("history", "list")
    assert code == 5 and out == "" and err.count("\n") == 1
    assert str(settings.database_path) in err and "is damaged" in err and "nothing was changed" in err
    assert "studio history recover" in err and "sqlite3" in err and "--data-dir" in err
    assert "sqlalche.me" not in err and "DatabaseError" not in err
    assert settings.database_path.read_bytes() == before


def test_damage_found_while_reading_is_named_too(services, cli_env):
    some_runs(services)
    close_and_checkpoint(services)
    damage_pages(services.settings.database_path)
    before = services.settings.database_path.read_bytes()
    code, out, err = cli_env("history", "list", "--limit", "100")
    assert code == 5 and "is damaged" in err and "sqlalche.me" not in err and err.count("\n") == 1
    assert services.settings.database_path.read_bytes() == before
    from studio.app import build

    with pytest.raises(HistoryError, match="nothing was changed") as error:
        build(services.settings).history.search(limit=100)
    assert str(services.settings.database_path) in str(error.value)


def test_check_then_recover_a_damaged_history(services, cli_env):
    made = some_runs(services)
    close_and_checkpoint(services)
    code, out, err = cli_env("history", "check", "--json")
    report = json.loads(out)
    assert code == 0 and report["healthy"] and report["files_checked"] == len(made)
    damage_pages(services.settings.database_path)
    code, out, err = cli_env("history", "check", "--json")
    report = json.loads(out)
    assert code == 5 and not report["healthy"] and report["integrity"] != ["ok"]
    code, out, err = cli_env("history", "recover", "--replace", "--json")
    assert code == 0, err
    salvage = json.loads(out)
    assert 0 < salvage["rows"]["runs"] < len(made) and salvage["replaced"]
    assert salvage["rows"]["run_images"] == salvage["rows"]["runs"]  # each surviving run keeps its output
    code, out, err = cli_env("history", "check", "--json")
    assert code == 0 and json.loads(out)["healthy"], out
    code, out, err = cli_env("history", "list", "--limit", "100", "--json")
    assert code == 0, err
    rows = json.loads(out)
    assert code == 0 and len(rows) == salvage["rows"]["runs"]
    # what was salvaged is whole: a recovered run re-runs to the same pixels
    run_id = rows[-1]["run_id"]
    code, out, err = cli_env("history", "rerun", str(run_id), "--json")
    assert code == 0, err
    again = np.array(Image.open(json.loads(out)["outputs"][0]))
    assert np.array_equal(again, np.array(Image.open(rows[-1]["outputs"][0])))


def test_a_truncated_output_is_reported_for_its_run(services, cli_env, caplog):
    result = services.runner.run(fast_request())
    path = result.outputs[0].path
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    from studio.app import build

    with caplog.at_level("WARNING"):
        again = build(services.settings)
    [damage] = again.recovery.damaged_files
    assert (damage.run_id, damage.role, damage.path) == (result.run_id, "output", path)
    assert f"run #{result.run_id}: output 1 ({path}) is damaged" in caplog.text
    again.close()
    code, out, err = cli_env("history", "show", str(result.run_id), "--json")
    assert code == 0 and json.loads(out)["damaged_files"][0]["path"] == str(path)
    assert f"warning: run #{result.run_id}: output 1 ({path}) is damaged" in err
    code, out, err = cli_env("history", "check", "--json")
    [(damaged)] = json.loads(out)["damaged_files"]
    assert code == 5 and damaged["path"] == str(path) and damaged["runs"] == [result.run_id]


def test_a_truncated_input_stops_restore_with_the_file_named(services):
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (0, 0, 32, 32))
    result = services.runner.run(InpaintRequest(prompt="x", steps=2, seed=1, sampler="Euler", image=image,
                                                mask=mask))
    record = services.history.get(result.run_id)
    damaged = next(ref for ref in record.inputs if ref.name == "image")
    damaged.path.write_bytes(damaged.path.read_bytes()[:100])
    with pytest.raises(HistoryError) as error:
        services.runner.restore(result.run_id)
    assert f"input 'image' ({damaged.path}) is damaged" in str(error.value)
    assert "cannot be restored or re-run" in str(error.value)
