"""Teachers: every way a method gets log-probs or logits of the student's token ids from a teacher.

One home for teacher scoring (one log-prob convention: position ``t`` is about token ``x_t``):

- a **separate teacher model** (OPD, SOD, TCOD): ``load_teacher`` (tokenizer checked by
  ``check_same_tokenizer``) and ``score_trained_tokens`` (sampled-token log-probs, the LM head
  applied only where a trained token is predicted);
- a **privileged view** of a model (OPSD, π-Distill, TT-OPD, Skill-SD): ``TeacherView`` picks the
  weights (the current policy, the frozen initial weights = the LoRA adapter off, or an EMA copy),
  ``score_privileged`` fills the sampled-token log-probs from the privileged context, and
  ``teacher_logits_for_batch`` / ``divergence_loss`` give the full-vocabulary divergence.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

import envs
from agents.ema import EMATeacher
from agents.scoring import score_turns
from agents.types import Episode, EpisodeGroup, Turn
from envs import STRENGTHS
from kernels import distill_loss_from_logits
from trainers.batch import TrainBatch, TrainContext, build_batch, pad_token_id
from trainers.config import ConfigError
from trainers.errors import TeacherMismatchError
from trainers.runtime import load_any_model, policy_logprobs
from trainers.train_config import TrainConfig

__all__ = [
    "OPDConfig",
    "check_same_tokenizer",
    "load_teacher",
    "score_trained_tokens",
    "PRIVILEGED_STRENGTHS",
    "TeacherView",
    "build_teacher_view",
    "turn_privileged_text",
    "renderer_for",
    "TextFn",
    "score_privileged",
    "logits_at",
    "teacher_logits_for_batch",
    "divergence_loss",
]


# ============================================================================================
# A separate teacher model
# ============================================================================================


@dataclass
class OPDConfig(TrainConfig):
    """Settings of every method that distils from a separate teacher model (OPD, SOD, TCOD)."""

    method: str = field(default="opd", metadata={"help": "training method (set by the CLI sub-command)"})
    opd_coef: float = field(default=1.0, metadata={"help": "c in A_t = [A_GRPO] + c·(log π_T − log π_old)"})
    use_grpo: bool = field(default=False, metadata={"help": "add the task-reward advantage A_GRPO"})

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.teacher:
            raise ConfigError(f"teacher: the {self.method} method needs a teacher model "
                              "(teacher=<bundled name or checkpoint dir>)")


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
    batch = build_batch(groups, pad_token_id(tokenizer))
    out = torch.zeros_like(batch.old_logp_BT)
    with torch.no_grad():
        for rows, mb in batch.micro_batches_with_rows(token_budget):
            lp = policy_logprobs(teacher, mb, temperature).logp_BT.cpu()
            out[rows, : lp.shape[1]] = lp
    for b, ep in enumerate(batch.episodes):
        for t in ep.turns:
            s = len(t.prompt_ids)
            t.teacher_logprobs = out[b, s : s + len(t.completion_ids)].tolist()


# ============================================================================================
# Privileged views of a model
# ============================================================================================


PRIVILEGED_STRENGTHS: tuple[str, ...] = STRENGTHS
"""The env's privileged strengths (``envs.base.STRENGTHS``, defined once there)."""


@dataclass
class TeacherView:
    """Which weights score the privileged context.

    ``current``: the live policy (so with empty privileged text the teacher *is* the student);
    ``frozen``: the initial weights (the LoRA adapter disabled, or a frozen copy for full
    fine-tuning); ``ema``: an ``agents.ema.EMATeacher`` copy, updated by the method.
    """

    kind: str
    model: nn.Module
    disable_adapter: bool = False
    ema: Any = None

    @property
    def is_student(self) -> bool:
        return self.kind == "current"


