"""TT-OPD: turn-level truncated on-policy distillation from an EMA teacher (algorithms.md §5).

The teacher is a gradient-free EMA copy of the student, ``θ_T ← α·θ_T + (1−α)·θ_S`` every
``ema_interval`` steps (α=0.995, every 5 steps) plus a hard copy every ``hard_copy_every`` (30)
steps. Its prompt gets an *outcome-conditioned hint* (reinforcing when the episode was won,
corrective when it was lost) spliced in after the system message; ``agents.scoring`` stitches the
hint's tokens out so positions align with the student's. Hints are switchable (``hints``).

Per token ``d_t = log π_S(y_t) − log π_T(y_t)`` on the assistant tokens of the first ``K`` turns
(``K=0``: all turns); *bidirectional*: the sign of ``d_t`` is flipped for episodes with negative
``A_GRPO`` (the student is pushed toward the teacher on good episodes and away on bad ones), but
only where the teacher had no outcome hint: a corrective hint already points the teacher away
from the failed tokens, and flipping as well would reverse that (algorithms.md §5).
``−d_t`` (detached) is the advantage of a second clipped surrogate:

    L = L_GRPO + λ·L_distill + kl_coef·KL(π_S ‖ π_ref)      (λ=4.0, kl_coef 0.01 in the paper)

NaN/−inf log-probs are replaced by −20. Reward: the env's, optionally reshaped by a cosine length
schedule (correct 1.1→0.7, wrong 0→−0.3 as the length grows to ``L_max``). Failure mode: the EMA
follows a drifting student and collapses once mean ``|d|`` exceeds ~0.7; mean ``|d|`` is logged
every step and a warning is issued above ``collapse_threshold``.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from agents.types import Episode, EpisodeGroup, Turn
from trainers.config import ConfigError
from trainers.config import config_field as _f
from trainers.losses import aggregate, clipped_surrogate, group_advantages, masked_mean
from trainers.methods import register_method
from trainers.methods.base import (
    Method,
    TrainBatch,
    TrainContext,
    build_batch,
    pad_token_id,
    policy_loss,
)
from trainers.runtime import PolicyOutput
from trainers.teachers import build_teacher_view, score_privileged, turn_privileged_text
from trainers.train_config import TrainConfig

__all__ = [
    "TTOPD",
    "TTOPDConfig",
    "grouped_advantages",
    "outcome_hint_text",
    "LOGP_FLOOR",
    "sanitize_logprobs",
    "tt_opd_advantages",
    "cosine_length_reward",
    "teacher_update_kind",
]

LOGP_FLOOR = -20.0


def sanitize_logprobs(logp_BT: Tensor, floor: float = LOGP_FLOOR) -> Tensor:
    """Replace NaN and ``−inf`` log-probs by ``floor`` (−20) and clamp below at it."""
    logp = torch.nan_to_num(logp_BT.float(), nan=floor, neginf=floor, posinf=0.0)
    return logp.clamp(min=floor)


def tt_opd_advantages(
    student_logp_BT: Tensor,
    teacher_logp_BT: Tensor,
    adv_B: Tensor,
    turn_BT: Tensor,
    mask_BT: Tensor,
    max_turns: int = 0,
    bidirectional: bool = True,
    hinted_B: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Token advantages of TT-OPD's distillation surrogate.

    ``d_t = log π_S(y_t) − log π_T(y_t)`` (both sanitized, detached),
    ``m'_t = m_t·[turn_t < K]`` (``K = max_turns``; 0 keeps every turn),
    ``s_i = −1 if A_GRPO,i < 0 and bidirectional and not hinted_i else +1``,
    ``a_t = −s_i·d_t·m'_t``.

    The flip is for a teacher *without* an outcome hint (algorithms.md §5): a lost episode's
    corrective hint already makes the teacher rate the failed tokens lower (``d_t > 0``), so
    ``−d_t`` already pushes them down, and flipping it too would push them up. ``hinted_B`` (bool)
    marks the episodes whose teacher saw a hint; they are never flipped.

    Shapes: ``(B, T), (B, T), (B,), (B, T) int, (B, T), (B,) -> (adv_BT (B, T), dmask_BT (B, T))``;
    ``dmask_BT = m'`` (the tokens the distillation term covers, for mean ``|d|``).
    """
    d_BT = sanitize_logprobs(student_logp_BT.detach()) - sanitize_logprobs(teacher_logp_BT.detach())
    dmask_BT = mask_BT.float()
    if max_turns > 0:
        dmask_BT = dmask_BT * (turn_BT < max_turns).float()
    sign_B = torch.ones_like(adv_B, dtype=torch.float32)
    if bidirectional:
        flip_B = adv_B < 0
        if hinted_B is not None:
            flip_B = flip_B & ~hinted_B.to(device=adv_B.device, dtype=torch.bool)
        sign_B = torch.where(flip_B, -sign_B, sign_B)
    return -sign_B[:, None] * d_BT * dmask_BT, dmask_BT


