"""The job queue: frozen requests waiting for the device, run one at a time in order by one worker.

Generate (in any tab), the A1111 API and the studio's own API add jobs here instead of waiting for
the device lock, so a job can be added while one runs, and the waiting ones can be seen, reordered
and cancelled. The runner still holds the device lock for every run (a CLI job in another
process waits for the same device through it).

A job cancelled before it started is not recorded in the history: the history holds runs (seeds,
inputs, outputs), and a job that never ran has none; the queue panel shows it as cancelled.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from studio.engine.generate import CancelToken
from studio.errors import NotFound, StudioError
from studio.requests import validate

log = logging.getLogger(__name__)

WAITING, RUNNING, DONE, FAILED, CANCELLED = "waiting", "running", "done", "failed", "cancelled"
# finished jobs the panel keeps showing (newest last)
KEEP_FINISHED = 50


class JobCancelled(StudioError):
    """The job was cancelled while it waited; it never ran and is not in the history."""


@dataclass
class Job:
    """One request in the queue; its request was frozen when it was queued."""

    id: int
    request: Any
    source: str
    queued_at: float  # time.time()
    rerun_of: int | None = None
    status: str = WAITING
    started_at: float | None = None
    finished_at: float | None = None
    progress: Any = None  # the latest Progress while it runs
    result: Any = None
    error: BaseException | None = None
    cancel: CancelToken = field(default_factory=CancelToken)
    listeners: list = field(default_factory=list)
    done: threading.Event = field(default_factory=threading.Event)
    key: str | None = None  # farm mode: the broker's task id and the history's job key
    worker: str | None = None  # farm mode: the worker that runs (or ran) it
    task: Any = None  # farm mode: the broker's handle on it (Celery's AsyncResult)
    routed_to: str | None = None  # farm mode: the worker whose own queue it was sent to (None: the shared queue)

    def report(self, progress) -> None:
        self.progress = progress
        for listener in list(self.listeners):
            listener(progress)

    def summary(self, position: int | None = None) -> dict:
        request = self.request
        return {"id": self.id, "status": self.status, "position": position, "mode": request.mode,
                "prompt": request.prompt, "model": request.model, "source": self.source,
                "queued_at": self.queued_at, "started_at": self.started_at, "finished_at": self.finished_at,
                "progress": round(self.progress.fraction, 3) if self.progress else 0.0,
                "run_id": self.result.run_id if self.result is not None else None, "worker": self.worker,
                "error": str(self.error) if self.error else None}


class JobQueue:
    def __init__(self, runner):
        self.runner = runner
        self._waiting: list[Job] = []
        self._running: Job | None = None
        self._finished: list[Job] = []
        self._ids = itertools.count(1)
        self._changed = threading.Condition()
        self._worker: threading.Thread | None = None

    def close(self) -> None:
        """Nothing to stop here: the in-process worker thread is a daemon that dies with the process."""

    # -- adding and waiting --------------------------------------------------------------------

    def submit(self, request, source: str = "ui", on_progress: Callable | None = None,
               rerun_of: int | None = None) -> Job:
        """Queue a request (checked now, so a bad value is refused at once, never queued)."""
        validate(request)
        with self._changed:
            job = Job(next(self._ids), request, source, time.time(), rerun_of)
            if on_progress is not None:
                job.listeners.append(on_progress)
            self._waiting.append(job)
            self._touch()
            if self._worker is None or not self._worker.is_alive():
                self._worker = threading.Thread(target=self._work, daemon=True, name="studio-queue")
                self._worker.start()
        return job

    def run(self, request, on_progress: Callable | None = None, source: str = "ui", rerun_of: int | None = None):
        """Queue a request and wait for its result (what a tab's Generate and the A1111 API do)."""
        return self.wait(self.submit(request, source, on_progress, rerun_of))

    def wait(self, job: Job):
        job.done.wait()
        if job.error is not None:
            raise job.error
        if job.status == CANCELLED and job.result is None:
            raise JobCancelled(f"job {job.id} was cancelled before it ran", field="job")
        return job.result

    # -- the worker ----------------------------------------------------------------------------

    def _work(self) -> None:
        while True:
            with self._changed:
                while not self._waiting:
                    self._changed.wait()
                job = self._waiting.pop(0)
                job.status, job.started_at, self._running = RUNNING, time.time(), job
                self._touch()
            try:
                job.result = self.runner.run(job.request, on_progress=job.report, cancel=job.cancel,
                                             rerun_of=job.rerun_of, source=job.source, queued_at=job.queued_at)
                job.status = DONE if job.result.status == "done" else job.result.status
            except BaseException as error:  # the job's failure, handed to whoever waits for it
                job.error, job.status = error, FAILED
            finally:
                with self._changed:
                    job.finished_at, self._running = time.time(), None
                    self._finished = (self._finished + [job])[-KEEP_FINISHED:]
                    self._touch()
                job.done.set()

    def _touch(self) -> None:
        self._changed.notify_all()

    # -- the panel's actions --------------------------------------------------------------------

    def _find_waiting(self, job_id: int) -> Job:
        job = next((j for j in self._waiting if j.id == job_id), None)
        if job is None:
            raise NotFound(f"job {job_id} is not waiting in the queue", field="job")
        return job

    def cancel(self, job_id: int) -> str:
        """Cancel a waiting job, or interrupt the running one; returns what happened."""
        with self._changed:
            if self._running is not None and self._running.id == job_id:
                self._running.cancel.cancel()
                return "interrupting"
            job = self._find_waiting(job_id)
            self._waiting.remove(job)
            job.status, job.finished_at = CANCELLED, time.time()
            self._finished = (self._finished + [job])[-KEEP_FINISHED:]
            self._touch()
        job.done.set()
        return CANCELLED

    def move(self, job_id: int, position: int) -> None:
        """Put a waiting job at this position among the waiting ones (0 = next to run)."""
        with self._changed:
            job = self._find_waiting(job_id)
            self._waiting.remove(job)
            self._waiting.insert(max(0, min(position, len(self._waiting))), job)
            self._touch()

    def clear(self) -> int:
        """Cancel every waiting job (the running one goes on); returns how many."""
        with self._changed:
            waiting = list(self._waiting)
        for job in waiting:
            try:
                self.cancel(job.id)
            except NotFound:  # it started meanwhile
                continue
        return len(waiting)

    # -- what the panel and the APIs show ----------------------------------------------------------

    @property
    def running(self) -> Job | None:
        return self._running

    def waiting_count(self) -> int:
        return len(self._waiting)

    def jobs(self) -> list[dict]:
        """Running first, then the waiting ones in order, then the recently finished (newest first)."""
        with self._changed:
            running = [self._running.summary(None)] if self._running else []
            waiting = [job.summary(index) for index, job in enumerate(self._waiting)]
            finished = [job.summary(None) for job in reversed(self._finished)]
        return running + waiting + finished

    def get(self, job_id: int) -> Job:
        with self._changed:
            for job in [*([self._running] if self._running else []), *self._waiting, *self._finished]:
                if job.id == job_id:
                    return job
        raise NotFound(f"no job {job_id} in the queue (finished jobs are kept for a while only)", field="job")
