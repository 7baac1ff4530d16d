"""Does training learn? Two honest checks, each printing JSON.

**Bundled model** (default)::

    python bench/learn.py [--config FILE.yaml] [key=value ...]

From an SFT start of SmolLM2-135M with mid-range greedy success on ``DistillGym/Sum-v0`` (two-digit
addition, one turn; held-out tasks = ``valid_unseen``), GRPO and OPD (teacher = a longer SFT of
the same base) each train for ``steps`` steps; the start and each method's end are evaluated
greedily on the same ``eval_episodes`` held-out tasks, and the difference ``end − start`` gets a
Newcombe interval and a two-proportion p-value (``trainers.stats.two_proportion``). Writes
``<out>/results.json`` (``{"methods": {m: {"start", "end", "delta", "delta_ci", "p_value",
"episodes", ...}}, "command", "config"}``, rates as fractions), ``<out>/curves.png`` (training reward
and the periodic greedy evaluation per step) and ``<out>/before_after.png``. Every stage is a run in
the store under ``output_dir``; a finished stage is reused when the command is run again.

**Tiny model** (the CI learning check, ``tests/test_learning.py``)::

    python bench/learn.py --tiny --seeds 0,1,2,3,4

A random 2-layer ``tiny:<seed>`` model on ``DistillGym/Vowels-v0`` (shaped reward, random policy
≈ 0.37): GRPO from the random model, OPD from a short SFT start with a longer-SFT teacher. Reports
the mean reward of the first steps and of the last steps, per method and seed, and the spread.
"""

from __future__ import annotations

import json
import shlex
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # before bench/ itself: bench/envs.py must not shadow the envs package

from trainers.config import config_field as _f  # noqa: E402
from trainers.config import parse_config  # noqa: E402

__all__ = ["LearnConfig", "TinyCheck", "tiny_check", "run_learn", "main"]


# --------------------------------------------------------------------------- tiny (CI)


@dataclass(frozen=True)
class TinyCheck:
    """Mean training reward of a method's first ``window`` steps and of its last ``window`` steps."""

    method: str
    seed: int
    start: float
    end: float
    steps: int
    wall_s: float

    @property
    def gain(self) -> float:
        return self.end - self.start


TINY_ENV = "DistillGym/Vowels-v0"
TINY_COMMON = ["finetune=full", "max_turns=1", "max_new_tokens=4", "max_context_tokens=128",
               "token_budget=4096", "checkpoint_every=0", "progress=false", "tasks_per_step=4",
               "group_size=8", f"env={TINY_ENV}", "schedule=constant"]
TINY_STEPS = {"grpo": 30, "opd": 30}
TINY_LR = 3e-2  # a random 49k-vocabulary model only moves at a large step size (3e-3: flat)


def _train(method: str, args: list[str]) -> Any:
    from trainers.loop import train
    from trainers.methods import get_method

    cls = get_method(method).config_cls
    return train(parse_config(cls, [*args, f"method={method}"]))


def _mean(rows: list[dict[str, float]], key: str) -> float:
    return sum(r[key] for r in rows) / max(len(rows), 1)


def tiny_check(method: str, seed: int, workdir: Path, window: int = 5) -> TinyCheck:
    """Train ``method`` on Vowels-v0 with ``tiny:<seed>`` and measure its reward gain.

    GRPO starts from the random model. OPD starts from 8 SFT steps on the expert's ``aeiou`` (reward
    still ≈ 0.4) with a teacher of 20 SFT steps: from the random model itself OPD never finds the
    teacher's few tokens among 49k (its sampled-token advantage only pushes sampled tokens down).
    """
    t0 = time.perf_counter()
    common = [*TINY_COMMON, f"output_dir={workdir}", f"seed={seed}"]
    model = f"tiny:{seed}"
    extra: list[str] = []
    if method == "opd":
        sft = [*common, f"model={model}", "lr=1e-2", "tasks_per_step=8", "group_size=1"]
        teacher = _train("sft", [*sft, "steps=20", f"run_name=tiny-teacher-{seed}"]).final_dir
        model = str(_train("sft", [*sft, "steps=8", f"run_name=tiny-start-{seed}"]).final_dir)
        extra = [f"teacher={teacher}"]
    steps = TINY_STEPS[method]
    rows = _train(method, [*common, *extra, f"model={model}", f"lr={TINY_LR}", f"steps={steps}",
                           f"run_name=tiny-{method}-{seed}"]).metrics
    return TinyCheck(method=method, seed=seed, start=_mean(rows[:window], "reward"),
                     end=_mean(rows[-window:], "reward"), steps=steps, wall_s=time.perf_counter() - t0)


