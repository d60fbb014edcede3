"""Check a history (database and files) and salvage a damaged one into a new file.

Both work on the raw SQLite file with the sqlite3 module, read-only, because a damaged database
cannot be opened (let alone migrated) through the ORM. Neither ever writes to the file it reads.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from studio.errors import HistoryError
from studio.history.db import Database
from studio.history.files import BlobStore, file_sha256, pixels_hash
from studio.history.schema import RUN_LINKS, TABLES, Base

# How far past the last readable row a salvage keeps probing single rows when a table's end is unreadable.
PROBE_SPAN = 10_000


@dataclass
class CheckReport:
    database: Path
    integrity: list[str]  # empty when SQLite's integrity_check says ok
    files_checked: int = 0
    damaged_files: list[tuple[str, str, list[int]]] = field(default_factory=list)  # path, problem, run ids
    missing_files: list[tuple[str, list[int]]] = field(default_factory=list)  # path, run ids
    orphan_files: list[str] = field(default_factory=list)

    @property
    def healthy(self) -> bool:
        return not (self.integrity or self.damaged_files or self.missing_files)

    def as_dict(self) -> dict:
        return {"database": str(self.database), "healthy": self.healthy, "integrity": self.integrity or ["ok"],
                "files_checked": self.files_checked,
                "damaged_files": [{"path": p, "problem": why, "runs": runs} for p, why, runs in self.damaged_files],
                "missing_files": [{"path": p, "runs": runs} for p, runs in self.missing_files],
                "orphan_files": self.orphan_files}


def _read_only(path: Path) -> sqlite3.Connection:
    if not path.is_file():
        raise HistoryError(f"there is no history database at {path}")
    return sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)


def check_history(database: Path, blobs: BlobStore) -> CheckReport:
    """SQLite's integrity check of the database, then every stored file against its hash."""
    report = CheckReport(database, [])
    references: dict[str, list[int]] = {}
    try:
        connection = _read_only(database)
    except sqlite3.Error as error:
        report.integrity = [f"the file cannot be opened as a database: {error}"]
        connection = None
    if connection is not None:
        try:
            problems = [row[0] for row in connection.execute("PRAGMA integrity_check")]
            report.integrity = [] if problems == ["ok"] else problems
            problems = [f"run_images row {row[1]} points at a missing {row[2]} row"
                        for row in connection.execute("PRAGMA foreign_key_check")]
            report.integrity += problems
            for run_id, sha in connection.execute("SELECT run_id, blob_sha256 FROM run_images"):
                references.setdefault(sha, []).append(run_id)
        except sqlite3.Error as error:
            report.integrity = report.integrity or [f"the database cannot be read: {error}"]
        finally:
            connection.close()
    on_disk = blobs.all_hashes()
    for sha in sorted(on_disk):
        report.files_checked += 1
        if file_sha256(blobs.path(sha)) != sha:
            report.damaged_files.append((str(blobs.path(sha)), "its content no longer matches its hash (truncated "
                                         "or changed)", sorted(set(references.get(sha, [])))))
        elif references and sha not in references:
            report.orphan_files.append(str(blobs.path(sha)))
    report.missing_files = [(str(blobs.path(sha)), sorted(set(runs))) for sha, runs in sorted(references.items())
                            if sha not in on_disk]
    return report


@dataclass
class SalvageReport:
    source: Path
    recovered: Path
    rows: dict[str, int] = field(default_factory=dict)  # table -> rows copied
    unreadable: dict[str, int] = field(default_factory=dict)  # table -> rows or pages that could not be read
    dropped: dict[str, int] = field(default_factory=dict)  # table -> rows left out (they point at lost rows)
    blobs_rebuilt: int = 0  # blob rows remade from the files on disk
    runs_interrupted: int = 0
    replaced: Path | None = None  # where the damaged file went when --replace put the new one in its place

    def as_dict(self) -> dict:
        return {"source": str(self.source), "recovered": str(self.recovered), "rows": self.rows,
                "unreadable": self.unreadable, "dropped": self.dropped, "blobs_rebuilt": self.blobs_rebuilt,
                "runs_interrupted": self.runs_interrupted, "replaced": str(self.replaced) if self.replaced else None}


def _salvage_rows(connection: sqlite3.Connection, table: str, columns: list[str]) -> tuple[list[tuple], int]:
    """Every row of a table that can still be read, scanning in rowid order and stepping over damage."""
    select = f"SELECT rowid, {', '.join(columns)} FROM {table}"
    rows: dict[int, tuple] = {}
    errors, start = 0, 1
    try:
        high = connection.execute(f"SELECT max(rowid) FROM {table}").fetchone()[0]
    except sqlite3.Error:
        high = None
    while True:
        try:
            for row in connection.execute(f"{select} WHERE rowid >= ? ORDER BY rowid", (start,)):
                rows[row[0]] = row[1:]
                start = row[0] + 1
            break
        except sqlite3.Error:
            errors += 1
        # past the damaged spot: probe row by row until a scan can resume
        limit = (high if high is not None else start + PROBE_SPAN)
        while start <= limit:
            try:
                row = connection.execute(f"{select} WHERE rowid = ?", (start,)).fetchone()
            except sqlite3.Error:
                row = None
                errors += 1
            start += 1
            if row is not None:
                rows[row[0]] = row[1:]
                break
        else:
            break
    return [rows[key] for key in sorted(rows)], errors


