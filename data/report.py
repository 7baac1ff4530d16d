"""A static, self-contained HTML report of a run: learning curves grouped by what they tell
(outcome, learning, speed, everything else), a table of every metric, success by task type, and
a chosen set of episode transcripts with an index and a per-token teacher-student divergence
heatmap over the trained tokens.

Model and env text is untrusted: every piece of it goes through :func:`html.escape` (quotes
included) and the page contains no script; plots are inline PNG ``data:`` images and links only
point inside the page, so the file can be opened anywhere, offline.
"""

from __future__ import annotations

import base64
import html
import math
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from agents.types import Episode
from data.types import RunRecord

__all__ = [
    "TokenText",
    "PICKS",
    "log_ratios",
    "trained_log_ratios",
    "mean_log_ratio",
    "episode_divergence",
    "heat_color",
    "LEGEND_STOPS",
    "select_transcripts",
    "render_report",
    "learning_curves_png",
]

TokenText = Callable[[Sequence[int]], list[str]]  # token ids -> one display string per token

PICKS = ("latest", "first", "divergence")  # which episodes become transcripts (see select_transcripts)
LEGEND_STOPS = (-4.0, -2.0, -1.0, -0.5, 0.0, 0.5, 1.0, 2.0, 4.0)  # log-ratios shown in the legend

_CSS = """
body{font-family:system-ui,sans-serif;margin:2em;max-width:1100px;color:#222}
table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:3px 8px;text-align:left}
.turn{border-left:3px solid #ccc;margin:.6em 0;padding:.2em .8em}
.user{border-color:#268bd2}.assistant{border-color:#859900}.env{border-color:#b58900}
.role{font-weight:bold;font-size:.85em;color:#555}
pre{white-space:pre-wrap;margin:.2em 0}
.tok{font-family:monospace;white-space:pre-wrap}
.untrained{font-family:monospace;white-space:pre-wrap;color:#999}
.key{font-family:monospace;padding:1px 6px;margin-right:2px;border:1px solid #ddd}
.group th{background:#eee}.nav a{margin-right:1em}
.episode{border-top:1px solid #ccc;margin-top:1.5em}
img{max-width:100%}
"""


# ---------------------------------------------------------------------- divergence
def log_ratios(sampler: Sequence[float], teacher: Sequence[float] | None) -> list[float] | None:
    """Per-token log-ratio r_t = log p_teacher(y_t) - log p_student(y_t); None without a teacher.

    Negative r_t: the teacher finds the sampled token less likely than the student did.
    """
    if teacher is None:
        return None
    return [float(t) - float(s) for s, t in zip(sampler, teacher)]


def trained_log_ratios(turn: Any) -> list[float] | None:
    """The log-ratios of the turn's trained tokens only (``loss_mask == 1``); None without a teacher.

    Tokens the renderer appended (a closing end-of-turn) have mask 0 and no sampled log-prob:
    their "ratio" means nothing and is left out.
    """
    ratios = log_ratios(turn.sampler_logprobs, turn.teacher_logprobs)
    if ratios is None:
        return None
    return [r for r, m in zip(ratios, turn.loss_mask) if m]


def mean_log_ratio(turn: Any) -> float | None:
    """Mean of :func:`trained_log_ratios`; None without a teacher or without trained tokens."""
    ratios = trained_log_ratios(turn)
    return sum(ratios) / len(ratios) if ratios else None


def episode_divergence(ep: Episode) -> float | None:
    """Mean of log p_student - log p_teacher over the trained tokens of every turn.

    The sampled estimate of KL(student || teacher) that on-policy distillation minimises; larger
    means the teacher disagrees more. None when no turn has teacher log-probs.
    """
    ratios = [r for t in ep.turns for r in (trained_log_ratios(t) or [])]
    return -sum(ratios) / len(ratios) if ratios else None


def heat_color(r: float, scale: float = 4.0) -> str:
    """CSS background for a log-ratio: red for r < 0, green for r > 0, opacity |r| / scale (<= 0.85)."""
    if not math.isfinite(r):
        return "rgba(128,128,128,0.5)"
    a = min(abs(r) / scale, 1.0) * 0.85
    return f"rgba(220,50,47,{a:.3f})" if r < 0 else f"rgba(64,160,43,{a:.3f})"


# ---------------------------------------------------------------------- transcript selection
def select_transcripts(
    episodes: Sequence[tuple[int, Episode]],
    n: int,
    pick: str = "latest",
    failed: bool = False,
    task_type: str | None = None,
) -> list[tuple[int, int, Episode]]:
    """Choose ``n`` episodes to print in full, as ``(index in the run, step, episode)``.

    ``pick``: ``latest`` (the last written first), ``first`` (writing order), ``divergence``
    (highest :func:`episode_divergence` first; episodes without teacher log-probs are left out).
    ``failed`` keeps only episodes that were not won; ``task_type`` only that task type. The
    index is the one ``python -m data show RUN --episode N`` takes.
    """
    if pick not in PICKS:
        raise ValueError(f"unknown pick {pick!r}; expected one of {PICKS}")
    chosen = [
        (i, s, ep)
        for i, (s, ep) in enumerate(episodes)
        if not (failed and ep.won) and (task_type is None or ep.task_type == task_type)
    ]
    if pick == "latest":
        chosen.reverse()
    elif pick == "divergence":
        scored = [(episode_divergence(ep), i, s, ep) for i, s, ep in chosen]
        chosen = [(i, s, ep) for d, i, s, ep in sorted(
            (x for x in scored if x[0] is not None), key=lambda x: (-x[0], x[1]))]
    return chosen[: max(n, 0)]


