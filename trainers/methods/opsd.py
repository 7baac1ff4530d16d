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

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from agents.types import Episode, EpisodeGroup, Turn
from trainers.config import ConfigError
from trainers.config import config_field as _f
from trainers.losses import aggregate, masked_sum
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
from trainers.teachers import (
    PRIVILEGED_SCORING,
    PRIVILEGED_STRENGTHS,
    TeacherRows,
    TeacherView,
    build_teacher_view,
    check_privileged_scoring,
    divergence_from_rows,
    divergence_loss,
    privileged_teacher_rows,
    score_privileged,
    teacher_logits_for_batch,
    turn_privileged_text,
)
from trainers.train_config import TrainConfig

__all__ = [
    "OPSD",
    "OPSDConfig",
    "PRIVILEGED_STRENGTHS",
    "TeacherView",
    "build_teacher_view",
    "divergence_loss",
    "opsd_shaped_advantages",
    "sampled_logratio",
    "score_privileged",
    "teacher_logits_for_batch",
    "turn_privileged_text",
]


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


# ============================================================================================
# The OPSD method
# ============================================================================================



@dataclass
class OPSDConfig(TrainConfig):
    """OPSD settings (algorithms.md §2). ``opsd_mode=shaping``: ``A ← A_GRPO − opsd_beta·Σℓ``;
    ``divergence``: ``grpo_coef·L_GRPO + distill_coef·JSD_jsd_beta`` at ``distill_temperature``."""

    method: str = _f("opsd", "training method (set by the CLI sub-command)")

    privileged: str = _f("plan", "privileged information the teacher sees", PRIVILEGED_STRENGTHS)
    self_teacher: str = _f(
        "current", "teacher weights: current policy, frozen initial (LoRA off) or EMA",
        ("current", "frozen", "ema"),
    )
    ema_decay: float = _f(0.999, "EMA teacher decay d: θ_T ← d·θ_T + (1−d)·θ")
    opsd_mode: str = _f("shaping", "how the teacher is used", ("shaping", "divergence"))
    opsd_beta: float = _f(0.1, "β of the reward shaping A − β·Σ_t ℓ_t")
    jsd_beta: float = _f(0.5, "β of the generalized JSD (0 forward KL, 1 reverse KL)")
    distill_temperature: float = _f(1.1, "temperature of both logit rows in the divergence")
    distill_coef: float = _f(1.0, "weight of the divergence term")
    grpo_coef: float = _f(1.0, "weight of the GRPO surrogate in divergence mode (0: pure distillation)")
    divergence_impl: str = _f(
        "fused", "divergence path: fused with the head (kernels.distill_loss, chunked) or "
        "materialized (B, T, V) logits", ("fused", "logits"))
    teacher_topk: int = _f(0, "fused divergence: the teacher as top-k log-probs + a tail bucket "
                              "(0: the full vocabulary, from its hidden states and head)")
    privileged_scoring: str = _f("trainer", "where the privileged teacher scores: the trainer's copy "
                                 "of the policy, or the sampler servers (backend=server)", PRIVILEGED_SCORING)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 <= self.ema_decay < 1.0:
            raise ConfigError(f"ema_decay={self.ema_decay} must be in [0, 1)")
        if not 0.0 <= self.jsd_beta <= 1.0:
            raise ConfigError(f"jsd_beta={self.jsd_beta} must be in [0, 1]")
        if self.distill_temperature <= 0:
            raise ConfigError(f"distill_temperature={self.distill_temperature} must be > 0")
        if self.opsd_beta < 0 or self.distill_coef < 0 or self.grpo_coef < 0:
            raise ConfigError("opsd_beta, distill_coef and grpo_coef must be >= 0")
        if self.teacher_topk < 0:
            raise ConfigError(f"teacher_topk={self.teacher_topk} must be >= 0 (0: full vocabulary)")
        check_privileged_scoring(self, self_teacher=self.self_teacher, refused=(
            "opsd_mode=divergence needs the teacher's whole distribution, which the servers do not "
            "return; use opsd_mode=shaping" if self.opsd_mode == "divergence" else ""))


