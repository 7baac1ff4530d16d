"""Run the Alembic migrations of the store programmatically (no ``alembic.ini`` at the repo root).

The scripts live in ``data/migrations``; :func:`upgrade` brings a connection's database to head
and :func:`check_revision` refuses a database from a newer DistillGym.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection

from data.errors import SchemaTooNew

__all__ = [
    "MIGRATIONS_DIR",
    "alembic_config",
    "head_revision",
    "current_revision",
    "upgrade",
    "check_revision",
]

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"


def alembic_config(connection: Connection | None = None) -> Config:
    """An in-memory Alembic config pointing at ``data/migrations`` (and at ``connection``)."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


@lru_cache(maxsize=1)
def _script() -> ScriptDirectory:
    return ScriptDirectory.from_config(alembic_config())


def head_revision() -> str:
    """The newest revision this code knows."""
    head = _script().get_current_head()
    assert head is not None, "data/migrations has no revisions"
    return head


def known_revisions() -> set[str]:
    return {rev.revision for rev in _script().walk_revisions()}


def current_revision(connection: Connection) -> str | None:
    """The revision stamped in the database (``None`` for a database without ``alembic_version``)."""
    return MigrationContext.configure(connection).get_current_revision()


def check_revision(revision: str | None) -> None:
    """Raise :class:`SchemaTooNew` when ``revision`` is not one of ours."""
    if revision is not None and revision not in known_revisions():
        raise SchemaTooNew(
            f"database schema revision {revision!r} is newer than this DistillGym knows "
            f"(head {head_revision()!r}); upgrade DistillGym to read it"
        )


def upgrade(connection: Connection, revision: str = "head") -> None:
    """Migrate the database of ``connection`` (inside its current transaction) to ``revision``."""
    command.upgrade(alembic_config(connection), revision)