def build_teacher_view(ctx: TrainContext, kind: str, ema_decay: float = 0.999) -> TeacherView:
    """Build the teacher for ``kind`` in {current, frozen, ema} from the context's policy."""
    if kind == "current":
        return TeacherView("current", ctx.model)
    if kind == "frozen":
        if hasattr(ctx.model, "disable_adapter") and ctx.cfg.finetune == "lora":
            return TeacherView("frozen", ctx.model, disable_adapter=True)
        frozen = copy.deepcopy(ctx.model).eval()
        frozen.requires_grad_(False)
        return TeacherView("frozen", frozen)
    if kind == "ema":
        ema = EMATeacher(ctx.model, ema_decay)
        return TeacherView("ema", ema.model, ema=ema)
    raise ValueError(f"unknown teacher kind {kind!r}; allowed: current, frozen, ema")


def turn_privileged_text(turn: Turn, strength: str) -> str:
    """The privileged text the rollout recorded for ``turn`` at ``strength`` ("" when none)."""
    priv = turn.info.get("privileged") or {}
    text = priv.get(strength, "") if isinstance(priv, dict) else ""
    return text if isinstance(text, str) else ""


def renderer_for(ctx: TrainContext, task_id: str) -> Any:
    """The renderer the rollout used for ``task_id`` (family, instructions and tools of that task).

    ``collect_rollouts`` keeps each group's renderer in ``ctx.renderers``; teacher contexts must be
    spliced with the student's exact renderer. Episodes that did not come through it (a caller's
    own ``collect_groups``, episodes read back from the store) get one built from a reset env,
    once per task.
    """
    if task_id not in ctx.renderers:
        env = envs.make(ctx.env_id, **ctx.cfg.env_kwargs)
        try:
            _, info = env.reset(options={"task_id": task_id})
            ctx.renderers[task_id] = ctx.renderer_factory(env.unwrapped, info)
        finally:
            env.close()
    return ctx.renderers[task_id]


TextFn = Callable[[Episode, Turn], str]
"""``f(episode, turn) -> privileged text`` spliced into the teacher's context of that turn."""


def score_privileged(
    ctx: TrainContext, view: TeacherView, episodes: list[Episode], text_fn: TextFn,
    temperature: float,
) -> None:
    """Fill ``turn.teacher_logprobs`` with the teacher's log-probs on the student's exact ids.

    Splicing ``text_fn(episode, turn)`` into each turn's context and re-aligning the teacher's
    log-probs is ``agents.scoring.score_turns``'s job. When the teacher is the current policy
    and a turn's text is empty, the teacher context *equals* the student context, so the
    teacher log-probs are the sampler's own: every distillation term on that turn is exactly 0
    (and no forward pass is spent on it).
    """
    todo = [
        ep for ep in episodes
        if ep.turns and not (view.is_student and not any(text_fn(ep, t) for t in ep.turns))
    ]
    by_task: dict[str, list[Episode]] = {}
    for ep in todo:
        by_task.setdefault(ep.task_id, []).append(ep)
    for task_id, task_episodes in by_task.items():
        score_turns(
            view.model, task_episodes, renderer=renderer_for(ctx, task_id), temperature=temperature,
            disable_adapter=view.disable_adapter, privileged_texts=text_fn,
            batch_tokens=ctx.cfg.token_budget,
        )
    if view.is_student:
        for episode in episodes:
            for turn in episode.turns:
                if not text_fn(episode, turn):
                    turn.teacher_logprobs = [
                        lp if m else 0.0 for lp, m in zip(turn.sampler_logprobs, turn.loss_mask)
                    ]


def logits_at(model: nn.Module, ids: list[int], rows: Tensor, *, with_grad: bool = False) -> Tensor:
    """Raw logits of ``model`` on the sequence ``ids`` at row positions ``rows`` only.

    ``out[i] = z[rows[i]]`` where ``z[j]`` predicts ``ids[j + 1]``; computed with the HF
    ``logits_to_keep`` argument so the ``(L, V)`` head output is never materialized (a
    full-vocabulary log-softmax over every prompt position dominates scoring time otherwise).
    Shapes: ``rows (R,) long -> (R, V)``.
    """
    device = next(model.parameters()).device
    input_ids = torch.tensor([ids], dtype=torch.long, device=device)
    with torch.enable_grad() if with_grad else torch.no_grad():
        out = model(input_ids=input_ids, logits_to_keep=rows.to(device), use_cache=False)
    return out.logits[0]


