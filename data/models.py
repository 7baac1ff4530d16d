"""SQLAlchemy 2.x ORM models of the trajectory store (the schema; Alembic migrations create it).

Tables: ``runs`` -> ``training_steps``, ``episodes`` -> ``turns``, ``skills``, ``checkpoints``,
``rollout_ledger`` (one row per (run, step, task index): the exactly-once accounting of rollouts).
Token arrays are ``LargeBinary`` blobs written by :mod:`data.codec` (a dtype tag + raw bytes).
These classes stay inside the ``data`` package: :mod:`data.store` converts rows to the records of
``agents/types.py`` and ``data/types.py`` at its edge.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

__all__ = [
    "Base",
    "RunRow",
    "StepRow",
    "EpisodeRow",
    "TurnRow",
    "SkillRow",
    "CheckpointRow",
    "LedgerRow",
]


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, datetime: DateTime(timezone=True)}


class RunRow(Base):
    __tablename__ = "runs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    method: Mapped[str] = mapped_column(String(64))
    config: Mapped[dict[str, Any]] = mapped_column(JSON)
    seed: Mapped[int] = mapped_column(BigInteger)
    code_version: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class StepRow(Base):
    __tablename__ = "training_steps"
    __table_args__ = (UniqueConstraint("run_id", "step", name="uq_training_steps_run_step"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    step: Mapped[int] = mapped_column(Integer)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON)
    policy_version: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class EpisodeRow(Base):
    __tablename__ = "episodes"
    __table_args__ = (
        UniqueConstraint("run_id", "uid", name="uq_episodes_run_uid"),
        Index("ix_episodes_run_step", "run_id", "step"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    uid: Mapped[str] = mapped_column(String(64))  # Episode.episode_id
    step: Mapped[int] = mapped_column(Integer)
    env_id: Mapped[str] = mapped_column(String(200))
    task_id: Mapped[str] = mapped_column(String(200))
    task_type: Mapped[str] = mapped_column(String(100))
    group_id: Mapped[str] = mapped_column(String(200))
    seed: Mapped[int] = mapped_column(BigInteger)
    reward: Mapped[float] = mapped_column(Float)
    won: Mapped[bool] = mapped_column(Boolean)
    num_turns: Mapped[int] = mapped_column(Integer)
    end_reason: Mapped[str] = mapped_column(String(32))
    privileged: Mapped[str | None] = mapped_column(String(32), nullable=True)
    policy_version: Mapped[int] = mapped_column(Integer)
    initial_observation: Mapped[str] = mapped_column(Text)
    info: Mapped[dict[str, Any]] = mapped_column(JSON)


class TurnRow(Base):
    __tablename__ = "turns"
    __table_args__ = (UniqueConstraint("episode_id", "index", name="uq_turns_episode_index"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    episode_id: Mapped[int] = mapped_column(ForeignKey("episodes.id", ondelete="CASCADE"))
    index: Mapped[int] = mapped_column(Integer)
    # prompt_ids = previous turn's (prompt + completion)[:prompt_prefix_len] ++ decode(prompt_suffix)
    prompt_prefix_len: Mapped[int] = mapped_column(Integer)
    prompt_suffix: Mapped[bytes] = mapped_column(LargeBinary)
    completion_ids: Mapped[bytes] = mapped_column(LargeBinary)
    sampler_logprobs: Mapped[bytes] = mapped_column(LargeBinary)
    teacher_logprobs: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    loss_mask: Mapped[bytes] = mapped_column(LargeBinary)
    token_weights: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    action_text: Mapped[str] = mapped_column(Text)
    action: Mapped[str] = mapped_column(Text)
    action_valid: Mapped[bool] = mapped_column(Boolean)
    observation: Mapped[str] = mapped_column(Text)
    reward: Mapped[float] = mapped_column(Float)
    terminated: Mapped[bool] = mapped_column(Boolean)
    truncated: Mapped[bool] = mapped_column(Boolean)
    finish_reason: Mapped[str] = mapped_column(String(32))
    policy_version: Mapped[int] = mapped_column(Integer)
    info: Mapped[dict[str, Any]] = mapped_column(JSON)


class SkillRow(Base):
    __tablename__ = "skills"
    __table_args__ = (Index("ix_skills_run_task", "run_id", "task_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    task_id: Mapped[str] = mapped_column(String(200))
    skill: Mapped[dict[str, Any]] = mapped_column(JSON)
    usage_count: Mapped[int] = mapped_column(Integer, default=0)
    reward_sum: Mapped[float] = mapped_column(Float, default=0.0)
    created_step: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class CheckpointRow(Base):
    __tablename__ = "checkpoints"
    __table_args__ = (Index("ix_checkpoints_run_step", "run_id", "step"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    step: Mapped[int] = mapped_column(Integer)
    paths: Mapped[dict[str, Any]] = mapped_column(JSON)
    rng_state: Mapped[bytes] = mapped_column(LargeBinary)
    data_cursor: Mapped[dict[str, Any]] = mapped_column(JSON)
    policy_version: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class LedgerRow(Base):
    """Where one task of one step stands: pending -> sampling -> scored -> trained."""

    __tablename__ = "rollout_ledger"
    __table_args__ = (
        UniqueConstraint("run_id", "step", "task_index", name="uq_rollout_ledger_run_step_task"),
        Index("ix_rollout_ledger_run_status", "run_id", "status"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    step: Mapped[int] = mapped_column(Integer)
    task_index: Mapped[int] = mapped_column(Integer)
    task_id: Mapped[str] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(16))
    policy_version: Mapped[int | None] = mapped_column(Integer, nullable=True)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
