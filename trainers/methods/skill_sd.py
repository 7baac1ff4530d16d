"""Skill-SD: skill-conditioned self-distillation (algorithms.md §3; arXiv 2604.10674).

The student always acts on the plain task prompt. The teacher is the *same current weights*
(nothing to sync: it is the live policy) whose prompt adds a **skill** for the task: a JSON
summary ``{success_analysis, mistake_analysis, golden_workflow}`` of an earlier completed
trajectory, kept in the run's skill bank in the store (``trainers.skills``). Per task and step
one skill is picked by UCB ``mean_reward + c·sqrt(ln N / n)`` (untried skills first); the bank
starts empty and is filled by an asynchronous summarizer worker after each step.

Loss (λ = 0.001; 0.01 over-regularizes)::

    L = L_GRPO + λ·L_SDL,   L_SDL = agg_t ρ_t·(exp(−ℓ_t) − 1 + ℓ_t),
    ℓ_t = log π_S(y_t) − sg log π_T(y_t),   ρ_t = π_S(y_t) / sg π_old(y_t)

whose gradient is ``ρ_t·ℓ_t·∇log π_S`` (the importance-corrected reverse-KL gradient;
``kernels.importance_weighted_k3``). Only episodes whose teacher saw a skill get the term (for the
others the teacher *is* the student). ``episode.info["skill_id"]`` records the conditioning skill.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import torch
from torch import Tensor

from agents.types import EndReason, Episode, EpisodeGroup, Turn
from kernels import importance_weighted_k3
from trainers.config import ConfigError
from trainers.config import config_field as _f
from trainers.errors import TrainerError
from trainers.losses import aggregate
from trainers.methods import register_method
from trainers.methods.base import (
    Method,
    RolloutOverrides,
    TrainBatch,
    TrainContext,
    build_batch,
    pad_token_id,
    policy_loss,
)
from trainers.runtime import PolicyOutput, load_any_model
from trainers.skills import (
    ModelSummarizer,
    OpenAISummarizer,
    Skill,
    SkillBank,
    SkillWorker,
    Summarizer,
    select_skill,
    skill_text,
)
from trainers.teachers import (
    PRIVILEGED_SCORING,
    TeacherView,
    check_privileged_scoring,
    score_privileged,
)
from trainers.train_config import TrainConfig

__all__ = ["SkillSD", "SkillSDConfig", "skill_sdl_loss", "build_summarizer", "pick_for_summary"]


def skill_sdl_loss(logp_BT: Tensor, teacher_logp_BT: Tensor, old_logp_BT: Tensor) -> Tensor:
    """Per-token ``ρ_t·(exp(−ℓ_t) − 1 + ℓ_t)`` (``kernels.importance_weighted_k3``).

    ``ℓ_t = log π_S − sg log π_T``, ``ρ_t = exp(log π_S − sg log π_old)``; gradient w.r.t.
    ``logp_BT`` is ``ρ_t·ℓ_t``. Shapes: all ``(B, T) -> (B, T)``; the caller masks and aggregates.
    """
    return importance_weighted_k3(logp_BT, teacher_logp_BT.detach(), old_logp_BT.detach())



@dataclass
class SkillSDConfig(TrainConfig):
    """Skill-SD settings: ``L = L_GRPO + skill_lambda·L_SDL``, UCB constant ``skill_c``."""

    method: str = _f("skill-sd", "training method (set by the CLI sub-command)")

    skill_lambda: float = _f(0.001, "λ of the importance-weighted k3 distillation term")
    skill_c: float = _f(1.0, "c of the UCB skill selection mean + c·sqrt(ln N / n)")
    summarizer: str = _f("policy", "who writes skills: the policy, a local model, or an HTTP endpoint",
                         ("policy", "model", "http"))
    summarizer_model: str = _f("", "local model (bundled name or HF directory) for summarizer=model")
    summarizer_url: str = _f("", "OpenAI-compatible base URL for summarizer=http (POST /v1/chat/completions)")
    summarizer_api_model: str = _f("default", "the 'model' field sent to the HTTP endpoint")
    summarizer_max_tokens: int = _f(256, "max tokens of one summary")
    summarizer_structured: bool = _f(True, "local summarizers: force the JSON skeleton, the model writes "
                                     "only the values (constrained decoding; small models need it)")
    summarizer_attempts: int = _f(2, "attempts per trajectory before a malformed summary is dropped")
    skills_per_group: int = _f(1, "trajectories summarized per group and step (the best rewards)")
    summarize_only_won: bool = _f(False, "summarize only successful trajectories")
    summarize_async: bool = _f(True, "summarize in a background thread (False: wait each step, reproducible)")
    privileged_scoring: str = _f("trainer", "where the skill-conditioned teacher scores: the trainer's "
                                 "copy of the policy, or the sampler servers (backend=server)", PRIVILEGED_SCORING)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.skill_lambda < 0 or self.skill_c < 0:
            raise ConfigError("skill_lambda and skill_c must be >= 0")
        if self.summarizer == "http" and not self.summarizer_url:
            raise ConfigError("summarizer_url: summarizer=http needs the endpoint's base URL")
        if self.summarizer == "model" and not self.summarizer_model:
            raise ConfigError("summarizer_model: summarizer=model needs a model name or directory")
        if self.summarizer_attempts < 1 or self.skills_per_group < 0 or self.summarizer_max_tokens < 1:
            raise ConfigError("summarizer_attempts and summarizer_max_tokens must be >= 1, "
                              "skills_per_group >= 0")
        check_privileged_scoring(self)


def build_summarizer(cfg: SkillSDConfig, ctx: TrainContext, lock: threading.Lock) -> Summarizer:
    """The configured summarizer backend (the policy model by default)."""
    if cfg.summarizer == "http":
        return OpenAISummarizer(cfg.summarizer_url, model=cfg.summarizer_api_model,
                                max_tokens=cfg.summarizer_max_tokens)
    if cfg.summarizer == "model":
        model, tokenizer = load_any_model(cfg.summarizer_model)
        return ModelSummarizer(model.to(ctx.device).eval(), tokenizer, cfg.summarizer_max_tokens,
                               structured=cfg.summarizer_structured)
    return ModelSummarizer(ctx.inference_model, ctx.tokenizer, cfg.summarizer_max_tokens, lock=lock,
                           structured=cfg.summarizer_structured)


def pick_for_summary(group: EpisodeGroup, k: int, only_won: bool = False) -> list[Episode]:
    """The ``k`` highest-reward completed episodes of a group (env errors and empty ones excluded)."""
    done = [ep for ep in group.episodes
            if ep.turns and ep.end_reason != EndReason.ENV_ERROR and (ep.won or not only_won)]
    return sorted(done, key=lambda ep: -ep.reward)[:k]


@register_method("skill-sd")
class SkillSD(Method):
    """Skill-conditioned self-distillation with a UCB-selected skill bank."""

    config_cls = SkillSDConfig
    description = "Skill-SD: teacher = current weights + a UCB-chosen skill; GRPO + λ·IW-k3"

    def setup(self, ctx: TrainContext) -> None:
        if ctx.store is None or ctx.run_id is None:
            raise TrainerError("skill-sd keeps its skill bank in the store: the context has no store/run")
        cfg: SkillSDConfig = self.cfg  # type: ignore[assignment]
        self.bank = SkillBank(ctx.store, ctx.run_id)
        self.view = TeacherView("current", ctx.inference_model)
        self.lock = threading.Lock()
        self.worker = SkillWorker(build_summarizer(cfg, ctx, self.lock), self.bank,
                                  max_attempts=cfg.summarizer_attempts)
        self.chosen: dict[str, Skill | None] = {}

    def rollout_overrides(self, ctx: TrainContext, step: int, tasks: list[str]) -> RolloutOverrides:
        cfg: SkillSDConfig = self.cfg  # type: ignore[assignment]
        self.bank.step = step
        self.chosen = {task: select_skill(self.bank.for_task(task), cfg.skill_c) for task in tasks}
        return RolloutOverrides()  # the student never sees the skill

    def text(self, episode: Episode, turn: Turn) -> str:
        skill = self.chosen.get(episode.task_id)
        return skill_text(skill.content) if skill is not None else ""

    def score(self, ctx: TrainContext, groups: list[EpisodeGroup]) -> None:
        episodes = [ep for g in groups for ep in g.episodes if ep.turns]
        for group in groups:
            skill = self.chosen.get(group.task_id)
            for ep in group.episodes:
                ep.info["skill_id"] = skill.skill_id if skill is not None else None
                if skill is not None:
                    self.bank.record_use(skill.skill_id, ep.reward)
        score_privileged(ctx, self.view, episodes, self.text, self.cfg.temperature)

    def make_batch(self, ctx: TrainContext, groups: list[EpisodeGroup]) -> TrainBatch:
        batch = build_batch(groups, pad_token_id(ctx.tokenizer), std_norm=self.cfg.adv_std_norm,
                            with_teacher=True)
        batch.extras["skill_row_B"] = torch.tensor(
            [float(ep.info.get("skill_id") is not None) for ep in batch.episodes])
        return batch

    def loss(
        self, ctx: TrainContext, batch: TrainBatch, logp_BT: Tensor, fwd: PolicyOutput
    ) -> tuple[Tensor, dict[str, float]]:
        cfg: SkillSDConfig = self.cfg  # type: ignore[assignment]
        grpo, stats = policy_loss(cfg, batch, logp_BT)
        assert batch.teacher_logp_BT is not None
        sdl_BT = skill_sdl_loss(logp_BT, batch.teacher_logp_BT, batch.old_logp_BT)
        rows_B = batch.extras["skill_row_B"].to(logp_BT.device)
        sdl = aggregate(sdl_BT * rows_B[:, None], batch.loss_mask_BT, cfg.loss_agg,
                        num_tokens=batch.num_tokens, num_seqs=batch.num_seqs)
        stats["sdl_loss"] = float(sdl.item())
        return grpo + cfg.skill_lambda * sdl, stats

    def step_stats(self, batch: TrainBatch) -> dict[str, float]:
        stats = super().step_stats(batch)
        stats["skill_bank_size"] = float(self.bank.size())
        stats["skill_conditioned"] = float(batch.extras["skill_row_B"].mean().item()) if batch.num_seqs else 0.0
        stats["skills_stored"] = float(self.worker.stats.stored)
        stats["skills_dropped"] = float(self.worker.stats.dropped)
        return stats

    def after_step(self, ctx: TrainContext, step: int, groups: list[EpisodeGroup]) -> None:
        cfg: SkillSDConfig = self.cfg  # type: ignore[assignment]
        for group in groups:
            for ep in pick_for_summary(group, cfg.skills_per_group, cfg.summarize_only_won):
                self.worker.submit(ep)
        if not cfg.summarize_async:
            self.worker.drain()
