"""Where a run came from: "ui", "cli" or "api" (the A1111-compatible HTTP API).

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.add_column(sa.Column("source", sa.String(16)))


def downgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("source")
