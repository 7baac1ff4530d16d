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

from torch import Tensor

import envs
from agents.types import EpisodeGroup
from trainers.config import ConfigError
from trainers.config import config_field as _f
from trainers.methods import get_method, register_method
from trainers.methods.base import Method, RolloutOverrides, TrainBatch, TrainContext
from trainers.runtime import PolicyOutput
from trainers.teachers import OPDConfig
from trainers.train_config import TrainConfig

__all__ = [
    "TCOD",
    "TCODConfig",
    "CurriculumWindow",
    "curriculum_window",
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
    env = envs.make(env_id, **(env_kwargs or {}))
    try:
        env.reset(options={"task_id": task_id})
        base: Any = env.unwrapped
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
    return bool(episode.info.get("prefix_finished")) and not episode.turns


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
            out.append(EpisodeGroup(group_id=g.group_id, task_id=g.task_id, episodes=kept,
                                    renderer=g.renderer))
    return out, dropped


@dataclass(frozen=True)
class CurriculumWindow:
    """What the curriculum asks of one step's rollouts (for logging and tests)."""

    kind: str  # "f2b" | "b2f" | "none"
    student_turns: int | None = None  # F2B
    replay: dict[str, int] | None = None  # B2F: task -> number of replayed expert actions


def curriculum_window(
    kind: str, step: int, k: int, tasks: list[str], expert_lengths: dict[str, int]
) -> CurriculumWindow:
    """The window of ``step`` for ``tasks`` (``expert_lengths``: task -> ``L``, for B2F)."""
    if kind == "f2b":
        return CurriculumWindow("f2b", student_turns=f2b_student_turns(step, k))
    if kind == "b2f":
        return CurriculumWindow("b2f", replay={
            t: b2f_replay_length(step, k, expert_lengths[t]) for t in tasks})
    return CurriculumWindow("none")


# ============================================================================================
# The TCOD method: a curriculum wrapped around a base on-policy method (OPD by default)
# ============================================================================================



@dataclass
class TCODConfig(OPDConfig):
    """TCOD settings. ``base_method`` is any registered method whose config this one extends
    (``opd`` — the paper — or ``grpo``); ``teacher`` is required only when the base needs one."""

    method: str = _f("tcod", "training method (set by the CLI sub-command)")
    dual_clip: float = _f(3.0, "dual-clip constant c > 1 for negative advantages (3 in TCOD's "
                               "released code; 0 = off)")

    curriculum: str = _f("b2f", "which curriculum", ("b2f", "f2b", "none"))
    curriculum_k: int = _f(5, "k: the window moves by one turn every k steps")
    max_staleness: int = _f(2, "Δ: drop samples more than Δ policy versions old; async_steps <= Δ "
                               "(its admission bound) keeps every sample")
    base_method: str = _f("opd", "the on-policy method the curriculum wraps", ("opd", "grpo"))
    expert_max_steps: int = _f(100, "guard on the length of the expert's solution (B2F)")

    def __post_init__(self) -> None:
        TrainConfig.__post_init__(self)
        if self.base_method == "opd" and not self.teacher:
            raise ConfigError("teacher: TCOD on top of OPD needs a teacher model "
                              "(teacher=<bundled name or checkpoint dir>)")
        if self.curriculum_k < 1:
            raise ConfigError(f"curriculum_k={self.curriculum_k} must be >= 1")
        if self.max_staleness < 0:
            raise ConfigError(f"max_staleness={self.max_staleness} must be >= 0")
        if self.async_steps > self.max_staleness:
            raise ConfigError(f"async_steps={self.async_steps} exceeds TCOD's staleness bound "
                              f"max_staleness={self.max_staleness}: the async scheduler would sample "
                              f"groups that the bound then drops; set async_steps <= max_staleness")


@register_method("tcod")
class TCOD(Method):
    """Temporal-curriculum OPD: F2B / B2F windows around a base method (OPD by default)."""

    config_cls = TCODConfig
    needs_teacher = True
    description = "TCOD: OPD with a front-to-back or back-to-front turn curriculum"

    def __init__(self, cfg: TrainConfig) -> None:
        super().__init__(cfg)
        base_cls = get_method(self.tcfg.base_method)
        if not isinstance(cfg, base_cls.config_cls):
            raise ConfigError(f"base_method={self.tcfg.base_method!r}: its config "
                              f"{base_cls.config_cls.__name__} is not a base of {type(cfg).__name__}")
        self.base = base_cls(cfg)
        self.needs_teacher = base_cls.needs_teacher  # type: ignore[misc]
        self.expert: dict[str, list[str]] = {}
        self.window = CurriculumWindow("none")
        self.last: dict[str, float] = {"tcod_dropped_solved": 0.0, "tcod_dropped_stale": 0.0}
        self.dropped_solved_total = 0

    @property
    def tcfg(self) -> TCODConfig:
        return self.cfg  # type: ignore[return-value]

    def setup(self, ctx: TrainContext) -> None:
        self.base.setup(ctx)

    def expert_lengths(self, ctx: TrainContext, tasks: list[str]) -> dict[str, int]:
        for task in tasks:
            if task not in self.expert:
                self.expert[task] = expert_actions(
                    ctx.env_id, task, env_kwargs=self.cfg.env_kwargs,
                    max_steps=self.tcfg.expert_max_steps)
        return {t: len(self.expert[t]) for t in tasks}

    def privileged_strengths(self) -> tuple[str, ...]:
        return self.base.privileged_strengths()

    def rollout_overrides(self, ctx: TrainContext, step: int, tasks: list[str]) -> RolloutOverrides:
        cfg = self.tcfg
        overrides = self.base.rollout_overrides(ctx, step, tasks)
        lengths = self.expert_lengths(ctx, tasks) if cfg.curriculum == "b2f" else {}
        self.window = curriculum_window(cfg.curriculum, step, cfg.curriculum_k, tasks, lengths)
        if self.window.student_turns is not None:
            overrides.max_student_turns = self.window.student_turns
        if self.window.replay is not None:
            overrides.prefix_actions = {t: self.expert[t][:c] for t, c in self.window.replay.items()}
        return overrides

    def collect(
        self, ctx: TrainContext, step: int, tasks: list[str], overrides: RolloutOverrides
    ) -> list[EpisodeGroup]:
        groups = self.base.collect(ctx, step, tasks, overrides)
        groups, solved = drop_replay_solved(groups)
        groups, stale = drop_stale(groups, ctx.policy_version, self.tcfg.max_staleness)
        self.dropped_solved_total += solved
        self.last = {"tcod_dropped_solved": float(solved), "tcod_dropped_stale": float(stale),
                     "tcod_dropped_solved_total": float(self.dropped_solved_total)}
        if self.window.student_turns is not None:
            self.last["tcod_student_turns"] = float(self.window.student_turns)
        if self.window.replay:
            self.last["tcod_replay_mean"] = sum(self.window.replay.values()) / len(self.window.replay)
        return groups

    def score(self, ctx: TrainContext, groups: list[EpisodeGroup]) -> None:
        self.base.score(ctx, groups)

    def make_batch(self, ctx: TrainContext, groups: list[EpisodeGroup]) -> TrainBatch:
        return self.base.make_batch(ctx, groups)

    def advantages(self, ctx: TrainContext, batch: TrainBatch) -> Tensor:
        return self.base.advantages(ctx, batch)

    def loss(
        self, ctx: TrainContext, batch: TrainBatch, logp_BT: Tensor, fwd: PolicyOutput
    ) -> tuple[Tensor, dict[str, float]]:
        return self.base.loss(ctx, batch, logp_BT, fwd)

    def after_step(self, ctx: TrainContext, step: int, groups: list[EpisodeGroup]) -> None:
        self.base.after_step(ctx, step, groups)

    def step_stats(self, batch: TrainBatch) -> dict[str, float]:
        return {**self.base.step_stats(batch), **self.last}

    def state_dict(self) -> dict[str, Any]:
        return {"base": self.base.state_dict(), "dropped_solved_total": self.dropped_solved_total}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.base.load_state_dict(state.get("base", {}))
        self.dropped_solved_total = int(state.get("dropped_solved_total", 0))


@dataclass
class TCODF2BConfig(TCODConfig):
    method: str = _f("tcod-f2b", "training method (set by the CLI sub-command)")
    curriculum: str = _f("f2b", "which curriculum", ("b2f", "f2b", "none"))


@dataclass
class TCODB2FConfig(TCODConfig):
    method: str = _f("tcod-b2f", "training method (set by the CLI sub-command)")
    curriculum: str = _f("b2f", "which curriculum", ("b2f", "f2b", "none"))


@register_method("tcod-f2b")
class TCODF2B(TCOD):
    """Alias of ``tcod`` with ``curriculum=f2b``."""

    config_cls = TCODF2BConfig


@register_method("tcod-b2f")
class TCODB2F(TCOD):
    """Alias of ``tcod`` with ``curriculum=b2f``."""

    config_cls = TCODB2FConfig