def run_tiny(seeds: list[int], workdir: Path) -> dict[str, Any]:
    out: dict[str, Any] = {"env": TINY_ENV, "methods": {}}
    for method in ("grpo", "opd"):
        checks = [tiny_check(method, s, workdir) for s in seeds]
        gains = [c.gain for c in checks]
        out["methods"][method] = {
            "runs": [asdict(c) | {"gain": c.gain} for c in checks],
            "gain_min": min(gains), "gain_max": max(gains), "gain_mean": sum(gains) / len(gains),
            "end_min": min(c.end for c in checks), "start_max": max(c.start for c in checks),
        }
    return out


# --------------------------------------------------------------------------- bundled model


@dataclass
class LearnConfig:
    """Settings of ``bench/learn.py`` with the bundled model (one flat config, key=value)."""

    env: str = _f("DistillGym/Sum-v0", "env id")
    env_kwargs: dict = _f({}, "keyword arguments for envs.make")
    model: str = _f("smollm2-135m-instruct", "base model")
    methods: str = _f("grpo,opd", "methods to train from the SFT start, comma-separated")
    seed: int = _f(0, "seed of every stage")
    sft_steps: int = _f(8, "SFT steps of the student start (8 demos each)")
    teacher_sft_steps: int = _f(24, "SFT steps of the OPD teacher")
    sft_lr: float = _f(1e-4, "SFT learning rate (full fine-tuning)")
    steps: int = _f(20, "optimizer steps per method")
    lr: float = _f(1e-5, "learning rate of each method")
    finetune: str = _f("full", "parameters to train", ("lora", "full"))
    tasks_per_step: int = _f(8, "tasks per step")
    group_size: int = _f(8, "episodes per task")
    max_turns: int = _f(1, "assistant turns per episode")
    max_new_tokens: int = _f(8, "tokens per turn")
    max_context_tokens: int = _f(256, "context window")
    eval_split: str = _f("valid_unseen", "held-out split", ("valid_seen", "valid_unseen"))
    eval_episodes: int = _f(128, "greedy evaluation episodes per measurement (start and each end)")
    curve_every: int = _f(5, "periodic greedy evaluation every N steps (0 = off)")
    curve_episodes: int = _f(32, "episodes of each periodic evaluation")
    start_dir: str = _f("", "measure this existing SFT start instead of training one")
    teacher_dir: str = _f("", "use this existing OPD teacher instead of training one")
    method_dirs: dict = _f({}, "measure existing run folders instead of training, e.g. {grpo: runs/x}: "
                               "their final/ and metrics.csv")
    output_dir: str = _f("runs/learn", "runs and the store go here")
    out: str = _f("docs/learn", "results.json and plots go here")


def _stage(method: str, name: str, cfg: LearnConfig, args: list[str]) -> Path:
    """Train one stage (or reuse its final policy when it already finished)."""
    final = Path(cfg.output_dir) / name / "final"
    if final.exists():
        print(f"[learn] reusing {final}", file=sys.stderr)
        return final
    common = [f"env={cfg.env}", f"seed={cfg.seed}", f"output_dir={cfg.output_dir}", f"run_name={name}",
              f"max_turns={cfg.max_turns}", f"max_new_tokens={cfg.max_new_tokens}",
              f"max_context_tokens={cfg.max_context_tokens}", "token_budget=4096", "checkpoint_every=10"]
    if cfg.env_kwargs:
        common.append(f"env_kwargs={json.dumps(cfg.env_kwargs)}")
    return Path(_train(method, [*common, *args]).final_dir)


