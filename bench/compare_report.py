"""Results of the method comparison: records, seed aggregation, paper-claim checks, report files.

``bench/compare.py`` runs the methods and hands this module one :class:`RunResult` per
(env, method, seed) and one :class:`WarmStart` per env; everything here is pure bookkeeping
(no model, no env), so it is cheap to test and to re-run on a saved ``results.json``::

    python bench/compare_report.py runs/compare/results.json     # rewrite report.md and the PNGs

Statistics (per env and method, over ``n`` seeds, each evaluated on ``E`` episodes per split):

* ``mean``/``std`` of the greedy success rate over seeds (``std`` is the sample std, 0 for n = 1);
* standard error ``se = max(std/√n, √(p(1−p)/(n·E)))``: the larger of the seed spread and the
  binomial noise of the evaluation itself, so one seed never looks more certain than its episodes;
* a difference of two methods is called real only when ``|Δ| ≥ 2·√(se_a² + se_b²)`` and there are
  at least ``MIN_SEEDS`` seeds; otherwise it is reported as inconclusive.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # `python bench/compare_report.py`

from trainers.stats import resolvable_gap, wilson_interval, z_value  # noqa: E402

__all__ = [
    "RunResult",
    "WarmStart",
    "Summary",
    "Claim",
    "PAPER_CLAIMS",
    "MIN_SEEDS",
    "SPLITS",
    "summarize",
    "check_claims",
    "claim_verdict",
    "resolvable_pts",
    "markdown_report",
    "plot_curves",
    "plot_final",
    "write_report",
    "load_results",
]

SPLITS = ("valid_seen", "valid_unseen")
MIN_SEEDS = 3
BASELINE = "grpo"


@dataclass
class RunResult:
    """One training run of one method on one env with one seed, and its evaluations."""

    env: str
    method: str
    seed: int
    run_name: str
    status: str = "finished"  # finished | failed
    success: dict[str, float] = field(default_factory=dict)  # split -> greedy success rate
    eval_episodes: int = 0  # episodes per split
    tokens: int = 0  # generated (sampled) tokens spent by training rollouts
    steps: int = 0
    wall_s: float = 0.0  # training wall time, evaluations excluded
    eval_s: float = 0.0
    mean_kl: float | None = None  # mean over steps of the method's KL metric
    kl_key: str = ""
    curve: list[tuple[int, float]] = field(default_factory=list)  # (tokens, valid_seen success)
    error: str = ""

    @property
    def overall(self) -> float:
        """Mean success over the evaluation splits."""
        vals = [self.success[s] for s in SPLITS if s in self.success]
        return sum(vals) / len(vals) if vals else 0.0


@dataclass
class WarmStart:
    """The SFT warm start of one env: student start and teacher, with their own evaluations."""

    env: str
    student_dir: str
    teacher_dir: str
    student_steps: int
    teacher_steps: int
    student_success: dict[str, float] = field(default_factory=dict)
    teacher_success: dict[str, float] = field(default_factory=dict)
    eval_episodes: int = 0
    wall_s: float = 0.0


@dataclass
class Summary:
    """Seed aggregate of one (env, method)."""

    env: str
    method: str
    n_seeds: int
    n_failed: int
    mean: dict[str, float]  # split (and "overall") -> mean success
    std: dict[str, float]
    se: dict[str, float]
    tokens: float
    steps: float
    wall_s: float
    mean_kl: float | None
    kl_key: str
    episodes: int = 0  # evaluation episodes per split and seed

    @property
    def pooled_n(self) -> int:
        """Evaluation episodes behind the overall rate: seeds × splits × episodes."""
        return self.n_seeds * len(SPLITS) * self.episodes

    @property
    def overall_ci(self) -> tuple[float, float]:
        """95% Wilson interval of the overall success, its episodes pooled over seeds and splits."""
        n = self.pooled_n
        return wilson_interval(round(self.mean["overall"] * n), n) if n else (0.0, 1.0)


def resolvable_pts(a: Summary, b: Summary) -> float:
    """The smallest overall gap (points) between ``a`` and ``b`` whose 95% interval excludes zero
    with the episodes and seeds they ran: the larger of the episode term
    ``trainers.stats.resolvable_gap(N_a, N_b)`` (worst case p = 0.5) and the seed-spread term
    ``z·sqrt(std_a²/n_a + std_b²/n_b)`` (0 with one seed: one seed cannot show its own spread)."""
    if not a.pooled_n or not b.pooled_n:
        return 100.0
    seeds = z_value() * math.sqrt(a.std["overall"] ** 2 / a.n_seeds + b.std["overall"] ** 2 / b.n_seeds)
    return 100 * max(resolvable_gap(a.pooled_n, b.pooled_n), seeds)


@dataclass(frozen=True)
class Claim:
    """A paper's headline claim: ``method`` beats ``baseline`` by ``claimed`` points."""

    paper: str
    method: str
    baseline: str
    claimed: float  # percentage points
    quote: str


