"""Vanilla on-policy distillation from a separate teacher (spec sections 0 and 1).

The student samples; the teacher scores the *same token ids*. Per token
``a_t = sg(log π_T(y_t) − log π_old(y_t))`` is an advantage in the clipped surrogate: at ratio 1
its gradient is ``−a_t ∇log π_S(y_t)``, the sampled-token reverse-KL policy gradient (not the
zero-mean "k1" gradient of back-propagating ``ℓ_t`` itself). Optionally ``A_t = A_GRPO + c·a_t``.
The teacher must share the student's tokenizer (it scores sampled ids): checked in ``setup``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

from agents.types import EpisodeGroup
from trainers.config import ConfigError
from trainers.errors import TeacherMismatchError
from trainers.methods import register_method
from trainers.methods.base import Method, TrainBatch, TrainContext
from trainers.train_config import TrainConfig

__all__ = ["OPD", "OPDConfig", "opd_advantages", "check_same_tokenizer", "load_teacher"]


@dataclass
class OPDConfig(TrainConfig):
    method: str = field(default="opd", metadata={"help": "training method (set by the CLI sub-command)"})
    opd_coef: float = field(default=1.0, metadata={"help": "c in A_t = [A_GRPO] + c·(log π_T − log π_old)"})
    use_grpo: bool = field(default=False, metadata={"help": "add the task-reward advantage A_GRPO"})

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.teacher:
            raise ConfigError(f"teacher: the {self.method} method needs a teacher model "
                              "(teacher=<bundled name or checkpoint dir>)")


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


def check_same_tokenizer(student_tok: Any, teacher_tok: Any, teacher_name: str = "teacher") -> None:
    """Refuse a teacher whose tokenizer differs: sampled-token methods score the student's ids."""
    s_vocab, t_vocab = student_tok.get_vocab(), teacher_tok.get_vocab()
    if s_vocab != t_vocab:
        differ = len(set(s_vocab.items()) ^ set(t_vocab.items()))
        raise TeacherMismatchError(
            f"teacher {teacher_name!r} uses a different tokenizer than the student (vocab sizes "
            f"{len(t_vocab)} vs {len(s_vocab)}, {differ} entries differ): on-policy distillation "
            "scores the student's sampled token ids, so the teacher must share its tokenizer"
        )
    for attr in ("eos_token_id", "bos_token_id"):
        if getattr(student_tok, attr, None) != getattr(teacher_tok, attr, None):
            raise TeacherMismatchError(
                f"teacher {teacher_name!r}: {attr} differs from the student's "
                f"({getattr(teacher_tok, attr, None)} vs {getattr(student_tok, attr, None)})"
            )


def load_teacher(ctx: TrainContext, name: str) -> Any:
    """Load a frozen teacher model on the context's device after checking its tokenizer."""
    import torch

    from trainers.loop import load_any_model

    dtype = torch.bfloat16 if ctx.cfg.dtype == "bfloat16" else torch.float32
    teacher, tok = load_any_model(name, dtype=dtype)
    check_same_tokenizer(ctx.tokenizer, tok, name)
    teacher.to(ctx.device).eval()
    teacher.requires_grad_(False)
    return teacher


def score_trained_tokens(
    teacher: Any, groups: list[EpisodeGroup], tokenizer: Any, *, temperature: float, token_budget: int
) -> None:
    """Fill ``Turn.teacher_logprobs`` with ``log π_T(y_t)`` on the trained tokens (0 elsewhere).

    Same ids as the student (one forward per episode row, micro-batched by ``token_budget``);
    the teacher's LM head is applied only where a trained token is predicted, which on CPU is
    several times faster than scoring every position (``agents.scoring.score_turns``, used by
    methods that need privileged contexts).
    """
    import torch

    from trainers.loop import policy_logprobs
    from trainers.methods.base import _pad_id, build_batch

    batch = build_batch(groups, _pad_id(tokenizer))
    out = torch.zeros_like(batch.old_logp_BT)
    with torch.no_grad():
        for rows, mb in batch.micro_batches_with_rows(token_budget):
            lp = policy_logprobs(teacher, mb, temperature).logp_BT.cpu()
            out[rows, : lp.shape[1]] = lp
    for b, ep in enumerate(batch.episodes):
        for t in ep.turns:
            s = len(t.prompt_ids)
            t.teacher_logprobs = out[b, s : s + len(t.completion_ids)].tolist()


@register_method("opd")
class OPD(Method):
    """Vanilla OPD: teacher log-ratio as a per-token advantage (optionally plus A_GRPO)."""

    config_cls = OPDConfig
    needs_teacher = True
    description = "on-policy distillation from a separate teacher: A_t = log π_T − log π_old"

    def setup(self, ctx: TrainContext) -> None:
        if ctx.teacher is None:
            ctx.teacher = load_teacher(ctx, self.cfg.teacher)

    def score(self, ctx: TrainContext, groups: list[EpisodeGroup]) -> None:
        score_trained_tokens(ctx.teacher, groups, ctx.tokenizer, temperature=self.cfg.temperature,
                             token_budget=self.cfg.token_budget)

    def advantages(self, ctx: TrainContext, batch: TrainBatch) -> Tensor:
        cfg: OPDConfig = self.cfg  # type: ignore[assignment]
        assert batch.teacher_logp_BT is not None
        return opd_advantages(batch.teacher_logp_BT, batch.old_logp_BT, batch.loss_mask_BT,
                              batch.adv_B if cfg.use_grpo else None, cfg.opd_coef)
