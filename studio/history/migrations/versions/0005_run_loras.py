"""The LoRAs a run used: name, weight and A1111's short hash of each file (a re-run checks them).

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.add_column(sa.Column("loras", sa.JSON()))


def downgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("loras")