PAPER_CLAIMS: tuple[Claim, ...] = (
    Claim("Skill-SD (arXiv 2604.10674)", "skill-sd", "grpo", 14.0,
          "AppWorld 64.9 vs GRPO 50.9 (Qwen3-4B)"),
    Claim("TCOD (arXiv 2604.24005)", "tcod-b2f", "opd", 18.0,
          "issue 12 quotes +18 over vanilla OPD on ALFWorld; specs/algorithms.md lists "
          "B2F 86.4/77.6 vs OPD 75.4/72.1 seen/unseen (7B)"),
    Claim("TCOD (arXiv 2604.24005)", "tcod-f2b", "opd", 18.0, "same paper, front-to-back curriculum"),
    Claim("SOD (arXiv 2605.07725)", "sod", "grpo", 12.9, "avg@32 24.22 vs GRPO 11.32 (0.6B student)"),
)


# --------------------------------------------------------------------------- statistics


def _mean_std(xs: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    if not xs:
        return 0.0, 0.0
    m = sum(xs) / len(xs)
    if len(xs) < 2:
        return m, 0.0
    return m, math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))


def success_se(mean: float, std: float, n_seeds: int, episodes: int) -> float:
    """``max(std/√n, √(p(1−p)/(n·E)))``: seed spread or evaluation noise, whichever is larger.

    With ``p = 0`` or ``1`` the binomial term is 0; it is then floored at ``1/(n·E)`` (one episode
    either way), so a perfect or null score is never treated as exact.
    """
    n, e = max(n_seeds, 1), max(episodes, 1)
    binom = math.sqrt(max(mean * (1 - mean), 0.0) / (n * e)) or 1.0 / (n * e)
    return max(std / math.sqrt(n), binom)


def summarize(results: list[RunResult]) -> list[Summary]:
    """One :class:`Summary` per (env, method), in first-seen order; failed runs are counted, not averaged."""
    groups: dict[tuple[str, str], list[RunResult]] = defaultdict(list)
    for r in results:
        groups[(r.env, r.method)].append(r)
    out = []
    for (env, method), runs in groups.items():
        ok = [r for r in runs if r.status == "finished"]
        mean, std, se = {}, {}, {}
        episodes = max((r.eval_episodes for r in ok), default=0)
        for split in (*SPLITS, "overall"):
            vals = [r.overall if split == "overall" else r.success.get(split, 0.0) for r in ok]
            mean[split], std[split] = _mean_std(vals)
            per_split_episodes = episodes * (len(SPLITS) if split == "overall" else 1)
            se[split] = success_se(mean[split], std[split], len(ok), per_split_episodes)
        kls = [r.mean_kl for r in ok if r.mean_kl is not None]
        out.append(Summary(
            env=env, method=method, n_seeds=len(ok), n_failed=len(runs) - len(ok), mean=mean, std=std,
            episodes=episodes,
            se=se, tokens=_mean_std([float(r.tokens) for r in ok])[0],
            steps=_mean_std([float(r.steps) for r in ok])[0],
            wall_s=_mean_std([r.wall_s for r in ok])[0],
            mean_kl=_mean_std(kls)[0] if kls else None,
            kl_key=next((r.kl_key for r in ok if r.kl_key), ""),
        ))
    return out


def claim_verdict(delta: float, se: float, n_seeds: int, claimed: float) -> str:
    """Verdict on a claimed gain from our gain ``delta`` (success-rate units, not points).

    ``supported`` needs ``delta ≥ 2·se`` and at least half the claimed size; ``direction only`` a
    real but smaller gain; ``contradicted`` ``delta ≤ −2·se``; anything else, or fewer than
    ``MIN_SEEDS`` seeds, is ``inconclusive``.
    """
    if n_seeds < MIN_SEEDS:
        return "inconclusive"
    if delta >= 2 * se:
        return "supported" if 100 * delta >= claimed / 2 else "direction only"
    if delta <= -2 * se:
        return "contradicted"
    return "inconclusive"


@dataclass
class ClaimCheck:
    claim: Claim
    env: str
    ours: float  # method overall success
    base: float  # baseline overall success
    delta_pts: float
    se_pts: float
    n_seeds: int
    verdict: str


