"""The Method interface: what a training method plugs into the one training loop.

The loop (``trainers/loop.py``) does, every step::

    tasks     = cursor.next(cfg.tasks_per_step)
    overrides = method.rollout_overrides(ctx, step, tasks)     # e.g. privileged text, curricula
    groups    = method.collect(ctx, step, tasks, overrides)    # grouped rollouts (or expert demos)
    method.score(ctx, groups)                                  # teacher log-probs into turns
    batch     = method.make_batch(ctx, groups)                 # turns -> padded tensors
    batch.advantages_BT = method.advantages(ctx, batch)        # per-token advantages / weights
    for mb in batch.micro_batches(cfg.token_budget):
        loss, stats = method.loss(ctx, mb, logp_BT, fwd)       # logp_BT carries the gradient
        loss.backward()
    optimizer.step(); backend.update_weights(...)
    method.after_step(ctx, step, groups)                       # EMA, skill bank, ...

A method is ``@register_method("name") class X(Method)`` with a ``config_cls`` (a subclass of
``TrainConfig`` adding its flat fields) and overrides of the hooks it needs; the defaults give
GRPO (group-relative advantages + clipped surrogate + optional k3 KL to the reference).

The records a method works on (``TrainContext``, ``TrainBatch``, ``RolloutOverrides``) live in
``trainers.batch``, the runtime builders in ``trainers.runtime`` and every kind of teacher scoring in
``trainers.teachers``: a method imports from those and from this module, never from the loop or a
sibling method (``tests/test_trainers_layering.py``).
"""

from __future__ import annotations

from typing import Any, ClassVar

from torch import Tensor

from agents.types import EpisodeGroup
from trainers.batch import (
    RolloutOverrides,
    TrainBatch,
    TrainContext,
    build_batch,
    episode_advantages,
    pad_token_id,
)
from trainers.losses import aggregate, clipped_surrogate, k3_kl, masked_mean
from trainers.runtime import PolicyOutput, collect_rollouts
from trainers.teachers import load_teacher, score_trained_tokens
from trainers.train_config import TrainConfig

__all__ = [
    "Method",
    "TeacherMethod",
    "TrainContext",
    "TrainBatch",
    "RolloutOverrides",
    "build_batch",
    "episode_advantages",
    "policy_loss",
]


def policy_loss(
    cfg: TrainConfig, batch: TrainBatch, logp_BT: Tensor
) -> tuple[Tensor, dict[str, float]]:
    """Clipped surrogate on ``batch.advantages_BT`` (+ ``kl_coef``·k3 KL to the reference).

    ``L = agg(l^clip_t) + β·agg(k3_t)`` with ``agg`` the configured aggregation over the step's
    global counts. Returns the loss and per-micro-batch sums for logging (the loop adds them up).
    """
    assert batch.advantages_BT is not None, "the loop sets advantages_BT before loss()"
    mask = batch.loss_mask_BT
    pg_BT, clipped_BT = clipped_surrogate(
        logp_BT, batch.old_logp_BT, batch.advantages_BT,
        clip_low=cfg.clip_low, clip_high=cfg.clip_high, dual_clip=cfg.dual_clip,
    )
    def agg(x_BT: Tensor) -> Tensor:
        return aggregate(x_BT, mask, cfg.loss_agg, num_tokens=batch.num_tokens, num_seqs=batch.num_seqs)

    loss = agg(pg_BT)
    stats = {"pg_loss": loss.item(), "clip_frac": _share(clipped_BT, batch)}
    if cfg.kl_coef and batch.ref_logp_BT is not None:
        kl = agg(k3_kl(logp_BT, batch.ref_logp_BT))
        loss = loss + cfg.kl_coef * kl
        stats["kl_ref"] = kl.item()
    return loss, stats


def _share(x_BT: Tensor, batch: TrainBatch) -> float:
    """This micro-batch's part of a step-level token mean: ``Σ m·x / N_tok(step)``."""
    return float((x_BT.detach() * batch.loss_mask_BT).sum().item() / max(batch.num_tokens, 1))


