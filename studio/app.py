"""Composition root: build(settings) -> Services. Nothing else constructs services."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

from studio.engine.devices import Placement, placement
from studio.engine.models import ModelManager
from studio.engine.registry import ModelRegistry
from studio.history.db import Database
from studio.history.files import BlobStore
from studio.history.store import HistoryStore, RecoveryReport
from studio.jobs import JobRunner
from studio.queue import JobQueue
from studio.settings import Settings
from studio.templates import TemplateBook

log = logging.getLogger(__name__)


def offline_environment() -> None:
    """No hub, no telemetry, no analytics: set before diffusers/gradio read them."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    # Pickled weights (OpenPose/MiDaS annotators) load as tensors only, never as arbitrary objects,
    # even where a library asks torch.load for more.
    os.environ.setdefault("TORCH_FORCE_WEIGHTS_ONLY_LOAD", "1")


@dataclass
class Services:
    settings: Settings
    placement: Placement
    database: Database
    history: HistoryStore
    registry: ModelRegistry
    models: ModelManager
    runner: JobRunner
    queue: JobQueue
    recovery: RecoveryReport
    templates: TemplateBook | None = None  # the prompt builder's saved templates

    def close(self) -> None:
        self.queue.close()
        self.database.close()


def build(settings: Settings | None = None) -> Services:
    """Open the history (migrating it), recover from a crash, and wire the runner to the models."""
    offline_environment()
    settings = settings or Settings()
    if settings.farm:  # refused before anything is opened or written: name the missing setting
        from studio.farm.celery_app import check_farm_settings

        check_farm_settings(settings)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    if not settings.offline:
        os.environ["HF_HUB_OFFLINE"] = "0"
    database = Database(settings.database)
    history = HistoryStore(database, BlobStore(settings.blobs_dir))
    recovery = history.recover()
    if recovery.interrupted_runs:
        log.warning("marked %d run(s) left running by a crash as interrupted: %s",
                    len(recovery.interrupted_runs), recovery.interrupted_runs)
    for damage in recovery.damaged_files:
        log.warning("history file damaged: %s (`studio history check` verifies every file)", damage.describe())
    if recovery.orphan_blobs or recovery.missing_blobs or recovery.stray_temp_files:
        log.warning("history files: %d without a row, %d rows missing a file, %d half-written temp files",
                    len(recovery.orphan_blobs), len(recovery.missing_blobs), len(recovery.stray_temp_files))
    where = placement(settings.device, settings.precision)
    registry = ModelRegistry(settings)
    models = ModelManager(settings, where, registry)
    runner = JobRunner(models, history, settings)
    if settings.farm:  # jobs run on Celery workers; this process serves the UI and reads the shared history
        from studio.farm.queue import FarmQueue

        queue = FarmQueue(runner, settings)
    else:
        queue = JobQueue(runner)
    return Services(settings, where, database, history, registry, models, runner, queue, recovery,
                    TemplateBook.in_data_dir(settings.data_dir))
