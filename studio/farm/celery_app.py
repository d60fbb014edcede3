"""The Celery app of a farm: the UI process and every worker build it from the same settings."""

from __future__ import annotations

from studio.errors import InputError
from studio.settings import Settings

TASK = "studio.run"
QUEUE = "studio"  # the shared queue: any worker takes its jobs
# each worker's own queue: the UI sends a job there when that worker holds the job's model (routing)
WORKER_QUEUE = "studio.worker.{name}"
# Redis keys besides Celery's own
CANCEL_KEY = "studio:cancel:{job_key}"  # set by Interrupt; the worker polls it between steps
WORKER_KEY = "studio:worker:{name}"  # each worker's report (JSON), refreshed every few seconds, expiring
WORKER_REPORT_S = 3.0


def check_farm_settings(settings: Settings) -> None:
    """Farm mode needs the broker and a shared database: name the missing setting."""
    if not settings.broker_url:
        raise InputError("farm mode needs a broker: --broker redis://host:6379/0 (or STUDIO_BROKER_URL)",
                         field="broker_url")
    if not settings.broker_url.startswith(("redis://", "rediss://")):
        raise InputError("the broker must be Redis: redis://host:6379/0", field="broker_url")
    if not settings.database_url:
        raise InputError("farm mode needs a history every machine reaches: --database-url "
                         "postgresql+psycopg://user:password@host/db (or STUDIO_DATABASE_URL)", field="database_url")


def make_app(settings: Settings):
    from celery import Celery

    check_farm_settings(settings)
    app = Celery("studio", broker=settings.broker_url, backend=settings.broker_url)
    app.conf.update(
        # A job is acknowledged when it has finished, not when a worker takes it, and a job whose worker
        # process died is put back: a killed worker loses no job. The history's job key makes the second
        # delivery find (or wait for) the first one's row instead of recording the run twice.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,  # a worker holds one job at a time: the rest stay in the queue for others
        task_track_started=True,
        task_default_queue=QUEUE,
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        result_expires=24 * 3600,
        result_extended=True,  # the result backend keeps the worker's name beside the state
        # An unacknowledged job (its whole worker died) goes back to the queue after this long.
        broker_transport_options={"visibility_timeout": settings.farm_visibility_timeout_s},
        broker_connection_retry_on_startup=True,
        # a result written while the broker restarts is retried, not lost (the job's row is written anyway)
        result_backend_always_retry=True,
        result_backend_max_retries=60,
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
    )
    return app
