"""Farm mode with real servers: a redis-server broker, a PostgreSQL history, `studio worker` processes.

Two CPU workers run the tiny model. The UI side is the real composition root with farm=True, so its
queue is the FarmQueue that Generate and the APIs use.
"""

from __future__ import annotations

import os
import signal

import numpy as np
import pytest
from servers import Farm
from tests_support import fast_request, wait_for

from studio.errors import NotFound


@pytest.fixture
def farm(tmp_path, redis_server, postgres_url, tiny_model_dir):
    import redis

    redis.Redis.from_url(redis_server.url()).flushall()  # no job or worker report of an earlier test is left
    built = Farm(tmp_path, redis_server.url(), postgres_url, tiny_model_dir)
    yield built
    built.stop()


def pixels(result) -> list[np.ndarray]:
    return [np.asarray(image) for image in result.images]


def test_a_job_runs_on_a_worker_and_its_run_is_in_the_shared_history(farm):
    farm.start_worker("w1", preview_every="2")
    queue = farm.services.queue
    seen = []
    job = queue.submit(fast_request(model="tiny", seed=77, steps=80), "ui", on_progress=seen.append)
    result = queue.wait(job)
    assert result.status == "done" and len(result.images) == 1
    # the worker's live previews travel over the result backend to the UI's listeners
    previews = [progress.preview for progress in seen if progress.preview is not None]
    assert previews, f"no preview reached the UI in {len(seen)} progress updates"
    assert previews[-1].size == (64, 64) and np.asarray(previews[-1]).std() > 0
    record = farm.services.history.get(result.run_id)
    assert record.worker == "w1" and record.job_key == job.key and record.status == "done"
    assert job.worker == "w1"
    assert queue.jobs()[0]["worker"] == "w1"
    # the worker's output is the run's stored file, and the same request in this process draws the same pixels
    local = farm.services.runner.run(fast_request(model="tiny", seed=77, steps=80))
    assert np.array_equal(pixels(result)[0], pixels(local)[0])
    reports = wait_for(lambda: queue.workers()) and queue.workers()
    assert reports[0]["name"].startswith("w1") or reports[0]["job"] is None


def test_a_bad_request_is_refused_before_it_reaches_the_broker(farm):
    from studio.errors import InputError

    with pytest.raises(InputError) as error:
        farm.services.queue.submit(fast_request(model="tiny", steps=0), "ui")
    assert error.value.field == "steps"


def test_a_worker_killed_mid_job_loses_no_job_and_records_none_twice(farm):
    """kill -9 of a whole worker (its main and its pool process, as a machine lost) while it runs a job: the broker
    would hand its jobs out again only after the visibility timeout, an hour here; the UI sees the worker's
    reports stop and sends its jobs, the running one too, to the other worker."""
    for name in ("w1", "w2"):
        farm.start_worker(name, farm_visibility_timeout_s="3600")
    queue, history = farm.services.queue, farm.services.history
    wait_for(lambda: {r["name"] for r in queue.workers()} == {"w1", "w2"}, timeout=240)
    # the third job is long enough to be caught running
    requests = [fast_request(model="tiny", seed=1000 + i, steps=150 if i == 2 else 12,
                             batch_count=4 if i == 2 else 1) for i in range(20)]
    jobs = [queue.submit(r, "ui") for r in requests]
    killed = wait_for(lambda: next((r for r in [history.job_run(jobs[2].key)] if r and r.status == "running"), None),
                      timeout=240) and history.job_run(jobs[2].key)
    farm.kill_worker(killed.worker)
    survivor = ({"w1", "w2"} - {killed.worker}).pop()
    assert all(job.done.wait(240) for job in jobs), "a job of the killed worker was not handed to the other one"
    results = [queue.wait(job) for job in jobs]
    assert [r.status for r in results] == ["done"] * 20
    rows = [history.job_run(job.key) for job in jobs]
    assert all(row is not None and row.status == "done" for row in rows)
    assert len({row.id for row in rows}) == 20
    assert history.count() == 20, "a redelivered job left a second row"
    assert rows[2].worker == survivor
    # the killed job ran again and drew what the same request draws on any worker
    again = queue.run(requests[2], source="ui")
    assert np.array_equal(pixels(results[2])[0], pixels(again)[0])
    # the dead attempt's row was replaced by the run that finished it
    assert rows[2].id != killed.id
    with pytest.raises(NotFound):
        history.get(killed.id)


def test_a_worker_started_mid_queue_takes_work_and_a_restarted_broker_loses_no_job(farm, redis_server):
    farm.start_worker("w1")
    queue, history = farm.services.queue, farm.services.history
    jobs = [queue.submit(fast_request(model="tiny", seed=2000 + i, steps=8), "ui") for i in range(10)]
    wait_for(lambda: history.count() >= 2, timeout=240)
    farm.start_worker("w2")  # joins while jobs wait
    # the broker stops and comes back (its append-only file keeps the queue); the jobs the UI sent survive
    redis_server.restart()
    results = [queue.wait(job) for job in jobs]
    assert [r.status for r in results] == ["done"] * 10
    rows = [history.job_run(job.key) for job in jobs]
    assert len({row.id for row in rows}) == 10 and history.count() == 10
    assert {row.worker for row in rows} == {"w1", "w2"}, "the worker started mid-queue took no job"


