"""A static, self-contained HTML report of a run: learning curves, success by task type, and
episode transcripts with a per-token teacher-student divergence heatmap.

Model and env text is untrusted: every piece of it goes through :func:`html.escape` (quotes
included) and the page contains no script; plots are inline PNG ``data:`` images, so the file
can be opened anywhere, offline.
"""

from __future__ import annotations

import base64
import html
import io
import math
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from agents.types import Episode
from data.types import RunRecord

__all__ = ["TokenText", "log_ratios", "heat_color", "render_report", "learning_curves_png"]

TokenText = Callable[[Sequence[int]], list[str]]  # token ids -> one display string per token

_CSS = """
body{font-family:system-ui,sans-serif;margin:2em;max-width:1100px;color:#222}
table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:3px 8px;text-align:left}
.turn{border-left:3px solid #ccc;margin:.6em 0;padding:.2em .8em}
.user{border-color:#268bd2}.assistant{border-color:#859900}.env{border-color:#b58900}
.role{font-weight:bold;font-size:.85em;color:#555}
pre{white-space:pre-wrap;margin:.2em 0}
.tok{font-family:monospace;white-space:pre-wrap}
"""


def log_ratios(sampler: Sequence[float], teacher: Sequence[float] | None) -> list[float] | None:
    """Per-token log-ratio r_t = log p_teacher(y_t) - log p_student(y_t); None without a teacher.

    Negative r_t: the teacher finds the sampled token less likely than the student did.
    """
    if teacher is None:
        return None
    return [float(t) - float(s) for s, t in zip(sampler, teacher)]


def heat_color(r: float, scale: float = 4.0) -> str:
    """CSS background for a log-ratio: red for r < 0, green for r > 0, opacity |r| / scale (<= 0.85)."""
    if not math.isfinite(r):
        return "rgba(128,128,128,0.5)"
    a = min(abs(r) / scale, 1.0) * 0.85
    return f"rgba(220,50,47,{a:.3f})" if r < 0 else f"rgba(64,160,43,{a:.3f})"


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def learning_curves_png(
    steps: Sequence[tuple[int, dict[str, Any]]], success: dict[int, float]
) -> bytes | None:
    """A grid of line plots: each numeric metric vs step, plus the success rate per step."""
    series: dict[str, tuple[list[int], list[float]]] = defaultdict(lambda: ([], []))
    for step, metrics in steps:
        for k, v in metrics.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
                series[k][0].append(step)
                series[k][1].append(float(v))
    if success:
        xs = sorted(success)
        series["success_rate (episodes)"] = (xs, [success[x] for x in xs])
    if not series:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = sorted(series)[:12]
    cols = min(3, len(names))
    rows = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 2.8 * rows), squeeze=False)
    for ax, name in zip(axes.flat, names):
        xs, ys = series[name]
        ax.plot(xs, ys, marker="." if len(xs) < 50 else None)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(names) :]:
        ax.axis("off")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    plt.close(fig)
    return buf.getvalue()


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


def _heatmap(turn: Any, token_text: TokenText | None) -> str:
    ratios = log_ratios(turn.sampler_logprobs, turn.teacher_logprobs)
    if ratios is None:
        return f"<pre>{_e(turn.action_text)}</pre>"
    texts = (
        token_text(turn.completion_ids) if token_text else [f"[{t}]" for t in turn.completion_ids]
    )
    spans = []
    for tok, r, m in zip(texts, ratios, turn.loss_mask):
        style = f"background:{heat_color(r)}" if m else "color:#999"
        spans.append(
            f'<span class="tok" style="{style}" title="{_e(f"{tok!r} log-ratio {r:+.3f}")}">{_e(tok)}</span>'
        )
    mean = sum(ratios) / len(ratios) if ratios else 0.0
    return f'<div>{"".join(spans)}</div><div class="role">mean log-ratio {mean:+.3f}</div>'


def _transcript(index: int, step: int, ep: Episode, token_text: TokenText | None) -> str:
    head = (
        f"<h3>Episode {index} &middot; step {step} &middot; {_e(ep.task_id)} ({_e(ep.task_type)})</h3>"
        f"<p>env {_e(ep.env_id)}, seed {ep.seed}, reward {ep.reward:.3f}, won {ep.won}, "
        f"end {_e(ep.end_reason)}, privileged {_e(ep.privileged)}, id {_e(ep.episode_id)}</p>"
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
    return "\n".join(parts)


def render_report(
    run: RunRecord,
    steps: Sequence[tuple[int, dict[str, Any]]],
    episodes: Sequence[tuple[int, Episode]],
    transcripts: Sequence[tuple[int, int, Episode]],
    token_text: TokenText | None = None,
) -> str:
    """The whole HTML page.

    ``episodes``: (step, episode) pairs for the statistics; ``transcripts``: (index, step, episode)
    triples to print in full.
    """
    by_step: dict[int, list[bool]] = defaultdict(list)
    for step, ep in episodes:
        by_step[step].append(ep.won)
    success = {s: sum(w) / len(w) for s, w in by_step.items()}
    png = learning_curves_png(steps, success)
    curves = (
        f'<img alt="learning curves" src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}">'
        if png
        else "<p>No metrics logged yet.</p>"
    )
    config = html.escape(_json(run.config))
    body = "\n".join(_transcript(i, s, ep, token_text) for i, s, ep in transcripts)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; img-src data:; style-src 'unsafe-inline'">
<title>DistillGym run {_e(run.name)}</title><style>{_CSS}</style></head>
<body>
<h1>Run {_e(run.name)}</h1>
<p>method {_e(run.method)}, status {_e(run.status)}, seed {run.seed}, code {_e(run.code_version)},
{len(steps)} steps, {len(episodes)} episodes</p>
<details><summary>config</summary><pre>{config}</pre></details>
<h2>Learning curves</h2>{curves}
<h2>Success by task type</h2>{_success_by_type(episodes)}
<h2>Transcripts</h2>
<p>Assistant tokens are coloured by log p<sub>teacher</sub> &minus; log p<sub>student</sub>
(red: the teacher disagrees, green: it agrees more); grey tokens are not trained.</p>
{body}
</body></html>
"""


def _json(value: Any) -> str:
    import json

    return json.dumps(value, indent=2, sort_keys=True, default=str)
