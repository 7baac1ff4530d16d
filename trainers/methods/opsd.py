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

import contextlib
import copy
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from agents.rollout import STRENGTHS as ROLLOUT_STRENGTHS
from agents.types import Episode, EpisodeGroup, Turn
from trainers.config import ConfigError
from trainers.config import config_field as _f
from trainers.losses import aggregate, masked_sum
from trainers.methods import register_method
from trainers.methods.base import (
    Method,
    TrainBatch,
    TrainContext,
    _pad_id,
    build_batch,
    policy_loss,
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
# Privileged teacher views and scoring (shared by OPSD, π-Distill, TT-OPD and Skill-SD)
# ============================================================================================

PRIVILEGED_STRENGTHS: tuple[str, ...] = tuple(ROLLOUT_STRENGTHS)
"""The env's privileged strengths (``envs.base.STRENGTHS``, as the rollout records them)."""


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
        from agents.ema import EMATeacher

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

    Built once per task from ``ctx.renderer_factory(env.unwrapped, reset_info)`` and cached in
    ``ctx.state["renderers"]``; teacher contexts must be spliced with the student's exact renderer.
    """
    cache: dict[str, Any] = ctx.state.setdefault("renderers", {})
    if task_id not in cache:
        import envs

        env = envs.make(ctx.env_id, **ctx.cfg.env_kwargs)
        try:
            _, info = env.reset(options={"task_id": task_id})
            cache[task_id] = ctx.renderer_factory(env.unwrapped, info)
        finally:
            env.close()
    return cache[task_id]


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
    from agents.scoring import score_turns

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
    from kernels import distill_loss_from_logits

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


@register_method("opsd")
class OPSD(Method):
    """On-policy self-distillation: the same weights with privileged context are the teacher."""

    config_cls = OPSDConfig
    description = "OPSD: reverse-KL to the same model seeing privileged info (shaping or JSD)"

    def setup(self, ctx: TrainContext) -> None:
        cfg: OPSDConfig = self.cfg  # type: ignore[assignment]
        self.view = build_teacher_view(ctx, cfg.self_teacher, cfg.ema_decay)

    def text(self, episode: Episode, turn: Turn) -> str:
        """Privileged text of a turn: what the rollout recorded at the configured strength."""
        return turn_privileged_text(turn, self.cfg.privileged)  # type: ignore[attr-defined]

    def score(self, ctx: TrainContext, groups: list[EpisodeGroup]) -> None:
        episodes = [ep for g in groups for ep in g.episodes if ep.turns]
        score_privileged(ctx, self.view, episodes, self.text, self.cfg.temperature)

    def make_batch(self, ctx: TrainContext, groups: list[EpisodeGroup]) -> TrainBatch:
        return build_batch(groups, _pad_id(ctx.tokenizer), std_norm=self.cfg.adv_std_norm,
                           with_teacher=True)

    def advantages(self, ctx: TrainContext, batch: TrainBatch) -> Tensor:
        cfg: OPSDConfig = self.cfg  # type: ignore[assignment]
        adv_B = batch.adv_B
        if cfg.opsd_mode == "shaping":
            assert batch.teacher_logp_BT is not None
            adv_B = opsd_shaped_advantages(adv_B, batch.old_logp_BT, batch.teacher_logp_BT,
                                           batch.loss_mask_BT, cfg.opsd_beta)
        return adv_B[:, None] * batch.loss_mask_BT

    def loss(
        self, ctx: TrainContext, batch: TrainBatch, logp_BT: Tensor, logits_fn: Callable[[], Tensor]
    ) -> tuple[Tensor, dict[str, float]]:
        cfg: OPSDConfig = self.cfg  # type: ignore[assignment]
        if cfg.opsd_mode == "shaping":
            return policy_loss(cfg, batch, logp_BT)
        pg, stats = policy_loss(cfg, batch, logp_BT)
        div = self.divergence(ctx, batch, logits_fn)
        stats["distill_loss"] = float(div.item())
        return cfg.grpo_coef * pg + cfg.distill_coef * div, stats

    def divergence(
        self, ctx: TrainContext, batch: TrainBatch, logits_fn: Callable[[], Tensor]
    ) -> Tensor:
        """``agg_t JSD_β(π_T(·|x,I) ‖ π_S(·|x))`` over the micro-batch's trained tokens."""
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
            self.view.ema.update(ctx.model)

    def state_dict(self) -> dict[str, Any]:
        if self.view_is_ema():
            return {"ema": self.view.model.state_dict()}
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "ema" in state and self.view_is_ema():
            self.view.model.load_state_dict(state["ema"])

    def view_is_ema(self) -> bool:
        return getattr(self, "view", None) is not None and self.view.ema is not None
