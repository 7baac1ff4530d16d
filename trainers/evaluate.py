"""Evaluation: run a policy on a task split (greedy or sampled) and report success per task type.

``python -m trainers eval --env <id> --model <path> --split valid_seen --episodes N [--greedy]``
loads a checkpoint (any directory ``agents.models.load_model`` reads, or a bundled name), plays
each of the split's first ``N`` tasks once, prints a table and records the episodes plus the
summary metrics as a run of method ``eval`` in the store. The training loop calls
``evaluate_policy`` every ``eval_every`` steps with its live backend.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import envs
from agents.backends import SamplingParams, make_backend
from agents.rollout import RolloutConfig, collect_groups
from agents.types import Episode
from trainers.config import config_to_dict
from trainers.runtime import load_any_model, open_store, renderer_factory
from trainers.stats import wilson_interval
from trainers.train_config import DEFAULT_ENV, DEFAULT_MODEL

__all__ = ["EvalConfig", "EvalReport", "evaluate_policy", "evaluate_checkpoint"]


@dataclass
class EvalConfig:
    """Settings of ``python -m trainers eval``."""

    env: str = field(default=DEFAULT_ENV, metadata={"help": "env id"})
    model: str = field(default=DEFAULT_MODEL, metadata={"help": "checkpoint dir or bundled model"})
    split: str = field(default="valid_seen", metadata={
        "help": "task split", "choices": ("train", "valid_seen", "valid_unseen")})
    episodes: int = field(default=16, metadata={"help": "tasks to play (one episode each)"})
    greedy: bool = field(default=False, metadata={"help": "greedy decoding (else sample at temperature)"})
    temperature: float = field(default=1.0, metadata={"help": "sampling temperature when not greedy"})
    seed: int = field(default=0, metadata={"help": "sampling seed"})
    max_turns: int = field(default=8, metadata={"help": "assistant turns per episode"})
    max_new_tokens: int = field(default=48, metadata={"help": "tokens per assistant turn"})
    max_context_tokens: int = field(default=2048, metadata={"help": "context window"})
    env_kwargs: dict = field(default_factory=dict, metadata={"help": "keyword arguments for envs.make"})
    backend: str = field(default="auto", metadata={"help": "generation backend", "choices": ("auto", "hf", "vllm")})
    store: str = field(default="", metadata={"help": "store URL (default: <output_dir>/distillgym.db)"})
    output_dir: str = field(default="runs", metadata={"help": "where the default store lives"})
    run_name: str = field(default="", metadata={"help": "name of the eval run in the store"})


@dataclass
class EvalReport:
    """Success rate overall and per task type."""

    split: str
    episodes: list[Episode]
    success_rate: float
    mean_reward: float
    mean_turns: float
    by_task_type: dict[str, tuple[int, float]]  # task type -> (episodes, success rate)

    @property
    def successes(self) -> int:
        return sum(int(bool(e.won)) for e in self.episodes)

    @property
    def success_ci(self) -> tuple[float, float]:
        """95% Wilson interval of the success rate over the episodes played."""
        return wilson_interval(self.successes, len(self.episodes))

    def flat(self) -> dict[str, float]:
        lo, hi = self.success_ci
        out = {"success_rate": self.success_rate, "success_ci_low": lo, "success_ci_high": hi,
               "reward": self.mean_reward, "turns": self.mean_turns,
               "episodes": float(len(self.episodes))}
        out.update({f"success/{t}": rate for t, (_, rate) in self.by_task_type.items()})
        return out

    def table(self) -> str:
        lo, hi = self.success_ci
        lines = [f"split {self.split}: success {self.success_rate:.3f} [95% CI {lo:.3f}, {hi:.3f}] over "
                 f"{len(self.episodes)} episodes (reward {self.mean_reward:.3f}, turns {self.mean_turns:.1f})"]
        for t, (n, rate) in sorted(self.by_task_type.items()):
            t_lo, t_hi = wilson_interval(round(rate * n), n)
            lines.append(f"  {t:<36} {rate:.3f}  [{t_lo:.3f}, {t_hi:.3f}]  (n={n})")
        return "\n".join(lines)


def report_from_episodes(split: str, episodes: list[Episode]) -> EvalReport:
    n = max(len(episodes), 1)
    per: dict[str, list[float]] = defaultdict(list)
    for ep in episodes:
        per[ep.task_type or "unknown"].append(float(ep.won))
    return EvalReport(
        split=split, episodes=episodes,
        success_rate=sum(float(e.won) for e in episodes) / n,
        mean_reward=sum(e.reward for e in episodes) / n,
        mean_turns=sum(e.num_turns for e in episodes) / n,
        by_task_type={t: (len(v), sum(v) / len(v)) for t, v in per.items()},
    )


def evaluate_policy(
    backend: Any,
    renderer_factory: Any,
    env_id: str,
    *,
    split: str = "valid_seen",
    episodes: int = 16,
    greedy: bool = True,
    temperature: float = 1.0,
    seed: int = 0,
    max_turns: int = 8,
    max_new_tokens: int = 48,
    max_context_tokens: int = 2048,
    env_kwargs: dict[str, Any] | None = None,
) -> EvalReport:
    """Play the first ``episodes`` tasks of ``split`` once each with ``backend``."""
    env = envs.make(env_id, **(env_kwargs or {}))
    try:
        base: Any = env.unwrapped
        task_ids = list(base.task_ids(split, episodes))
    finally:
        env.close()
    sampling = SamplingParams(temperature=0.0 if greedy else temperature,
                              max_tokens=max_new_tokens)  # per-turn seeds derive from `seed`
    cfg = RolloutConfig(group_size=1, max_turns=max_turns, max_context_tokens=max_context_tokens,
                        sampling=sampling)
    groups = collect_groups(env_id, task_ids, backend, renderer_factory, cfg, seed=seed,
                            policy_version=getattr(backend, "policy_version", 0), env_kwargs=env_kwargs)
    return report_from_episodes(split, [ep for g in groups for ep in g.episodes])


def evaluate_checkpoint(cfg: EvalConfig, *, policy: tuple[Any, Any] | None = None) -> EvalReport:
    """Load ``cfg.model``, evaluate it, print the table and record it in the store."""
    model, tokenizer = policy if policy is not None else load_any_model(cfg.model)
    backend = make_backend(cfg.backend if cfg.backend != "vllm" else "vllm", model=model,
                           tokenizer=tokenizer,
                           **({"model_dir": cfg.model} if cfg.backend == "vllm" else {}))
    report = evaluate_policy(backend, renderer_factory(tokenizer), cfg.env, split=cfg.split, episodes=cfg.episodes,
                             greedy=cfg.greedy, temperature=cfg.temperature, seed=cfg.seed,
                             max_turns=cfg.max_turns, max_new_tokens=cfg.max_new_tokens,
                             max_context_tokens=cfg.max_context_tokens, env_kwargs=cfg.env_kwargs)
    store = open_store(cfg)  # type: ignore[arg-type]
    name = cfg.run_name or f"eval-{Path(cfg.model).name}-{cfg.split}-{datetime.now():%Y%m%d-%H%M%S}"
    run_id = store.create_run(name, "eval", config_to_dict(cfg), seed=cfg.seed)
    store.add_episodes(run_id, 0, report.episodes)
    store.log_step(run_id, 0, report.flat())
    store.flush()
    store.set_status(run_id, "finished")
    return report
