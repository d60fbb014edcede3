"""Two processes on one data folder never mislabel each other's runs; a deleted run stays deleted."""

import logging
import signal
import threading
import time
from datetime import timedelta

import pytest
from sqlalchemy import update
from tests_support import dead_owner, fast_request, history_row, start_hanging_run, wait_for

from studio.errors import NotFound
from studio.history.db import Database
from studio.history.files import BlobStore
from studio.history.owner import STALE_AFTER, this_process
from studio.history.schema import Run, utcnow
from studio.history.store import HistoryStore


def test_a_second_process_leaves_a_live_run_alone(settings, tiny_model_dir, caplog, capsys, monkeypatch):
    """A CLI job started while another process generates: it marks nothing, waits for the device, then runs."""
    from studio.app import build
    from studio.cli import main

    child = start_hanging_run(settings.data_dir, tiny_model_dir)
    cli = {}
    try:
        services = build(settings)
        try:
            assert services.recovery.interrupted_runs == []
            [live] = services.history.search(status="running")
            assert live.owner.split(":")[1] == str(child.pid)
        finally:
            services.close()
        monkeypatch.setenv("STUDIO_DATA_DIR", str(settings.data_dir))
        monkeypatch.setenv("STUDIO_DEVICE", "cpu")
        args = ["generate", "--prompt", "x", "--steps", "2", "--width", "64", "--height", "64", "--model", "tiny"]
        with caplog.at_level(logging.WARNING):
            thread = threading.Thread(target=lambda: cli.update(code=main(args)))
            thread.start()
            time.sleep(3)  # time enough for the CLI to start up and reach the device
            assert thread.is_alive(), "the CLI job ran beside the other process's run instead of waiting for it"
            services = build(settings)
            try:
                assert {r.id: r.status for r in services.history.search()} == {live.id: "running"}
            finally:
                services.close()
            child.send_signal(signal.SIGKILL)  # the other process stops: its device lock goes with it
            child.wait(30)
            thread.join(120)
        assert cli["code"] == 0
        assert "left running by a crash" not in caplog.text  # the CLI's start-up left the live run alone
    finally:
        if child.poll() is None:
            child.send_signal(signal.SIGKILL)
            child.wait(30)
    # its owner is gone now: the next start-up marks it
    services = build(settings)
    try:
        assert services.recovery.interrupted_runs == [live.id]
        assert services.history.get(live.id).status == "interrupted"
        assert [r.status for r in services.history.search()] == ["done", "interrupted"]
    finally:
        services.close()


@pytest.fixture
def store(history_location, tmp_path):
    db = Database(history_location)
    yield HistoryStore(db, BlobStore(tmp_path / "blobs"))
    db.close()


def running_row(store, owner, beat):
    run_id = store.start(history_row(), {})
    with store.db.transaction() as session:
        session.execute(update(Run).where(Run.id == run_id).values(owner=owner, heartbeat_at=beat))
    return run_id


def test_recovery_judges_each_owner(store):
    me = this_process()
    host, pid, start = me.rsplit(":", 2)
    now = utcnow()
    runs = {
        "mine": running_row(store, me, now),
        "dead here": running_row(store, dead_owner(), now),
        "pid reused": running_row(store, f"{host}:{pid}:{int(start) + 1}", now),
        "elsewhere, beating": running_row(store, "farm-7:4242:100", now),
        "elsewhere, silent": running_row(store, "farm-7:4242:100", now - STALE_AFTER - timedelta(seconds=1)),
        "no owner recorded": running_row(store, None, None),
    }
    interrupted = set(store.recover().interrupted_runs)
    assert interrupted == {runs["dead here"], runs["pid reused"], runs["elsewhere, silent"],
                           runs["no owner recorded"]}


def test_the_heartbeat_moves_while_a_run_goes(store):
    run_id = running_row(store, this_process(), utcnow() - timedelta(hours=1))
    first = store.get(run_id).heartbeat_at
    with store.heartbeat(run_id, every=0.05):
        wait_for(lambda: store.get(run_id).heartbeat_at > first, timeout=10)


@pytest.fixture
def services_on(history_location, settings, tiny_model_dir):
    """The real composition root with its history on SQLite, then on PostgreSQL."""
    from studio.app import build

    if isinstance(history_location, str):
        settings = settings.model_copy(update={"database_url": history_location})
    built = build(settings)
    built.registry.add(str(tiny_model_dir), name=settings.default_model)
    yield built
    built.close()


def test_a_run_deleted_while_running_is_not_resurrected(services_on):
    services = services_on
    release, outcome = threading.Event(), {}

    def hold(progress):
        release.wait(60)

    def work():
        try:
            services.runner.run(fast_request(steps=2), on_progress=hold)
        except NotFound as error:
            outcome["error"] = error

    thread = threading.Thread(target=work)
    thread.start()
    wait_for(lambda: services.history.search(status="running"))
    [running] = services.history.search(status="running")
    services.history.delete(running.id)
    release.set()
    thread.join(60)
    assert "was deleted while it was running" in str(outcome["error"]) and outcome["error"].field == "run"
    assert services.history.count() == 0
    assert services.history.blobs.all_hashes() == set()  # its images were not kept as orphans
    assert services.runner.run(fast_request()).status == "done"
