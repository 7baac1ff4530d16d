"""OPSD: on-policy self-distillation from a privileged view of the same model (algorithms.md §2).

One set of weights, two views: the student ``π_θ(·|x)`` samples the episode on the plain prompt;
the teacher ``π_θ(·|x, I)`` scores the *same token ids* with privileged information ``I`` (an
expert plan, the next action, a hint, ...) spliced into its prompt right after the system
message. ``agents.scoring.score_turns`` does the splicing and re-aligns the teacher's log-probs to
the student's positions; this module picks the strength and the teacher weights:

- ``teacher=current``: the current weights (no copy; scoring runs under ``no_grad``);
- ``teacher=frozen``: the initial weights, i.e. the LoRA adapter disabled (needs ``finetune=lora``);
- ``teacher=ema``: a gradient-free EMA copy ``θ_T ← d·θ_T + (1−d)·θ`` (``agents.ema.EMATeacher``).

Two ways to consume the teacher (``mode``):

- ``shaping``: reward shaping ``A_i ← A_GRPO,i − β·Σ_t ℓ_t`` with
  ``ℓ_t = log π_old(y_t|x) − log π_T(y_t|x,I)`` (a sampled-token estimate of ``KL(π_S‖π_T)``),
  then the PPO clipped surrogate with ``A_i`` broadcast to the episode's tokens;
- ``divergence``: ``L = L_GRPO·grpo_coef + jsd_coef·mean_t JSD_β(π_T(·|x,I) ‖ π_S(·|x))`` on the
  full vocabulary at ``distill_temperature`` through ``kernels`` (β=0.5, τ=1.1 in Zhao et al.).

With empty privileged information the teacher context equals the student context, so
``ℓ_t = 0`` and the divergence is exactly zero (tested).
"""

from __future__ import annotations

import torch
from torch import Tensor

from trainers.losses import masked_sum

__all__ = ["opsd_shaped_advantages", "sampled_logratio"]


def sampled_logratio(student_logp_BT: Tensor, teacher_logp_BT: Tensor, mask_BT: Tensor) -> Tensor:
    """Sampled-token log-ratio ``ℓ_t = (log π_S(y_t) − log π_T(y_t))·m_t``, detached.

    Shapes: ``(B, T), (B, T), (B, T) -> (B, T)``; zero where ``mask_BT`` is 0.
    """
    diff = student_logp_BT.detach().float() - teacher_logp_BT.detach().float()
    return torch.where(mask_BT.bool(), diff, torch.zeros_like(diff))


def opsd_shaped_advantages(
    adv_B: Tensor, student_logp_BT: Tensor, teacher_logp_BT: Tensor, mask_BT: Tensor, beta: float
) -> Tensor:
    """OPSD reward shaping: ``A_i ← A_i − β·Σ_t m_{i,t}·(log π_S(y_{i,t}) − log π_T(y_{i,t}))``.

    ``Σ_t ℓ_t`` over the sampled tokens of episode ``i`` estimates ``KL(π_S ‖ π_T)`` of the whole
    episode, so this is ``J = E[R] − β·KL(π_S ‖ sg π_T)`` in policy-gradient form.
    Shapes: ``adv_B (B,)``, the rest ``(B, T)`` -> ``(B,)``. No gradient flows.
    """
    ell_BT = sampled_logratio(student_logp_BT, teacher_logp_BT, mask_BT)
    return adv_B.detach().float() - beta * masked_sum(ell_BT, mask_BT.float(), dim=-1)
