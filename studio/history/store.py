"""HistoryStore: runs (rows) together with their image files; the only writer of the history."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from PIL import Image
from sqlalchemy import delete, func, or_, select, update

from studio.errors import HistoryError, NotFound
from studio.history.db import Database
from studio.history.files import BlobStore, StoredBlob, pixels_hash
from studio.history.owner import HEARTBEAT_S, owner_is_gone, this_process
from studio.history.schema import MAX_RUN_ID, Blob, Run, RunImage, utcnow

_RUN_COLUMNS = [c.key for c in Run.__table__.columns]


def _as_naive_utc(value):
    """A datetime as SQLite gives it back (naive, in UTC): PostgreSQL returns it aware, and a record must
    read the same from either backend (callers compare and print them)."""
    if isinstance(value, datetime) and value.tzinfo is not None:
        return value.astimezone(timezone.utc).replace(tzinfo=None)
    return value


def _run_or_none(session, run_id) -> Run | None:
    if isinstance(run_id, bool) or not isinstance(run_id, int) or not 1 <= run_id <= MAX_RUN_ID:
        return None
    return session.get(Run, run_id)


@dataclass(frozen=True)
class ImageRef:
    name: str
    position: int
    sha256: str
    path: Path
    seed: int | None = None


@dataclass(frozen=True)
class RunRecord:
    """A history row as plain data (no ORM object leaves the store)."""

    id: int
    created_at: datetime
    finished_at: datetime | None
    status: str
    mode: str
    model_name: str
    model_hash: str
    vae: str | None
    sampler: str
    karras: bool
    scheduler: dict
    prompt: str
    negative_prompt: str
    seed: int
    seeds: list
    steps: int
    cfg_scale: float
    width: int
    height: int
    batch_size: int
    batch_count: int
    params: dict
    error: str | None
    duration_s: float | None
    timings: dict | None
    device: str
    dtype: str
    versions: dict
    parent_id: int | None
    rerun_of: int | None
    starred: bool
    owner: str | None
    heartbeat_at: datetime | None
    source: str | None
    queued_at: datetime | None
    loras: list | None
    job_key: str | None = None
    worker: str | None = None
    inputs: tuple[ImageRef, ...] = field(default=())
    outputs: tuple[ImageRef, ...] = field(default=())

    @property
    def short_hash(self) -> str:
        return self.model_hash[:10]


@dataclass(frozen=True)
class DamagedFile:
    """A run's stored image that is no longer what was written."""

    run_id: int
    role: str  # "input" | "output"
    name: str
    position: int
    path: Path
    problem: str

    def describe(self) -> str:
        which = f"output {self.position + 1}" if self.role == "output" else f"input '{self.name}'"
        return f"run #{self.run_id}: {which} ({self.path}) is damaged: {self.problem}"


@dataclass(frozen=True)
class RecoveryReport:
    """What start-up found: runs a crash left running, files without rows, rows without files, damaged files."""

    interrupted_runs: list[int]
    orphan_blobs: list[str]
    missing_blobs: list[tuple[int, str]]
    stray_temp_files: list[Path]
    damaged_files: list[DamagedFile] = field(default_factory=list)


def _deleted_while_running(run_id: int) -> NotFound:
    return NotFound(f"run {run_id} was deleted while it was running; its images were not kept", field="run")


