"""The history on a PostgreSQL server (farm mode): engine, artist-facing connection errors, sequences.

Everything else (models, migrations, the store) is shared with SQLite; only what differs lives here.
"""

from __future__ import annotations

from sqlalchemy import Integer, create_engine, text
from sqlalchemy.engine import Connection, Engine, make_url

from studio.errors import HistoryError

CONNECT_TIMEOUT_S = 10
SETTING = "STUDIO_DATABASE_URL"


def is_url(where) -> bool:
    return isinstance(where, str) and "://" in where


def shown(url: str) -> str:
    """The URL as it may be printed or logged: the password replaced by ***."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not even parseable: print nothing of it that could be a secret
        return "<unparseable database URL>"


def make_engine(url: str) -> Engine:
    # pre_ping: a farm's server restarts or drops idle connections; a stale pooled connection is
    # replaced instead of failing the next run. The session time zone is UTC so naive datetimes
    # (SQLite's, copied by `history migrate`) mean what they mean in SQLite, and reads come back in UTC.
    return create_engine(url, pool_pre_ping=True,
                         connect_args={"connect_timeout": CONNECT_TIMEOUT_S, "options": "-c timezone=UTC"})


def _is_psycopg_error(error: BaseException) -> bool:
    try:
        import psycopg
    except ImportError:
        return False
    return isinstance(error, psycopg.Error)


def postgres_problem(error: BaseException, url: str) -> HistoryError | None:
    """The artist's message for a server that cannot be reached or refuses us (not a bug of ours)."""
    original = getattr(error, "orig", error)
    if not _is_psycopg_error(original):
        return None
    said = str(original).strip()
    state = getattr(original, "sqlstate", None) or ""
    parsed = make_url(url)
    where = shown(url)
    detail = said.splitlines()[0][:300]
    if "Connection refused" in said or "could not translate host name" in said or "timeout expired" in said:
        return HistoryError(f"the history database server at {where} cannot be reached ({detail}); start "
                            f"PostgreSQL there, or fix the host and port in {SETTING}")
    if state in ("28P01", "28000") or "password authentication failed" in said or "no pg_hba.conf entry" in said \
            or ("role" in said and "does not exist" in said):
        return HistoryError(f"the history database server at {where} refused the login of user "
                            f"{parsed.username!r} ({detail}); fix the user and password in {SETTING}, or let "
                            "that user log in (pg_hba.conf, CREATE ROLE ... LOGIN PASSWORD)")
    if state == "3D000" or ("database" in said and "does not exist" in said):
        return HistoryError(f"the database {parsed.database!r} does not exist on the server at {where}; create "
                            f"it (createdb {parsed.database}) or name an existing one in {SETTING}")
    if state.startswith("08") or "server closed the connection" in said or "connection failed" in said:
        return HistoryError(f"the connection to the history database at {where} failed ({detail}); check that "
                            f"the server is up and {SETTING} is right, then try again (nothing was changed)")
    if state == "53100":  # disk_full
        return HistoryError(f"the disk of the history database server at {where} is full; free some space "
                            "there and try again (nothing was lost)")
    return None


def reset_sequences(connection: Connection, tables) -> None:
    """After rows were inserted with explicit ids, the next id a sequence hands out is past the largest one."""
    for table in tables:
        for column in table.primary_key.columns:
            if column is table.autoincrement_column and isinstance(column.type, Integer):
                connection.execute(text(
                    f"SELECT setval(pg_get_serial_sequence('{table.name}', '{column.name}'), "
                    f"COALESCE(MAX({column.name}), 1), MAX({column.name}) IS NOT NULL) FROM {table.name}"))
