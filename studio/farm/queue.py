"""The UI side of a farm: FarmQueue is the JobQueue whose jobs run on Celery workers.

Generate, the APIs and the queue panel use it exactly as the in-process queue: submit, run, wait,
cancel, jobs. Each job goes to the broker at once, with its seed drawn here (so whichever worker runs
it, and however often it is delivered, it draws the same pixels); a thread per job follows its state in
the result backend (waiting, running with its worker and progress, done) and, when it is done, reads
the run back from the shared history. Interrupt sets a key the worker polls between steps.
"""

from __future__ import annotations

import json
import threading
import time
import uuid

from studio.errors import InputError, StudioError
from studio.farm.celery_app import CANCEL_KEY, TASK, WORKER_KEY, make_app
from studio.farm.messages import encode_request
from studio.jobs import Progress, RunResult
from studio.queue import CANCELLED, DONE, FAILED, KEEP_FINISHED, RUNNING, Job, JobQueue
from studio.requests import resolve_seed, validate

# how often a job's state is read: often while it runs (the end of a job is noticed within 20 ms), less
# often while it waits for a worker
FOLLOW_RUNNING_S = 0.02
FOLLOW_WAITING_S = 0.1
# how long the broker may be away (a restart) before a job's caller hears it was lost track of
BROKER_OUTAGE_S = 120.0
BROKER_RETRY_S = 0.5


class FarmError(StudioError):
    """A job failed on its worker (the worker's own message, or what the broker said)."""