@contextlib.contextmanager
def _adapter_disabled(model: nn.Module, disable: bool) -> Iterator[None]:
    if disable:
        with model.disable_adapter():  # type: ignore[operator]
            yield
    else:
        yield


def teacher_logits_for_batch(
    ctx: TrainContext, view: TeacherView, batch: TrainBatch, text_fn: TextFn
) -> tuple[Tensor, Tensor, Tensor]:
    """Teacher logits at every trained position of ``batch``, from the privileged context.

    For each turn of each row the teacher context is ``teacher_ids(prompt + completion, I_k)``
    (a block of ``n`` tokens spliced at ``pos``); the student token at row position ``t``
    (``t ≥ pos``) sits at ``t + n`` there, so its predicting logits are teacher row ``t + n − 1``
    (student row ``t − 1``). Turns whose text is empty while the teacher is the current policy
    are skipped: their divergence is exactly 0.

    Returns ``(b_N, t_N, logits_NV)``: row and position in ``batch`` of each gathered token and
    the teacher's raw logits that predict it. No gradient.
    """
    seqs: list[list[int]] = []
    where: list[tuple[int, list[int], int]] = []  # (row, student positions, block length n)
    for b, episode in enumerate(batch.episodes):
        for turn in episode.turns:
            text = text_fn(episode, turn)
            if view.is_student and not text:
                continue
            start = len(turn.prompt_ids)
            positions = [start + j for j, m in enumerate(turn.loss_mask) if m]
            if positions:
                renderer = renderer_for(ctx, episode.task_id)
                ids, _, n = renderer.teacher_ids(list(turn.prompt_ids) + list(turn.completion_ids), text)
                seqs.append(ids)
                where.append((b, positions, n))
    rows: list[Tensor] = []
    b_list: list[int] = []
    t_list: list[int] = []
    with _adapter_disabled(view.model, view.disable_adapter):
        for (b, positions, n), ids in zip(where, seqs):
            keep = torch.tensor([t + n - 1 for t in positions], dtype=torch.long)
            rows.append(logits_at(view.model, ids, keep).float())
            b_list += [b] * len(positions)
            t_list += positions
    if not rows:
        empty = torch.zeros(0, dtype=torch.long)
        return empty, empty, torch.zeros(0, _vocab_size(view.model))
    return torch.tensor(b_list), torch.tensor(t_list), torch.cat(rows, 0)


def _vocab_size(model: nn.Module) -> int:
    config = getattr(model, "config", None)
    return int(getattr(config, "vocab_size", 0) or 0)


def divergence_loss(
    student_logits_NV: Tensor,
    teacher_logits_NV: Tensor,
    *,
    beta: float = 0.5,
    temperature: float = 1.0,
) -> Tensor:
    """Per-token generalized ``JSD_β(π_T ‖ π_S)`` on full logit rows, through ``kernels``.

    ``M = β·P_T + (1−β)·P_S``, ``JSD_β = β·KL(P_T‖M) + (1−β)·KL(P_S‖M)`` after dividing both
    rows by ``temperature``; ``β=0`` is forward KL(T‖S), ``β=1`` reverse KL(S‖T) (TRL convention,
    endpoints special-cased by the kernel). The teacher is a stop-gradient target.
    Shapes: ``(N, V), (N, V) -> (N,)``.
    """
    out = distill_loss_from_logits(
        student_logits_NV,
        teacher_logits_NV.detach(),
        kind="jsd",
        beta=beta,
        temperature=temperature,
        reduction="none",
    )
    assert isinstance(out, Tensor)  # no entropy requested: a single tensor
    return out

