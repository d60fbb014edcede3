"""`studio history migrate --to postgresql+psycopg://...`: a SQLite history's rows copied into a real
PostgreSQL server, counts verified, every run reading back the same through the store."""

import json

import pytest
from PIL import Image
from sqlalchemy.engine import make_url
from tests_support import history_row as row

from studio.cli import main
from studio.history.db import Database
from studio.history.files import BlobStore
from studio.history.store import HistoryStore


def solid(colour):
    return Image.new("RGB", (8, 8), colour)


def record_some_runs(data_dir) -> list:
    """Runs of every kind the store writes: inputs, outputs, a parent, a re-run, failed, starred, running."""
    store = HistoryStore(Database(data_dir / "history.sqlite"), BlobStore(data_dir / "blobs"))
    try:
        first = store.start(row(prompt="a red circle", seed=2**32 - 1, seeds=[2**32 - 1]), {"image": solid("red")})
        store.finish(first, [(solid("blue"), 2**32 - 1, "a red circle\nSteps: 2", {"seed": 1}),
                             (solid("green"), 7, "second", None)], duration_s=0.5, timings={"sample_s": 0.4})
        child = store.start(row(prompt="edit", mode="inpaint", parent_id=first, loras=[{"name": "x", "weight": 0.8}]),
                            {"image": solid("blue"), "mask": solid("white")})
        store.finish(child, [(solid("purple"), 3, "edit", None)])
        again = store.start(row(rerun_of=first, source="cli"), {})
        store.fail(again, "model: boom", duration_s=0.1)
        store.star(child)
        store.start(row(prompt="still going"), {})
        return store.search(limit=100)
    finally:
        store.db.close()


def migrate(capsys, data_dir, url, *extra):
    code = main(["history", "migrate", "--data-dir", str(data_dir), "--to", url, *extra])
    out, err = capsys.readouterr()
    return code, out, err


def test_migrate_copies_every_row_and_the_runs_read_back_equal(tmp_path, postgres_server, postgres_url, capsys):
    from servers import PASSWORD, PASSWORD_ROLE

    data = tmp_path / "data"
    before = record_some_runs(data)
    name = make_url(postgres_url).database
    postgres_server.execute(f'ALTER DATABASE "{name}" OWNER TO {PASSWORD_ROLE}')  # a login with a password
    url = postgres_server.url(name, PASSWORD_ROLE, PASSWORD)
    code, out, err = migrate(capsys, data, url, "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["rows"] == {"blobs": 6, "runs": 4, "run_images": 6} and report["verified"]
    assert PASSWORD not in out and f"{PASSWORD_ROLE}:***@" in report["target"]

    store = HistoryStore(Database(url), BlobStore(data / "blobs"))
    try:
        assert store.search(limit=100) == before  # every field, every image reference, the same order
        assert store.get(before[-1].id).outputs[0].path.is_file()  # the files stay where they were
        newest = store.start(row(), {"image": solid("red")})
        assert newest == max(r.id for r in before) + 1  # the sequence moved past the copied ids
    finally:
        store.db.close()

    code, _, err = migrate(capsys, data, url)
    assert code == 5 and "already holds a history (5 runs" in err and "nothing was copied" in err
    assert err.count("\n") == 1 and PASSWORD not in err


def test_migrate_says_what_is_wrong(tmp_path, capsys):
    code, _, err = migrate(capsys, tmp_path / "empty", "postgresql+psycopg://u@127.0.0.1:1/x")
    assert code == 5 and "there is no history database at" in err and "--data-dir" in err
    assert not (tmp_path / "empty" / "history.sqlite").exists()  # no empty history was made to copy
    record_some_runs(tmp_path / "data")
    code, _, err = migrate(capsys, tmp_path / "data", "sqlite:///elsewhere.sqlite")
    assert code == 2 and err.startswith("error: to: ") and "postgresql+psycopg://user:password@host" in err


@pytest.mark.parametrize("url", ["postgresql+psycopg://u:pw@127.0.0.1:1/x"])
def test_migrate_to_a_server_that_is_not_there(tmp_path, capsys, url):
    record_some_runs(tmp_path / "data")
    code, _, err = migrate(capsys, tmp_path / "data", url)
    assert code == 5 and "cannot be reached" in err and "u:***@127.0.0.1:1" in err and ":pw@" not in err