def _evaluate(cfg: LearnConfig, model: Path, name: str) -> Any:
    from trainers.evaluate import EvalConfig, evaluate_checkpoint

    ecfg = EvalConfig(env=cfg.env, model=str(model), split=cfg.eval_split, episodes=cfg.eval_episodes,
                      greedy=True, seed=cfg.seed, max_turns=cfg.max_turns, max_new_tokens=cfg.max_new_tokens,
                      max_context_tokens=cfg.max_context_tokens, env_kwargs=dict(cfg.env_kwargs),
                      output_dir=cfg.output_dir, run_name=name, resume=True)
    [report] = evaluate_checkpoint(ecfg)
    print(report.table(), file=sys.stderr)
    return report


def run_learn(cfg: LearnConfig, command: str) -> dict[str, Any]:
    from trainers.stats import resolvable_gap, two_proportion

    t0 = time.perf_counter()
    sft = ["finetune=full", f"lr={cfg.sft_lr}", "schedule=constant", "tasks_per_step=8", "progress=false"]
    start = Path(cfg.start_dir) if cfg.start_dir else _stage(
        "sft", f"learn-sft-start-s{cfg.seed}", cfg, [*sft, f"steps={cfg.sft_steps}"])
    sft_wall = time.perf_counter() - t0
    before = _evaluate(cfg, start, f"learn-eval-start-s{cfg.seed}")
    result: dict[str, Any] = {
        "env": cfg.env, "eval_split": cfg.eval_split,
        "start": {"success": before.success_rate, "ci": list(before.success_ci),
                  "episodes": before.success.n, "sft_steps": cfg.sft_steps},
        "methods": {}, "command": command, "config": asdict(cfg),
    }
    curves: dict[str, list[dict[str, float]]] = {}
    methods = [m.strip() for m in cfg.methods.split(",") if m.strip()]
    teacher = None
    for method in methods:
        args = [f"model={start}", f"finetune={cfg.finetune}", f"lr={cfg.lr}", f"steps={cfg.steps}",
                f"tasks_per_step={cfg.tasks_per_step}", f"group_size={cfg.group_size}", "progress=true",
                f"eval_every={cfg.curve_every}", f"eval_episodes={cfg.curve_episodes}",
                f"eval_split={cfg.eval_split}"]
        extra: dict[str, Any] = {}
        if method in ("opd", "sod", "tcod", "tcod-f2b", "tcod-b2f"):
            if teacher is None:
                teacher = Path(cfg.teacher_dir) if cfg.teacher_dir else _stage(
                    "sft", f"learn-sft-teacher-s{cfg.seed}", cfg, [*sft, f"steps={cfg.teacher_sft_steps}"])
                tb = _evaluate(cfg, teacher, f"learn-eval-teacher-s{cfg.seed}")
                result["teacher"] = {"success": tb.success_rate, "ci": list(tb.success_ci),
                                     "episodes": tb.success.n, "sft_steps": cfg.teacher_sft_steps}
            args.append(f"teacher={teacher}")
        name = f"learn-{method}-s{cfg.seed}-{cfg.steps}steps"
        t1 = time.perf_counter()
        if method in cfg.method_dirs:  # measured, not trained here
            run_dir = Path(cfg.method_dirs[method])
            final, name = run_dir / "final", f"learn-{method}-{run_dir.name}"
            extra["run_dir"] = str(run_dir)
        else:
            run_dir = Path(cfg.output_dir) / name
            final = _stage(method, name, cfg, args)
        train_wall = time.perf_counter() - t1
        after = _evaluate(cfg, final, f"learn-eval-{name.removeprefix('learn-')}")
        d = two_proportion(before.successes, before.success.n, after.successes, after.success.n)
        rows = _metrics(run_dir / "metrics.csv")
        if method in cfg.method_dirs and rows:
            train_wall = sum(r["time_step_s"] for r in rows)
        curves[method] = rows
        extra.update(train_wall_s=round(train_wall, 1),
                     step_s_mean=round(_mean(rows, "time_step_s"), 2) if rows else None,
                     reward_first5=_mean(rows[:5], "reward") if rows else None,
                     reward_last5=_mean(rows[-5:], "reward") if rows else None)
        result["methods"][method] = {
            "start": before.success_rate, "end": after.success_rate, "delta": d.delta,
            "delta_ci": list(d.ci), "p_value": d.p_value, "resolved": d.resolved,
            "episodes": after.success.n, "end_ci": list(after.success_ci),
            "resolvable_gap": resolvable_gap(before.success.n, after.success.n),
            "steps": len(rows) or cfg.steps, **extra,
        }
    result["wall_s"] = round(time.perf_counter() - t0, 1)
    result["sft_start_wall_s"] = round(sft_wall, 1)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    plot_learn(result, curves, out)
    return result


