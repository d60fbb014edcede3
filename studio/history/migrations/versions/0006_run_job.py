"""Farm mode: the queue's job key of a run (one row per job, however often the broker delivers it) and the
worker that ran it.

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.add_column(sa.Column("job_key", sa.String(64)))
        batch.add_column(sa.Column("worker", sa.String(255)))
        batch.create_index("ix_runs_job_key", ["job_key"], unique=True)


def downgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.drop_index("ix_runs_job_key")
        batch.drop_column("worker")
        batch.drop_column("job_key")
