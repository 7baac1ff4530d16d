"""Evaluation: run a policy on task splits (greedy or sampled) and report every rate with its interval.

``python -m trainers eval --env <id> --model <path> --split valid_seen,valid_unseen --episodes N
[--greedy | samples=K]`` loads a checkpoint (any directory ``agents.models.load_model`` reads, or a
bundled name) and plays each of a split's first ``N`` tasks ``samples`` times (1 when greedy). It
prints, per split and per task type, the success rate with its 95% Wilson interval and episode
count, and with ``samples > 1`` the unbiased pass@k for ``k = 1 .. samples`` (mean over tasks of
``1 − C(n−c, k)/C(n, k)``, ``trainers.stats.pass_at_k``).

Everything goes to the store as a run of method ``eval``: the episodes (``step`` = chunk index),
one metrics row per split, and in the run's config ``checkpoint`` (the directory measured, resolved,
and the training run and step it came from when it lies under ``<output_dir>/<run>/``). Episodes are
played and written ``chunk`` tasks at a time, each chunk seeded by ``(seed, chunk index)``, so an
interrupted evaluation started again with the same ``run_name`` and ``resume=true`` skips the chunks
the store already holds and ends with exactly the episodes an uninterrupted one would have played.

Generation uses the fastest backend available (``backend=auto``: vLLM on CUDA when importable, else
the batched HF backend), with all of a chunk's episodes stepped in lock-step. The training loop
calls ``evaluate_policy`` every ``eval_every`` steps with its live backend.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import envs
from agents.backends import SamplingParams, make_backend
from agents.rollout import RolloutConfig, collect_groups
from agents.types import Episode
from trainers.config import ConfigError, config_to_dict
from trainers.runtime import load_any_model, open_store, renderer_factory
from trainers.stats import pass_at_k, two_proportion, wilson_interval
from trainers.train_config import DEFAULT_ENV, DEFAULT_MODEL

__all__ = ["EvalConfig", "EvalReport", "Rate", "evaluate_policy", "evaluate_checkpoint",
           "report_from_episodes", "split_task_ids", "checkpoint_link", "eval_splits", "baseline_lines"]

SPLIT_NAMES = ("train", "valid_seen", "valid_unseen")


@dataclass
class EvalConfig:
    """Settings of ``python -m trainers eval``."""

    env: str = field(default=DEFAULT_ENV, metadata={"help": "env id"})
    model: str = field(default=DEFAULT_MODEL, metadata={"help": "checkpoint dir or bundled model"})
    split: str = field(default="valid_seen", metadata={
        "help": "task split(s), comma-separated: train, valid_seen, valid_unseen"})
    episodes: int = field(default=16, metadata={"help": "tasks per split (each played `samples` times)"})
    greedy: bool = field(default=False, metadata={"help": "greedy decoding (else sample at temperature)"})
    samples: int = field(default=1, metadata={"help": "episodes per task when sampling (pass@k up to k=samples)"})
    temperature: float = field(default=1.0, metadata={"help": "sampling temperature when not greedy"})
    seed: int = field(default=0, metadata={"help": "sampling seed"})
    max_turns: int = field(default=8, metadata={"help": "assistant turns per episode"})
    max_new_tokens: int = field(default=48, metadata={"help": "tokens per assistant turn"})
    max_context_tokens: int = field(default=2048, metadata={"help": "context window"})
    env_kwargs: dict = field(default_factory=dict, metadata={"help": "keyword arguments for envs.make"})
    backend: str = field(default="auto", metadata={"help": "generation backend", "choices": ("auto", "hf", "vllm")})
    chunk: int = field(default=16, metadata={"help": "tasks played (and written to the store) together"})
    resume: bool = field(default=False, metadata={"help": "continue the eval run `run_name` where it stopped"})
    store: str = field(default="", metadata={"help": "store URL (default: <output_dir>/distillgym.db)"})
    output_dir: str = field(default="runs", metadata={"help": "where the default store lives"})
    run_name: str = field(default="", metadata={"help": "name of the eval run in the store"})
    baseline: str = field(default="", metadata={
        "help": "an earlier eval run in the store: print each split's difference to it (two-proportion test)"})

    def __post_init__(self) -> None:
        eval_splits(self.split)  # one line naming the bad split
        for name in ("episodes", "samples", "chunk", "max_turns", "max_new_tokens"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}={getattr(self, name)} must be >= 1")
        if self.greedy and self.samples > 1:
            raise ConfigError(f"samples={self.samples} needs sampling: greedy decoding repeats one episode")
        if not self.greedy and self.temperature <= 0:
            raise ConfigError(f"temperature={self.temperature} must be > 0 when sampling")
        if self.resume and not self.run_name:
            raise ConfigError("resume: needs run_name=<the eval run to continue>")


def eval_splits(spec: str) -> list[str]:
    """``"valid_seen,valid_unseen"`` -> ``["valid_seen", "valid_unseen"]``; unknown names refused."""
    splits = [s.strip() for s in spec.split(",") if s.strip()]
    bad = [s for s in splits if s not in SPLIT_NAMES]
    if not splits or bad:
        raise ConfigError(f"split={spec!r}: expected a comma list of {', '.join(SPLIT_NAMES)}")
    return splits


@dataclass(frozen=True)
class Rate:
    """``successes / n`` with its 95% Wilson interval."""

    successes: int
    n: int

    @property
    def value(self) -> float:
        return self.successes / self.n if self.n else 0.0

    @property
    def ci(self) -> tuple[float, float]:
        return wilson_interval(self.successes, self.n)

    def __str__(self) -> str:
        lo, hi = self.ci
        return f"{self.value:.3f} [{lo:.3f}, {hi:.3f}] (n={self.n})"


@dataclass
class EvalReport:
    """One split's episodes: success overall and per task type, and pass@k over repeated samples."""

    split: str
    episodes: list[Episode]
    success: Rate
    mean_reward: float
    mean_turns: float
    by_task_type: dict[str, Rate]
    pass_at: dict[int, float] = field(default_factory=dict)  # k -> mean unbiased pass@k over tasks
    samples: int = 1

    @property
    def success_rate(self) -> float:
        return self.success.value

    @property
    def successes(self) -> int:
        return self.success.successes

    @property
    def success_ci(self) -> tuple[float, float]:
        """95% Wilson interval of the success rate over the episodes played."""
        return self.success.ci

    def flat(self) -> dict[str, float]:
        lo, hi = self.success_ci
        out = {"success_rate": self.success_rate, "success_ci_low": lo, "success_ci_high": hi,
               "successes": float(self.successes), "reward": self.mean_reward, "turns": self.mean_turns,
               "episodes": float(self.success.n)}
        for t, rate in self.by_task_type.items():
            out[f"success/{t}"] = rate.value
            out[f"success_ci_low/{t}"], out[f"success_ci_high/{t}"] = rate.ci
            out[f"episodes/{t}"] = float(rate.n)
        out.update({f"pass@{k}": v for k, v in self.pass_at.items()})
        return out

    def table(self) -> str:
        tasks = self.success.n // max(self.samples, 1)
        lines = [f"split {self.split}: success {self.success} over {tasks} tasks x {self.samples} "
                 f"(reward {self.mean_reward:.3f}, turns {self.mean_turns:.1f})"]
        for t, rate in sorted(self.by_task_type.items()):
            lines.append(f"  {t:<36} {rate}")
        if self.pass_at:
            lines.append("  " + "  ".join(f"pass@{k} {v:.3f}" for k, v in sorted(self.pass_at.items())))
        return "\n".join(lines)


