"""Vanilla on-policy distillation from a separate teacher (spec sections 0 and 1).

The student samples; the teacher scores the *same token ids*. Per token
``a_t = sg(log π_T(y_t) − log π_old(y_t))`` is an advantage in the clipped surrogate: at ratio 1
its gradient is ``−a_t ∇log π_S(y_t)``, the sampled-token reverse-KL policy gradient (not the
zero-mean "k1" gradient of back-propagating ``ℓ_t`` itself). Optionally ``A_t = A_GRPO + c·a_t``.
The teacher must share the student's tokenizer (it scores sampled ids): checked in ``setup``.
"""

from __future__ import annotations

from torch import Tensor

from trainers.methods import register_method
from trainers.methods.base import TeacherMethod, TrainBatch, TrainContext
from trainers.teachers import OPDConfig, check_same_tokenizer, load_teacher, score_trained_tokens

__all__ = ["OPD", "OPDConfig", "opd_advantages", "check_same_tokenizer", "load_teacher",
           "score_trained_tokens"]


def opd_advantages(
    teacher_logp_BT: Tensor,
    old_logp_BT: Tensor,
    mask_BT: Tensor,
    adv_B: Tensor | None = None,
    coef: float = 1.0,
) -> Tensor:
    """``A_t = [A_GRPO,b] + c·(log π_T(y_t) − log π_old(y_t))`` on trained tokens, 0 elsewhere.

    Shapes: ``(B, T), (B, T), (B, T), (B,) -> (B, T)``. Detached (an advantage is a constant).
    """
    a_BT = coef * (teacher_logp_BT - old_logp_BT)
    if adv_B is not None:
        a_BT = a_BT + adv_B[:, None]
    return (a_BT * mask_BT).detach()


@register_method("opd")
class OPD(TeacherMethod):
    """Vanilla OPD: teacher log-ratio as a per-token advantage (optionally plus A_GRPO)."""

    config_cls = OPDConfig
    description = "on-policy distillation from a separate teacher: A_t = log π_T − log π_old"

    def advantages(self, ctx: TrainContext, batch: TrainBatch) -> Tensor:
        cfg: OPDConfig = self.cfg  # type: ignore[assignment]
        assert batch.teacher_logp_BT is not None
        return opd_advantages(batch.teacher_logp_BT, batch.old_logp_BT, batch.loss_mask_BT,
                              batch.adv_B if cfg.use_grpo else None, cfg.opd_coef)
