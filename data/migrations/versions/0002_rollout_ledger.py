"""Rollout ledger: one row per (run, step, task index) with its status and sampling version.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-03 03:35:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "rollout_ledger",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("step", sa.Integer(), nullable=False),
        sa.Column("task_index", sa.Integer(), nullable=False),
        sa.Column("task_id", sa.String(length=200), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("policy_version", sa.Integer(), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["run_id"], ["runs.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint(
            "run_id", "step", "task_index", name="uq_rollout_ledger_run_step_task"
        ),
    )
    op.create_index(
        "ix_rollout_ledger_run_status", "rollout_ledger", ["run_id", "status"], unique=False
    )


def downgrade() -> None:
    op.drop_index("ix_rollout_ledger_run_status", table_name="rollout_ledger")
    op.drop_table("rollout_ledger")