def _columns(connection: sqlite3.Connection, table: str) -> list[str]:
    """The table's columns as the damaged file has them, else as the current schema defines them."""
    known = [column.name for column in Base.metadata.tables[table].columns]
    try:
        found = [row[1] for row in connection.execute(f"PRAGMA table_info({table})")]
    except sqlite3.Error:
        return known
    return [name for name in found if name in known] or known


def _json_columns(table: str, columns: list[str]) -> list[int]:
    """Positions of the JSON columns: their text must parse, or reading the run fails later."""
    from sqlalchemy import JSON

    kinds = {column.name: column.type for column in Base.metadata.tables[table].columns}
    return [i for i, name in enumerate(columns) if isinstance(kinds.get(name), JSON)]


def _json_whole(row: tuple, positions: list[int]) -> bool:
    for i in positions:
        value = row[i]
        if isinstance(value, (str, bytes)):
            try:
                json.loads(value)
            except ValueError:
                return False
    return True


def _blob_row(blobs: BlobStore, sha: str) -> tuple | None:
    """A blobs row remade from the file itself (content-addressed, so the file says everything)."""
    path = blobs.path(sha)
    if file_sha256(path) != sha:
        return None
    try:
        image = blobs.open(sha)
    except HistoryError:
        return None
    # written the way SQLAlchemy stores a DateTime in SQLite
    created = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f")
    return sha, pixels_hash(image), path.stat().st_size, image.width, image.height, created


def recover_history(source: Path, blobs: BlobStore, dest: Path | None = None, replace: bool = False) -> SalvageReport:
    """Copy every readable row of a damaged history into a new database file (the source is only read)."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    dest = dest or source.with_name(f"{source.stem}.recovered-{stamp}{source.suffix}")
    if dest.exists():
        raise HistoryError(f"{dest} already exists; choose another --out")
    report = SalvageReport(source, dest)
    try:
        connection = _read_only(source)
        connection.execute("SELECT 1").fetchone()
    except sqlite3.Error as error:
        raise HistoryError(f"{source} cannot be opened at all ({error}); nothing can be salvaged from it: start a "
                           "new history with --data-dir, or restore a backup") from error
    salvaged: dict[str, tuple[list[str], list[tuple]]] = {}
    try:
        for table in TABLES:
            columns = _columns(connection, table)
            rows, errors = _salvage_rows(connection, table, columns)
            salvaged[table] = (columns, rows)
            report.unreadable[table] = errors
    finally:
        connection.close()
    target = Database(dest)
    try:
        with target.engine.begin() as db:
            raw = db.connection.driver_connection
            blob_columns, blob_rows = salvaged["blobs"]
            present = set()
            for table in TABLES:
                columns, rows = salvaged[table]
                if table == "run_images":  # rows whose blob is neither recorded nor on disk point at nothing
                    sha_index = columns.index("blob_sha256")
                    for sha in {row[sha_index] for row in rows} - present:
                        if blobs.path(sha).is_file() and (rebuilt := _blob_row(blobs, sha)):
                            raw.execute("INSERT INTO blobs (sha256, pixels_sha256, size_bytes, width, height, "
                                        "created_at) VALUES (?, ?, ?, ?, ?, ?)", rebuilt)
                            present.add(sha)
                            report.blobs_rebuilt += 1
                if table == "runs":  # a parent or original that was lost becomes "no parent", not a lost child
                    ids = {row[columns.index("id")] for row in rows}
                    links = [columns.index(name) for name in RUN_LINKS if name in columns]
                    rows = [tuple(None if i in links and value not in ids else value for i, value in enumerate(row))
                            for row in rows]
                copied = dropped = 0
                insert = f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})"
                json_at = _json_columns(table, columns)
                for row in rows:
                    if not _json_whole(row, json_at):  # a damaged page can leave a cut-off text that reads
                        dropped += 1
                        continue
                    try:
                        raw.execute(insert, row)
                        copied += 1
                        if table == "blobs":
                            present.add(row[blob_columns.index("sha256")])
                    except sqlite3.Error:
                        dropped += 1
                report.rows[table], report.dropped[table] = copied, dropped
            report.runs_interrupted = raw.execute(
                "UPDATE runs SET status = 'interrupted', error = 'the studio stopped while this run was in "
                "progress (found when the history was recovered)' WHERE status = 'running'").rowcount
    finally:
        target.close()
    if replace:
        report.replaced = source.with_name(f"{source.name}.damaged-{stamp}")
        for suffix in ("", "-wal", "-shm"):
            part = Path(f"{source}{suffix}")
            if part.exists():
                shutil.move(part, f"{report.replaced}{suffix}")
        shutil.move(dest, source)
        report.recovered = source
    return report