def cosine_length_reward(
    correct: bool,
    length: int,
    max_length: int,
    *,
    correct_range: tuple[float, float] = (1.1, 0.7),
    wrong_range: tuple[float, float] = (0.0, -0.3),
) -> float:
    """Cosine length shaping: ``r = r_end + (r_start − r_end)·(1 + cos(π·min(L, L_max)/L_max))/2``.

    ``(r_start, r_end)`` is ``correct_range`` for a correct episode and ``wrong_range`` otherwise:
    at length 0 the reward is ``r_start``, at ``L_max`` (and beyond) it is ``r_end``.
    """
    if max_length <= 0:
        raise ValueError(f"max_length={max_length} must be positive")
    start, end = correct_range if correct else wrong_range
    frac = min(max(length, 0), max_length) / max_length
    return end + (start - end) * 0.5 * (1.0 + math.cos(math.pi * frac))


def teacher_update_kind(step: int, ema_interval: int, hard_copy_every: int) -> str | None:
    """What to do with the EMA teacher after optimizer step ``step`` (1-based count of steps done).

    ``"hard"`` every ``hard_copy_every`` steps (takes precedence), ``"ema"`` every
    ``ema_interval`` steps, else None. An interval of 0 disables that kind.
    """
    if hard_copy_every > 0 and step % hard_copy_every == 0:
        return "hard"
    if ema_interval > 0 and step % ema_interval == 0:
        return "ema"
    return None


# ============================================================================================
# The TT-OPD method
# ============================================================================================



@dataclass
class TTOPDConfig(TrainConfig):
    """TT-OPD settings (algorithms.md §5): ``L = L_GRPO + tt_lambda·L_distill + kl_coef·KL_ref``."""

    method: str = _f("tt-opd", "training method (set by the CLI sub-command)")

    kl_coef: float = _f(0.01, "k3 KL-to-reference coefficient (0.01 in the paper)")
    tt_lambda: float = _f(4.0, "λ: weight of the distillation surrogate")
    tt_turns: int = _f(0, "K: distill only the first K turns of each episode (0 = all turns)")
    bidirectional: bool = _f(True, "flip the sign of d_t on episodes with negative A_GRPO")
    hints: bool = _f(True, "outcome-conditioned hint in the teacher's prompt (reinforcing/corrective)")
    ema_decay: float = _f(0.995, "EMA teacher decay α: θ_T ← α·θ_T + (1−α)·θ_S")
    ema_interval: int = _f(5, "EMA update every N optimizer steps (0 = never)")
    hard_copy_every: int = _f(30, "hard copy θ_T ← θ_S every N steps (0 = never)")
    length_shaping: bool = _f(False, "cosine length shaping of the reward (correct 1.1→0.7, wrong 0→−0.3)")
    length_max: int = _f(0, "L_max of the length shaping in sampled tokens (0: max_turns·max_new_tokens)")
    collapse_threshold: float = _f(0.7, "warn when mean |d| exceeds this (EMA collapse)")

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 <= self.ema_decay < 1.0:
            raise ConfigError(f"ema_decay={self.ema_decay} must be in [0, 1)")
        for name in ("tt_turns", "ema_interval", "hard_copy_every", "length_max"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name}={getattr(self, name)} must be >= 0")
        if self.tt_lambda < 0:
            raise ConfigError(f"tt_lambda={self.tt_lambda} must be >= 0")


def outcome_hint_text(episode: Episode) -> str:
    """The reinforcing (won) / corrective (lost) hint of a finished episode, for the teacher.

    The env's ``outcome_hint`` strength, recorded by the rollout after the episode in
    ``episode.final_privileged``, holds the outcome and the matching hint; when the env had
    not ended (turn limit, curriculum cut) it is empty, and the outcome is stated from
    ``episode.won`` with the env's short ``hint``.
    """
    if not episode.turns:
        return ""
    final = episode.final_privileged
    text = (final.outcome_hint or "") if final is not None else ""
    if text:
        return str(text)
    hint = next((turn_privileged_text(t, "hint") for t in episode.turns
                 if turn_privileged_text(t, "hint")), "")
    outcome = "This attempt succeeded." if episode.won else "This attempt did not solve the task."
    return f"{outcome} {hint}".strip()