def report_from_episodes(split: str, episodes: list[Episode], samples: int = 1) -> EvalReport:
    """Rates of one split's episodes; pass@k for ``k <= samples`` over tasks played ``samples`` times."""
    n = max(len(episodes), 1)
    per_type: dict[str, list[bool]] = defaultdict(list)
    per_task: dict[str, list[bool]] = defaultdict(list)
    for ep in episodes:
        per_type[ep.task_type or "unknown"].append(bool(ep.won))
        per_task[ep.task_id].append(bool(ep.won))
    pass_at: dict[int, float] = {}
    if samples > 1 and per_task:
        for k in range(1, samples + 1):
            pass_at[k] = sum(pass_at_k(len(w), sum(w), k) for w in per_task.values()) / len(per_task)
    return EvalReport(
        split=split, episodes=episodes,
        success=Rate(sum(bool(e.won) for e in episodes), len(episodes)),
        mean_reward=sum(e.reward for e in episodes) / n,
        mean_turns=sum(e.num_turns for e in episodes) / n,
        by_task_type={t: Rate(sum(v), len(v)) for t, v in per_type.items()},
        pass_at=pass_at, samples=samples,
    )


def split_task_ids(env_id: str, split: str, n: int, env_kwargs: dict[str, Any] | None) -> list[str]:
    """The first ``n`` task ids of ``split`` (the evaluation order)."""
    env = envs.make(env_id, **(env_kwargs or {}))
    try:
        base: Any = env.unwrapped
        return list(base.task_ids(split, n))
    finally:
        env.close()


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
    samples: int = 1,
    task_ids: list[str] | None = None,
    task_index_offset: int = 0,
) -> EvalReport:
    """Play the first ``episodes`` tasks of ``split`` (or ``task_ids``) ``samples`` times each.

    ``task_index_offset``: the index of ``task_ids[0]`` in a longer list shared out over ranks, so
    that a task's sampling stream is the one it gets when one process plays the whole list.
    """
    tasks = task_ids if task_ids is not None else split_task_ids(env_id, split, episodes, env_kwargs)
    sampling = SamplingParams(temperature=0.0 if greedy else temperature,
                              max_tokens=max_new_tokens)  # per-turn seeds derive from `seed`
    cfg = RolloutConfig(group_size=samples, max_turns=max_turns, max_context_tokens=max_context_tokens,
                        sampling=sampling)
    groups = collect_groups(env_id, tasks, backend, renderer_factory, cfg, seed=seed,
                            policy_version=getattr(backend, "policy_version", 0), env_kwargs=env_kwargs,
                            task_index_offset=task_index_offset)
    return report_from_episodes(split, [ep for g in groups for ep in g.episodes], samples)


