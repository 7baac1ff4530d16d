"""Records the store returns besides the shared ``Episode``/``Turn`` (see ``agents/types.py``).

ORM rows never leave the store; these plain dataclasses do.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

__all__ = [
    "RunStatus",
    "RunRecord",
    "RunSummary",
    "SkillRecord",
    "CheckpointRecord",
    "LedgerStatus",
    "LedgerEntry",
]


class RunStatus:
    """Allowed values of ``runs.status`` (``Store.set_status`` rejects anything else)."""

    RUNNING = "running"
    FINISHED = "finished"
    FAILED = "failed"
    INTERRUPTED = "interrupted"
    ALL = (RUNNING, FINISHED, FAILED, INTERRUPTED)


@dataclass(frozen=True)
class RunRecord:
    """One training run: its resolved config and where it stands."""

    run_id: int
    name: str
    method: str
    config: dict[str, Any]
    seed: int
    code_version: str
    status: str
    created_at: datetime | None = None
    updated_at: datetime | None = None


@dataclass(frozen=True)
class RunSummary:
    """One line of ``python -m data runs``."""

    run_id: int
    name: str
    method: str
    status: str
    steps: int  # number of logged training steps
    episodes: int
    last_step: int | None  # last step that has episodes
    last_success_rate: float | None  # mean ``won`` over the episodes of ``last_step``
    last_eval_success_rate: float | None = None  # ``eval/success_rate`` of the last step that logged one
    last_eval_step: int | None = None


@dataclass(frozen=True)
class SkillRecord:
    """A stored skill (Skill-SD) with the statistics its UCB selection needs."""

    skill_id: int
    run_id: int
    task_id: str
    skill: dict[str, Any]
    usage_count: int = 0
    reward_sum: float = 0.0
    created_step: int = 0

    @property
    def mean_reward(self) -> float:
        """Average reward over the uses of this skill (0.0 before the first use)."""
        return self.reward_sum / self.usage_count if self.usage_count else 0.0


@dataclass(frozen=True)
class CheckpointRecord:
    """What a killed run needs to resume exactly where it stopped."""

    checkpoint_id: int
    run_id: int
    step: int
    paths: dict[str, Any]
    rng_state: bytes
    data_cursor: dict[str, Any] = field(default_factory=dict)
    policy_version: int = 0
    created_at: datetime | None = None


class LedgerStatus:
    """Statuses of a ledger row, in the only order a row may pass through them.

    ``pending -> sampling -> scored -> trained``; a resume sends rows that were not trained
    (``sampling``/``scored``) back to ``pending`` so their groups are re-issued.
    """

    PENDING = "pending"
    SAMPLING = "sampling"
    SCORED = "scored"
    TRAINED = "trained"
    ORDER = (PENDING, SAMPLING, SCORED, TRAINED)
    NEXT = {PENDING: SAMPLING, SAMPLING: SCORED, SCORED: TRAINED}


@dataclass(frozen=True)
class LedgerEntry:
    """One task of one step of a run: where its rollouts stand and which version sampled them."""

    run_id: int
    step: int
    task_index: int
    task_id: str
    status: str
    policy_version: int | None = None
    updated_at: datetime | None = None
