"""SQLAlchemy engine for the history (a SQLite file: WAL, foreign keys, busy timeout; or a PostgreSQL URL)
and the one transaction scope."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import create_engine, event, exc, inspect
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from studio.errors import HistoryError
from studio.history import postgres

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
BUSY_TIMEOUT_MS = 10_000


def _configure_sqlite(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    # WAL lets the UI read history while a run is being written; NORMAL sync is safe with WAL.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    cursor.close()


def make_engine(path: Path) -> Engine:
    path.parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(f"sqlite:///{path}", connect_args={"check_same_thread": False})
    event.listen(engine, "connect", _configure_sqlite)
    return engine


def _alembic_config(engine: Engine):
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["engine"] = engine
    return config


def current_revision(engine: Engine) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def head_revision(engine: Engine) -> str:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(_alembic_config(engine)).get_current_head()


def migrate(engine: Engine, path: Path | None) -> str | None:
    """Bring the schema to the newest revision; back a SQLite file up first if it already has data.

    Returns the path of the backup, if one was made. A PostgreSQL history (path None) gets no copy
    from us: a server's data is backed up with pg_dump (or its own snapshots), which we cannot do
    for it from here and which the server's operator already runs.
    """
    from alembic import command

    current, head = current_revision(engine), head_revision(engine)
    if current == head:
        return None
    backup = None
    if path is not None and path.exists() and inspect(engine).get_table_names():
        backup = path.with_name(f"{path.name}.before-{head}.bak")
        if not backup.exists():
            with engine.connect() as connection:
                # VACUUM INTO writes a consistent copy even with WAL frames pending
                connection.exec_driver_sql(f"VACUUM INTO '{backup}'")
    command.upgrade(_alembic_config(engine), "head")
    return str(backup) if backup else None


def recovery_advice(path: Path) -> str:
    """How to get a working history back from a damaged file, without touching it."""
    backups = sorted(path.parent.glob(f"{path.name}.before-*.bak"))
    backup = f"; or put back the copy made before the last upgrade, {backups[-1]}" if backups else ""
    return (f"`studio history recover` salvages the rows it can read into a new file beside it{backup}; or "
            f"`sqlite3 {path} .recover | sqlite3 recovered.sqlite`; or start a new history in another folder "
            "with --data-dir (the damaged file stays as it is)")


def history_problem(error: BaseException, path: Path | str) -> HistoryError | None:
    """The artist's message for a database failure that is not a bug of ours (damage, full disk, a lock,
    a PostgreSQL server that cannot be reached or refuses the login)."""
    if postgres.is_url(path):
        return postgres.postgres_problem(error, path)
    original = getattr(error, "orig", error)
    if not isinstance(original, sqlite3.Error):
        return None
    name = getattr(original, "sqlite_errorname", "") or ""
    said = str(original)
    if name.startswith(("SQLITE_CORRUPT", "SQLITE_NOTADB")) or "malformed" in said or "not a database" in said:
        return HistoryError(f"the history database {path} is damaged (SQLite: {said}); nothing was changed. To "
                            f"recover: {recovery_advice(path)}")
    if name.startswith("SQLITE_FULL"):
        return HistoryError(f"the disk holding {path} is full; free some space and try again (nothing was lost)")
    if name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")):
        return HistoryError(f"the history database {path} stayed locked by another process for "
                            f"{BUSY_TIMEOUT_MS // 1000} s; try again")
    if name.startswith(("SQLITE_IOERR", "SQLITE_CANTOPEN", "SQLITE_READONLY", "SQLITE_PERM")):
        return HistoryError(f"the history database {path} cannot be read or written ({said}); check the folder's "
                            "permissions and the disk")
    return None


class Database:
    """The history database: an engine plus the transaction scope every write goes through.

    `where` is a Path (a SQLite file) or a URL string (postgresql+psycopg://user:password@host/db).
    """

    def __init__(self, where: Path | str):
        self.url = where if postgres.is_url(where) else None
        self.path = None if self.url else Path(where)
        self.shown = postgres.shown(self.url) if self.url else str(self.path)  # for messages: no password
        try:
            self.engine = postgres.make_engine(self.url) if self.url else make_engine(self.path)
            self.backup_path = migrate(self.engine, self.path)
        except (exc.DBAPIError, sqlite3.Error) as error:
            problem = history_problem(error, self.location)
            if problem is None:
                raise
            raise problem from error
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """Commit on success, roll back on any error; damage and full disks become a HistoryError."""
        session = self._sessions()
        try:
            yield session
            session.commit()
        except exc.DBAPIError as error:
            session.rollback()
            problem = history_problem(error, self.location)
            if problem is None:
                raise
            raise problem from error
        except BaseException:
            session.rollback()
            raise
        finally:
            session.close()

    @property
    def location(self) -> Path | str:
        """The file or the URL (with its password: for connecting, never for printing; that is `shown`)."""
        return self.url or self.path

    def close(self) -> None:
        self.engine.dispose()
