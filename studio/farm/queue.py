"""The UI side of a farm: FarmQueue is the JobQueue whose jobs run on Celery workers.

Generate, the APIs and the queue panel use it exactly as the in-process queue: submit, run, wait,
cancel, jobs. Each job goes to the broker at once, with its seed drawn here (so whichever worker runs
it, and however often it is delivered, it draws the same pixels); a thread per job follows its state in
the result backend (waiting, running with its worker and progress, done) and, when it is done, reads
the run back from the shared history. Interrupt sets a key the worker polls between steps.

Model-aware routing (setting farm_routing): loading a model costs seconds, so a job goes to the own
queue of a worker that holds its model (loaded, by its report, or the model of the last job sent to
it), unless that worker's backlog is AFFINITY_SLACK_JOBS longer than the least busy worker's; a model
nobody holds goes to the least busy worker that holds the fewest models. A thread keeps it balanced:
an idle worker takes a waiting job from a busy one (one of its models first), and the jobs of a worker
that stopped reporting are sent to the others. A job sent twice is still recorded once: the worker
that gets the second copy finds the first one's row by the job key (worker.py's _claim).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import threading
import time
import uuid

from studio.errors import InputError, StudioError
from studio.farm.celery_app import CANCEL_KEY, QUEUE, TASK, WORKER_KEY, WORKER_QUEUE, make_app
from studio.farm.messages import decode_preview, encode_request
from studio.jobs import Progress, RunResult
from studio.queue import CANCELLED, DONE, FAILED, KEEP_FINISHED, RUNNING, WAITING, Job, JobQueue
from studio.requests import resolve_seed, validate

# how often a job's state is read: often while it runs (the end of a job is noticed within 20 ms), less
# often while it waits for a worker
FOLLOW_RUNNING_S = 0.02
FOLLOW_WAITING_S = 0.1
# how long the broker may be away (a restart) before a job's caller hears it was lost track of
BROKER_OUTAGE_S = 120.0
BROKER_RETRY_S = 0.5
# routing: how many more jobs a worker holding the model may have waiting than the least busy worker before a
# job goes to the least busy one anyway (one reload is cheaper than a queue that long)
AFFINITY_SLACK_JOBS = 2
BALANCE_EVERY_S = 0.25
REPORTS_FRESH_S = 0.2  # the workers' reports are read from Redis at most this often
# a worker whose report expired (it reports every 3 s, the key lives 10 s) this long ago is gone: its jobs move
WORKER_GONE_S = 3.0

log = logging.getLogger(__name__)


class FarmError(StudioError):
    """A job failed on its worker (the worker's own message, or what the broker said)."""


class FarmQueue(JobQueue):
    def __init__(self, runner, settings):
        super().__init__(runner)
        import redis

        self.history = runner.history
        self.registry = runner.models.registry
        self.app = make_app(settings)
        self.redis = redis.Redis.from_url(settings.broker_url)
        self.routing = settings.farm_routing
        self._active: list[Job] = []  # sent to the broker, not finished (waiting or running), oldest first
        self._models: dict[int, str] = {}  # job id -> the name of the model it runs
        self._last_model: dict[str, str] = {}  # worker -> the model of the last job sent to its queue
        self._reports: dict[str, dict] = {}
        self._reports_at = 0.0
        self._seen: dict[str, float] = {}  # worker -> when its report was last there (monotonic)
        self._closed = threading.Event()
        threading.Thread(target=self._balance_forever, daemon=True, name="studio-farm-balance").start()

    def close(self) -> None:
        self._closed.set()

    # -- adding and waiting --------------------------------------------------------------------

    def submit(self, request, source: str = "ui", on_progress=None, rerun_of: int | None = None) -> Job:
        validate(request)
        # the seed is drawn here, so every delivery of the job draws the same pixels (a plot's is its base's)
        if hasattr(request, "seed"):
            request = resolve_seed(request)
        elif hasattr(getattr(request, "base", None), "seed"):
            request = dataclasses.replace(request, base=resolve_seed(request.base))
        model = self._model_name(request)
        reports = self._live_reports()
        with self._changed:
            job = Job(next(self._ids), request, source, time.time(), rerun_of, key=uuid.uuid4().hex)
            if on_progress is not None:
                job.listeners.append(on_progress)
            self._models[job.id] = model
            job.routed_to = self._choose(model, reports) if self.routing else None
            if job.routed_to:
                self._last_model[job.routed_to] = model
            self._active.append(job)
            self._touch()
        job.task = self._send(job, job.key, job.routed_to)
        threading.Thread(target=self._follow, args=(job,), daemon=True, name=f"studio-farm-{job.id}").start()
        return job

    def _send(self, job: Job, task_id: str, worker: str | None):
        queue = WORKER_QUEUE.format(name=worker) if worker else QUEUE
        return self.app.send_task(TASK, args=[job.key, encode_request(job.request), job.source, job.queued_at,
                                              job.rerun_of], task_id=task_id, queue=queue)

    def _model_name(self, request) -> str:
        try:
            return request.model or self.registry.default_name()
        except StudioError:  # no model at all: the worker says so; routing has nothing to go by
            return ""

    # -- routing -------------------------------------------------------------------------------

    def _live_reports(self) -> dict[str, dict]:
        """The reports of the workers that are up, by name (read again at most every REPORTS_FRESH_S)."""
        now = time.monotonic()
        if now - self._reports_at > REPORTS_FRESH_S:
            try:
                reports = self._read_reports()
            except Exception as error:  # the broker restarting: route by the last reports meanwhile
                log.debug("worker reports not read: %s", error)
                return self._reports
            for name in reports:
                self._seen[name] = now
            self._reports, self._reports_at = reports, now
        return self._reports

    def _read_reports(self) -> dict[str, dict]:
        """Every worker's latest report in Redis, by name (a report expires a few seconds after its worker stops)."""
        keys = list(self.redis.scan_iter(WORKER_KEY.format(name="*")))
        reports = [json.loads(raw) for raw in (self.redis.mget(keys) if keys else []) if raw]
        return {report["name"]: report for report in reports}

    def _backlog(self, worker: str) -> int:
        """Jobs this UI sent to the worker's queue that have not finished (waiting or running there)."""
        return sum(1 for job in self._active if job.routed_to == worker or job.worker == worker)

    def _holds(self, worker: str, model: str, reports: dict) -> bool:
        return model in reports[worker].get("loaded_models", ()) or self._last_model.get(worker) == model

    def _choose(self, model: str, reports: dict, exclude: str | None = None) -> str | None:
        """The worker whose queue the job goes to (None: the shared queue, while no worker is listed)."""
        live = sorted(name for name in reports if name != exclude)
        if not live:
            return None
        backlog = {name: self._backlog(name) for name in live}
        least = min(backlog.values())
        holders = [name for name in live if self._holds(name, model, reports)]
        if holders:
            best = min(holders, key=backlog.get)
            if backlog[best] <= least + AFFINITY_SLACK_JOBS:
                return best

        def models_held(name: str) -> int:
            return len(set(reports[name].get("loaded_models", ())) | {self._last_model.get(name)} - {None})

        return min(live, key=lambda name: (backlog[name], models_held(name)))

    def _balance_forever(self) -> None:
        while not self._closed.wait(BALANCE_EVERY_S):
            try:
                self._balance()
            except Exception as error:  # the broker restarting: balance again later
                log.debug("farm balance skipped: %s", error)

    def _balance(self) -> None:
        reports = self._live_reports()
        now = time.monotonic()
        with self._changed:
            # who holds each job: the worker running it, else the worker whose queue it waits in
            held = [(job, job.worker if job.status == RUNNING else job.routed_to) for job in self._active]
        # the jobs of a worker that stopped reporting go to the others, its running one too, without waiting for
        # the broker's visibility timeout: the copy finds the dead attempt's row by the job key, removes it and
        # runs the job again
        for job, worker in held:
            if worker and worker not in reports and now - self._seen.get(worker, now) > WORKER_GONE_S and reports:
                self._move(job, self._choose(self._models.get(job.id, ""), reports, exclude=worker),
                           f"worker {worker} is gone", running_too=True)
        if not self.routing:  # every job waits in the shared queue: a free worker takes the next one
            return
        # an idle worker takes a waiting job from a worker that is busy with another
        for idle in sorted(reports):
            with self._changed:
                if self._backlog(idle) or reports[idle].get("job"):
                    continue
                waiting = [job for job in self._active if job.status != RUNNING and job.routed_to not in (None, idle)
                           and self._busy(job.routed_to, reports)]
                if not waiting:
                    return
                mine = [job for job in waiting if self._holds(idle, self._models[job.id], reports)]
                job = (mine or waiting)[-1]  # the newest: the busy worker keeps the order of the older ones
            self._move(job, idle, "a worker is idle")

    def _busy(self, worker: str, reports: dict) -> bool:
        return any(job.status == RUNNING and job.worker == worker for job in self._active) or bool(
            reports.get(worker, {}).get("job"))

    def _worker_name(self, hostname: str | None) -> str | None:
        """A worker's name as it reports it: Celery's node name is "<name>@<host>" where the name has no "@"."""
        if not hostname or hostname in self._reports or "@" not in hostname:
            return hostname
        return hostname.rsplit("@", 1)[0]

    def _move(self, job: Job, target: str | None, why: str, running_too: bool = False) -> None:
        """Send the job to another queue; the first copy is revoked (and is harmless if it runs anyway).

        A job a worker has started stays where it is, unless running_too (its worker is gone) and the worker that
        started it is not a live one."""
        old = job.task
        try:
            meta = old.backend.get_task_meta(old.id)
        except Exception:
            return
        state, info = meta.get("status"), meta.get("result")
        if job.done.is_set() or state == "SUCCESS":
            return
        if state in ("STARTED", "PROGRESS"):
            started_by = self._worker_name((info if isinstance(info, dict) else {}).get("worker") or meta.get("worker"))
            if not running_too or started_by in self._reports:
                return  # a live worker took it meanwhile
        log.info("job %s: to %s (%s)", job.id, target or "the shared queue", why)
        task = self._send(job, uuid.uuid4().hex, target)  # sent first: a broker that is away leaves it as it was
        with self._changed:
            job.routed_to, job.task = target, task
            if job.status == RUNNING:  # its worker is gone: it waits again, for the next one
                job.status, job.worker, job.started_at = WAITING, None, None
            if target:
                self._last_model[target] = self._models.get(job.id, "")
            self._touch()
        try:
            self.app.control.revoke(old.id)
        except Exception:  # the copy left behind finds the job done by its key
            pass

    def _follow(self, job: Job) -> None:
        try:
            outage_since = None
            while not job.done.is_set():
                task = job.task  # a moved job is followed on its new copy
                if task is None:  # closed meanwhile
                    return
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
                if task is not job.task:  # moved while it was read
                    continue
                state, info = meta.get("status"), meta.get("result")
                details = info if isinstance(info, dict) else {}
                if state in ("STARTED", "PROGRESS"):
                    self._running_on(job, self._worker_name(details.get("worker") or meta.get("worker")))
                    if state == "PROGRESS" and "fraction" in details:
                        job.report(Progress(float(details["fraction"]), details.get("text", ""),
                                            decode_preview(details.get("preview")), int(details.get("step") or 0),
                                            int(details.get("total_steps") or 0)))
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
            log.warning("job %s: lost track of it", job.id, exc_info=True)
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
        if cancelled or value is None or value.get("cancelled"):
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
            self._models.pop(job.id, None)
            self._finished = (self._finished + [job])[-KEEP_FINISHED:]
            self._touch()
            # Celery's handle keeps a subscription to the job's result channel until it is dropped: drop it now,
            # while the broker is there (dropped at interpreter exit, it would try to reach a stopped broker)
            job.task = None
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
        if job.task is not None:
            self.app.control.revoke(job.task.id)
        # gone from the queue now, whether or not a worker is up to hear the revoke: whichever worker takes its
        # message later sees the cancel key and drops it
        self._close(job, CANCELLED)
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
        """Every worker's latest report (device, free memory, loaded models, model loads, job), by name."""
        return [report for _, report in sorted(self._read_reports().items())]

