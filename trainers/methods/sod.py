"""SOD: step-wise weighting of on-policy distillation (spec section 6; arXiv 2605.07725).

Steps are assistant turns. With ``ℓ_t = log π_old(y_t) − log π_T(y_t)``:

- step divergence ``d_k = mean_{t∈k} |ℓ_t|``;
- weight ``w_1 = 1``, ``w_k = min(Π_{u<k} (d_u+ε)/(d_{u+1}+ε), 1+δ) = min((d_1+ε)/(d_k+ε), 1+δ)``
  (the product telescopes): steps that drifted further than step 1 are damped, closer ones
  boosted by at most ``1+δ``;
- token advantage ``A_t = A_GRPO + c·w_{k(t)}·(log π_T − log π_old)`` in the clipped surrogate
  with clip-low 0.2, clip-high 0.28 (DAPO), token-mean.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from trainers.config import ConfigError
from trainers.methods import register_method
from trainers.methods.base import TeacherMethod, TrainBatch, TrainContext
from trainers.teachers import OPDConfig

__all__ = ["SOD", "SODConfig", "step_divergences", "sod_step_weights", "sod_advantages"]


@dataclass
class SODConfig(OPDConfig):
    method: str = field(default="sod", metadata={"help": "training method (set by the CLI sub-command)"})
    delta: float = field(default=0.2, metadata={"help": "weight cap: w_k <= 1 + delta"})
    eps: float = field(default=1e-6, metadata={"help": "smoothing ε in (d_1+ε)/(d_k+ε)"})
    use_grpo: bool = field(default=True, metadata={"help": "add the task-reward advantage A_GRPO"})
    clip_high: float = field(default=0.28, metadata={"help": "PPO clip-high (DAPO)"})

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.delta < 0 or self.eps <= 0:
            raise ConfigError(f"delta={self.delta} must be >= 0 and eps={self.eps} > 0")


def step_divergences(
    old_logp_BT: Tensor, teacher_logp_BT: Tensor, mask_BT: Tensor, turn_BT: Tensor, num_turns: int
) -> Tensor:
    """``d_{b,k} = mean_{t: turn(t)=k, m_t=1} |log π_old − log π_T|`` (0 for a turn with no tokens).

    Shapes: ``(B, T) x 3, turn (B, T) long (−1 = not a step token) -> (B, K)``.
    """
    B = old_logp_BT.shape[0]
    abs_l = (old_logp_BT - teacher_logp_BT).abs() * mask_BT
    idx = turn_BT.clamp(min=0)
    total = torch.zeros(B, num_turns, dtype=abs_l.dtype).scatter_add_(1, idx, abs_l)
    count = torch.zeros(B, num_turns, dtype=abs_l.dtype).scatter_add_(1, idx, mask_BT * (turn_BT >= 0))
    return total / count.clamp(min=1)


def sod_step_weights(d_BK: Tensor, delta: float = 0.2, eps: float = 1e-6) -> Tensor:
    """``w_k = min((d_1 + ε) / (d_k + ε), 1 + δ)`` (so ``w_1 = 1``). Shapes ``(B, K) -> (B, K)``."""
    return torch.clamp((d_BK[:, :1] + eps) / (d_BK + eps), max=1.0 + delta)


def sod_advantages(
    adv_B: Tensor | None,
    teacher_logp_BT: Tensor,
    old_logp_BT: Tensor,
    mask_BT: Tensor,
    turn_BT: Tensor,
    *,
    delta: float = 0.2,
    eps: float = 1e-6,
    coef: float = 1.0,
) -> tuple[Tensor, Tensor]:
    """``A_t = [A_GRPO] + c·w_{k(t)}·(log π_T − log π_old)``; returns ``(A_BT, w_BT)`` detached."""
    K = int(turn_BT.max().item()) + 1 if turn_BT.numel() else 1
    d_BK = step_divergences(old_logp_BT, teacher_logp_BT, mask_BT, turn_BT, max(K, 1))
    w_BK = sod_step_weights(d_BK, delta, eps)
    w_BT = torch.gather(w_BK, 1, turn_BT.clamp(min=0)) * mask_BT
    a_BT = coef * w_BT * (teacher_logp_BT - old_logp_BT)
    if adv_B is not None:
        a_BT = a_BT + adv_B[:, None]
    return (a_BT * mask_BT).detach(), w_BT.detach()


@register_method("sod")
class SOD(TeacherMethod):
    """OPD + GRPO with step-wise weights that damp turns drifting further than the first."""

    config_cls = SODConfig
    description = "step-wise OPD weighting: A_t = A_GRPO + w_k·(log π_T − log π_old)"

    def advantages(self, ctx: TrainContext, batch: TrainBatch) -> Tensor:
        cfg: SODConfig = self.cfg  # type: ignore[assignment]
        assert batch.teacher_logp_BT is not None
        adv_BT, batch.weights_BT = sod_advantages(
            batch.adv_B if cfg.use_grpo else None, batch.teacher_logp_BT, batch.old_logp_BT,
            batch.loss_mask_BT, batch.turn_BT, delta=cfg.delta, eps=cfg.eps, coef=cfg.opd_coef,
        )
        return adv_BT

    def step_stats(self, batch: TrainBatch) -> dict[str, float]:
        stats = super().step_stats(batch)
        if batch.weights_BT is not None:
            m = batch.loss_mask_BT
            stats["step_weight_mean"] = float((batch.weights_BT * m).sum() / m.sum().clamp(min=1))
        return stats
