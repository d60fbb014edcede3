"""The job queue: jobs run one at a time in order; waiting ones can be cancelled, moved and cleared."""

import threading

import pytest
from tests_support import fast_request, wait_for

from studio.errors import InputError, NotFound
from studio.queue import JobCancelled


class HeldRuns:
    """Wrap runner.run so each run waits at its first step until released (the queue fills meanwhile)."""

    def __init__(self, runner):
        self.real, self.release = runner.run, threading.Event()
        self.started = []

    def __call__(self, request, on_progress=None, **kwargs):
        self.started.append(request.seed)

        def report(progress):
            if on_progress is not None:
                on_progress(progress)
            self.release.wait(60)

        return self.real(request, on_progress=report, **kwargs)


@pytest.fixture
def held(services, monkeypatch):
    runs = HeldRuns(services.runner)
    monkeypatch.setattr(services.runner, "run", runs)
    yield runs
    runs.release.set()


def test_jobs_run_in_the_order_they_were_queued(services, held):
    queue = services.queue
    jobs = [queue.submit(fast_request(seed=seed)) for seed in range(6)]
    wait_for(lambda: queue.running is not None)
    assert [row["status"] for row in queue.jobs()] == ["running"] + ["waiting"] * 5
    assert [row["position"] for row in queue.jobs()[1:]] == [0, 1, 2, 3, 4]
    held.release.set()
    results = [queue.wait(job) for job in jobs]
    assert held.started == [0, 1, 2, 3, 4, 5]
    assert [r.run_id for r in results] == sorted(r.run_id for r in results)
    for result, job in zip(results, jobs):
        record = services.history.get(result.run_id)
        assert record.status == "done" and record.seed == job.request.seed and record.source == "ui"
        assert record.queued_at is not None and record.queued_at <= record.created_at


def test_a_cancelled_waiting_job_never_runs_and_the_others_do(services, held):
    queue = services.queue
    first, second, third = (queue.submit(fast_request(seed=seed)) for seed in (1, 2, 3))
    wait_for(lambda: queue.running is not None)
    assert queue.cancel(second.id) == "cancelled"
    held.release.set()
    assert queue.wait(first).status == "done" and queue.wait(third).status == "done"
    with pytest.raises(JobCancelled, match=f"job {second.id} was cancelled before it ran"):
        queue.wait(second)
    assert held.started == [1, 3]
    assert sorted(r.seed for r in services.history.search()) == [1, 3]  # the cancelled job is not recorded
    assert {row["id"]: row["status"] for row in queue.jobs()}[second.id] == "cancelled"


def test_waiting_jobs_can_be_moved_and_cleared(services, held):
    queue = services.queue
    jobs = [queue.submit(fast_request(seed=seed)) for seed in range(4)]
    wait_for(lambda: queue.running is not None)
    queue.move(jobs[3].id, 0)
    assert [row["id"] for row in queue.jobs() if row["status"] == "waiting"] == [jobs[3].id, jobs[1].id, jobs[2].id]
    with pytest.raises(NotFound):
        queue.move(jobs[0].id, 1)  # running, not waiting
    held.release.set()
    queue.wait(jobs[0])
    wait_for(lambda: queue.running is None and not queue.waiting_count())
    assert held.started == [0, 3, 1, 2]
    held.release.clear()
    more = [queue.submit(fast_request(seed=seed)) for seed in (10, 11, 12)]
    wait_for(lambda: queue.running is not None)
    assert queue.clear() == 2
    held.release.set()
    assert queue.wait(more[0]).status == "done"
    assert held.started[-1] == 10 and 11 not in held.started and 12 not in held.started


def test_a_bad_request_is_refused_before_it_is_queued(services):
    with pytest.raises(InputError) as error:
        services.queue.submit(fast_request(steps=0))
    assert error.value.field == "steps" and services.queue.jobs() == []


def test_a_failing_job_does_not_stop_the_queue(services):
    queue = services.queue
    broken = queue.submit(fast_request(model="no-such-model"))
    fine = queue.submit(fast_request())
    with pytest.raises(NotFound):
        queue.wait(broken)
    assert queue.wait(fine).status == "done"


def test_cancelling_the_running_job_interrupts_it(services, held):
    queue = services.queue
    job = queue.submit(fast_request(steps=4))
    wait_for(lambda: queue.running is not None and queue.running.progress is not None)
    assert queue.cancel(job.id) == "interrupting"
    held.release.set()
    result = queue.wait(job)
    assert result.status == "interrupted" and services.history.get(result.run_id).status == "interrupted"
