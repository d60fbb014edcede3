"""`studio history migrate --to postgresql+psycopg://...`: copy a SQLite history's rows into PostgreSQL.

Only rows move: the image files are addressed by hash in data_dir/blobs, which the machines of a
farm share, so a blobs row (and every run_images row pointing at it) stays valid as it is. Ids are
copied as they are, so run numbers people wrote down keep naming the same runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from sqlalchemy import JSON, bindparam, exc, func, insert, select, update

from studio.errors import HistoryError
from studio.history.db import Database, history_problem
from studio.history.postgres import reset_sequences
from studio.history.schema import RUN_LINKS, TABLES, Base

BATCH = 500


@dataclass
class TransferReport:
    source: Path
    target: str  # the URL without its password
    rows: dict[str, int] = field(default_factory=dict)  # table -> rows copied (equal in both, verified)

    def as_dict(self) -> dict:
        return {"source": str(self.source), "target": self.target, "rows": self.rows, "verified": True}


def _counts(database: Database) -> dict[str, int]:
    with database.engine.connect() as connection:
        return {name: connection.scalar(select(func.count()).select_from(Base.metadata.tables[name]))
                for name in TABLES}


def _utc(value):
    # SQLite hands back naive datetimes that mean UTC (utcnow() wrote them); say so to PostgreSQL
    return value.replace(tzinfo=timezone.utc) if isinstance(value, datetime) and value.tzinfo is None else value


def _insert(table):
    """INSERT of every column, with JSON binding None as SQL NULL (not the JSON text 'null') as the ORM left it."""
    values = {column.name: bindparam(f"v_{column.name}", type_=JSON(none_as_null=True)
                                     if isinstance(column.type, JSON) else column.type)
              for column in table.columns}
    return insert(table).values(values)


def _copy_table(source, target, name: str) -> None:
    table = Base.metadata.tables[name]
    statement = _insert(table)
    result = source.execute(select(table).order_by(*table.primary_key.columns))
    links = []
    while rows := result.mappings().fetchmany(BATCH):
        batch = []
        for row in rows:
            values = {f"v_{key}": _utc(value) for key, value in row.items()}
            if name == "runs":  # a run may point at a later one (salvaged files): link once all exist
                if any(row[k] is not None for k in RUN_LINKS):
                    links.append({"b_id": row["id"], **{f"b_{k}": row[k] for k in RUN_LINKS}})
                values.update({f"v_{k}": None for k in RUN_LINKS})
            batch.append(values)
        target.execute(statement, batch)
    if links:
        target.execute(update(table).where(table.c.id == bindparam("b_id"))
                       .values({k: bindparam(f"b_{k}") for k in RUN_LINKS}), links)


def copy_to_postgres(source: Path, url: str) -> TransferReport:
    """Copy every row of the SQLite history at `source` into the (empty) PostgreSQL database at `url`.

    The target is migrated to the newest schema first; the copy is one transaction, so a failure
    leaves it as empty as it was. Row counts are compared afterwards.
    """
    if not source.is_file():
        raise HistoryError(f"there is no history database at {source} to migrate; point --data-dir at the "
                           "folder that holds history.sqlite")
    sqlite = Database(source)  # brings an older file to the current schema too (backing it up first)
    try:
        target = Database(url)
        try:
            report = TransferReport(source, target.shown)
            present = _counts(target)
            if any(present.values()):
                raise HistoryError(f"the database at {target.shown} already holds a history ({present['runs']} "
                                   f"runs, {present['blobs']} files); migrate into an empty database (createdb a "
                                   "new one and name it in --to), nothing was copied")
            name = TABLES[0]
            try:
                with sqlite.engine.connect() as reading, target.engine.begin() as writing:
                    for name in TABLES:
                        _copy_table(reading, writing, name)
                    reset_sequences(writing, [Base.metadata.tables[name] for name in TABLES])
            except exc.DBAPIError as error:
                problem = history_problem(error, url)
                first = str(getattr(error, "orig", error)).strip().splitlines()[0][:300]
                raise problem or HistoryError(f"copying the {name} table into {target.shown} failed ({first}); "
                                              "nothing was copied (the copy is one transaction)") from error
            expected, copied = _counts(sqlite), _counts(target)
            if expected != copied:
                raise HistoryError(f"after copying, the row counts differ (SQLite {expected}, PostgreSQL "
                                   f"{copied}); do not use {target.shown} yet, and please report this")
            report.rows = copied
            return report
        finally:
            target.close()
    finally:
        sqlite.close()
