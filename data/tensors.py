"""Stored episodes -> padded training tensors (pure functions; torch is imported only here).

Alignment: every per-token tensor is aligned with ``input_ids``: ``x_BT[b, t]`` belongs to the
token ``input_ids_BT[b, t]`` (a log-prob of that token given the tokens before it). A causal LM
predicts token ``t`` from position ``t - 1``, so the trainer shifts by one when it compares.

Two layouts:

* ``per_turn=True`` (default): one row per turn, ``input_ids = prompt_ids ++ completion_ids``
  (every turn is a ready training row; ``Turn.prompt_ids`` holds the full context).
* ``per_turn=False``: one row per episode, ``input_ids = Episode.full_ids``, each turn's
  completion values written at offset ``len(turn.prompt_ids)``.

Missing teacher log-probs are 0 with ``has_teacher_B`` False; missing token weights are 1.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from agents.types import Episode

__all__ = ["TokenBatch", "arrays_from_episode", "rows_from_arrays", "pad_rows", "episodes_to_batch"]

TurnArrays = dict[str, "np.ndarray | None"]


@dataclass
class TokenBatch:
    """Padded (right) tensors of B rows and T = longest row; all per-token tensors are (B, T)."""

    input_ids_BT: torch.Tensor  # int64
    attention_mask_BT: torch.Tensor  # int64, 1 on real tokens
    loss_mask_BT: torch.Tensor  # int64, 1 on sampled assistant tokens
    sampler_logprobs_BT: torch.Tensor  # float32, 0 off the completions
    teacher_logprobs_BT: torch.Tensor  # float32, 0 where missing (see has_teacher_B)
    token_weights_BT: torch.Tensor  # float32, 1 where missing
    has_teacher_B: torch.Tensor  # bool
    episode_ids: list[str]  # Episode.episode_id of each row
    turn_index_B: torch.Tensor  # int64, the turn of each row (-1 for whole-episode rows)

    def __len__(self) -> int:
        return int(self.input_ids_BT.shape[0])


def arrays_from_episode(episode: Episode) -> list[TurnArrays]:
    """An ``Episode`` (Python lists) -> per-turn numpy arrays, the input of :func:`rows_from_arrays`."""
    out: list[TurnArrays] = []
    for t in episode.turns:
        out.append(
            {
                "prompt_ids": np.asarray(t.prompt_ids, dtype=np.int64),
                "completion_ids": np.asarray(t.completion_ids, dtype=np.int64),
                "sampler_logprobs": np.asarray(t.sampler_logprobs, dtype=np.float32),
                "teacher_logprobs": None
                if t.teacher_logprobs is None
                else np.asarray(t.teacher_logprobs, dtype=np.float32),
                "loss_mask": np.asarray(t.loss_mask, dtype=np.int64),
                "token_weights": None
                if t.token_weights is None
                else np.asarray(t.token_weights, dtype=np.float32),
            }
        )
    return out


@dataclass
class Row:
    """One unpadded training row: token ids (length L) and the completion spans written on it."""

    ids: np.ndarray
    spans: list[tuple[int, TurnArrays]]  # (offset into ids, the turn whose completion starts there)
    has_teacher: bool
    episode_id: str
    turn_index: int


def rows_from_arrays(
    turns: Sequence[TurnArrays], episode_id: str, per_turn: bool = True
) -> list[Row]:
    """One episode's turn arrays -> training rows (one per turn, or one for the whole episode)."""
    if not turns:
        return []
    if per_turn:
        return [
            Row(
                ids=np.concatenate([t["prompt_ids"], t["completion_ids"]]),  # type: ignore[list-item]
                spans=[(t["prompt_ids"].size, t)],  # type: ignore[union-attr]
                has_teacher=t["teacher_logprobs"] is not None,
                episode_id=episode_id,
                turn_index=i,
            )
            for i, t in enumerate(turns)
        ]
    last = turns[-1]
    return [
        Row(
            ids=np.concatenate([last["prompt_ids"], last["completion_ids"]]),  # type: ignore[list-item]
            spans=[(t["prompt_ids"].size, t) for t in turns],  # type: ignore[union-attr]
            has_teacher=all(t["teacher_logprobs"] is not None for t in turns),
            episode_id=episode_id,
            turn_index=-1,
        )
    ]


def pad_rows(rows: Sequence[Row], pad_id: int = 0) -> TokenBatch:
    """Right-pad rows to the longest one: (B, T) tensors, padding masked out everywhere.

    Off the completion spans: loss mask 0, log-probs 0, weights 1 (0 on padding).
    """
    B = len(rows)
    T = max((r.ids.size for r in rows), default=0)
    ids = np.full((B, T), pad_id, np.int64)
    attn = np.zeros((B, T), np.int64)
    mask = np.zeros((B, T), np.int64)
    samp = np.zeros((B, T), np.float32)
    teach = np.zeros((B, T), np.float32)
    weights = np.zeros((B, T), np.float32)
    for b, r in enumerate(rows):
        L = r.ids.size
        ids[b, :L] = r.ids
        attn[b, :L] = 1
        weights[b, :L] = 1.0
        for offset, t in r.spans:
            span = slice(offset, offset + t["completion_ids"].size)  # type: ignore[union-attr]
            mask[b, span] = t["loss_mask"]  # type: ignore[assignment]
            samp[b, span] = t["sampler_logprobs"]
            if t["teacher_logprobs"] is not None:
                teach[b, span] = t["teacher_logprobs"]
            if t["token_weights"] is not None:
                weights[b, span] = t["token_weights"]
    return TokenBatch(
        input_ids_BT=torch.from_numpy(ids),
        attention_mask_BT=torch.from_numpy(attn),
        loss_mask_BT=torch.from_numpy(mask),
        sampler_logprobs_BT=torch.from_numpy(samp),
        teacher_logprobs_BT=torch.from_numpy(teach),
        token_weights_BT=torch.from_numpy(weights),
        has_teacher_B=torch.tensor([r.has_teacher for r in rows], dtype=torch.bool),
        episode_ids=[r.episode_id for r in rows],
        turn_index_B=torch.tensor([r.turn_index for r in rows], dtype=torch.int64),
    )


def episodes_to_batch(
    episodes: Sequence[Episode], per_turn: bool = True, pad_id: int = 0
) -> TokenBatch:
    """``Episode`` records -> a padded :class:`TokenBatch`."""
    rows: list[Row] = []
    for ep in episodes:
        rows.extend(rows_from_arrays(arrays_from_episode(ep), ep.episode_id, per_turn))
    return pad_rows(rows, pad_id)
