"""Initial history schema: blobs, runs, run_images.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

# 64-bit on PostgreSQL (seeds reach 2**32 - 1, ids SQLite's 2**63 - 1), INTEGER on SQLite. Added with
# PostgreSQL support, before any PostgreSQL history existed: SQLite files get exactly the DDL they
# always got (an INTEGER PRIMARY KEY is SQLite's autoincrementing rowid), so no new revision is needed.
INT64 = sa.Integer().with_variant(sa.BigInteger(), "postgresql")

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "blobs",
        sa.Column("sha256", sa.String(64), primary_key=True),
        sa.Column("pixels_sha256", sa.String(64), nullable=False, index=True),
        sa.Column("size_bytes", INT64, nullable=False),
        sa.Column("width", sa.Integer, nullable=False),
        sa.Column("height", sa.Integer, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "runs",
        sa.Column("id", INT64, primary_key=True, autoincrement=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, index=True),
        sa.Column("finished_at", sa.DateTime(timezone=True)),
        sa.Column("status", sa.String(16), nullable=False, index=True),
        sa.Column("mode", sa.String(32), nullable=False, index=True),
        sa.Column("model_name", sa.String(255), nullable=False, index=True),
        sa.Column("model_hash", sa.String(64), nullable=False),
        sa.Column("vae", sa.String(255)),
        sa.Column("sampler", sa.String(64), nullable=False),
        sa.Column("karras", sa.Boolean, nullable=False),
        sa.Column("scheduler", sa.JSON, nullable=False),
        sa.Column("prompt", sa.Text, nullable=False),
        sa.Column("negative_prompt", sa.Text, nullable=False),
        sa.Column("seed", INT64, nullable=False),
        sa.Column("seeds", sa.JSON, nullable=False),
        sa.Column("steps", sa.Integer, nullable=False),
        sa.Column("cfg_scale", sa.Float, nullable=False),
        sa.Column("width", sa.Integer, nullable=False),
        sa.Column("height", sa.Integer, nullable=False),
        sa.Column("batch_size", sa.Integer, nullable=False),
        sa.Column("batch_count", sa.Integer, nullable=False),
        sa.Column("params", sa.JSON, nullable=False),
        sa.Column("error", sa.Text),
        sa.Column("duration_s", sa.Float),
        sa.Column("timings", sa.JSON),
        sa.Column("device", sa.String(64), nullable=False),
        sa.Column("dtype", sa.String(16), nullable=False),
        sa.Column("versions", sa.JSON, nullable=False),
        sa.Column("parent_id", INT64, sa.ForeignKey("runs.id", ondelete="SET NULL"), index=True),
        sa.Column("rerun_of", INT64, sa.ForeignKey("runs.id", ondelete="SET NULL")),
        sa.Column("starred", sa.Boolean, nullable=False, index=True),
        sa.CheckConstraint("status IN ('running', 'done', 'failed', 'interrupted')", name="ck_runs_status"),
    )
    op.create_table(
        "run_images",
        sa.Column("id", INT64, primary_key=True, autoincrement=True),
        sa.Column("run_id", INT64, sa.ForeignKey("runs.id", ondelete="CASCADE"), nullable=False, index=True),
        sa.Column("role", sa.String(8), nullable=False),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("position", sa.Integer, nullable=False),
        sa.Column("blob_sha256", sa.String(64), sa.ForeignKey("blobs.sha256", ondelete="RESTRICT"),
                  nullable=False, index=True),
        sa.Column("seed", INT64),
        sa.CheckConstraint("role IN ('input', 'output')", name="ck_run_images_role"),
    )


def downgrade() -> None:
    op.drop_table("run_images")
    op.drop_table("runs")
    op.drop_table("blobs")
