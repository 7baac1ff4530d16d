"""TT-OPD: turn-level truncated on-policy distillation from an EMA teacher (algorithms.md §5).

The teacher is a gradient-free EMA copy of the student, ``θ_T ← α·θ_T + (1−α)·θ_S`` every
``ema_interval`` steps (α=0.995, every 5 steps) plus a hard copy every ``hard_copy_every`` (30)
steps. Its prompt gets an *outcome-conditioned hint* (reinforcing when the episode was won,
corrective when it was lost) spliced in after the system message; ``agents.scoring`` stitches the
hint's tokens out so positions align with the student's. Hints are switchable (``hints``).

Per token ``d_t = log π_S(y_t) − log π_T(y_t)`` on the assistant tokens of the first ``K`` turns
(``K=0``: all turns); *bidirectional*: the sign of ``d_t`` is flipped for episodes with negative
``A_GRPO`` (the student is pushed toward the teacher on good episodes and away on bad ones).
``−d_t`` (detached) is the advantage of a second clipped surrogate:

    L = L_GRPO + λ·L_distill + kl_coef·KL(π_S ‖ π_ref)      (λ=4.0, kl_coef 0.01 in the paper)

NaN/−inf log-probs are replaced by −20. Reward: the env's, optionally reshaped by a cosine length
schedule (correct 1.1→0.7, wrong 0→−0.3 as the length grows to ``L_max``). Failure mode: the EMA
follows a drifting student and collapses once mean ``|d|`` exceeds ~0.7; mean ``|d|`` is logged
every step and a warning is issued above ``collapse_threshold``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = [
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
) -> tuple[Tensor, Tensor]:
    """Token advantages of TT-OPD's distillation surrogate.

    ``d_t = log π_S(y_t) − log π_T(y_t)`` (both sanitized, detached),
    ``m'_t = m_t·[turn_t < K]`` (``K = max_turns``; 0 keeps every turn),
    ``s_i = −1 if A_GRPO,i < 0 and bidirectional else +1``,
    ``a_t = −s_i·d_t·m'_t``.

    Shapes: ``(B, T), (B, T), (B,), (B, T) int, (B, T) -> (adv_BT (B, T), dmask_BT (B, T))``;
    ``dmask_BT = m'`` (the tokens the distillation term covers, for mean ``|d|``).
    """
    d_BT = sanitize_logprobs(student_logp_BT.detach()) - sanitize_logprobs(teacher_logp_BT.detach())
    dmask_BT = mask_BT.float()
    if max_turns > 0:
        dmask_BT = dmask_BT * (turn_BT < max_turns).float()
    sign_B = torch.ones_like(adv_B, dtype=torch.float32)
    if bidirectional:
        sign_B = torch.where(adv_B < 0, -sign_B, sign_B)
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