def check_claims(summaries: list[Summary], claims: tuple[Claim, ...] = PAPER_CLAIMS) -> list[ClaimCheck]:
    """One check per claim and env where both the method and its baseline ran."""
    by = {(s.env, s.method): s for s in summaries}
    out = []
    for claim in claims:
        for env in dict.fromkeys(s.env for s in summaries):
            a, b = by.get((env, claim.method)), by.get((env, claim.baseline))
            if a is None or b is None or not a.n_seeds or not b.n_seeds:
                continue
            delta = a.mean["overall"] - b.mean["overall"]
            se = math.hypot(a.se["overall"], b.se["overall"])
            n = min(a.n_seeds, b.n_seeds)
            out.append(ClaimCheck(claim, env, a.mean["overall"], b.mean["overall"], 100 * delta,
                                  100 * se, n, claim_verdict(delta, se, n, claim.claimed)))
    return out


# --------------------------------------------------------------------------- report


def _pct(mean: float, std: float, n: int) -> str:
    return f"{100 * mean:.1f} ± {100 * std:.1f}" if n >= 2 else f"{100 * mean:.1f}"


def _short(env: str) -> str:
    return env.split("/")[-1]


def summary_table(summaries: list[Summary], warm: list[WarmStart]) -> str:
    """Markdown table: success per split, gain over GRPO, tokens, steps, wall time, mean KL."""
    lines = ["| env | method | seeds | valid_seen % | valid_unseen % | overall % [95% CI] (episodes) | "
             "Δ overall vs grpo (pts) | resolvable gap vs grpo (pts) | "
             "tokens generated | steps | train wall (s) | mean KL |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for w in warm:
        for label, succ, steps in (("SFT student start", w.student_success, w.student_steps),
                                   ("SFT teacher", w.teacher_success, w.teacher_steps)):
            if not succ:  # not evaluated (eval_teacher=false)
                continue
            lines.append(f"| {_short(w.env)} | *{label}* ({steps} SFT steps) | – | "
                         f"{100 * succ.get('valid_seen', 0):.1f} | "
                         f"{100 * succ.get('valid_unseen', 0):.1f} | | | | 0 | | | |")
    base = {s.env: s for s in summaries if s.method == BASELINE and s.n_seeds}
    for s in summaries:
        b = base.get(s.env)
        delta = f"{100 * (s.mean['overall'] - b.mean['overall']):+.1f}" if b and s.n_seeds else ""
        if s.method == BASELINE:
            delta = "(baseline)"
        kl = f"{s.mean_kl:.4f} ({s.kl_key})" if s.mean_kl is not None else "–"
        seeds = f"{s.n_seeds}" + (f" (+{s.n_failed} failed)" if s.n_failed else "")
        lo, hi = s.overall_ci
        overall = f"{100 * s.mean['overall']:.1f} [{100 * lo:.1f}, {100 * hi:.1f}] ({s.pooled_n})"
        gap = f"{resolvable_pts(s, b):.1f}" if b and s.n_seeds else ""
        lines.append(
            f"| {_short(s.env)} | {s.method} | {seeds} | "
            f"{_pct(s.mean['valid_seen'], s.std['valid_seen'], s.n_seeds)} | "
            f"{_pct(s.mean['valid_unseen'], s.std['valid_unseen'], s.n_seeds)} | {overall} | {delta} | {gap} | "
            f"{s.tokens:.0f} | {s.steps:.1f} | {s.wall_s:.0f} | {kl} |")
    return "\n".join(lines)


def claims_table(checks: list[ClaimCheck]) -> str:
    lines = ["| claim (paper) | env | ours: method vs baseline (overall %) | Δ ours (pts) | "
             "± 2·se | claimed Δ | verdict |", "|---|---|---|---|---|---|---|"]
    for c in checks:
        lines.append(
            f"| {c.claim.method} vs {c.claim.baseline} ({c.claim.paper}) | {_short(c.env)} | "
            f"{100 * c.ours:.1f} vs {100 * c.base:.1f} | {c.delta_pts:+.1f} | {2 * c.se_pts:.1f} | "
            f"+{c.claim.claimed:.1f} | **{c.verdict}**"
            + (f" ({c.n_seeds} seed{'s' if c.n_seeds > 1 else ''})" if c.n_seeds < MIN_SEEDS else "") + " |")
    return "\n".join(lines)


def not_beating_baseline(summaries: list[Summary]) -> list[str]:
    """Plain sentences for every method whose overall mean is not above GRPO's on an env."""
    base = {s.env: s for s in summaries if s.method == BASELINE and s.n_seeds}
    out = []
    for s in summaries:
        b = base.get(s.env)
        if s.method == BASELINE or b is None:
            continue
        if not s.n_seeds:
            out.append(f"{s.method} on {_short(s.env)}: every run failed (see results.json).")
        elif s.mean["overall"] <= b.mean["overall"]:
            out.append(f"{s.method} did not beat GRPO on {_short(s.env)} "
                       f"({100 * s.mean['overall']:.1f} vs {100 * b.mean['overall']:.1f} overall).")
    return out


def markdown_report(results: list[RunResult], warm: list[WarmStart], *, command: str,
                    config: dict[str, Any], image_dir: str = ".") -> str:
    """The whole report as markdown (image links relative to the report's folder)."""
    summaries = summarize(results)
    checks = check_claims(summaries)
    n_seeds = max((s.n_seeds for s in summaries), default=0)
    episodes = max((r.eval_episodes for r in results), default=0)
    parts = [
        "# Method comparison", "",
        f"Command: `{command}`", "",
        f"Model `{config.get('model', '?')}`, budget {config.get('gen_token_budget', '?')} generated "
        f"tokens per run, {n_seeds} seed(s), greedy evaluation on {episodes} episodes per split. "
        "Success rates in %; `±` is the std over seeds (shown from 2 seeds on); the overall interval "
        "is Wilson's over the episodes pooled across seeds and splits; the resolvable gap is the smallest "
        "difference from GRPO these episodes and seeds could show (a Δ smaller than it is noise).", "",
        summary_table(summaries, warm), "",
        f"![success vs generated tokens]({image_dir}/curves.png)", "",
        f"![final success]({image_dir}/final.png)", "",
        "## Paper claims", "",
        claims_table(checks) if checks else "(no claim could be checked: a method or its baseline is missing)",
        "",
    ]
    losers = not_beating_baseline(summaries)
    if losers:
        parts += ["## Methods that did not beat GRPO", "", *[f"- {line}" for line in losers], ""]
    if n_seeds < MIN_SEEDS:
        parts += [f"With {n_seeds} seed(s) this run is too small to conclude anything about the "
                  "methods: every verdict above is *inconclusive* by construction.", ""]
    return "\n".join(parts)


def plot_curves(results: list[RunResult], warm: list[WarmStart], path: Path) -> Path:
    """Success (valid_seen, greedy) vs generated tokens; one panel per env, mean over seeds with
    a min–max band. Every run starts from its env's SFT student (tokens = 0)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    envs = list(dict.fromkeys(r.env for r in results))
    fig, axes = plt.subplots(1, max(len(envs), 1), figsize=(6 * max(len(envs), 1), 4.2), squeeze=False)
    start = {w.env: w.student_success.get("valid_seen", 0.0) for w in warm}
    for ax, env in zip(axes[0], envs):
        by_method: dict[str, list[RunResult]] = defaultdict(list)
        for r in results:
            if r.env == env and r.status == "finished":
                by_method[r.method].append(r)
        for method, runs in by_method.items():
            curves = [[(0, start.get(env, 0.0)), *r.curve] for r in runs]
            k = min(len(c) for c in curves)
            xs = np.mean([[p[0] for p in c[:k]] for c in curves], axis=0)
            ys = np.array([[p[1] for p in c[:k]] for c in curves]) * 100
            line, = ax.plot(xs, ys.mean(0), marker="o", ms=3, label=method)
            if len(runs) > 1:
                ax.fill_between(xs, ys.min(0), ys.max(0), color=line.get_color(), alpha=0.15)
        ax.set_title(_short(env))
        ax.set_xlabel("generated tokens")
        ax.set_ylabel("greedy success on valid_seen (%)")
        ax.set_ylim(-2, 102)
        ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_final(summaries: list[Summary], path: Path) -> Path:
    """Final success per method (bars: valid_seen, valid_unseen; error bars: std over seeds)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    envs = list(dict.fromkeys(s.env for s in summaries))
    fig, axes = plt.subplots(1, max(len(envs), 1), figsize=(6 * max(len(envs), 1), 4.2), squeeze=False)
    for ax, env in zip(axes[0], envs):
        rows = [s for s in summaries if s.env == env]
        x = np.arange(len(rows))
        for j, split in enumerate(SPLITS):
            ax.bar(x + (j - 0.5) * 0.4, [100 * s.mean[split] for s in rows], 0.4,
                   yerr=[100 * s.std[split] for s in rows], capsize=2, label=split)
        ax.set_xticks(x, [s.method for s in rows], rotation=45, ha="right", fontsize=8)
        ax.set_title(_short(env))
        ax.set_ylabel("greedy success (%)")
        ax.set_ylim(0, 100)
        ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_report(out_dir: Path, results: list[RunResult], warm: list[WarmStart], *, command: str,
                 config: dict[str, Any]) -> dict[str, Path]:
    """Write ``results.json``, ``report.md``, ``curves.png`` and ``final.png`` into ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    summaries = summarize(results)
    payload = {
        "command": command, "config": config,
        "warm_start": [asdict(w) for w in warm], "runs": [asdict(r) for r in results],
        "summary": [asdict(s) for s in summaries],
        "claims": [{**asdict(c.claim), "env": c.env, "ours": c.ours, "baseline_success": c.base,
                    "delta_pts": c.delta_pts, "se_pts": c.se_pts, "n_seeds": c.n_seeds,
                    "verdict": c.verdict} for c in check_claims(summaries)],
    }
    paths = {"json": out_dir / "results.json", "markdown": out_dir / "report.md",
             "curves": out_dir / "curves.png", "final": out_dir / "final.png"}
    paths["json"].write_text(json.dumps(payload, indent=1))
    paths["markdown"].write_text(markdown_report(results, warm, command=command, config=config))
    print(summary_table(summaries, warm), file=sys.stderr)  # the table with its intervals and gaps
    if results:
        plot_curves(results, warm, paths["curves"])
        plot_final(summaries, paths["final"])
    return paths


class ResultsFileError(ValueError):
    """A ``results.json`` that cannot be read back (not JSON, or not written by this harness)."""


def load_results(path: Path) -> tuple[list[RunResult], list[WarmStart], dict[str, Any]]:
    """Read back a ``results.json`` written by :func:`write_report`; ``ResultsFileError`` names the
    file and what is wrong with it."""
    try:
        data = json.loads(Path(path).read_text())
        runs = [RunResult(**{**r, "curve": [tuple(p) for p in r["curve"]]}) for r in data["runs"]]
        warm = [WarmStart(**w) for w in data["warm_start"]]
        missing = [key for key in ("command", "config") if key not in data]  # merge_results reads them
        if missing:
            raise KeyError(missing[0])
    except OSError as exc:
        raise ResultsFileError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    except json.JSONDecodeError as exc:
        raise ResultsFileError(f"{path}: not JSON ({exc})") from exc
    except (KeyError, TypeError, AttributeError) as exc:
        raise ResultsFileError(f"{path}: not a comparison results.json ({type(exc).__name__}: {exc})") from exc
    return runs, warm, data


def merge_results(paths: list[Path]) -> tuple[list[RunResult], list[WarmStart], str, dict[str, Any]]:
    """Runs and warm starts of several ``results.json`` (separate invocations, e.g. one per env).

    The commands are joined with `` ; ``; the config is the first file's. A warm start that appears
    in several files (extra seeds run later from the same SFT start) is kept once. The same (env,
    method, seed) twice, or two different warm starts of one env, is an error: the table would be
    ambiguous.
    """
    runs: list[RunResult] = []
    warm: list[WarmStart] = []
    commands: list[str] = []
    config: dict[str, Any] = {}
    for path in paths:
        r, w, data = load_results(path)
        runs += r
        warm += [x for x in w if x not in warm]
        commands.append(data["command"])
        config = config or data["config"]
    dup = sorted(k for k, n in Counter((r.env, r.method, r.seed) for r in runs).items() if n > 1)
    dup_warm = sorted(env for env, n in Counter(w.env for w in warm).items() if n > 1)
    if dup or dup_warm:
        raise ValueError(f"results to merge overlap: runs {dup}, warm starts {dup_warm}")
    return runs, warm, " ; ".join(commands), config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Rebuild report.md and the plots from results.json "
                                     "(several files are merged, e.g. one comparison per env).")
    parser.add_argument("results", nargs="*", type=Path, help="results.json file(s)")
    parser.add_argument("--out", type=Path, default=None,
                        help="output folder (default: the folder of the single results.json)")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if not args.results:  # bare call (make bench): usage only
        parser.print_usage()
        return 0
    if len(args.results) > 1 and args.out is None:
        parser.error("merging several results.json needs --out")
    try:
        runs, warm, command, config = merge_results(args.results)
    except ValueError as exc:  # unreadable or overlapping inputs: nothing is written
        print(f"error: {exc}", file=sys.stderr)
        return 2
    paths = write_report(args.out or args.results[0].parent, runs, warm, command=command, config=config)
    print(json.dumps({k: str(v) for k, v in paths.items()}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