def checkpoint_link(model: str, output_dir: str) -> dict[str, Any]:
    """What an eval run measured: ``{"model", "dir", "train_run", "step"}``.

    ``train_run`` / ``step`` are filled when ``model`` lies under ``<output_dir>/<run>/``:
    ``final`` (step ``"final"``) or ``checkpoints/step-<n>/model`` (step ``n``, completed steps).
    """
    link: dict[str, Any] = {"model": model, "dir": "", "train_run": "", "step": ""}
    path = Path(model)
    if not path.exists():
        return link  # a bundled name or hub id
    path = path.resolve()
    link["dir"] = str(path)
    root = Path(output_dir).resolve()
    try:
        parts = path.relative_to(root).parts
    except ValueError:
        return link
    if len(parts) >= 2 and parts[1] == "final":
        link.update(train_run=parts[0], step="final")
    elif len(parts) >= 3 and parts[1] == "checkpoints" and parts[2].startswith("step-"):
        link.update(train_run=parts[0], step=int(parts[2].removeprefix("step-")))
    return link


def _chunk_seed(seed: int, chunk: int) -> int:
    return seed * 1_000_003 + chunk


def evaluate_checkpoint(
    cfg: EvalConfig, *, policy: tuple[Any, Any] | None = None,
    on_chunk: Callable[[int, int], None] | None = None,
) -> list[EvalReport]:
    """Load ``cfg.model``, evaluate it on every split of ``cfg.split`` and record it in the store.

    Returns one report per split. ``on_chunk(done, total)`` is called after each chunk is written
    (the CLI's progress bar; a test interrupts the evaluation from it).
    """
    splits = eval_splits(cfg.split)
    samples = 1 if cfg.greedy else cfg.samples
    plan = [(split, t) for split in splits for t in split_task_ids(cfg.env, split, cfg.episodes, cfg.env_kwargs)]
    chunks = [plan[i:i + cfg.chunk] for i in range(0, len(plan), cfg.chunk)]

    store = open_store(cfg)  # type: ignore[arg-type]
    if cfg.baseline:
        store.get_run(cfg.baseline)  # RunNotFound (one line) before any model loads
    name = cfg.run_name or f"eval-{Path(cfg.model).name}-{cfg.split}-{datetime.now():%Y%m%d-%H%M%S}"
    config = {**config_to_dict(cfg), "checkpoint": checkpoint_link(cfg.model, cfg.output_dir)}
    run_id = store.create_run(name, "eval", config, seed=cfg.seed, resume=cfg.resume)
    done: dict[int, list[Episode]] = defaultdict(list)
    if cfg.resume:
        for step, ep in store.episodes_with_steps(run_id):
            done[step].append(ep)
        complete = [c for c in range(len(chunks)) if len(done.get(c, [])) == len(chunks[c]) * samples]
        last = -1
        while last + 1 in complete:
            last += 1
        store.delete_episodes_after(run_id, last)  # a chunk half-written when it stopped is re-played
        done = defaultdict(list, {c: done[c] for c in range(last + 1)})

    status = "failed"
    try:
        if len(done) < len(chunks):
            model, tokenizer = policy if policy is not None else load_any_model(cfg.model)
            model_dir = _model_dir(cfg.model) if cfg.backend in ("vllm", "auto") else None
            backend = make_backend(cfg.backend, model=model, tokenizer=tokenizer,
                                   **({"model_dir": model_dir} if model_dir else {}))
            render = renderer_factory(tokenizer)
        for c, chunk in enumerate(chunks):
            if c in done:
                continue
            eps: list[Episode] = []
            for split in splits:  # a chunk may straddle two splits
                ids = [t for s, t in chunk if s == split]
                if ids:
                    eps += evaluate_policy(
                        backend, render, cfg.env, split=split, greedy=cfg.greedy,
                        temperature=cfg.temperature, seed=_chunk_seed(cfg.seed, c), max_turns=cfg.max_turns,
                        max_new_tokens=cfg.max_new_tokens, max_context_tokens=cfg.max_context_tokens,
                        env_kwargs=cfg.env_kwargs, samples=samples, task_ids=ids).episodes
            store.add_episodes(run_id, c, eps)
            store.flush()
            done[c] = eps
            if on_chunk is not None:
                on_chunk(c + 1, len(chunks))
        episodes = [ep for c in range(len(chunks)) for ep in done[c]]
        split_of = {t: s for s, t in plan}
        reports = []
        for i, split in enumerate(splits):
            mine = [ep for ep in episodes if split_of.get(ep.task_id) == split]
            reports.append(report_from_episodes(split, mine, samples))
            store.log_step(run_id, i, {"split_index": float(i), **reports[-1].flat()})
        status = "finished"
    except KeyboardInterrupt:
        status = "interrupted"
        raise
    finally:
        store.flush()
        store.set_status(run_id, status)
    return reports


