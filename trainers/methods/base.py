"""The Method interface: what a training method plugs into the one training loop.

The loop (``trainers/loop.py``) does, every step::

    tasks     = cursor.next(cfg.tasks_per_step)
    overrides = method.rollout_overrides(ctx, step, tasks)     # e.g. privileged text, curricula
    groups    = method.collect(ctx, step, tasks, overrides)    # grouped rollouts (or expert demos)
    method.score(ctx, groups)                                  # teacher log-probs into turns
    batch     = method.make_batch(ctx, groups)                 # turns -> padded tensors
    batch.advantages_BT = method.advantages(ctx, batch)        # per-token advantages / weights
    for mb in batch.micro_batches(cfg.token_budget):
        loss, stats = method.loss(ctx, mb, logp_BT, logits_fn) # logp_BT carries the gradient
        loss.backward()
    optimizer.step(); backend.update_weights(...)
    method.after_step(ctx, step, groups)                       # EMA, skill bank, ...

A method is ``@register_method("name") class X(Method)`` with a ``config_cls`` (a subclass of
``TrainConfig`` adding its flat fields) and overrides of the hooks it needs; the defaults give
GRPO (group-relative advantages + clipped surrogate + optional k3 KL to the reference).

Token layout of ``TrainBatch``: one row per episode (its ``full_ids``: every turn's prompt is a
prefix of the next, so one row holds all turns), right-padded. All ``_BT`` tensors are aligned with
``input_ids_BT``: position ``t`` is about token ``x_t`` (predicted from ``x_<t``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import Tensor

from agents.types import Episode, EpisodeGroup
from trainers.errors import BatchTooLargeError
from trainers.losses import aggregate, clipped_surrogate, group_advantages, k3_kl, masked_mean
from trainers.train_config import TrainConfig

if TYPE_CHECKING:
    from torch import nn

__all__ = [
    "Method",
    "TrainContext",
    "TrainBatch",
    "RolloutOverrides",
    "build_batch",
    "episode_advantages",
    "policy_loss",
]


@dataclass
class RolloutOverrides:
    """Per-step changes a method asks of the rollout (None = the config's value)."""

    privileged_strength: str | None = None  # the sampler sees privileged text (pi-distill)
    prefix_actions: dict[str, list[str]] | None = None  # TCOD B2F: expert actions replayed first
    max_student_turns: int | None = None  # TCOD F2B: stop after this many student turns
    temperature: float | None = None
    group_size: int | None = None


@dataclass
class TrainContext:
    """Everything a method's hooks may use. Built once by the loop; methods add their own state
    (teacher, EMA copy, skill bank) in ``setup`` on ``teacher``/``reference``/``state``."""

    cfg: TrainConfig
    model: nn.Module  # the trained policy (PEFT-wrapped when finetune == "lora")
    tokenizer: Any
    backend: Any  # agents.backends.GenerationBackend
    renderer_factory: Callable[[Any, dict[str, Any]], Any]  # (env.unwrapped, reset_info) -> Renderer
    store: Any = None  # data.Store
    run_id: Any = None
    policy_version: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    teacher: nn.Module | None = None  # separate teacher (OPD, SOD, TCOD) or EMA copy
    reference: nn.Module | None = None  # frozen reference for the KL penalty (None: adapter off)
    family: str = ""
    env_id: str = ""
    accelerator: Any = None
    state: dict[str, Any] = field(default_factory=dict)  # method-owned, checkpointed if tensors/JSON


@dataclass
class TrainBatch:
    """A step's training rows as padded tensors (see the module docstring for the layout).

    ``num_tokens``/``num_seqs`` are the counts of the *whole step* and survive slicing, so losses
    of micro-batches add up to the full-batch loss. ``extras`` holds method-specific tensors whose
    first dim is B (sliced with the rows); non-tensor extras are passed through unchanged.
    """

    input_ids_BT: Tensor  # long
    attention_mask_BT: Tensor  # long, 1 on real tokens (right padding)
    loss_mask_BT: Tensor  # float, 1 on sampled assistant tokens
    old_logp_BT: Tensor  # float, log pi_old(x_t) from the sampler (0 where mask 0)
    turn_BT: Tensor  # long, turn index of each assistant token, -1 elsewhere
    adv_B: Tensor  # float, episode-level group-relative advantage
    reward_B: Tensor
    won_B: Tensor
    group_B: Tensor  # long, group index of each row
    num_tokens: int
    num_seqs: int
    teacher_logp_BT: Tensor | None = None  # log pi_T(x_t), 0 where mask 0
    ref_logp_BT: Tensor | None = None  # log pi_ref(x_t) for the KL penalty
    advantages_BT: Tensor | None = None  # filled by the loop from Method.advantages
    weights_BT: Tensor | None = None  # optional per-token weights (SOD step weights), for logging
    episodes: list[Episode] = field(default_factory=list)
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def lengths_B(self) -> Tensor:
        return self.attention_mask_BT.sum(-1)

    def select(self, rows: list[int]) -> TrainBatch:
        """Rows ``rows`` of the batch, trimmed to their longest length (global counts kept)."""
        idx = torch.as_tensor(rows, dtype=torch.long)
        length = int(self.lengths_B[idx].max().item()) if rows else 0
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, Tensor):
                value = value[idx]
                if f.name.endswith("_BT"):
                    value = value[:, :length]
            elif f.name == "episodes":
                value = [value[i] for i in rows] if value else []
            elif f.name == "extras":
                value = {k: (v[idx] if isinstance(v, Tensor) else v) for k, v in value.items()}
            out[f.name] = value
        return replace(self, **out)

    def micro_batches(self, token_budget: int) -> list[TrainBatch]:
        """Split into micro-batches whose padded size ``rows × max_len`` stays within the budget.

        Rows are packed greedily in order of decreasing length (fewest pad tokens); a single row
        longer than the budget raises ``BatchTooLargeError``.
        """
        return [mb for _, mb in self.micro_batches_with_rows(token_budget)]

    def micro_batches_with_rows(self, token_budget: int) -> list[tuple[list[int], TrainBatch]]:
        """``micro_batches`` plus the row indices of each micro-batch in this batch."""
        lengths = self.lengths_B.tolist()
        longest = max(lengths, default=0)
        if longest > token_budget:
            raise BatchTooLargeError(
                f"a training row has {longest} tokens but token_budget={token_budget}: raise "
                "token_budget or lower max_context_tokens / max_turns"
            )
        order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
        chunks: list[list[int]] = []
        for i in order:
            if chunks and (len(chunks[-1]) + 1) * lengths[chunks[-1][0]] <= token_budget:
                chunks[-1].append(i)
            else:
                chunks.append([i])
        return [(sorted(c), self.select(sorted(c))) for c in chunks]