# ---------------------------------------------------------------------- html pieces
def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _fmt(v: float | None, spec: str = "+.3f") -> str:
    return "-" if v is None else format(v, spec)


def learning_curves_png(
    steps: Sequence[tuple[int, dict[str, Any]]], success: dict[int, float]
) -> bytes | None:
    """The grouped learning curves of every numeric metric (see :mod:`data.curves`).

    ``success``: the per-step success rate of the stored episodes, plotted as the training
    success rate where the steps did not log ``success_rate`` themselves.
    """
    from data.curves import curves_png, group_panels

    return curves_png(group_panels(_series(steps, success)))


def _series(steps: Sequence[tuple[int, dict[str, Any]]], success: dict[int, float]) -> Any:
    from data.curves import metric_series

    series = metric_series(steps)
    if success and "success_rate" not in series:
        xs = sorted(success)
        series["success_rate"] = (xs, [success[x] for x in xs])
    return series


def _metrics_table(series: Any) -> str:
    """Every metric, by panel group: points logged and the last value with its step."""
    from data.curves import group_panels

    rows: list[str] = []
    last_group = None
    for panel in group_panels(series):
        if panel.group != last_group:
            rows.append(f'<tr class="group"><th colspan="4">{_e(panel.group)}</th></tr>')
            last_group = panel.group
        for kind, part in (("train", panel.train), ("eval", panel.eval)):
            for name, (xs, ys) in part.items():
                label = name if kind == "train" else f"eval/{name}"
                rows.append(
                    f"<tr><td>{_e(label)}</td><td>{_e(kind)}</td><td>{len(xs)}</td>"
                    f"<td>{ys[-1]:.4g} (step {xs[-1]})</td></tr>"
                )
    return (
        '<table id="metrics"><tr><th>metric</th><th>train/eval</th><th>steps logged</th>'
        f"<th>last value</th></tr>{''.join(rows)}</table>"
    )


@dataclass
class _TaskStats:
    n: int = 0
    won: int = 0
    reward: float = 0.0


def _success_by_type(episodes: Sequence[tuple[int, Episode]]) -> str:
    stats: dict[str, _TaskStats] = defaultdict(_TaskStats)
    for _, ep in episodes:
        s = stats[ep.task_type or "(none)"]
        s.n += 1
        s.won += int(ep.won)
        s.reward += ep.reward
    body = "".join(
        f"<tr><td>{_e(k)}</td><td>{s.n}</td><td>{s.won / s.n:.1%}</td><td>{s.reward / s.n:.3f}</td></tr>"
        for k, s in sorted(stats.items())
    )
    return f"<table><tr><th>task type</th><th>episodes</th><th>success</th><th>mean reward</th></tr>{body}</table>"


def _legend() -> str:
    keys = "".join(
        f'<span class="key" style="background:{heat_color(r)}">{r:+g}</span>' for r in LEGEND_STOPS
    )
    return (
        f'<p class="legend">log-ratio colour scale: {keys} (saturates at &plusmn;4) '
        '<span class="key untrained">not trained</span></p>'
    )


def _heatmap(turn: Any, token_text: TokenText | None) -> str:
    ratios = log_ratios(turn.sampler_logprobs, turn.teacher_logprobs)
    if ratios is None:
        return f"<pre>{_e(turn.action_text)}</pre>"
    texts = (
        token_text(turn.completion_ids) if token_text else [f"[{t}]" for t in turn.completion_ids]
    )
    spans = []
    for tok, r, m in zip(texts, ratios, turn.loss_mask):
        if m:
            spans.append(
                f'<span class="tok" style="background:{heat_color(r)}" '
                f'title="{_e(f"{tok!r} log-ratio {r:+.3f}")}">{_e(tok)}</span>'
            )
        else:
            spans.append(f'<span class="untrained" title="{_e(f"{tok!r} not trained")}">{_e(tok)}</span>')
    trained = trained_log_ratios(turn) or []
    mean = (
        f"mean log-ratio {sum(trained) / len(trained):+.3f} over {len(trained)} trained tokens"
        if trained
        else "no trained tokens"
    )
    return f'<div>{"".join(spans)}</div><div class="role">{mean}</div>'


