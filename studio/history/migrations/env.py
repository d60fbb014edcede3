"""Alembic environment: runs migrations on the engine the studio passes in (no ML imports)."""

from alembic import context

from studio.history.schema import Base

config = context.config
engine = config.attributes["engine"]

with engine.begin() as connection:
    context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
    context.run_migrations()