def episode_advantages(groups: list[EpisodeGroup], *, std_norm: bool = True) -> list[list[float]]:
    """Group-relative advantage ``A_GRPO`` of every episode, group by group (see ``group_advantages``)."""
    out = []
    for g in groups:
        rewards_G = torch.tensor(g.rewards, dtype=torch.float32)
        out.append(group_advantages(rewards_G, std_norm=std_norm).tolist())
    return out


def build_batch(
    groups: list[EpisodeGroup], pad_id: int, *, std_norm: bool = True, with_teacher: bool = False
) -> TrainBatch:
    """Turn grouped episodes into a ``TrainBatch`` (one right-padded row per episode).

    Episodes without turns are dropped. With ``with_teacher`` every turn must carry
    ``teacher_logprobs`` (a program error otherwise: scoring was skipped).
    """
    adv = episode_advantages(groups, std_norm=std_norm)
    rows: list[tuple[Episode, float, int]] = [
        (ep, a, gi)
        for gi, g in enumerate(groups)
        for ep, a in zip(g.episodes, adv[gi], strict=True)
        if ep.turns
    ]
    B = len(rows)
    T = max((len(ep.full_ids) for ep, _, _ in rows), default=1)
    ids = torch.full((B, T), pad_id, dtype=torch.long)
    attn = torch.zeros((B, T), dtype=torch.long)
    mask = torch.zeros((B, T))
    old = torch.zeros((B, T))
    teach = torch.zeros((B, T)) if with_teacher else None
    turn = torch.full((B, T), -1, dtype=torch.long)
    for b, (ep, _, _) in enumerate(rows):
        full = ep.full_ids
        ids[b, : len(full)] = torch.tensor(full, dtype=torch.long)
        attn[b, : len(full)] = 1
        for k, t in enumerate(ep.turns):
            s, n = len(t.prompt_ids), len(t.completion_ids)
            m = torch.tensor(t.loss_mask, dtype=torch.float32)
            mask[b, s : s + n] = m
            old[b, s : s + n] = torch.tensor(t.sampler_logprobs, dtype=torch.float32) * m
            turn[b, s : s + n] = torch.where(m > 0, k, -1)
            if teach is not None:
                if t.teacher_logprobs is None:
                    raise RuntimeError(f"episode {ep.episode_id} turn {k} has no teacher log-probs: "
                                       "the method's score() must fill them")
                teach[b, s : s + n] = torch.tensor(t.teacher_logprobs, dtype=torch.float32) * m
    return TrainBatch(
        input_ids_BT=ids,
        attention_mask_BT=attn,
        loss_mask_BT=mask,
        old_logp_BT=old,
        turn_BT=turn,
        adv_B=torch.tensor([a for _, a, _ in rows], dtype=torch.float32),
        reward_B=torch.tensor([ep.reward for ep, _, _ in rows], dtype=torch.float32),
        won_B=torch.tensor([float(ep.won) for ep, _, _ in rows]),
        group_B=torch.tensor([gi for _, _, gi in rows], dtype=torch.long),
        num_tokens=int(mask.sum().item()),
        num_seqs=B,
        teacher_logp_BT=teach,
        episodes=[ep for ep, _, _ in rows],
    )


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

    def rollout_overrides(self, ctx: TrainContext, step: int, tasks: list[str]) -> RolloutOverrides:
        """Per-step rollout changes. Default: none."""
        return RolloutOverrides()

    def collect(
        self, ctx: TrainContext, step: int, tasks: list[str], overrides: RolloutOverrides
    ) -> list[EpisodeGroup]:
        """Produce the step's episodes. Default: grouped on-policy rollouts of the student."""
        from trainers.loop import collect_rollouts  # the loop owns the rollout plumbing

        return collect_rollouts(ctx, step, tasks, overrides)

    def score(self, ctx: TrainContext, groups: list[EpisodeGroup]) -> None:
        """Fill ``Turn.teacher_logprobs``. Default: no teacher, nothing to do."""

    def make_batch(self, ctx: TrainContext, groups: list[EpisodeGroup]) -> TrainBatch:
        """Turns -> padded tensors. Default: one row per episode (``build_batch``)."""
        return build_batch(groups, _pad_id(ctx.tokenizer), std_norm=self.cfg.adv_std_norm,
                           with_teacher=self.needs_teacher)

    def advantages(self, ctx: TrainContext, batch: TrainBatch) -> Tensor:
        """Per-token advantages ``(B, T)``. Default: ``A_GRPO`` broadcast to assistant tokens."""
        return batch.adv_B[:, None] * batch.loss_mask_BT

    def loss(
        self,
        ctx: TrainContext,
        batch: TrainBatch,
        logp_BT: Tensor,
        logits_fn: Callable[[], Tensor],
    ) -> tuple[Tensor, dict[str, float]]:
        """Scalar loss of one micro-batch (normalised by the step's global counts) and stats.

        ``logp_BT`` = ``log π_θ(x_t)`` at the sampling temperature, with gradient;
        ``logits_fn()`` returns the ``(B, T, V)`` logits (already computed; for full-vocabulary
        divergences). Default: ``policy_loss``.
        """
        return policy_loss(self.cfg, batch, logp_BT)

    def after_step(self, ctx: TrainContext, step: int, groups: list[EpisodeGroup]) -> None:
        """After the optimizer step and weight sync (EMA, skill bank...). Default: nothing."""

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


def _pad_id(tokenizer: Any) -> int:
    pad = getattr(tokenizer, "pad_token_id", None)
    if pad is None:
        pad = getattr(tokenizer, "eos_token_id", None)
    return int(pad) if pad is not None else 0
