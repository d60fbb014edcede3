"""The worker side of a farm: `studio worker` runs Celery with this task, one job at a time per GPU.

Each pool process builds the studio's services once (the shared history and data folder, its own model
cache) and keeps them: models stay loaded between jobs. A job is recorded under its job key, so however
often the broker delivers it (a worker killed mid-job, a lost acknowledgement) it ends with one row:
  - a row already done: that run is the answer, nothing runs again;
  - a row still running in a live process (a job that outlived the visibility timeout): wait for it;
  - a row left by a dead attempt: removed (it has no outputs), and the job runs again.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time

from studio.farm.celery_app import CANCEL_KEY, QUEUE, TASK, WORKER_KEY, WORKER_QUEUE, WORKER_REPORT_S, make_app
from studio.settings import Settings

log = logging.getLogger(__name__)
PROGRESS_EVERY_S = 0.25  # at most four progress updates a second reach the result backend
WAIT_FOR_LIVE_ATTEMPT_S = 0.5

_state: dict = {}  # this pool process's services, redis client and report thread
_building = threading.Lock()


def worker_name() -> str:
    return os.environ.get("STUDIO_WORKER_NAME") or f"{socket.gethostname()}:{os.getpid()}"


def _services():
    """Built once in each pool process (after the fork: torch and CUDA must not cross one)."""
    with _building:
        if "services" not in _state:
            _build_services()
    return _state["services"]


def _build_services() -> None:
    from studio.app import build
    from studio.jobs import DeviceLock

    services = build(Settings())
    # The data folder is shared by every machine: its device.lock would make all workers take turns.
    # A worker owns its GPU, so its lock is its own.
    services.runner.device_lock = DeviceLock(None)
    _state["services"] = services
    _state["current"] = None
    threading.Thread(target=_report_forever, daemon=True, name="studio-worker-report").start()


def _redis():
    if "redis" not in _state:
        import redis

        _state["redis"] = redis.Redis.from_url(_services().settings.broker_url)
    return _state["redis"]


def report() -> dict:
    """What the Farm view lists: device, free memory, loaded models, the job in progress."""
    services = _state["services"]
    placement = services.models.placement
    free = None
    try:
        import torch

        if placement.device.startswith("cuda"):
            free = int(torch.cuda.mem_get_info()[0])
        else:
            import psutil

            free = int(psutil.virtual_memory().available)
    except Exception:  # a report without the free memory is still a report
        free = None
    return {"name": worker_name(), "device": placement.description, "free_memory_bytes": free,
            "loaded_models": services.models.loaded_names(), "model_loads": services.models.load_count,
            "job": _state.get("current"), "pid": os.getpid(), "reported_at": time.time()}


def _send_report() -> None:
    try:
        _redis().set(WORKER_KEY.format(name=worker_name()), json.dumps(report()), ex=int(3 * WORKER_REPORT_S) + 1)
    except Exception as error:  # the broker may be restarting: report again later
        log.warning("worker report failed: %s", error)


def _report_forever() -> None:
    while True:
        _send_report()
        time.sleep(WORKER_REPORT_S)


def _start_early(**_) -> None:
    """A new pool process builds its services in the background at once, so the worker is listed (and can be
    routed to) before its first job; Celery allows a pool process only seconds to say it is up."""
    threading.Thread(target=_services, daemon=True, name="studio-worker-build").start()


def _claim(history, job_key: str):
    """The finished run of this job, or None when it must run (after removing a dead attempt's row)."""
    from studio.history.owner import owner_is_gone

    while True:
        record = history.job_run(job_key)
        if record is None:
            return None
        if record.status == "done":
            return record
        if record.status == "running" and not owner_is_gone(record.owner, record.heartbeat_at):
            time.sleep(WAIT_FOR_LIVE_ATTEMPT_S)
            continue
        log.warning("job %s: removing run %d left %s by a worker that died; running it again", job_key,
                    record.id, record.status)
        if record.mode == "xyz":  # the cells a dead plot finished go with its grid: the plot runs whole again
            for cell in history.lineage(record.id)[1]:
                history.delete(cell.id)
        history.delete(record.id)
        return None


def _answer(record, worker: str, ran_again: bool) -> dict:
    return {"run_id": record.id, "status": record.status, "seeds": [ref.seed for ref in record.outputs],
            "duration_s": record.duration_s, "worker": record.worker or worker, "notices": [],
            "delivered_again": ran_again}


def run_job(task, job_key: str, message: dict, source: str, queued_at: float, rerun_of: int | None) -> dict:
    from studio.engine.generate import CancelToken
    from studio.farm.messages import decode_request, encode_preview

    services = _services()
    name = worker_name()
    client = _redis()
    # Cancelled while it waited: Celery's revoke lives only in the memory of the workers that were up then, so a
    # worker started later would run it; the cancel key is in Redis for every worker to see.
    if client.exists(CANCEL_KEY.format(job_key=job_key)) and services.history.job_run(job_key) is None:
        return {"cancelled": True, "worker": name}
    done = _claim(services.history, job_key)
    if done is not None:  # delivered again after it finished (its acknowledgement was lost)
        return _answer(done, name, True)
    request = decode_request(message)
    cancel = CancelToken()
    last = [0.0]
    preview = [None]  # the newest preview not sent yet (a throttled update carries it later)

    def on_progress(progress) -> None:
        if progress.preview is not None:
            preview[0] = progress.preview
        now = time.monotonic()
        if now - last[0] < PROGRESS_EVERY_S and progress.fraction < 1.0:
            return
        last[0] = now
        try:
            if client.exists(CANCEL_KEY.format(job_key=job_key)):
                cancel.cancel()
            meta = {"fraction": progress.fraction, "text": progress.message, "step": progress.step,
                    "total_steps": progress.total_steps, "worker": name}
            if preview[0] is not None:
                meta["preview"] = encode_preview(preview[0])
                preview[0] = None
            task.update_state(state="PROGRESS", meta=meta)
        except Exception as error:  # the broker restarting: the run goes on, its progress shows again later
            log.warning("job %s: progress not reported (%s)", job_key, error)

    _state["current"] = job_key
    _send_report()  # the UI's router sees at once that this worker is busy
    try:
        result = services.runner.run(request, on_progress=on_progress, cancel=cancel, rerun_of=rerun_of,
                                     source=source, queued_at=queued_at, job={"job_key": job_key, "worker": name})
    finally:
        _state["current"] = None
        _send_report()  # ... and free, with the model it now holds
        try:
            client.delete(CANCEL_KEY.format(job_key=job_key))
        except Exception:  # it expires by itself
            pass
    return {"run_id": result.run_id, "status": result.status, "seeds": list(result.seeds),
            "duration_s": result.duration_s, "worker": name, "notices": list(result.notices),
            "delivered_again": False}


def make_worker_app(settings: Settings):
    """The Celery app with the task registered (what `studio worker` and `celery -A` run)."""
    from celery.signals import worker_process_init

    from studio.errors import StudioError

    app = make_app(settings)
    worker_process_init.connect(_start_early, weak=False)

    @app.task(bind=True, name=TASK)
    def run(task, job_key, message, source="ui", queued_at=None, rerun_of=None):
        try:
            return run_job(task, job_key, message, source, queued_at, rerun_of)
        except StudioError as error:  # the artist's message travels back as it is, not as a traceback
            return {"error": str(error), "field": getattr(error, "field", None), "kind": type(error).__name__}

    return app


def main(settings: Settings, concurrency: int = 1, loglevel: str = "INFO") -> int:
    """Run one worker in the foreground: one job at a time (one per GPU). make_app refuses missing settings.

    It takes jobs from the shared queue and from its own (where the UI routes the jobs of the models it holds);
    its name, fixed here, is the same in every pool process and after a pool process is replaced."""
    name = os.environ.setdefault("STUDIO_WORKER_NAME", f"{socket.gethostname()}:{os.getpid()}")
    # what the pool processes read back through Settings(): the same farm on every side
    for setting in ("broker_url", "database_url", "data_dir", "models_dir", "device", "farm_visibility_timeout_s"):
        value = getattr(settings, setting)
        if value is not None:
            os.environ[f"STUDIO_{setting.upper()}"] = str(value)
    app = make_worker_app(settings)
    argv = ["worker", f"--concurrency={concurrency}", "--pool=prefork", f"--loglevel={loglevel}",
            f"--hostname={name}", f"--queues={QUEUE},{WORKER_QUEUE.format(name=name)}", "--without-gossip",
            "--without-mingle", "--without-heartbeat"]
    app.worker_main(argv)
    return 0