class FarmQueue(JobQueue):
    def __init__(self, runner, settings):
        super().__init__(runner)
        import redis

        self.history = runner.history
        self.app = make_app(settings)
        self.redis = redis.Redis.from_url(settings.broker_url)
        self._active: list[Job] = []  # sent to the broker, not finished (waiting or running), oldest first

    # -- adding and waiting --------------------------------------------------------------------

    def submit(self, request, source: str = "ui", on_progress=None, rerun_of: int | None = None) -> Job:
        validate(request)
        if hasattr(request, "seed"):
            request = resolve_seed(request)
        with self._changed:
            job = Job(next(self._ids), request, source, time.time(), rerun_of, key=uuid.uuid4().hex)
            if on_progress is not None:
                job.listeners.append(on_progress)
            self._active.append(job)
            self._touch()
        job.task = self.app.send_task(TASK, args=[job.key, encode_request(request), source, job.queued_at, rerun_of],
                                      task_id=job.key)
        threading.Thread(target=self._follow, args=(job,), daemon=True, name=f"studio-farm-{job.id}").start()
        return job

    def _follow(self, job: Job) -> None:
        task = job.task
        try:
            outage_since = None
            while not job.done.is_set():
                # one read of the backend: state and its meta together (two reads can straddle a change)
                try:
                    meta = task.backend.get_task_meta(task.id)
                    outage_since = None
                except Exception:  # the broker restarting: the job waits in its queue; ask again
                    outage_since = outage_since or time.monotonic()
                    if time.monotonic() - outage_since > BROKER_OUTAGE_S:
                        raise
                    time.sleep(BROKER_RETRY_S)
                    continue
                state, info = meta.get("status"), meta.get("result")
                details = info if isinstance(info, dict) else {}
                if state in ("STARTED", "PROGRESS"):
                    self._running_on(job, details.get("worker") or meta.get("worker"))
                    if state == "PROGRESS" and "fraction" in details:
                        job.report(Progress(float(details["fraction"]), details.get("text", ""), None,
                                            int(details.get("step") or 0), int(details.get("total_steps") or 0)))
                elif state == "SUCCESS":
                    self._finish(job, info)
                    return
                elif state == "FAILURE":
                    self._finish(job, {"error": f"the worker failed: {info}", "kind": "FarmError"})
                    return
                elif state == "REVOKED":
                    self._finish(job, None, cancelled=True)
                    return
                time.sleep(FOLLOW_RUNNING_S if job.status == RUNNING else FOLLOW_WAITING_S)
        except BaseException as error:  # the broker went away: the waiting caller hears it
            job.error = FarmError(f"lost track of job {job.id} on the broker: {error}; it may still run on a worker "
                                  "and appear in the History tab", field="job")
            self._close(job, FAILED)

    def _running_on(self, job: Job, worker: str | None) -> None:
        with self._changed:
            if job.status != RUNNING:
                job.status, job.started_at = RUNNING, time.time()
            if worker:
                job.worker = worker
            self._touch()

    def _finish(self, job: Job, value, cancelled: bool = False) -> None:
        if cancelled or value is None:
            self._close(job, CANCELLED)
            return
        if "error" in value:
            job.error = FarmError(value["error"], field=value.get("field"))
            self._close(job, FAILED)
            return
        job.worker = value.get("worker") or job.worker
        record = self.history.get(value["run_id"])
        images = [self.history.load_image(ref) for ref in record.outputs]
        job.result = RunResult(record.id, record.status, job.request, [ref.seed for ref in record.outputs], images,
                               list(record.outputs), [image.info.get("parameters", "") for image in images],
                               float(record.duration_s or 0.0), tuple(value.get("notices") or ()))
        self._close(job, DONE if record.status == "done" else record.status)

    def _close(self, job: Job, status: str) -> None:
        with self._changed:
            job.status, job.finished_at = status, time.time()
            if job in self._active:
                self._active.remove(job)
            self._finished = (self._finished + [job])[-KEEP_FINISHED:]
            self._touch()
        job.done.set()

    # -- the panel's actions --------------------------------------------------------------------

    def cancel(self, job_id: int) -> str:
        with self._changed:
            job = next((j for j in self._active if j.id == job_id), None)
        if job is None:
            raise InputError(f"job {job_id} is not waiting or running in the farm", field="job")
        # The key reaches a worker that already runs it (it stops after the current step); revoke drops it
        # from the queue if no worker has taken it yet.
        self.redis.set(CANCEL_KEY.format(job_key=job.key), "1", ex=24 * 3600)
        if job.status == RUNNING:
            return "interrupting"
        self.app.control.revoke(job.key)
        return "cancelling"

    def move(self, job_id: int, position: int) -> None:
        raise InputError("in farm mode the broker hands jobs to workers in the order they came; they cannot be "
                         "reordered (cancel one and add it again)", field="job")

    def clear(self) -> int:
        with self._changed:
            waiting = [job for job in self._active if job.status != RUNNING]
        for job in waiting:
            self.cancel(job.id)
        return len(waiting)

    # -- what the panel and the APIs show ----------------------------------------------------------

    @property
    def running(self) -> Job | None:
        with self._changed:
            return next((job for job in self._active if job.status == RUNNING), None)

    def waiting_count(self) -> int:
        with self._changed:
            return sum(job.status != RUNNING for job in self._active)

    def jobs(self) -> list[dict]:
        with self._changed:
            running = [job.summary(None) for job in self._active if job.status == RUNNING]
            waiting = [job.summary(i) for i, job in enumerate(j for j in self._active if j.status != RUNNING)]
            finished = [job.summary(None) for job in reversed(self._finished)]
        return running + waiting + finished

    def get(self, job_id: int) -> Job:
        with self._changed:
            for job in [*self._active, *self._finished]:
                if job.id == job_id:
                    return job
        raise InputError(f"no job {job_id} in the queue (finished jobs are kept for a while only)", field="job")

    def workers(self) -> list[dict]:
        """Every worker's latest report (device, free memory, loaded models, job), newest first."""
        reports = []
        for key in self.redis.scan_iter(WORKER_KEY.format(name="*")):
            raw = self.redis.get(key)
            if raw:
                reports.append(json.loads(raw))
        return sorted(reports, key=lambda r: r.get("name", ""))

