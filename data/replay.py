"""Replay a stored episode in its env and check that the env answers exactly as recorded.

The env is rebuilt with ``envs.make(episode.env_id, **episode.info.get("env_kwargs", {}))`` and
reset with the stored seed and ``options={"task_id": episode.task_id}``; then every stored action
(``Turn.action``, the parsed action the rollout sent) is stepped. The initial observation (when
stored), each observation, reward and the terminated/truncated flags must match; the first
mismatch is reported. Envs are deterministic given (task id, seed), so a divergence means the env
changed or the record is wrong.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from agents.types import Episode

__all__ = ["Divergence", "ReplayResult", "replay_episode"]


@dataclass(frozen=True)
class Divergence:
    """The first place where the env and the record disagree (``turn == -1``: at reset)."""

    turn: int
    field: str  # "initial_observation" | "observation" | "reward" | "terminated" | "truncated"
    expected: Any  # stored value
    actual: Any  # value the env produced now

    def describe(self) -> str:
        where = "reset" if self.turn < 0 else f"turn {self.turn}"
        return (
            f"{where}: {self.field} differs\n  stored: {self.expected!r}\n  replay: {self.actual!r}"
        )


@dataclass(frozen=True)
class ReplayResult:
    turns_checked: int
    divergence: Divergence | None

    @property
    def ok(self) -> bool:
        return self.divergence is None


def _make_env(episode: Episode) -> Any:
    import envs  # imported lazily: the store itself does not need the envs

    return envs.make(episode.env_id, **dict(episode.info.get("env_kwargs", {})))


def replay_episode(episode: Episode, reward_tol: float = 1e-6) -> ReplayResult:
    """Re-run ``episode``'s actions in a fresh env; stop at the first divergence."""
    env = _make_env(episode)
    try:
        obs, _info = env.reset(seed=episode.seed, options={"task_id": episode.task_id})
        if episode.initial_observation and obs != episode.initial_observation:
            return ReplayResult(
                0, Divergence(-1, "initial_observation", episode.initial_observation, obs)
            )
        for i, turn in enumerate(episode.turns):
            obs, reward, terminated, truncated, _info = env.step(turn.action)
            checks = (
                ("observation", turn.observation, obs, obs == turn.observation),
                (
                    "reward",
                    turn.reward,
                    float(reward),
                    math.isclose(float(reward), turn.reward, abs_tol=reward_tol),
                ),
                (
                    "terminated",
                    turn.terminated,
                    bool(terminated),
                    bool(terminated) == turn.terminated,
                ),
                ("truncated", turn.truncated, bool(truncated), bool(truncated) == turn.truncated),
            )
            for name, expected, actual, same in checks:
                if not same:
                    return ReplayResult(i, Divergence(turn.index, name, expected, actual))
        return ReplayResult(len(episode.turns), None)
    finally:
        env.close()