class Method:
    """Base class of training methods; the defaults implement GRPO.

    Subclasses set ``config_cls`` and override hooks. Hooks receive the ``TrainContext`` and
    must not keep references to micro-batches. ``needs_teacher`` makes the loop require
    ``cfg.teacher`` (loaded in ``setup``).
    """

    name: ClassVar[str] = "base"
    config_cls: ClassVar[type[TrainConfig]] = TrainConfig
    needs_teacher: ClassVar[bool] = False
    on_policy: ClassVar[bool] = True  # sampled by the policy (False: SFT demos, no sampler log-probs)
    description: ClassVar[str] = ""

    def __init__(self, cfg: TrainConfig) -> None:
        self.cfg = cfg

    # --- lifecycle -----------------------------------------------------------------------------
    def setup(self, ctx: TrainContext) -> None:
        """Build teacher / EMA / skill bank. Default: nothing."""

    def privileged_strengths(self) -> tuple[str, ...]:
        """The privileged strengths (``envs.STRENGTHS``) whose text the rollout must record on every
        turn for this method's teacher (``turn.privileged``). Default: none."""
        return ()

    def rollout_overrides(self, ctx: TrainContext, step: int, tasks: list[str]) -> RolloutOverrides:
        """Per-step rollout changes. Default: none."""
        return RolloutOverrides()

    def collect(
        self, ctx: TrainContext, step: int, tasks: list[str], overrides: RolloutOverrides
    ) -> list[EpisodeGroup]:
        """Produce the step's episodes. Default: grouped on-policy rollouts of the student."""
        return collect_rollouts(ctx, step, tasks, overrides)

    def score(self, ctx: TrainContext, groups: list[EpisodeGroup]) -> None:
        """Fill ``Turn.teacher_logprobs``. Default: no teacher, nothing to do."""

    def make_batch(self, ctx: TrainContext, groups: list[EpisodeGroup]) -> TrainBatch:
        """Turns -> padded tensors. Default: one row per episode (``build_batch``)."""
        return build_batch(groups, pad_token_id(ctx.tokenizer), std_norm=self.cfg.adv_std_norm,
                           with_teacher=self.needs_teacher)

    def advantages(self, ctx: TrainContext, batch: TrainBatch) -> Tensor:
        """Per-token advantages ``(B, T)``. Default: ``A_GRPO`` broadcast to assistant tokens."""
        return batch.adv_B[:, None] * batch.loss_mask_BT

    def loss(
        self,
        ctx: TrainContext,
        batch: TrainBatch,
        logp_BT: Tensor,
        fwd: PolicyOutput,
    ) -> tuple[Tensor, dict[str, float]]:
        """Scalar loss of one micro-batch (normalised by the step's global counts) and stats.

        ``logp_BT`` = ``log π_θ(x_t)`` at the sampling temperature, with gradient;
        ``fwd`` is the whole forward (``trainers.runtime.PolicyOutput``): its hidden states and head
        for full-vocabulary divergences fused with the head (``kernels.distill_loss``), or
        ``fwd.logits_BTV()`` materialized. Default: ``policy_loss``.
        """
        return policy_loss(self.cfg, batch, logp_BT)

    def padding_loss(self, ctx: TrainContext, batch: TrainBatch, fwd: PolicyOutput) -> Tensor:
        """A zero loss for a rank with no rows this step (world size > 1), built from the same
        sharded forwards ``loss`` runs on the other ranks so that FSDP's collectives pair.
        Default: the policy forward alone."""
        return fwd.hidden_BTH.sum() * 0.0

    def after_step(self, ctx: TrainContext, step: int, groups: list[EpisodeGroup]) -> None:
        """After the optimizer step and weight sync (EMA, skill bank...). Default: nothing.

        ``step`` is the 0-based index of the optimizer step just taken: it counts only steps that
        updated the weights (a step dropped for a NaN/inf loss or gradient is not called and not
        counted), so schedules keyed on it never lose an update to a dropped step.
        """

    # --- checkpointing of method state -----------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Extra state to checkpoint (e.g. an EMA teacher's weights). Default: none."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what ``state_dict`` returned."""

    # --- logging ----------------------------------------------------------------------------------
    def step_stats(self, batch: TrainBatch) -> dict[str, float]:
        """Batch-level stats logged every step (before the update): teacher divergence etc."""
        stats: dict[str, float] = {}
        if batch.teacher_logp_BT is not None:
            l_BT = batch.old_logp_BT - batch.teacher_logp_BT  # ℓ_t = log π_old − log π_T
            stats["kl_teacher"] = masked_mean(l_BT, batch.loss_mask_BT).item()
            stats["abs_l"] = masked_mean(l_BT.abs(), batch.loss_mask_BT).item()
        return stats


class TeacherMethod(Method):
    """A method that distils from a separate teacher model (``cfg.teacher``): the teacher is
    loaded once (tokenizer checked) and scores the sampled tokens every step. OPD, SOD and TCOD's
    default base subclass it and only choose their advantages."""

    needs_teacher = True

    def setup(self, ctx: TrainContext) -> None:
        if ctx.teacher is None:
            ctx.teacher = load_teacher(ctx, self.cfg.teacher)

    def score(self, ctx: TrainContext, groups: list[EpisodeGroup]) -> None:
        score_trained_tokens(ctx.teacher, groups, ctx.tokenizer, temperature=self.cfg.temperature,
                             token_budget=self.cfg.token_budget)