@register_method("opsd")
class OPSD(Method):
    """On-policy self-distillation: the same weights with privileged context are the teacher."""

    config_cls = OPSDConfig
    description = "OPSD: reverse-KL to the same model seeing privileged info (shaping or JSD)"

    def setup(self, ctx: TrainContext) -> None:
        cfg: OPSDConfig = self.cfg  # type: ignore[assignment]
        self.view = build_teacher_view(ctx, cfg.self_teacher, cfg.ema_decay)
        self.rows: dict[int, TeacherRows] = {}  # this step's teacher side (fused divergence)

    def privileged_strengths(self) -> tuple[str, ...]:
        return (self.cfg.privileged,)  # type: ignore[attr-defined]

    def text(self, episode: Episode, turn: Turn) -> str:
        """Privileged text of a turn: what the rollout recorded at the configured strength."""
        return turn_privileged_text(turn, self.cfg.privileged)  # type: ignore[attr-defined]

    def make_batch(self, ctx: TrainContext, groups: list[EpisodeGroup]) -> TrainBatch:
        return build_batch(groups, pad_token_id(ctx.tokenizer), std_norm=self.cfg.adv_std_norm,
                           with_teacher=True)

    def advantages(self, ctx: TrainContext, batch: TrainBatch) -> Tensor:
        cfg: OPSDConfig = self.cfg  # type: ignore[assignment]
        adv_B = batch.adv_B
        if cfg.opsd_mode == "shaping":
            assert batch.teacher_logp_BT is not None
            adv_B = opsd_shaped_advantages(adv_B, batch.old_logp_BT, batch.teacher_logp_BT,
                                           batch.loss_mask_BT, cfg.opsd_beta)
        return adv_B[:, None] * batch.loss_mask_BT

    def score(self, ctx: TrainContext, groups: list[EpisodeGroup]) -> None:
        cfg: OPSDConfig = self.cfg  # type: ignore[assignment]
        episodes = [ep for g in groups for ep in g.episodes if ep.turns]
        if cfg.opsd_mode == "divergence" and cfg.divergence_impl == "fused":
            # the teacher's one forward of the step: sampled-token log-probs and divergence rows
            self.rows = privileged_teacher_rows(
                ctx, self.view, episodes, self.text, temperature=cfg.temperature,
                topk=cfg.teacher_topk, topk_temperature=cfg.distill_temperature)
        else:
            score_privileged(ctx, self.view, episodes, self.text, cfg.temperature)

    def loss(
        self, ctx: TrainContext, batch: TrainBatch, logp_BT: Tensor, fwd: PolicyOutput
    ) -> tuple[Tensor, dict[str, float]]:
        cfg: OPSDConfig = self.cfg  # type: ignore[assignment]
        if cfg.opsd_mode == "shaping":
            return policy_loss(cfg, batch, logp_BT)
        pg, stats = policy_loss(cfg, batch, logp_BT)
        if cfg.divergence_impl == "fused":
            div = self.fused_divergence(batch, fwd)
        else:
            div = self.divergence(ctx, batch, fwd.logits_BTV)
        stats["distill_loss"] = float(div.item())
        return cfg.grpo_coef * pg + cfg.distill_coef * div, stats

    def fused_divergence(self, batch: TrainBatch, fwd: PolicyOutput) -> Tensor:
        """``agg_t JSD_β(π_T(·|x,I) ‖ π_S(·|x))`` through ``kernels.distill_loss``: the student's
        hidden states × head, chunked (no ``(N, V)`` student logits beyond one chunk), against the
        teacher rows ``score`` computed (hidden states + head, or top-k + tail)."""
        cfg: OPSDConfig = self.cfg  # type: ignore[assignment]
        h_BTH = fwd.hidden_BTH
        div_BT = divergence_from_rows(
            self.rows, batch.episodes, h_BTH, fwd.head.weight, batch.loss_mask_BT.shape,
            beta=cfg.jsd_beta, temperature=cfg.distill_temperature)
        return aggregate(div_BT, batch.loss_mask_BT.to(div_BT.device), cfg.loss_agg,
                         num_tokens=batch.num_tokens, num_seqs=batch.num_seqs)

    def divergence(
        self, ctx: TrainContext, batch: TrainBatch, logits_fn: Callable[[], Tensor]
    ) -> Tensor:
        """``agg_t JSD_β(π_T(·|x,I) ‖ π_S(·|x))`` over the micro-batch's trained tokens, from the
        materialized ``(B, T, V)`` student logits and the teacher's ``(N, V)`` logits (the reference
        of the fused path, ``divergence_impl=logits``)."""
        cfg: OPSDConfig = self.cfg  # type: ignore[assignment]
        b_N, t_N, teacher_NV = teacher_logits_for_batch(ctx, self.view, batch, self.text)
        logits_BTV = logits_fn()
        div_BT = torch.zeros(batch.loss_mask_BT.shape, device=logits_BTV.device)
        if b_N.numel():
            student_NV = logits_BTV[b_N.to(logits_BTV.device), (t_N - 1).to(logits_BTV.device)]
            per_tok = divergence_loss(student_NV.float(), teacher_NV.to(student_NV.device),
                                      beta=cfg.jsd_beta, temperature=cfg.distill_temperature)
            div_BT = div_BT.index_put((b_N.to(div_BT.device), t_N.to(div_BT.device)), per_tok)
        else:
            div_BT = div_BT + 0.0 * logits_BTV.sum()  # keep the graph: an exact zero loss
        return aggregate(div_BT, batch.loss_mask_BT.to(div_BT.device), cfg.loss_agg,
                         num_tokens=batch.num_tokens, num_seqs=batch.num_seqs)

    def after_step(self, ctx: TrainContext, step: int, groups: list[EpisodeGroup]) -> None:
        if self.view.ema is not None:
            self.view.ema.update(ctx.inference_model)

    def state_dict(self) -> dict[str, Any]:
        if self.view_is_ema():
            return {"ema": self.view.model.state_dict()}
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "ema" in state and self.view_is_ema():
            self.view.model.load_state_dict(state["ema"])

    def view_is_ema(self) -> bool:
        return getattr(self, "view", None) is not None and self.view.ema is not None
