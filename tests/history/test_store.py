"""History on a real SQLite file and a real PostgreSQL database: rows, blobs, deletes, search, lineage,
crash recovery, migrations. Tests taking `store` run on both ([sqlite], [postgresql])."""

from pathlib import Path

import pytest
from PIL import Image
from sqlalchemy import inspect, text, update
from tests_support import dead_owner
from tests_support import history_row as row

from studio.errors import NotFound
from studio.history.db import Database, current_revision, head_revision
from studio.history.files import BlobStore
from studio.history.schema import MAX_RUN_ID, Run
from studio.history.store import HistoryStore


@pytest.fixture
def store(history_location, tmp_path):
    db = Database(history_location)
    yield HistoryStore(db, BlobStore(tmp_path / "blobs"))
    db.close()


def solid(colour, size=(8, 8)):
    return Image.new("RGB", size, colour)


def test_sqlite_pragmas(tmp_path):
    db = Database(tmp_path / "history.sqlite")
    with db.engine.connect() as connection:
        assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert connection.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert connection.exec_driver_sql("PRAGMA busy_timeout").scalar() == 10_000
    db.close()


def test_schema_at_head(store):
    assert {"runs", "run_images", "blobs", "alembic_version"} <= set(inspect(store.db.engine).get_table_names())
    assert current_revision(store.db.engine) == head_revision(store.db.engine)


def test_largest_seeds_and_ids(store):
    """Seeds reach 2**32 - 1 and ids SQLite's 2**63 - 1: PostgreSQL's 32-bit INTEGER holds neither."""
    top = 2**32 - 1
    run_id = store.start(row(seed=top, seeds=[top]), {})
    with store.db.transaction() as session:  # an id as large as SQLite allows (a copied or salvaged history)
        session.execute(update(Run).where(Run.id == run_id).values(id=MAX_RUN_ID))
    store.finish(MAX_RUN_ID, [(solid("blue"), top, "x", None)])
    record = store.get(MAX_RUN_ID)
    assert record.seed == top and record.seeds == [top] and record.outputs[0].seed == top
    assert store.run_with_output(solid("blue")) == MAX_RUN_ID
    with pytest.raises(NotFound):
        store.get(run_id)


def test_run_lifecycle_writes_files_before_done(store):
    run_id = store.start(row(), {"image": solid("red")})
    record = store.get(run_id)
    assert record.status == "running" and record.outputs == ()
    assert record.inputs[0].path.is_file()
    refs = store.finish(run_id, [(solid("blue"), 1, "a red circle\nSteps: 2, Seed: 1, Size: 8x8", {"seed": 1})],
                        duration_s=0.5, timings={"sample_s": 0.4})
    record = store.get(run_id)
    assert record.status == "done" and record.duration_s == 0.5
    assert [r.sha256 for r in record.outputs] == [refs[0].sha256]
    stored = Image.open(record.outputs[0].path)
    assert stored.text["parameters"].startswith("a red circle")
    assert stored.getpixel((0, 0)) == (0, 0, 255)
    assert store.load_inputs(record)["image"].getpixel((3, 3)) == (255, 0, 0)


def test_failed_run_keeps_its_message(store):
    run_id = store.start(row(), {})
    store.fail(run_id, "model: boom")
    record = store.get(run_id)
    assert record.status == "failed" and record.error == "model: boom"


def test_same_image_is_stored_once_and_delete_keeps_shared_files(store):
    first = store.start(row(), {"image": solid("red")})
    second = store.start(row(), {"image": solid("red")})
    store.finish(first, [(solid("green"), 1, "x", None)])
    store.finish(second, [(solid("white"), 1, "y", None)])
    shared = store.get(first).inputs[0]
    assert shared.sha256 == store.get(second).inputs[0].sha256
    removed = store.delete(first)
    assert shared.sha256 not in removed and shared.path.is_file()
    assert len(removed) == 1 and not Path(store.blobs.path(removed[0])).exists()
    with pytest.raises(NotFound):
        store.get(first)
    removed = store.delete(second)
    assert shared.sha256 in removed and not shared.path.exists()
    assert store.blobs.all_hashes() == set()


