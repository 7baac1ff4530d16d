"""The batch records every method shares: a step's rollout overrides, the training context,
the padded ``TrainBatch`` and its builder, and episode-level group-relative advantages.

Token layout of ``TrainBatch``: one row per episode (its ``full_ids``: every turn's prompt is a
prefix of the next, so one row holds all turns), right-padded. All ``_BT`` tensors are aligned with
``input_ids_BT``: position ``t`` is about token ``x_t`` (predicted from ``x_<t``), the one log-prob
convention of the code base (``trainers.losses.token_logprobs``, ``agents.scoring``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from agents.types import EndReason, Episode, EpisodeGroup
from trainers.distributed import DistInfo
from trainers.errors import BatchTooLargeError
from trainers.losses import group_advantages
from trainers.train_config import TrainConfig

if TYPE_CHECKING:
    from torch import nn

__all__ = [
    "RolloutOverrides",
    "TrainContext",
    "TrainBatch",
    "build_batch",
    "episode_advantages",
    "pad_token_id",
    "move_batch",
]


@dataclass
class RolloutOverrides:
    """Per-step changes a method asks of the rollout (None = the config's value)."""

    privileged_strength: str | None = None  # the sampler sees privileged text (pi-distill)
    prefix_actions: dict[str, list[str]] | None = None  # TCOD B2F: expert actions replayed first
    max_student_turns: int | None = None  # TCOD F2B: stop after this many student turns
    temperature: float | None = None
    group_size: int | None = None
    record_privileged: tuple[str, ...] | None = None  # strengths stored per turn (None: the method's)
    task_index_offset: int = 0  # set by the loop: this rank's first task in the step's task list


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
    env_id: str = ""
    renderers: dict[str, Any] = field(default_factory=dict)  # task id -> the rollout's Renderer
    state: dict[str, Any] = field(default_factory=dict)  # method-owned, checkpointed if tensors/JSON
    dist: DistInfo = field(default_factory=DistInfo)  # rank and world size (1: one process)
    replica: nn.Module | None = None  # world size > 1: the unsharded policy copy (see inference_model)

    @property
    def inference_model(self) -> nn.Module:
        """The policy's current weights for no-grad forwards (sampling, self-teacher scoring):
        ``model`` itself, or at world size > 1 its unsharded replica (a sharded forward is a
        collective, and those forwards run a different number of times on each rank)."""
        return self.replica if self.replica is not None else self.model


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
    """Group-relative advantage ``A_GRPO`` of every episode, group by group (see ``group_advantages``).

    Infrastructure failures (``EndReason.INFRA_ERROR``: a sampler died) are left out of their
    group's statistics and get 0 (``build_batch`` drops them).
    """
    out = []
    for g in groups:
        ok = [i for i, e in enumerate(g.episodes) if e.end_reason != EndReason.INFRA_ERROR]
        adv = [0.0] * len(g.episodes)
        if ok:
            rewards_G = torch.tensor([g.episodes[i].reward for i in ok], dtype=torch.float32)
            for i, a in zip(ok, group_advantages(rewards_G, std_norm=std_norm).tolist()):
                adv[i] = a
        out.append(adv)
    return out


def build_batch(
    groups: list[EpisodeGroup], pad_id: int, *, std_norm: bool = True, with_teacher: bool = False
) -> TrainBatch:
    """Turn grouped episodes into a ``TrainBatch`` (one right-padded row per episode).

    Episodes without turns and infrastructure failures are dropped. With ``with_teacher`` every turn must carry
    ``teacher_logprobs`` (a program error otherwise: scoring was skipped).
    """
    adv = episode_advantages(groups, std_norm=std_norm)
    rows: list[tuple[Episode, float, int]] = [
        (ep, a, gi)
        for gi, g in enumerate(groups)
        for ep, a in zip(g.episodes, adv[gi], strict=True)
        if ep.turns and ep.end_reason != EndReason.INFRA_ERROR
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


def padding_batch(pad_id: int, num_tokens: int, num_seqs: int) -> TrainBatch:
    """One two-token row that trains nothing (all masks 0): the forward a rank without rows runs
    so that its sharded forwards pair with the other ranks' (world size > 1)."""
    zeros = torch.zeros(1, 2)
    return TrainBatch(
        input_ids_BT=torch.full((1, 2), pad_id, dtype=torch.long),
        attention_mask_BT=torch.ones(1, 2, dtype=torch.long), loss_mask_BT=zeros.clone(),
        old_logp_BT=zeros.clone(), turn_BT=torch.full((1, 2), -1, dtype=torch.long),
        adv_B=torch.zeros(1), reward_B=torch.zeros(1), won_B=torch.zeros(1),
        group_B=torch.zeros(1, dtype=torch.long), num_tokens=num_tokens, num_seqs=num_seqs,
    )


def pad_token_id(tokenizer: Any) -> int:
    pad = getattr(tokenizer, "pad_token_id", None)
    if pad is None:
        pad = getattr(tokenizer, "eos_token_id", None)
    return int(pad) if pad is not None else 0


def move_batch(batch: TrainBatch, device: torch.device) -> TrainBatch:
    """Move the per-token targets of a micro-batch to ``device`` in place (ids move at forward)."""
    for name in ("loss_mask_BT", "old_logp_BT", "teacher_logp_BT", "advantages_BT", "adv_B"):
        value = getattr(batch, name)
        if value is not None:
            setattr(batch, name, value.to(device))
    return batch
