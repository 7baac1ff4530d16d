"""Alembic environment of the trajectory store, run programmatically by :mod:`data.migrate`.

The caller passes an open SQLAlchemy ``Connection`` (already inside the transaction that holds the
migration lock) as ``config.attributes["connection"]``; no ``alembic.ini`` is needed.
"""

from __future__ import annotations

from alembic import context

from data.models import Base

config = context.config
connection = config.attributes.get("connection")
if connection is None:  # pragma: no cover - only reached when alembic is run by hand
    raise RuntimeError("run migrations through data.migrate.upgrade(), which passes a connection")

context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    render_as_batch=connection.dialect.name == "sqlite",
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