def test_search_filters_and_star(store):
    a = store.start(row(prompt="A Red Circle", model_name="alpha"), {})
    b = store.start(row(prompt="blue square", negative_prompt="red", mode="inpaint", model_name="beta"), {})
    c = store.start(row(prompt="green triangle"), {})
    assert [r.id for r in store.search()] == [c, b, a]
    assert [r.id for r in store.search("red")] == [b, a]
    assert [r.id for r in store.search(mode="inpaint")] == [b]
    assert [r.id for r in store.search(model="alpha")] == [a]
    store.star(c)
    assert [r.id for r in store.search(starred=True)] == [c]
    store.star(c, False)
    assert store.search(starred=True) == []
    assert store.distinct_values("model_name") == ["alpha", "beta", "m"]
    with pytest.raises(NotFound):
        store.star(999)


def test_lineage_walks_back_to_the_root_and_lists_branches(store):
    root = store.start(row(), {})
    child = store.start(row(parent_id=root), {})
    grandchild = store.start(row(parent_id=child), {})
    branch = store.start(row(parent_id=child), {})
    ancestors, children = store.lineage(grandchild)
    assert [r.id for r in ancestors] == [root, child, grandchild]
    assert [r.id for r in store.lineage(child)[1]] == [grandchild, branch]
    store.delete(child)
    assert store.get(grandchild).parent_id is None  # ON DELETE SET NULL keeps the later run


def test_output_pixels_find_the_parent_run(store):
    run_id = store.start(row(), {})
    store.finish(run_id, [(solid("purple"), 1, "with parameters", {"a": 1})])
    assert store.run_with_output(solid("purple")) == run_id
    assert store.run_with_output(solid("orange")) is None


def test_recover_marks_running_rows_and_reports_file_mismatches(store):
    done = store.start(row(), {"image": solid("red")})
    store.finish(done, [(solid("blue"), 1, "x", None)])
    crashed = store.start(row(), {})
    with store.db.transaction() as session:  # as a process that crashed leaves it
        session.execute(update(Run).where(Run.id == crashed).values(owner=dead_owner()))
    orphan = store.blobs.put_image(solid("yellow"))  # a file no row knows
    missing = store.get(done).outputs[0]
    missing.path.unlink()
    stray = store.blobs.root / "ab" / ".tmp-123.png"
    stray.parent.mkdir(exist_ok=True)
    stray.write_bytes(b"half")
    report = store.recover()
    assert report.interrupted_runs == [crashed]
    assert store.get(crashed).status == "interrupted" and "stopped" in store.get(crashed).error
    assert report.orphan_blobs == [orphan.sha256]
    assert report.missing_blobs == [(done, missing.sha256)]
    assert report.stray_temp_files == [stray]
    assert store.get(done).status == "done"
    assert store.recover().interrupted_runs == []


def test_migration_backs_up_an_existing_database(tmp_path):
    from alembic import command

    from studio.history.db import _alembic_config

    path = tmp_path / "history.sqlite"
    db = Database(path)
    assert db.backup_path is None
    command.downgrade(_alembic_config(db.engine), "base")
    with db.engine.begin() as connection:
        connection.execute(text("CREATE TABLE keep_me (x INTEGER)"))
        connection.execute(text("INSERT INTO keep_me VALUES (42)"))
    db.close()
    reopened = Database(path)
    assert reopened.backup_path and Path(reopened.backup_path).is_file()
    assert current_revision(reopened.engine) == head_revision(reopened.engine)
    import sqlite3

    with sqlite3.connect(reopened.backup_path) as backup:
        assert backup.execute("SELECT x FROM keep_me").fetchone() == (42,)
    reopened.close()


def test_migrations_import_no_ml_library():
    import subprocess
    import sys

    code = ("import sys, studio.history.db as d, studio.history.schema; "
            "import importlib.util, pathlib; "
            "[importlib.util.spec_from_file_location('m', p).loader.exec_module("
            "importlib.util.module_from_spec(importlib.util.spec_from_file_location('m', p))) "
            "for p in pathlib.Path(d.MIGRATIONS_DIR, 'versions').glob('*.py')]; "
            "print(sorted(m for m in ('torch', 'diffusers', 'transformers', 'gradio') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