@register_method("tt-opd")
class TTOPD(Method):
    """Turn-level truncated OPD from an EMA teacher with outcome-conditioned hints."""

    config_cls = TTOPDConfig
    description = "TT-OPD: EMA self-teacher with outcome hints, first-K-turn bidirectional distillation"

    def __init__(self, cfg: TrainConfig) -> None:
        super().__init__(cfg)
        self._hints: dict[int, str] = {}

    def setup(self, ctx: TrainContext) -> None:
        self.view = build_teacher_view(ctx, "ema", self.cfg.ema_decay)  # type: ignore[attr-defined]

    def privileged_strengths(self) -> tuple[str, ...]:
        return ("hint", "outcome_hint") if self.cfg.hints else ()  # type: ignore[attr-defined]

    def text(self, episode: Episode, turn: Turn) -> str:
        """The episode's outcome hint in every turn's teacher context ("" when hints are off)."""
        if not self.cfg.hints:  # type: ignore[attr-defined]
            return ""
        key = id(episode)
        if key not in self._hints:
            self._hints[key] = outcome_hint_text(episode)
        return self._hints[key]

    def hinted(self, batch: TrainBatch) -> Tensor:
        """``(B,)`` bool: the rows whose teacher context held an outcome hint (never flipped)."""
        return torch.tensor([bool(ep.turns) and bool(self.text(ep, ep.turns[0])) for ep in batch.episodes],
                            dtype=torch.bool)

    def score(self, ctx: TrainContext, groups: list[EpisodeGroup]) -> None:
        self._hints = {}
        episodes = [ep for g in groups for ep in g.episodes if ep.turns]
        score_privileged(ctx, self.view, episodes, self.text, self.cfg.temperature)

    def make_batch(self, ctx: TrainContext, groups: list[EpisodeGroup]) -> TrainBatch:
        cfg: TTOPDConfig = self.cfg  # type: ignore[assignment]
        batch = build_batch(groups, pad_token_id(ctx.tokenizer), std_norm=cfg.adv_std_norm,
                            with_teacher=True)
        if cfg.length_shaping and batch.num_seqs:
            l_max = cfg.length_max or cfg.max_turns * cfg.max_new_tokens
            shaped = torch.tensor([
                cosine_length_reward(ep.won, sum(sum(t.loss_mask) for t in ep.turns), l_max)
                for ep in batch.episodes
            ])
            batch.reward_B = shaped
            batch.adv_B = grouped_advantages(shaped, batch.group_B, std_norm=cfg.adv_std_norm)
        return batch

    def step_stats(self, batch: TrainBatch) -> dict[str, float]:
        cfg: TTOPDConfig = self.cfg  # type: ignore[assignment]
        stats = super().step_stats(batch)
        assert batch.teacher_logp_BT is not None
        a_BT, dmask_BT = tt_opd_advantages(batch.old_logp_BT, batch.teacher_logp_BT, batch.adv_B,
                                           batch.turn_BT, batch.loss_mask_BT, cfg.tt_turns,
                                           cfg.bidirectional, self.hinted(batch))
        mean_abs_d = float(masked_mean(a_BT.abs(), dmask_BT).item())
        stats["mean_abs_d"] = mean_abs_d
        stats["distill_tokens"] = float(dmask_BT.sum().item())
        if mean_abs_d > cfg.collapse_threshold:
            warnings.warn(
                f"TT-OPD: mean |d| = {mean_abs_d:.3f} exceeds collapse_threshold="
                f"{cfg.collapse_threshold}: the EMA teacher may be absorbing a drifting student",
                RuntimeWarning, stacklevel=2,
            )
        return stats

    def loss(
        self, ctx: TrainContext, batch: TrainBatch, logp_BT: Tensor, fwd: PolicyOutput
    ) -> tuple[Tensor, dict[str, float]]:
        cfg: TTOPDConfig = self.cfg  # type: ignore[assignment]
        grpo, stats = policy_loss(cfg, batch, logp_BT)
        assert batch.teacher_logp_BT is not None
        a_BT, dmask_BT = tt_opd_advantages(batch.old_logp_BT, batch.teacher_logp_BT, batch.adv_B,
                                           batch.turn_BT, batch.loss_mask_BT, cfg.tt_turns,
                                           cfg.bidirectional, self.hinted(batch))
        d_BT, _ = clipped_surrogate(logp_BT, batch.old_logp_BT, a_BT,
                                    clip_low=cfg.clip_low, clip_high=cfg.clip_high)
        distill = aggregate(d_BT * dmask_BT, batch.loss_mask_BT, cfg.loss_agg,
                            num_tokens=batch.num_tokens, num_seqs=batch.num_seqs)
        stats["distill_loss"] = float(distill.item())
        return grpo + cfg.tt_lambda * distill, stats

    def after_step(self, ctx: TrainContext, step: int, groups: list[EpisodeGroup]) -> None:
        cfg: TTOPDConfig = self.cfg  # type: ignore[assignment]
        # ``step`` counts optimizer steps (the loop's contract), so a step dropped for NaN/inf
        # neither updates the teacher nor makes a later step miss its scheduled update
        kind = teacher_update_kind(step + 1, cfg.ema_interval, cfg.hard_copy_every)
        if kind == "hard":
            self.view.ema.hard_copy(ctx.inference_model)
        elif kind == "ema":
            self.view.ema.update(ctx.inference_model)

    def state_dict(self) -> dict[str, Any]:
        view = getattr(self, "view", None)
        return {"ema": view.model.state_dict()} if view is not None else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "ema" in state and getattr(self, "view", None) is not None:
            self.view.model.load_state_dict(state["ema"])


def grouped_advantages(reward_B: Tensor, group_B: Tensor, *, std_norm: bool = True) -> Tensor:
    """``A_GRPO`` of each row from its group's rewards (rows of a group share ``group_B``).

    Shapes: ``(B,), (B,) long -> (B,)``; applies ``trainers.losses.group_advantages`` per group.
    """
    adv_B = torch.zeros_like(reward_B, dtype=torch.float32)
    for g in group_B.unique():
        rows = group_B == g
        adv_B[rows] = group_advantages(reward_B[rows], std_norm=std_norm)
    return adv_B
