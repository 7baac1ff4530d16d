"""DistillGym data: the trajectory store, replay and inspection.

Every rollout of every run is recorded (:class:`Store`), can be read back as records or padded
tensors, replayed in its env (:mod:`data.replay`), exported (:mod:`data.export`), rendered as an
HTML report (:mod:`data.report`) and inspected from the terminal (``python -m data``).
Importing this package does not import torch, rich, matplotlib or pyarrow.
"""

from data.errors import (
    CodecError,
    CorruptDatabase,
    EpisodeNotFound,
    ReadOnlyStore,
    RunExistsError,
    RunNotFound,
    SchemaOutdated,
    SchemaTooNew,
    StoreBusy,
    StoreError,
    WriterError,
)
from data.store import DEFAULT_DB, Store, default_db
from data.types import CheckpointRecord, RunRecord, RunStatus, RunSummary, SkillRecord

__all__ = [
    "DEFAULT_DB",
    "CheckpointRecord",
    "CodecError",
    "CorruptDatabase",
    "EpisodeNotFound",
    "ReadOnlyStore",
    "RunExistsError",
    "RunNotFound",
    "RunRecord",
    "RunStatus",
    "RunSummary",
    "SchemaOutdated",
    "SchemaTooNew",
    "SkillRecord",
    "Store",
    "StoreBusy",
    "StoreError",
    "WriterError",
    "default_db",
]