def _index(transcripts: Sequence[tuple[int, int, Episode]]) -> str:
    rows = "".join(
        f'<tr><td><a href="#ep-{i}">{i}</a></td><td>{s}</td><td>{_e(ep.task_id)}</td>'
        f"<td>{_e(ep.task_type)}</td><td>{ep.reward:.3f}</td><td>{_e(ep.won)}</td>"
        f"<td>{ep.num_turns}</td><td>{_e(ep.end_reason)}</td>"
        f"<td>{_fmt(episode_divergence(ep))}</td></tr>"
        for i, s, ep in transcripts
    )
    return (
        '<table id="transcript-index"><tr><th>episode</th><th>step</th><th>task</th><th>type</th>'
        "<th>reward</th><th>won</th><th>turns</th><th>end</th><th>divergence</th></tr>"
        f"{rows}</table>"
    )


def _transcript(index: int, step: int, ep: Episode, token_text: TokenText | None) -> str:
    head = (
        f'<div class="episode" id="ep-{index}">'
        f"<h3>Episode {index} &middot; step {step} &middot; {_e(ep.task_id)} ({_e(ep.task_type)})</h3>"
        f"<p>env {_e(ep.env_id)}, seed {ep.seed}, reward {ep.reward:.3f}, won {ep.won}, "
        f"end {_e(ep.end_reason)}, privileged {_e(ep.privileged)}, id {_e(ep.episode_id)}, "
        f'divergence {_fmt(episode_divergence(ep))} &middot; <a href="#transcripts">index</a></p>'
    )
    parts = [head]
    if ep.info.get("skill_id") is not None:
        parts.append(
            f"<p>teacher skill: {_e(ep.info.get('skill_id'))} {_e(ep.info.get('skill_text', ''))}</p>"
        )
    if ep.initial_observation:
        parts.append(
            f'<div class="turn user"><div class="role">env</div><pre>{_e(ep.initial_observation)}</pre></div>'
        )
    for t in ep.turns:
        valid = "" if t.action_valid else " (invalid)"
        parts.append(
            f'<div class="turn assistant"><div class="role">assistant, turn {t.index}: '
            f"action {_e(t.action)}{_e(valid)}, finish {_e(t.finish_reason)}</div>{_heatmap(t, token_text)}</div>"
            f'<div class="turn env"><div class="role">env (reward {t.reward:g})</div><pre>{_e(t.observation)}</pre></div>'
        )
    parts.append("</div>")
    return "\n".join(parts)


def render_report(
    run: RunRecord,
    steps: Sequence[tuple[int, dict[str, Any]]],
    episodes: Sequence[tuple[int, Episode]],
    transcripts: Sequence[tuple[int, int, Episode]],
    token_text: TokenText | None = None,
    selection: str = "",
) -> str:
    """The whole HTML page.

    ``episodes``: (step, episode) pairs for the statistics; ``transcripts``: (index, step, episode)
    triples to print in full (see :func:`select_transcripts`); ``selection``: how they were
    chosen, in words.
    """
    from data.curves import curves_png, group_panels

    by_step: dict[int, list[bool]] = defaultdict(list)
    for step, ep in episodes:
        by_step[step].append(ep.won)
    success = {s: sum(w) / len(w) for s, w in by_step.items()}
    series = _series(steps, success)
    png = curves_png(group_panels(series))
    curves = (
        f'<img id="curves-png" alt="learning curves: outcome, learning, speed and other metrics by step" '
        f'src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}">'
        "<p>Lines with dots: training steps; squares on a dashed line (orange where alone): "
        "evaluations (the eval/ metrics).</p>"
        if png
        else "<p>No metrics logged yet.</p>"
    )
    config = html.escape(_json(run.config))
    body = "\n".join(_transcript(i, s, ep, token_text) for i, s, ep in transcripts)
    store_url = run.config.get("store_url") if isinstance(run.config, dict) else None
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; img-src data:; style-src 'unsafe-inline'">
<title>DistillGym run {_e(run.name)}</title><style>{_CSS}</style></head>
<body>
<h1>Run {_e(run.name)}</h1>
<p>method {_e(run.method)}, status {_e(run.status)}, seed {run.seed}, code {_e(run.code_version)},
{len(steps)} steps, {len(episodes)} episodes{f", store {_e(store_url)}" if store_url else ""}</p>
<p class="nav"><a href="#curves">learning curves</a><a href="#all-metrics">all metrics</a><a href="#success">success by task type</a><a href="#transcripts">transcripts</a></p>
<details><summary>config</summary><pre>{config}</pre></details>
<h2 id="curves">Learning curves</h2>{curves}
<h2 id="all-metrics">All metrics</h2>{_metrics_table(series)}
<h2 id="success">Success by task type</h2>{_success_by_type(episodes)}
<h2 id="transcripts">Transcripts</h2>
<p>{len(transcripts)} of {len(episodes)} episodes{f": {_e(selection)}" if selection else ""}.
Assistant tokens are coloured by log p<sub>teacher</sub> &minus; log p<sub>student</sub>
(red: the teacher disagrees, green: it agrees more); grey tokens are not trained and are left out
of each turn's mean. Divergence: the mean of log p<sub>student</sub> &minus; log p<sub>teacher</sub>
over an episode's trained tokens.</p>
{_legend()}
{_index(transcripts)}
{body}
</body></html>
"""


def _json(value: Any) -> str:
    import json

    return json.dumps(value, indent=2, sort_keys=True, default=str)
