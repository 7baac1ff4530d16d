"""TCOD: temporal-curriculum on-policy distillation (algorithms.md §4; code kokolerk/TCOD).

A curriculum over *how much of the episode the student plays*, on top of OPD (or of any other
on-policy method whose config this one extends, ``base_method``). With ``t`` the training step
and ``k = curriculum_k`` (4–6 in the released configs):

- **F2B** (front to back): the student plays only the first ``1 + ⌊t/k⌋`` turns of each episode
  (the rollout stops with ``EndReason.CURRICULUM``);
- **B2F** (back to front): with ``L`` the length of the env expert's solution of the task, reset,
  replay the first ``c(t) = max(0, L − 1 − ⌊t/k⌋)`` expert actions (no loss on them), then the
  student plays to the end. Samples where the replay already finished the task are dropped (and
  counted: ``tcod_dropped_solved``).

Evaluation always uses full episodes (the curriculum only touches training rollouts).
Staleness control: samples produced by a policy more than ``max_staleness`` versions older than
the current one are dropped (``tcod_dropped_stale``); with the synchronous loop every sample is
fresh, an asynchronous sampler relies on it.

The loss is the base method's (OPD: ``A_t = log π_T − log π_old`` in the clipped surrogate,
``clip 0.2``, dual-clip 3 in the released code).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from agents.types import EndReason, EpisodeGroup

__all__ = [
    "f2b_student_turns",
    "b2f_replay_length",
    "expert_actions",
    "drop_replay_solved",
    "drop_stale",
]


def f2b_student_turns(step: int, k: int) -> int:
    """F2B window: the student plays turns ``[0, 1 + ⌊t/k⌋)`` at training step ``t`` (0-based)."""
    if k <= 0:
        raise ValueError(f"curriculum k={k} must be positive")
    return 1 + max(step, 0) // k


def b2f_replay_length(step: int, k: int, expert_length: int) -> int:
    """B2F window: replay ``c(t) = max(0, L − 1 − ⌊t/k⌋)`` expert actions before the student plays.

    At ``t = 0`` only the expert's last action is left to the student; every ``k`` steps the
    student starts one action earlier, until it plays the whole episode.
    """
    if k <= 0:
        raise ValueError(f"curriculum k={k} must be positive")
    return max(0, expert_length - 1 - max(step, 0) // k)


def expert_actions(
    env_id: str, task_id: str, *, env_kwargs: dict[str, Any] | None = None, max_steps: int = 100
) -> list[str]:
    """The env expert's full action list for ``task_id``: reset, then follow ``expert_action()``.

    Stops when the episode ends (or after ``max_steps``, a program error guard: the envs'
    experts solve every task). Deterministic: a task id rebuilds the same task.
    """
    import envs

    env = envs.make(env_id, **(env_kwargs or {}))
    try:
        env.reset(options={"task_id": task_id})
        base = env.unwrapped
        actions: list[str] = []
        for _ in range(max_steps):
            action = base.expert_action()
            actions.append(action)
            _, _, terminated, truncated, _ = env.step(action)
            if terminated or truncated:
                break
        return actions
    finally:
        env.close()


def _replay_solved(episode: Any) -> bool:
    """True when the expert prefix alone finished the task (nothing left for the student)."""
    if episode.info.get("prefix_solved") or episode.info.get("prefix_done"):
        return True
    return bool(episode.info.get("prefix_actions")) and not episode.turns


def drop_replay_solved(groups: list[EpisodeGroup]) -> tuple[list[EpisodeGroup], int]:
    """Remove episodes whose expert replay already finished the task; return (groups, n dropped).

    Groups left empty are removed too.
    """
    return _filter(groups, lambda ep: not _replay_solved(ep))


def drop_stale(
    groups: list[EpisodeGroup], current_version: int, max_staleness: int
) -> tuple[list[EpisodeGroup], int]:
    """Keep episodes at most ``max_staleness`` policy versions old: ``v_now − v_ep ≤ Δ``.

    An episode's version is the oldest version among its turns (a turn sampled by an older
    policy makes the whole row stale). Returns (groups, number of episodes dropped).
    """

    def fresh(ep: Any) -> bool:
        versions = [t.policy_version for t in ep.turns] or [ep.policy_version]
        return current_version - min(versions) <= max_staleness

    return _filter(groups, fresh)


def _filter(groups: list[EpisodeGroup], keep: Any) -> tuple[list[EpisodeGroup], int]:
    out: list[EpisodeGroup] = []
    dropped = 0
    for g in groups:
        kept = [ep for ep in g.episodes if keep(ep)]
        dropped += len(g.episodes) - len(kept)
        if kept:
            out.append(EpisodeGroup(group_id=g.group_id, task_id=g.task_id, episodes=kept))
    return out, dropped


@dataclass(frozen=True)
class CurriculumWindow:
    """What the curriculum asks of one step's rollouts (for logging and tests)."""

    kind: str  # "f2b" | "b2f" | "none"
    student_turns: int | None = None  # F2B
    replay: dict[str, int] | None = None  # B2F: task -> number of replayed expert actions


_ = EndReason  # the rollout marks F2B cuts with EndReason.CURRICULUM
