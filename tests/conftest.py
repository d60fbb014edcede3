"""Shared fixtures: real SQLite files in tmp dirs, a real PostgreSQL server, tiny diffusers models built in code."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

for key, value in {"HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1",
                   "GRADIO_ANALYTICS_ENABLED": "False", "DO_NOT_TRACK": "1"}.items():
    os.environ.setdefault(key, value)

TINY = "tiny"


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A tiny random SD-format model saved as a diffusers folder, once per session."""
    from studio.micro.tiny import save_tiny_model

    return save_tiny_model(tmp_path_factory.mktemp("models") / "tiny-sd", seed=0)


@pytest.fixture(scope="session")
def tiny_inpaint_dir(tmp_path_factory) -> Path:
    from studio.micro.tiny import save_tiny_model

    return save_tiny_model(tmp_path_factory.mktemp("models") / "tiny-sd-inpaint", seed=1, inpaint=True)


@pytest.fixture
def settings(tmp_path):
    from studio.settings import Settings

    # annotators in a temp folder too: weights a developer keeps in ./models/annotators must not
    # change which preprocessor a test gets
    return Settings(data_dir=tmp_path / "data", models_dir=tmp_path / "models", default_model=TINY,
                    device="cpu", preview_every=1, annotators_dir=tmp_path / "annotators")


@pytest.fixture
def services(settings, tiny_model_dir):
    """The real composition root on a temp data dir, with the tiny model registered as the default."""
    from studio.app import build

    built = build(settings)
    built.registry.add(str(tiny_model_dir), name=TINY)
    yield built
    built.close()


def require_server(reason: str | None, what: str) -> None:
    """A server the tests need cannot run here (reason): fail in CI, which must test it; skip elsewhere."""
    if reason:
        if os.environ.get("CI"):
            pytest.fail(f"CI must test {what}: {reason}")
        pytest.skip(reason)


@pytest.fixture(scope="session")
def postgres_server():
    """A real PostgreSQL server for the whole session (tests/servers.py); skipped where none can run, failed in CI."""
    from servers import PostgresServer, missing_reason

    require_server(missing_reason(), "the PostgreSQL history")
    server = PostgresServer()
    try:
        server.start()
    except Exception:
        server.stop()
        raise
    yield server
    server.stop()


@pytest.fixture
def postgres_url(postgres_server):
    """A fresh, empty database on the session's server; dropped after the test."""
    name = postgres_server.create_database()
    yield postgres_server.url(name)
    postgres_server.drop_database(name)


@pytest.fixture(params=["sqlite", "postgresql"])
def history_location(request, tmp_path):
    """Where a test's history lives: a SQLite file, then an empty PostgreSQL database (the server starts only then)."""
    if request.param == "sqlite":
        return tmp_path / "history.sqlite"
    return request.getfixturevalue("postgres_url")


@pytest.fixture(scope="session")
def redis_server():
    """A real redis-server for the session (farm mode's broker); skipped where none can run, failed in CI."""
    from servers import RedisServer, redis_missing_reason

    require_server(redis_missing_reason(), "farm mode")
    server = RedisServer()
    try:
        server.start()
    except Exception:
        server.stop()
        raise
    yield server
    server.stop()