def test_interrupt_reaches_the_worker_and_cancel_drops_a_waiting_job(farm):
    from studio.queue import JobCancelled

    farm.start_worker("w1")
    queue = farm.services.queue
    long = queue.submit(fast_request(model="tiny", seed=5, steps=150, batch_count=6), "ui")
    waiting = queue.submit(fast_request(model="tiny", seed=6), "ui")
    wait_for(lambda: long.status == "running" and long.progress is not None, timeout=240)
    assert queue.jobs()[0]["worker"] == "w1"
    assert queue.cancel(waiting.id) == "cancelling"
    assert queue.cancel(long.id) == "interrupting"
    result = queue.wait(long)
    assert result.status == "interrupted"
    assert farm.services.history.get(result.run_id).status == "interrupted"
    with pytest.raises(JobCancelled):
        queue.wait(waiting)
    assert farm.services.history.job_run(waiting.key) is None


def test_a_job_cancelled_while_no_worker_is_up_never_runs(farm, redis_server):
    import redis

    from studio.farm.celery_app import QUEUE
    from studio.queue import JobCancelled

    queue, history = farm.services.queue, farm.services.history
    cancelled = queue.submit(fast_request(model="tiny", seed=8), "ui")
    assert cancelled.routed_to is None  # no worker listed: the shared queue
    assert queue.cancel(cancelled.id) == "cancelling"
    with pytest.raises(JobCancelled):
        queue.wait(cancelled)
    # a worker that starts later never heard the revoke; it takes the message and drops it
    farm.start_worker("w1")
    broker = redis.Redis.from_url(redis_server.url())
    wait_for(lambda: broker.llen(QUEUE) == 0, timeout=240)
    after = queue.run(fast_request(model="tiny", seed=9), source="ui")
    assert after.status == "done"
    assert history.job_run(cancelled.key) is None and history.count() == 1


def test_routing_keeps_each_model_on_the_worker_that_holds_it(farm, tmp_path):
    """A shuffled queue of two models over two workers that hold one model each (cache size 1): with routing,
    each worker keeps to one model; the worker that runs out of its own jobs first takes a few of the other's."""
    import random

    from studio.micro.tiny import save_tiny_model

    farm.add_model(save_tiny_model(tmp_path / "tiny-b", seed=1), "tiny-b")
    for name in ("w1", "w2"):
        farm.start_worker(name, model_cache_size="1")
    queue, history = farm.services.queue, farm.services.history
    wait_for(lambda: {r["name"] for r in queue.workers()} == {"w1", "w2"}, timeout=240)
    models = ["tiny", "tiny-b"] * 6
    random.Random(4).shuffle(models)
    jobs = [queue.submit(fast_request(model=model, seed=300 + i, steps=10), "ui") for i, model in enumerate(models)]
    results = [queue.wait(job) for job in jobs]
    assert [r.status for r in results] == ["done"] * 12 and history.count() == 12
    assert all(job.routed_to in ("w1", "w2") for job in jobs), "a job went to the shared queue"
    # the loads each worker counted (its last report, sent when its last job ended)
    wait_for(lambda: all(r["job"] is None for r in queue.workers()), timeout=60)
    loads = sum(r["model_loads"] for r in queue.workers())
    rows = [history.job_run(job.key) for job in jobs]
    by_worker = {}
    for row in sorted(rows, key=lambda r: r.created_at):
        by_worker.setdefault(row.worker, []).append(row.model_name)
    switches = sum(sum(a != b for a, b in zip(names, names[1:])) for names in by_worker.values())
    assert loads == switches + len(by_worker), (loads, by_worker)
    assert loads <= 4, f"{loads} model loads for 12 jobs of two models: routing kept no model on its worker"


def test_a_plot_whose_worker_died_mid_plot_is_recorded_once_and_an_upscale_carries_its_job(farm):
    """A plot is one job: its grid row carries the job key and its cells are the grid's children. Killed after
    some cells, it runs whole again on redelivery and leaves one grid with one set of cells."""
    from PIL import Image

    from studio.plots import PlotRequest
    from studio.requests import UpscaleRequest

    farm.start_worker("w1")
    queue, history = farm.services.queue, farm.services.history
    plot = PlotRequest(base=fast_request(model="tiny", seed=-1), x_type="Steps", x_values="60, 80, 100, 120, 140, 150")
    job = queue.submit(plot, "ui")
    assert job.request.base.seed >= 0  # drawn when queued: every delivery draws the same cells

    def cells_done():
        grid = history.job_run(job.key)
        return grid is not None and sum(c.status == "done" for c in history.lineage(grid.id)[1]) >= 2

    wait_for(cells_done, timeout=240)
    grid = history.job_run(job.key)
    os.kill(int(grid.owner.rsplit(":", 2)[1]), signal.SIGKILL)  # the pool process; the worker requeues the job
    result = queue.wait(job)
    assert result.status == "done"
    row = history.job_run(job.key)
    cells = history.lineage(row.id)[1]
    assert row.id != grid.id and sorted(c.steps for c in cells) == [60, 80, 100, 120, 140, 150]
    assert history.count() == 7, "the dead attempt's grid or cells were left behind"
    # the same plot again on a worker (they run one thread each, as the killed one did) draws the same grid
    again = queue.run(job.request, source="ui")
    assert np.array_equal(pixels(result)[0], pixels(again)[0])
    # an Extras upscale is a job too: its row carries the key a redelivery would find
    upscale = queue.submit(UpscaleRequest(image=Image.new("RGB", (40, 30), (200, 30, 30)), upscaler="Lanczos",
                                          scale=2), "ui")
    done = queue.wait(upscale)
    assert history.get(done.run_id).job_key == upscale.key and done.images[0].size == (80, 60)
