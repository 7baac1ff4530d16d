"""Exceptions of the trajectory store: one small hierarchy, each with a message a person can act on.

Model failures are data and never show up here; these are program or environment errors (a missing
run, a file that is not a store, a schema from a newer DistillGym, a write to a read-only store).
"""

from __future__ import annotations

__all__ = [
    "StoreError",
    "RunNotFound",
    "RunExistsError",
    "EpisodeNotFound",
    "SchemaTooNew",
    "SchemaOutdated",
    "CorruptDatabase",
    "StoreBusy",
    "ReadOnlyStore",
    "WriterError",
    "CodecError",
    "LedgerError",
]


class StoreError(Exception):
    """Base class of every error raised by the ``data`` package."""


class RunNotFound(StoreError):
    """No run with that name (or id) exists in the store."""


class RunExistsError(StoreError):
    """``create_run`` was asked for a name that already exists without ``resume=True``."""


class EpisodeNotFound(StoreError):
    """No episode with that index or id exists in the run."""


class SchemaTooNew(StoreError):
    """The database was written by a newer DistillGym (its Alembic revision is unknown here)."""


class SchemaOutdated(StoreError):
    """The database needs a migration but the store was opened read-only."""


class CorruptDatabase(StoreError):
    """The file is not an SQLite database, is damaged, or is not a DistillGym store."""


class StoreBusy(StoreError):
    """Another process held the database's lock for longer than the busy timeout (not damage)."""


class ReadOnlyStore(StoreError):
    """A write was attempted on a store opened read-only."""


class WriterError(StoreError):
    """The background writer failed; raised on the next call, flush or close."""


class CodecError(StoreError):
    """A binary token array is malformed (unknown dtype tag or truncated payload)."""


class LedgerError(StoreError):
    """An illegal rollout-ledger operation: a status skipped or repeated, or a step re-planned
    with other tasks than it was planned with."""