def baseline_lines(store: Any, baseline: str, reports: list[EvalReport]) -> list[str]:
    """``split: before -> after, Δ [95% CI], p`` for every split both eval runs measured.

    ``before`` is read back from the baseline eval run's per-split metrics rows (``successes``,
    ``episodes``); the difference is ``trainers.stats.two_proportion`` (Newcombe interval)."""

    run = store.get_run(baseline)
    base_splits = eval_splits(str(run.config.get("split", "valid_seen")))
    rows = dict(store.steps(run.run_id))
    lines = []
    for rep in reports:
        if rep.split not in base_splits or base_splits.index(rep.split) not in rows:
            continue
        row = rows[base_splits.index(rep.split)]
        before = Rate(int(row.get("successes", round(row["success_rate"] * row["episodes"]))), int(row["episodes"]))
        d = two_proportion(before.successes, before.n, rep.successes, rep.success.n)
        verdict = "resolved" if d.resolved else "not resolved: the interval includes 0"
        lines.append(f"{rep.split}: success {before} -> {rep.success}; delta {d.delta:+.3f} "
                     f"[95% CI {d.ci[0]:+.3f}, {d.ci[1]:+.3f}], p = {d.p_value:.3g} ({verdict})")
    return lines


def _model_dir(model: str) -> str | None:
    """A full HF directory vLLM can load; None (the HF backend) for the tiny test model, a LoRA
    adapter directory (vLLM would load its base without the adapter) and without CUDA."""
    import torch

    if model.startswith("tiny") or not torch.cuda.is_available():
        return None
    if (Path(model) / "adapter_config.json").exists():
        return None
    try:
        from agents.models import resolve_model_dir

        return str(resolve_model_dir(model))
    except Exception:  # not resolvable without loading: the HF backend is used
        return None