class HistoryStore:
    def __init__(self, db: Database, blobs: BlobStore):
        self.db = db
        self.blobs = blobs

    # -- writing ---------------------------------------------------------------------------

    def _add_blob(self, session, stored: StoredBlob) -> None:
        if session.get(Blob, stored.sha256) is None:
            session.add(Blob(sha256=stored.sha256, pixels_sha256=stored.pixels_sha256,
                             size_bytes=stored.size_bytes, width=stored.width, height=stored.height))
            session.flush()

    def start(self, fields: dict, inputs: dict[str, Image.Image]) -> int:
        """Store the input images, then insert the row as `running` with its inputs, in one transaction."""
        stored = {name: self.blobs.put_image(image) for name, image in inputs.items()}
        with self.db.transaction() as session:
            run = Run(status="running", owner=this_process(), heartbeat_at=utcnow(), **fields)
            session.add(run)
            session.flush()
            for position, (name, blob) in enumerate(stored.items()):
                self._add_blob(session, blob)
                session.add(RunImage(run_id=run.id, role="input", name=name, position=position,
                                     blob_sha256=blob.sha256))
            return run.id

    def finish(self, run_id: int, outputs: list[tuple[Image.Image, int, str, dict]], *,
               status: str = "done", duration_s: float | None = None, timings: dict | None = None,
               error: str | None = None) -> list[ImageRef]:
        """Write output files first, then mark the row done (or interrupted) with them in one transaction.

        outputs: (image, seed, A1111 parameters text, request JSON) per image.
        """
        with self.db.transaction() as session:
            if _run_or_none(session, run_id) is None:
                raise _deleted_while_running(run_id)
        stored = [(self.blobs.put_image(image, text, request_json), seed)
                  for image, seed, text, request_json in outputs]
        try:
            self._record_outputs(run_id, stored, status, duration_s, timings, error)
        except NotFound:
            # deleted between the check and now: the files just written belong to no row
            self._remove_unreferenced([blob.sha256 for blob, _ in stored])
            raise
        return [ImageRef("output", i, b.sha256, b.path, seed) for i, (b, seed) in enumerate(stored)]

    def _record_outputs(self, run_id: int, stored: list, status: str, duration_s, timings, error) -> None:
        with self.db.transaction() as session:
            run = _run_or_none(session, run_id)
            if run is None:
                raise _deleted_while_running(run_id)
            for position, (blob, seed) in enumerate(stored):
                self._add_blob(session, blob)
                session.add(RunImage(run_id=run_id, role="output", name="output", position=position,
                                     blob_sha256=blob.sha256, seed=seed))
            run.status, run.finished_at = status, utcnow()
            run.duration_s, run.timings, run.error = duration_s, timings, error

    def _remove_unreferenced(self, hashes: list[str]) -> None:
        with self.db.transaction() as session:
            used = set(session.scalars(select(RunImage.blob_sha256).where(RunImage.blob_sha256.in_(hashes))))
        for sha in set(hashes) - used:
            self.blobs.delete(sha)

    def beat(self, run_id: int) -> None:
        """Say the process running this run is still alive (other processes read it at their start-up)."""
        with self.db.transaction() as session:
            session.execute(update(Run).where(Run.id == run_id, Run.status == "running").values(heartbeat_at=utcnow()))

    @contextmanager
    def heartbeat(self, run_id: int, every: float = HEARTBEAT_S) -> Iterator[None]:
        """Beat for this run in the background while the block runs."""
        stop = threading.Event()

        def beat_until_stopped() -> None:
            while not stop.wait(every):
                try:
                    self.beat(run_id)
                except Exception:  # a busy or locked database: the next beat tries again
                    continue

        thread = threading.Thread(target=beat_until_stopped, daemon=True, name=f"studio-heartbeat-{run_id}")
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join(timeout=5)

    def fail(self, run_id: int, message: str, duration_s: float | None = None) -> None:
        with self.db.transaction() as session:
            session.execute(update(Run).where(Run.id == run_id).values(
                status="failed", error=message, finished_at=utcnow(), duration_s=duration_s))

    def star(self, run_id: int, starred: bool = True) -> None:
        with self.db.transaction() as session:
            run = _run_or_none(session, run_id)
            if run is None:
                raise NotFound(f"run {run_id} does not exist", field="run")
            run.starred = starred

    def delete(self, run_id: int) -> list[str]:
        """Remove the row and the files that no other run uses; returns the deleted blob hashes."""
        with self.db.transaction() as session:
            run = _run_or_none(session, run_id)
            if run is None:
                raise NotFound(f"run {run_id} does not exist", field="run")
            hashes = {image.blob_sha256 for image in run.images}
            session.delete(run)
            session.flush()
            still_used = set(session.scalars(select(RunImage.blob_sha256).where(RunImage.blob_sha256.in_(hashes))))
            unused = sorted(hashes - still_used)
            session.execute(delete(Blob).where(Blob.sha256.in_(unused)))
        # Files go only after the rows are gone, so a crash here leaves orphan files (reported
        # at start-up), never rows pointing at missing files.
        for sha in unused:
            self.blobs.delete(sha)
        return unused

    def recover(self) -> RecoveryReport:
        """At start-up: mark runs whose process is gone as interrupted and report file/row mismatches.

        A run another live process is working on (the server, while a CLI job starts) is left alone.
        """
        with self.db.transaction() as session:
            rows = session.execute(select(Run.id, Run.owner, Run.heartbeat_at).where(Run.status == "running")).all()
            running = [run_id for run_id, owner, beat in rows if owner_is_gone(owner, beat)]
            if running:
                session.execute(update(Run).where(Run.id.in_(running), Run.status == "running").values(
                    status="interrupted", finished_at=utcnow(),
                    error="the studio stopped while this run was in progress"))
            sizes = dict(session.execute(select(Blob.sha256, Blob.size_bytes)).all())
            references = session.execute(select(RunImage.run_id, RunImage.role, RunImage.name, RunImage.position,
                                                RunImage.blob_sha256)).all()
        on_disk = self.blobs.all_hashes()
        missing = sorted({(ref.run_id, ref.blob_sha256) for ref in references if ref.blob_sha256 not in on_disk})
        # sizes only: a stat per file keeps start-up fast; `studio history check` re-hashes every file
        damaged = []
        for ref in references:
            if ref.blob_sha256 in on_disk:
                problem = self.blobs.problem(ref.blob_sha256, sizes.get(ref.blob_sha256), full=False)
                if problem:
                    damaged.append(DamagedFile(ref.run_id, ref.role, ref.name, ref.position,
                                               self.blobs.path(ref.blob_sha256), problem))
        return RecoveryReport(running, sorted(on_disk - set(sizes)), missing, self.blobs.stray_temp_files(), damaged)

    # -- reading ---------------------------------------------------------------------------

    def _record(self, run: Run) -> RunRecord:
        values = {name: _as_naive_utc(getattr(run, name)) for name in _RUN_COLUMNS}
        refs = {"input": [], "output": []}
        for image in sorted(run.images, key=lambda i: (i.role, i.position)):
            refs[image.role].append(ImageRef(image.name, image.position, image.blob_sha256,
                                             self.blobs.path(image.blob_sha256), image.seed))
        return RunRecord(**values, inputs=tuple(refs["input"]), outputs=tuple(refs["output"]))

    def get(self, run_id: int) -> RunRecord:
        with self.db.transaction() as session:
            run = _run_or_none(session, run_id)
            if run is None:
                raise NotFound(f"run {run_id} does not exist", field="run")
            return self._record(run)

    def job_run(self, job_key: str) -> RunRecord | None:
        """The run a farm job recorded, if any (one row per job key)."""
        with self.db.transaction() as session:
            run = session.scalars(select(Run).where(Run.job_key == job_key)).first()
            return self._record(run) if run is not None else None

    def search(self, text: str | None = None, *, mode: str | None = None, model: str | None = None,
               starred: bool | None = None, status: str | None = None, limit: int = 50,
               offset: int = 0) -> list[RunRecord]:
        """Newest first; text matches prompt or negative prompt, case-insensitively."""
        query = select(Run).order_by(Run.created_at.desc(), Run.id.desc())
        if text:
            pattern = f"%{text.lower()}%"
            query = query.where(or_(func.lower(Run.prompt).like(pattern), func.lower(Run.negative_prompt).like(pattern)))
        if mode:
            query = query.where(Run.mode == mode)
        if model:
            query = query.where(Run.model_name == model)
        if starred is not None:
            query = query.where(Run.starred == starred)
        if status:
            query = query.where(Run.status == status)
        with self.db.transaction() as session:
            return [self._record(run) for run in session.scalars(query.limit(limit).offset(offset))]

    def distinct_values(self, column: str) -> list[str]:
        with self.db.transaction() as session:
            return sorted(v for v in session.scalars(select(getattr(Run, column)).distinct()) if v)

    def count(self) -> int:
        with self.db.transaction() as session:
            return session.scalar(select(func.count(Run.id)))

    def load_image(self, ref: ImageRef) -> Image.Image:
        return self.blobs.open(ref.sha256)

    def load_inputs(self, record: RunRecord) -> dict[str, Image.Image]:
        """The run's input images, refusing (with the file named) any that is no longer what was stored."""
        for damage in self.damaged_files(record, roles=("input",)):
            raise HistoryError(f"{damage.describe()}; this run cannot be restored or re-run with it")
        return {ref.name: self.blobs.open(ref.sha256) for ref in record.inputs}

    def damaged_files(self, record: RunRecord, roles: tuple[str, ...] = ("input", "output")) -> list[DamagedFile]:
        """The run's stored images whose files are missing or no longer match their hash (re-hashed now)."""
        found = []
        for role, refs in (("input", record.inputs), ("output", record.outputs)):
            if role not in roles:
                continue
            for ref in refs:
                problem = self.blobs.problem(ref.sha256)
                if problem:
                    found.append(DamagedFile(record.id, role, ref.name, ref.position, ref.path, problem))
        return found

    def run_with_output(self, image: Image.Image) -> int | None:
        """The newest run whose output has exactly these pixels: the parent of an edit of it."""
        digest = pixels_hash(image)
        with self.db.transaction() as session:
            return session.scalar(
                select(RunImage.run_id).join(Blob, Blob.sha256 == RunImage.blob_sha256)
                .where(Blob.pixels_sha256 == digest, RunImage.role == "output")
                .order_by(RunImage.run_id.desc()).limit(1))

    def lineage(self, run_id: int) -> tuple[list[RunRecord], list[RunRecord]]:
        """(ancestors from the root down to this run, direct children) of a run."""
        chain: list[RunRecord] = []
        seen: set[int] = set()
        current: int | None = run_id
        while current is not None and current not in seen:
            seen.add(current)
            record = self.get(current)
            chain.append(record)
            current = record.parent_id
        with self.db.transaction() as session:
            children = [self._record(r) for r in session.scalars(
                select(Run).where(Run.parent_id == run_id).order_by(Run.id))]
        return list(reversed(chain)), children
