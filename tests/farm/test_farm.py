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
    built = Farm(tmp_path, redis_server.url(), postgres_url, tiny_model_dir)
    yield built
    built.stop()


def pixels(result) -> list[np.ndarray]:
    return [np.asarray(image) for image in result.images]


def test_a_job_runs_on_a_worker_and_its_run_is_in_the_shared_history(farm):
    farm.start_worker("w1")
    queue = farm.services.queue
    job = queue.submit(fast_request(model="tiny", seed=77), "ui")
    result = queue.wait(job)
    assert result.status == "done" and len(result.images) == 1
    record = farm.services.history.get(result.run_id)
    assert record.worker == "w1" and record.job_key == job.key and record.status == "done"
    assert job.worker == "w1"
    assert queue.jobs()[0]["worker"] == "w1"
    # the worker's output is the run's stored file, and the same request in this process draws the same pixels
    local = farm.services.runner.run(fast_request(model="tiny", seed=77))
    assert np.array_equal(pixels(result)[0], pixels(local)[0])
    reports = wait_for(lambda: queue.workers()) and queue.workers()
    assert reports[0]["name"].startswith("w1") or reports[0]["job"] is None


def test_a_bad_request_is_refused_before_it_reaches_the_broker(farm):
    from studio.errors import InputError

    with pytest.raises(InputError) as error:
        farm.services.queue.submit(fast_request(model="tiny", steps=0), "ui")
    assert error.value.field == "steps"


def test_a_worker_killed_mid_job_loses_no_job_and_records_none_twice(farm):
    farm.start_worker("w1")
    farm.start_worker("w2")
    queue, history = farm.services.queue, farm.services.history
    requests = [fast_request(model="tiny", seed=1000 + i, steps=12) for i in range(20)]
    jobs = [queue.submit(r, "ui") for r in requests]
    # kill -9 the process that runs the third job, while it runs (its row names its owner: host:pid:start)
    killed = wait_for(lambda: next((r for r in [history.job_run(jobs[2].key)] if r and r.status == "running"), None),
                      timeout=240) and history.job_run(jobs[2].key)
    pid = int(killed.owner.rsplit(":", 2)[1])
    os.kill(pid, signal.SIGKILL)
    results = [queue.wait(job) for job in jobs]
    assert [r.status for r in results] == ["done"] * 20
    rows = [history.job_run(job.key) for job in jobs]
    assert all(row is not None and row.status == "done" for row in rows)
    assert len({row.id for row in rows}) == 20
    assert history.count() == 20, "a redelivered job left a second row"
    assert {row.worker for row in rows} <= {"w1", "w2"}
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
