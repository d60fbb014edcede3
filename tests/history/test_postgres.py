"""The history on PostgreSQL: the migrations build the same schema as on SQLite, and a server that
cannot be reached or refuses us is named in one artist-facing line, never a psycopg traceback."""

import pytest
from sqlalchemy import BigInteger, inspect
from tests_support import free_port

from studio.errors import HistoryError
from studio.history.db import Database, current_revision, head_revision


def columns_of(engine) -> dict[str, set[str]]:
    inspector = inspect(engine)
    return {table: {column["name"] for column in inspector.get_columns(table)}
            for table in inspector.get_table_names()}


def test_migrations_from_an_empty_database_match_the_sqlite_schema(postgres_url, tmp_path):
    postgres, sqlite = Database(postgres_url), Database(tmp_path / "history.sqlite")
    try:
        assert postgres.backup_path is None  # pg_dump is the server's backup, not a copy we make
        assert current_revision(postgres.engine) == head_revision(postgres.engine) == current_revision(sqlite.engine)
        assert columns_of(postgres.engine) == columns_of(sqlite.engine)
        assert {"runs", "run_images", "blobs", "alembic_version"} <= set(columns_of(postgres.engine))
        wide = {(table, column["name"]) for table in ("runs", "run_images", "blobs")
                for column in inspect(postgres.engine).get_columns(table) if isinstance(column["type"], BigInteger)}
        assert {("runs", "id"), ("runs", "seed"), ("run_images", "seed"), ("run_images", "run_id")} <= wide
        indexes = {table: {i["name"] for i in inspect(e).get_indexes(table)} for e in (postgres.engine,)
                   for table in ("runs", "run_images", "blobs")}
        assert indexes == {table: {i["name"] for i in inspect(sqlite.engine).get_indexes(table)}
                           for table in ("runs", "run_images", "blobs")}
    finally:
        postgres.close()
        sqlite.close()


def test_nothing_listening_is_one_clear_line():
    url = f"postgresql+psycopg://studio:s3cret@127.0.0.1:{free_port()}/history"
    with pytest.raises(HistoryError) as raised:
        Database(url)
    message = str(raised.value)
    assert "cannot be reached" in message and "STUDIO_DATABASE_URL" in message and "Connection refused" in message
    assert "s3cret" not in message and "studio:***@127.0.0.1" in message
    assert raised.value.exit_code == 5


def test_a_missing_database_and_a_refused_login_say_what_to_change(postgres_server):
    from servers import PASSWORD, PASSWORD_ROLE

    with pytest.raises(HistoryError, match="does not exist on the server.*createdb no_such_history"):
        Database(postgres_server.url("no_such_history"))
    with pytest.raises(HistoryError, match="refused the login of user 'studio_pw'.*user and password in "
                                           "STUDIO_DATABASE_URL") as raised:
        Database(postgres_server.url("postgres", PASSWORD_ROLE, "wrong-password"))
    assert "wrong-password" not in str(raised.value)
    assert PASSWORD not in str(raised.value)


def test_the_studio_builds_on_postgresql(settings, postgres_url):
    from studio.app import build

    services = build(settings.model_copy(update={"database_url": postgres_url}))
    try:
        assert services.database.url == postgres_url and services.history.count() == 0
        assert not settings.database_path.exists()  # nothing went to the SQLite file
    finally:
        services.close()
