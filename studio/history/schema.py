"""ORM tables of the history database. Imports SQLAlchemy only (migrations rely on that)."""

from __future__ import annotations

from datetime import datetime, timezone

from sqlalchemy import JSON, BigInteger, Boolean, CheckConstraint, DateTime, Float, ForeignKey, Integer, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

RUN_STATUSES = ("running", "done", "failed", "interrupted")
MAX_RUN_ID = 2**63 - 1  # SQLite's largest integer: a larger id names no run (and cannot even be bound)
# every table, parents before children (foreign keys point backwards): the order rows are copied in
TABLES = ("blobs", "runs", "run_images")
# a run's links to other runs (set to NULL when the run they name is deleted)
RUN_LINKS = ("parent_id", "rerun_of")

# Seeds go to 2**32 - 1 and ids to MAX_RUN_ID: SQLite's INTEGER holds 64 bits, PostgreSQL's only 32,
# so there these columns are BIGINT (ids BIGSERIAL). SQLite keeps INTEGER: only an INTEGER PRIMARY KEY
# is the rowid that autoincrements, and its schema stays what migration 0001 made.
Int64 = Integer().with_variant(BigInteger(), "postgresql")


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class Base(DeclarativeBase):
    pass


class Blob(Base):
    """One stored image file, addressed by the sha256 of its bytes."""

    __tablename__ = "blobs"

    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    # Hash of the decoded pixels: lets a later run find the run whose output it starts from,
    # even though output files carry parameters that the re-encoded input does not.
    pixels_sha256: Mapped[str] = mapped_column(String(64), index=True)
    size_bytes: Mapped[int] = mapped_column(Int64)
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Run(Base):
    """One press of Generate (or a CLI call): every input it used and what came out."""

    __tablename__ = "runs"
    __table_args__ = (CheckConstraint(f"status IN {RUN_STATUSES}", name="ck_runs_status"),)

    id: Mapped[int] = mapped_column(Int64, primary_key=True, autoincrement=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, index=True)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    status: Mapped[str] = mapped_column(String(16), default="running", index=True)
    mode: Mapped[str] = mapped_column(String(32), index=True)
    model_name: Mapped[str] = mapped_column(String(255), index=True)
    model_hash: Mapped[str] = mapped_column(String(64))
    vae: Mapped[str | None] = mapped_column(String(255))
    sampler: Mapped[str] = mapped_column(String(64))
    karras: Mapped[bool] = mapped_column(Boolean)
    scheduler: Mapped[dict] = mapped_column(JSON)
    prompt: Mapped[str] = mapped_column(Text)
    negative_prompt: Mapped[str] = mapped_column(Text)
    seed: Mapped[int] = mapped_column(Int64)
    seeds: Mapped[list] = mapped_column(JSON)
    steps: Mapped[int] = mapped_column(Integer)
    cfg_scale: Mapped[float] = mapped_column(Float)
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    batch_size: Mapped[int] = mapped_column(Integer)
    batch_count: Mapped[int] = mapped_column(Integer)
    params: Mapped[dict] = mapped_column(JSON)
    error: Mapped[str | None] = mapped_column(Text)
    duration_s: Mapped[float | None] = mapped_column(Float)
    timings: Mapped[dict | None] = mapped_column(JSON)
    device: Mapped[str] = mapped_column(String(64))
    dtype: Mapped[str] = mapped_column(String(16))
    versions: Mapped[dict] = mapped_column(JSON)
    parent_id: Mapped[int | None] = mapped_column(Int64, ForeignKey("runs.id", ondelete="SET NULL"), index=True)
    rerun_of: Mapped[int | None] = mapped_column(Int64, ForeignKey("runs.id", ondelete="SET NULL"))
    starred: Mapped[bool] = mapped_column(Boolean, default=False, index=True)
    # the process that runs it (host:pid:start) and when it last said it was alive (migration 0002)
    owner: Mapped[str | None] = mapped_column(String(255))
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    source: Mapped[str | None] = mapped_column(String(16))  # "ui" | "cli" | "api" (migration 0003)
    # when the job was queued; created_at is when it started on the device (migration 0004)
    queued_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # the LoRAs it used: [{name, weight, hash}] (migration 0005)
    loras: Mapped[list | None] = mapped_column(JSON)
    # farm mode (migration 0006): the queue's key of the job (unique: a redelivered job finds its row)
    # and the Celery worker that ran it
    job_key: Mapped[str | None] = mapped_column(String(64), unique=True, index=True)
    worker: Mapped[str | None] = mapped_column(String(255))

    images: Mapped[list[RunImage]] = relationship(
        back_populates="run", cascade="all, delete-orphan", passive_deletes=True,
        order_by="(RunImage.role, RunImage.position)",
    )


class RunImage(Base):
    """An input or output image of a run, pointing at its blob."""

    __tablename__ = "run_images"
    __table_args__ = (CheckConstraint("role IN ('input', 'output')", name="ck_run_images_role"),)

    id: Mapped[int] = mapped_column(Int64, primary_key=True, autoincrement=True)
    run_id: Mapped[int] = mapped_column(Int64, ForeignKey("runs.id", ondelete="CASCADE"), index=True)
    role: Mapped[str] = mapped_column(String(8))
    name: Mapped[str] = mapped_column(String(64))
    position: Mapped[int] = mapped_column(Integer, default=0)
    blob_sha256: Mapped[str] = mapped_column(ForeignKey("blobs.sha256", ondelete="RESTRICT"), index=True)
    seed: Mapped[int | None] = mapped_column(Int64)

    run: Mapped[Run] = relationship(back_populates="images")
