"""Teacher scoring: log-probs of the student's exact token ids under any teacher.

The student's ids are never re-tokenized. A teacher sees either the same ids, or the same ids
with a privileged block spliced in after the system message (``Renderer.teacher_ids``); the
teacher's log-probs are then read at the shifted positions, so they align token for token with
the student's completion:

    teacher seq = ids[:pos] + block(n tokens) + ids[pos:]
    teacher_logprobs(turn) = lp_T[o + n - 1 : o + n - 1 + len(completion)],   o = len(prompt_ids)

where ``lp_T[j] = log softmax(z_j / T)[seq[j + 1]]`` (what :func:`sequence_logprobs` returns).

The four teachers of the methods are all "a model" here: (a) a separate teacher model, (b) the
student itself with ``privileged_strength`` (self-distillation), (c) an EMA/frozen copy
(:class:`agents.ema.EMATeacher`.model), (d) a PEFT model's base (``disable_adapter=True``). A
:class:`agents.backends.VLLMBackend` can stand in for the model (prompt log-probs, T = 1).

Two privileged modes: ``"turn"`` (each turn's own recorded text, one forward per turn: for
per-turn text such as ``next_action``) and ``"episode"`` (turn 0's text spliced once, the whole
episode in one forward).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch

from agents.errors import ScoringError
from agents.renderers import Renderer
from agents.types import Episode, Turn

__all__ = ["sequence_logprobs", "score_turns", "vllm_prompt_logprobs", "gather_logprobs", "token_logprobs"]

PrivilegedTexts = Callable[[Episode, Turn], str]


def gather_logprobs(logits_XV: torch.Tensor, targets_X: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """The one per-token log-prob primitive: ``out[x] = log softmax(logits[x] / T)[targets[x]]``.

    Row ``x`` of ``logits`` is the distribution that *produced* ``targets[x]`` (callers do the
    shift). Computed as ``gather − logsumexp`` in fp32. Shapes: ``(..., V), (...) -> (...)``.
    """
    z = logits_XV.float() / temperature
    picked = z.gather(-1, targets_X.unsqueeze(-1)).squeeze(-1)
    return picked - torch.logsumexp(z, dim=-1)


def token_logprobs(logits_BTV: torch.Tensor, input_ids_BT: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """``log p(x_t | x_<t)`` aligned with ``input_ids`` (position ``t`` is about token ``x_t``;
    position 0, which nothing predicts, gets 0): the code base's one log-prob convention.

    ``logits_BTV[:, t]`` predicts ``x_{t+1}``, so ``out[:, t] = gather_logprobs(logits[:, t−1], x_t)``.
    Shapes: ``(B, T, V), (B, T) -> (B, T)``.
    """
    logp = gather_logprobs(logits_BTV[:, :-1], input_ids_BT[:, 1:], temperature)
    return torch.nn.functional.pad(logp, (1, 0), value=0.0)


def sequence_logprobs(
    model: torch.nn.Module,
    input_ids: list[list[int]],
    temperature: float = 1.0,
    *,
    with_grad: bool = False,
    return_logits: bool = False,
) -> list[torch.Tensor]:
    """Per-token ``log p(x_t | x_<t)`` for ``t >= 1`` of each sequence (right-padded batch).

    Returns one tensor per sequence, shape ``[len_i - 1]`` (fp32); with ``return_logits`` the
    temperature-scaled logits ``z / T`` of shape ``[len_i - 1, V]`` instead (row ``j`` predicts
    ``x_{j+1}``). This is the trainer's recomputation path; the model's train/eval mode is the
    caller's (use eval mode to match the sampler).
    """
    if temperature <= 0:
        raise ScoringError(f"temperature must be > 0, got {temperature}")
    if not input_ids:
        return []
    if any(len(s) < 2 for s in input_ids):
        raise ScoringError("every sequence needs at least 2 tokens to score")
    device = next(model.parameters()).device
    B, L = len(input_ids), max(len(s) for s in input_ids)
    ids_BL = torch.zeros((B, L), dtype=torch.long, device=device)
    mask_BL = torch.zeros((B, L), dtype=torch.long, device=device)
    for b, seq in enumerate(input_ids):
        ids_BL[b, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        mask_BL[b, : len(seq)] = 1
    grad = torch.enable_grad() if with_grad else torch.no_grad()
    with grad:
        logits_BLV = model(input_ids=ids_BL, attention_mask=mask_BL, use_cache=False).logits
        logits_BTV = logits_BLV[:, :-1]
        if return_logits:
            scaled = logits_BTV.float() / temperature
            return [scaled[b, : len(s) - 1] for b, s in enumerate(input_ids)]
        logp_BT = gather_logprobs(logits_BTV, ids_BL[:, 1:], temperature)
    return [logp_BT[b, : len(s) - 1] for b, s in enumerate(input_ids)]


def vllm_prompt_logprobs(backend: Any, input_ids: list[list[int]], temperature: float = 1.0) -> list[torch.Tensor]:
    """:func:`sequence_logprobs` through a vLLM backend's prompt log-probs (``temperature`` 1 only).

    vLLM computes prompt log-probs from the raw logits, so other temperatures are refused.
    """
    if abs(temperature - 1.0) > 1e-9:
        raise ScoringError("vLLM prompt log-probs are computed at temperature 1 only")
    return [torch.tensor(lp, dtype=torch.float32) for lp in backend.prompt_logprobs(input_ids)]


# --------------------------------------------------------------------------- score_turns


def _requests(
    episode: Episode, renderer: Renderer | None, texts: PrivilegedTexts | None, mode: str
) -> Iterator[tuple[list[int], list[tuple[Turn, int]]]]:
    """Sequences to score for one episode and, per turn, where its completion starts in them."""
    if texts is None:
        yield episode.full_ids, [(t, len(t.prompt_ids)) for t in episode.turns]
        return
    if renderer is None:
        raise ScoringError("privileged scoring needs renderer= (it splices the privileged block)")
    if mode == "episode":
        ids, _, n = renderer.teacher_ids(episode.full_ids, texts(episode, episode.turns[0]))
        yield ids, [(t, len(t.prompt_ids) + n) for t in episode.turns]
        return
    for turn in episode.turns:
        ids, _, n = renderer.teacher_ids(list(turn.prompt_ids) + list(turn.completion_ids), texts(episode, turn))
        yield ids, [(turn, len(turn.prompt_ids) + n)]


def _recorded_text(strength: str) -> PrivilegedTexts:
    def text(episode: Episode, turn: Turn) -> str:
        recorded = turn.privileged.to_dict().get(strength) if turn.privileged is not None else None
        if recorded is None:
            raise ScoringError(
                f"turn {turn.index} of episode {episode.episode_id or episode.task_id} has no recorded "
                f"privileged text {strength!r}; add it to RolloutConfig.record_privileged"
            )
        return recorded

    return text


def _batches(seqs: list[list[int]], batch_tokens: int) -> Iterator[list[int]]:
    """Indices of ``seqs`` grouped (longest first) so that rows x max length <= batch_tokens."""
    order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i]))
    batch: list[int] = []
    for i in order:
        width = len(seqs[batch[0]]) if batch else len(seqs[i])
        if batch and (len(batch) + 1) * width > batch_tokens:
            yield batch
            batch = []
        batch.append(i)
    if batch:
        yield batch


def score_turns(
    model: Any,
    episodes: list[Episode],
    *,
    renderer: Renderer | None = None,
    privileged_strength: str | None = None,
    temperature: float = 1.0,
    disable_adapter: bool = False,
    batch_tokens: int = 16384,
    mode: str = "turn",
    privileged_texts: PrivilegedTexts | None = None,
) -> None:
    """Fill ``turn.teacher_logprobs`` (``len == len(turn.completion_ids)``) for every turn, in place.

    Args:
        model: the teacher (``nn.Module``), or a vLLM backend (prompt log-probs, T = 1).
        renderer: needed for privileged scoring.
        privileged_strength: read ``turn.privileged`` at that strength (recorded by the rollout)
            and splice it in; ``None`` scores the student's own context.
        temperature: log-probs of ``softmax(z / T)``.
        disable_adapter: score with a PEFT model's base weights (``model.disable_adapter()``).
        batch_tokens: padded tokens per forward pass.
        mode: ``"turn"`` (one forward per turn with its own text) or ``"episode"``.
        privileged_texts: ``f(episode, turn) -> str`` overriding the recorded text (e.g. the
            TT-OPD reinforcing/corrective hint chosen by the trainer).

    Log-probs are filled for every completion token, including end-of-turn tokens appended with
    loss mask 0 (they are real context tokens; trainers mask them).
    """
    if mode not in ("turn", "episode"):
        raise ScoringError(f"mode must be 'turn' or 'episode', got {mode!r}")
    texts = privileged_texts or (_recorded_text(privileged_strength) if privileged_strength else None)
    seqs: list[list[int]] = []
    targets: list[list[tuple[Turn, int]]] = []
    for episode in episodes:
        if not episode.turns:
            continue
        for ids, where in _requests(episode, renderer, texts, mode):
            seqs.append(ids)
            targets.append(where)
    if disable_adapter and not hasattr(model, "disable_adapter"):
        raise ScoringError("disable_adapter=True needs a PEFT model (it has no disable_adapter())")
    context = model.disable_adapter() if disable_adapter else contextlib.nullcontext()
    with context:
        for batch in _batches(seqs, batch_tokens):
            rows = sorted({start - 1 + k for i in batch for turn, start in targets[i]
                           for k in range(len(turn.completion_ids))})
            logps = _score(model, [seqs[i] for i in batch], temperature, rows)
            for i, lp in zip(batch, logps):
                for turn, start in targets[i]:
                    values = lp[start - 1 : start - 1 + len(turn.completion_ids)]
                    turn.teacher_logprobs = [float(v) for v in values.tolist()]


def _score(model: Any, seqs: list[list[int]], temperature: float, rows: list[int]) -> list[torch.Tensor]:
    """Log-probs of ``seqs`` (as :func:`sequence_logprobs`), computed only at ``rows`` (NaN elsewhere)."""
    if hasattr(model, "prompt_logprobs"):
        return vllm_prompt_logprobs(model, seqs, temperature)
    was_training = model.training
    model.eval()
    try:
        return _rows_logprobs(model, seqs, temperature, rows)
    finally:
        model.train(was_training)


@torch.no_grad()
def _rows_logprobs(model: Any, seqs: list[list[int]], temperature: float, rows: list[int]) -> list[torch.Tensor]:
    """Only the vocabulary projection of the needed rows is computed (``logits_to_keep``).

    Completion tokens are a small part of an episode (the system prompt and observations are
    most of it), so this skips most of the ``[B, L, V]`` logits.
    """
    device = next(model.parameters()).device
    B, L = len(seqs), max(len(s) for s in seqs)
    ids_BL = torch.zeros((B, L), dtype=torch.long, device=device)
    mask_BL = torch.zeros((B, L), dtype=torch.long, device=device)
    for b, seq in enumerate(seqs):
        ids_BL[b, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        mask_BL[b, : len(seq)] = 1
    keep_U = torch.tensor([r for r in rows if r < L - 1], dtype=torch.long, device=device)
    try:
        logits_BUV = model(input_ids=ids_BL, attention_mask=mask_BL, use_cache=False, logits_to_keep=keep_U).logits
    except TypeError:  # a model without ``logits_to_keep``: project every row, then select
        logits_BUV = model(input_ids=ids_BL, attention_mask=mask_BL, use_cache=False).logits[:, keep_U]
    logp_BU = gather_logprobs(logits_BUV, ids_BL[:, keep_U + 1], temperature)
    full_BT = torch.full((B, L - 1), float("nan"), device=device)
    full_BT[:, keep_U] = logp_BU
    return [full_BT[b, : len(s) - 1] for b, s in enumerate(seqs)]