def _metrics(path: Path) -> list[dict[str, float]]:
    import csv

    if not path.exists():
        return []
    with path.open() as fh:
        return [{k: float(v) for k, v in r.items() if v not in ("", None)} for r in csv.DictReader(fh)]


def plot_learn(result: dict[str, Any], curves: dict[str, list[dict[str, float]]], out: Path) -> None:
    """``curves.png``: training reward per step (thin) and periodic greedy eval success (squares);
    ``before_after.png``: start vs end greedy success per method with 95% Wilson intervals."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for i, (method, rows) in enumerate(curves.items()):
        color = f"C{i}"
        ax.plot([r["step"] for r in rows], [r["reward"] for r in rows], color=color, alpha=0.45,
                label=f"{method}: training reward (sampled)")
        ev = [(r["step"], r["eval/success_rate"]) for r in rows if "eval/success_rate" in r]
        if ev:
            ax.plot(*zip(*ev), "s--", color=color, label=f"{method}: greedy eval success")
    start = result["start"]
    ax.axhline(start["success"], color="grey", ls=":", label=f"SFT start {start['success']:.2f}")
    ax.set_xlabel("step")
    ax.set_ylabel("reward / success")
    ax.set_ylim(0, 1)
    ax.set_title(f"{result['env']}: learning from an SFT start")
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(out / "curves.png", dpi=90)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4))
    names = ["SFT start", *result["methods"]]
    vals = [start["success"], *(m["end"] for m in result["methods"].values())]
    cis = [start["ci"], *(m["end_ci"] for m in result["methods"].values())]
    err = [[v - lo for v, (lo, _) in zip(vals, cis)], [hi - v for v, (_, hi) in zip(vals, cis)]]
    ax.bar(names, vals, yerr=err, capsize=6, color=["grey", *(f"C{i}" for i in range(len(names) - 1))])
    for i, m in enumerate(result["methods"].values(), 1):
        lo, hi = m["delta_ci"]
        ax.text(i, min(vals[i] + err[1][i] + 0.03, 0.97), f"Δ {m['delta']:+.2f}\n[{lo:+.2f}, {hi:+.2f}]",
                ha="center", fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel(f"greedy success, {result['eval_split']} (n={start['episodes']})")
    ax.set_title("before -> after, 95% intervals")
    fig.tight_layout()
    fig.savefig(out / "before_after.png", dpi=90)
    plt.close(fig)


# --------------------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if "--tiny" in args:
        args.remove("--tiny")
        seeds = [0, 1, 2, 3, 4]
        if "--seeds" in args:
            i = args.index("--seeds")
            seeds = [int(s) for s in args[i + 1].split(",")]
            del args[i:i + 2]
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            print(json.dumps(run_tiny(seeds, Path(tmp)), indent=2))
        return 0
    cfg = parse_config(LearnConfig, args)
    command = "python bench/learn.py " + " ".join(shlex.quote(a) for a in args)
    print(json.dumps(run_learn(cfg, command.strip()), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
