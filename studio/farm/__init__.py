"""Farm mode: one studio, many GPU machines, on Celery with a Redis broker and the history in PostgreSQL.

    celery_app.py  the Celery app both sides build from the same settings (acks late, requeue a lost job)
    messages.py    a request as a JSON message (images as PNG) and back
    worker.py      the worker side: the task that runs a job once per job key, progress, interrupt, reports
    queue.py       the UI side: FarmQueue, the JobQueue whose jobs run on the workers
"""
